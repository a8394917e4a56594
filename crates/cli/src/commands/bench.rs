//! `trigger bench`: the benchmark workloads (see docs/benchmarks.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use trigger_bench::{Database, Mode, Options, WorkerArgs, Workload};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Workloads to run (`w1`, `w3-latency`, …), or `all`.
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// `embedded` (engine in this process), `http` (`trigger serve` and a worker process,
    /// everything over HTTP) or `all`. Default: `embedded`, or `all` with `--tiny`.
    #[arg(long)]
    mode: Option<String>,
    /// Size relative to the published one (1.0 = 100,000 runs for W1; 0.01 with --tiny).
    #[arg(long)]
    scale: Option<f64>,
    /// A tiny size that only proves the suite works (what CI runs).
    #[arg(long)]
    tiny: bool,
    /// SQLite synchronous=FULL (fsync every commit) instead of NORMAL (embedded mode).
    #[arg(long)]
    sync_full: bool,
    /// Run on PostgreSQL (`postgres://…`): each workload gets its own schema, dropped after.
    #[arg(long, env = "TRIGGER_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Prefix of the per-workload PostgreSQL schemas.
    #[arg(long, default_value = "trigger_bench")]
    schema: String,
    /// W2's offered rates in runs/s, comma-separated (default 1000,5000; 100,500 with --tiny).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u32>,
    /// How long W2 offers each rate, in seconds (default 60; 2 with --tiny).
    #[arg(long)]
    duration: Option<f64>,
    /// The `trigger` binary for HTTP mode and W8 (default: this one).
    #[arg(long, env = "TRIGGER_BIN")]
    trigger_bin: Option<PathBuf>,
    /// Where the benchmark databases go.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per workload on stdout (otherwise a markdown table row).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The bench's worker process in HTTP mode (started by `trigger bench`).
    #[command(hide = true)]
    Worker(WorkerCommand),
    /// Markdown tables (as in docs/benchmarks.md) from files of `--json` output.
    Tables {
        /// Files with one JSON report per line.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct WorkerCommand {
    #[arg(long, env = "TRIGGER_API_URL")]
    api_url: String,
    #[arg(long, env = "TRIGGER_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// `SLUG=BEHAVIOR`: `noop`, `sleep:MS`, `token`, `fanout:N`.
    #[arg(long = "task", value_parser = trigger_bench::parse_task)]
    tasks: Vec<(String, trigger_bench::Behavior)>,
    #[arg(long, default_value_t = 500)]
    capacity: u32,
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Worker(w)) => {
            let args = WorkerArgs {
                api_url: w.api_url,
                secret_key: w.secret_key,
                behaviors: w.tasks.into_iter().collect(),
                capacity: w.capacity,
            };
            return Ok(trigger_bench::run_worker_process(args).await?);
        }
        Some(Command::Tables { files }) => {
            let mut reports = Vec::new();
            for file in files {
                let text =
                    std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
                    reports
                        .push(serde_json::from_str(line).with_context(|| format!("in {}", file.display()))?);
                }
            }
            print!("{}", trigger_bench::markdown_tables(&reports));
            return Ok(());
        }
        None => {}
    }
    let mut options = if args.tiny { Options::tiny() } else { Options::full() };
    if let Some(scale) = args.scale {
        options.scale = scale;
    }
    options.synchronous_full = args.sync_full;
    options.trigger_bin = args.trigger_bin;
    if let Some(dir) = args.dir {
        options.dir = dir;
    }
    if let Some(url) = args.database_url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("--database-url: expected postgres://… (SQLite is the default)");
        }
        options.database = Database::Postgres { url, schema_prefix: args.schema };
    }
    if !args.rates.is_empty() {
        options.rates = args.rates;
    }
    if let Some(secs) = args.duration {
        options.sustain = Duration::from_secs_f64(secs.max(0.1));
    }
    let modes = match args.mode.as_deref().unwrap_or(if args.tiny { "all" } else { "embedded" }) {
        "embedded" => vec![Mode::Embedded],
        "http" => vec![Mode::Http],
        "all" => vec![Mode::Embedded, Mode::Http],
        other => bail!("unknown mode {other:?}; known: embedded, http, all"),
    };
    let mut selected = Vec::new();
    for name in &args.workloads {
        if name == "all" {
            selected.extend(Workload::ALL);
        } else if let Some(w) = Workload::parse(name) {
            selected.push(w);
        } else {
            bail!("unknown workload {name:?}; known: {}", Workload::ALL.map(|w| w.name()).join(", "));
        }
    }
    for mode in &modes {
        for &workload in &selected {
            // W8 measures a server process whatever the mode: run it once.
            if workload == Workload::Footprint && modes.len() > 1 && *mode == Mode::Embedded {
                continue;
            }
            let mode_name = if workload == Workload::Footprint { "server process" } else { mode.name() };
            eprintln!("running {} ({mode_name}, {}) …", workload.name(), options.database.name());
            for report in trigger_bench::run(workload, *mode, &options).await? {
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    println!("{}", report.table_row());
                }
            }
        }
    }
    Ok(())
}
