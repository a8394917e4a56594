//! Benchmark workloads for trigger.rs, run by `trigger bench`.
//!
//! Each workload prints one JSON object and one table row, and states the durability
//! setting it ran with. Benchmarks are measurements, not tests: nothing here asserts a speed.
//!
//! Two modes run the same workload code against a [`Target`]:
//!
//! - **embedded**: the engine in this process (SQLite file or PostgreSQL schema), driven by
//!   a minimal no-op worker in the same process. This measures the engine and its storage
//!   without protocol cost.
//! - **http**: a `trigger serve` child process, triggers sent over HTTP with the SDK's HTTP
//!   backend, and the same minimal worker in a second child process (`trigger bench worker`)
//!   talking to the server's engine endpoints over HTTP, as the Rust SDK's worker does.
//!
//! Every workload gets a fresh database: a SQLite file, or a PostgreSQL schema created for
//! it and dropped afterwards.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trigger_bench::Error> {
//! use trigger_bench::{run, Mode, Options, Workload};
//! for report in run(Workload::BurnDown, Mode::Embedded, &Options::tiny()).await? {
//!     println!("{}", report.to_json());
//! }
//! # Ok(()) }
//! ```

mod process;
mod report;
mod stats;
mod target;
mod worker;
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{markdown_tables, Report};
pub use stats::Percentiles;
pub use target::Target;
pub use worker::process::{parse_task, run_worker_process, WorkerArgs};
pub use worker::Behavior;

/// A workload of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// W1: N no-op runs triggered in batches, then drained by one worker.
    BurnDown,
    /// W2: a producer at a fixed offered rate while a worker drains.
    Sustained,
    /// W3: runs one at a time; trigger→start and trigger→completion latency.
    Latency,
    /// W4: a parent `batchTriggerAndWait`s 1,000 no-op children.
    FanOut,
    /// W5: many runs each waiting on a token; footprint, then the drain.
    Waiting,
    /// W6: many runs delayed to the same instant; start lateness.
    DelayedHerd,
    /// W7: one concurrency key floods a queue while others trickle.
    Fairness,
    /// W8: a server process's cold start, idle memory, and memory with many queued runs.
    Footprint,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::BurnDown,
        Workload::Sustained,
        Workload::Latency,
        Workload::FanOut,
        Workload::Waiting,
        Workload::DelayedHerd,
        Workload::Fairness,
        Workload::Footprint,
    ];

    /// Short name (`w1-burn-down`, …).
    pub fn name(self) -> &'static str {
        match self {
            Workload::BurnDown => "w1-burn-down",
            Workload::Sustained => "w2-sustained",
            Workload::Latency => "w3-latency",
            Workload::FanOut => "w4-fan-out",
            Workload::Waiting => "w5-waiting",
            Workload::DelayedHerd => "w6-delayed-herd",
            Workload::Fairness => "w7-fairness",
            Workload::Footprint => "w8-footprint",
        }
    }

    /// Parses a name or its `w<N>` prefix.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s || w.name().split('-').next() == Some(s))
    }
}

/// Where the workload's engine runs and how the worker reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The engine in this process, the worker calling it directly.
    Embedded,
    /// A `trigger serve` process; triggers and the worker (another process) use HTTP.
    Http,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Http => "http",
        }
    }
}

/// The storage backend of a run of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A fresh SQLite file per workload under [`Options::dir`].
    Sqlite,
    /// A fresh schema per workload (`<schema_prefix>_<workload>_<pid>`), dropped afterwards.
    Postgres { url: String, schema_prefix: String },
}

impl Database {
    pub fn name(&self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }
}

/// How big a run of the suite is, and what it runs on.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scale factor: 1.0 is the published size (100,000 runs for W1, …).
    pub scale: f64,
    /// Where SQLite databases, packet folders and server data go (fresh per workload).
    pub dir: PathBuf,
    /// SQLite `synchronous`: `FULL` (fsync every commit) or `NORMAL` (WAL default). Embedded
    /// mode only: `trigger serve` keeps its default (`NORMAL`).
    pub synchronous_full: bool,
    pub database: Database,
    /// The `trigger` binary (HTTP mode and W8); found beside this executable when `None`.
    pub trigger_bin: Option<PathBuf>,
    /// W2's offered rates in runs/s.
    pub rates: Vec<u32>,
    /// How long W2's producer runs at each rate.
    pub sustain: Duration,
    /// How long W8 waits before reading idle memory, and W5 measures idle CPU.
    pub settle: Duration,
}

impl Options {
    /// The published size.
    pub fn full() -> Self {
        Options {
            scale: 1.0,
            dir: std::env::temp_dir().join("trigger-bench"),
            synchronous_full: false,
            database: Database::Sqlite,
            trigger_bin: None,
            rates: vec![1_000, 5_000],
            sustain: Duration::from_secs(60),
            settle: Duration::from_secs(2),
        }
    }

    /// A size that proves the suite works in a few seconds (CI).
    pub fn tiny() -> Self {
        Options {
            scale: 0.01,
            rates: vec![100, 500],
            sustain: Duration::from_secs(2),
            settle: Duration::from_millis(300),
            ..Self::full()
        }
    }

    pub(crate) fn count(&self, full: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(10)
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] trigger_engine::Error),
    #[error(transparent)]
    Sdk(#[from] trigger_sdk::Error),
    #[error(transparent)]
    Storage(#[from] trigger_engine::storage::StorageError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// Runs one workload in one mode; W2 reports once per offered rate.
pub async fn run(workload: Workload, mode: Mode, options: &Options) -> Result<Vec<Report>, Error> {
    let one = |r: Report| vec![r];
    Ok(match workload {
        Workload::BurnDown => one(workloads::burn_down(mode, options).await?),
        Workload::Sustained => workloads::sustained(mode, options).await?,
        Workload::Latency => one(workloads::latency(mode, options).await?),
        Workload::FanOut => one(workloads::fan_out(mode, options).await?),
        Workload::Waiting => one(workloads::waiting(mode, options).await?),
        Workload::DelayedHerd => one(workloads::delayed_herd(mode, options).await?),
        Workload::Fairness => one(workloads::fairness(mode, options).await?),
        Workload::Footprint => one(workloads::footprint(options).await?),
    })
}
