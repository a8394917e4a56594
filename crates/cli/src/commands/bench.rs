//! `trigger bench`: the benchmark workloads (see docs/benchmarks.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use trigger_bench::{Options, Workload};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workloads to run (`w1`, `w3-latency`, …), or `all`.
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// Size relative to the published one (1.0 = 100,000 runs for W1).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// A tiny size that only proves the suite works (what CI runs).
    #[arg(long)]
    tiny: bool,
    /// SQLite synchronous=FULL (fsync every commit) instead of NORMAL.
    #[arg(long)]
    sync_full: bool,
    /// Where the benchmark databases go.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per workload on stdout (otherwise a markdown table row).
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let mut options =
        if args.tiny { Options::tiny() } else { Options { scale: args.scale, ..Options::full() } };
    options.synchronous_full = args.sync_full;
    if let Some(dir) = args.dir {
        options.dir = dir;
    }
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
    for workload in selected {
        eprintln!("running {} …", workload.name());
        let report = trigger_bench::run(workload, &options).await?;
        if args.json {
            println!("{}", report.to_json());
        } else {
            println!("{}", report.table_row());
        }
    }
    Ok(())
}
