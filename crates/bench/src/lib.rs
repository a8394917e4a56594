//! Benchmark workloads for trigger.rs, run by `trigger bench`.
//!
//! Each workload prints one JSON object and one table row, and states the durability
//! setting it ran with. Benchmarks are measurements, not tests: nothing here asserts a speed.
//! The embedded mode drives the engine in-process with a minimal no-op worker, which
//! measures the engine and its storage without any protocol cost.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trigger_bench::Error> {
//! use trigger_bench::{run, Options, Workload};
//! let report = run(Workload::BurnDown, &Options::tiny()).await?;
//! println!("{}", report.to_json());
//! # Ok(()) }
//! ```

mod report;
mod setup;
mod stats;
mod worker;
pub mod workloads;

use std::path::PathBuf;

pub use report::Report;
pub use setup::Bench;
pub use stats::Percentiles;

/// A workload of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// W1: N no-op runs triggered in batches, then drained by one worker.
    BurnDown,
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
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::BurnDown,
        Workload::Latency,
        Workload::FanOut,
        Workload::Waiting,
        Workload::DelayedHerd,
        Workload::Fairness,
    ];

    /// Short name (`w1-burn-down`, …).
    pub fn name(self) -> &'static str {
        match self {
            Workload::BurnDown => "w1-burn-down",
            Workload::Latency => "w3-latency",
            Workload::FanOut => "w4-fan-out",
            Workload::Waiting => "w5-waiting",
            Workload::DelayedHerd => "w6-delayed-herd",
            Workload::Fairness => "w7-fairness",
        }
    }

    /// Parses a name or its `w<N>` prefix.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s || w.name().split('-').next() == Some(s))
    }
}

/// How big a run of the suite is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scale factor: 1.0 is the published size (100,000 runs for W1, …).
    pub scale: f64,
    /// Where the database goes (a fresh file per workload).
    pub dir: PathBuf,
    /// SQLite `synchronous`: `FULL` (fsync every commit) or `NORMAL` (WAL default).
    pub synchronous_full: bool,
}

impl Options {
    /// The published size.
    pub fn full() -> Self {
        Options { scale: 1.0, dir: std::env::temp_dir().join("trigger-bench"), synchronous_full: false }
    }

    /// A size that proves the suite works in a second or two (CI).
    pub fn tiny() -> Self {
        Options { scale: 0.01, ..Self::full() }
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
    Storage(#[from] trigger_engine::storage::StorageError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// Runs one workload.
pub async fn run(workload: Workload, options: &Options) -> Result<Report, Error> {
    match workload {
        Workload::BurnDown => workloads::burn_down(options).await,
        Workload::Latency => workloads::latency(options).await,
        Workload::FanOut => workloads::fan_out(options).await,
        Workload::Waiting => workloads::waiting(options).await,
        Workload::DelayedHerd => workloads::delayed_herd(options).await,
        Workload::Fairness => workloads::fairness(options).await,
    }
}
