//! `trigger`: runs the trigger.rs server and talks to it.
//!
//! Data goes to stdout (`--json` for scripts); logs and messages go to stderr.

use clap::{Parser, Subcommand};

/// The engine allocates and frees many small strings and JSON buffers per run on its writer
/// thread; mimalloc does that in about half the instructions of the system allocator
/// (callgrind, docs/benchmarks.md). Built with its arenas committed on use
/// (`.cargo/config.toml`), it keeps the process as small as the system allocator did.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod config;
mod http;

#[derive(Parser, Debug)]
#[command(
    name = "trigger",
    version,
    about = "trigger.rs: durable background tasks, Trigger.dev v4 compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local server on SQLite under ./.trigger/, with zero set-up.
    Dev(commands::dev::Args),
    /// Run a production server.
    Serve(commands::serve::Args),
    /// Create or upgrade the database schema, then exit.
    Migrate(commands::migrate::Args),
    /// Manage secret keys.
    #[command(subcommand)]
    Keys(commands::keys::Command),
    /// Inspect and steer runs on a server.
    #[command(subcommand)]
    Runs(commands::runs::Command),
    /// Trigger a run of a task.
    Trigger(commands::trigger::Args),
    /// Run the benchmark workloads.
    Bench(commands::bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => commands::dev::run(args).await,
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Migrate(args) => commands::migrate::run(args).await,
            Command::Keys(cmd) => commands::keys::run(cmd).await,
            Command::Runs(cmd) => commands::runs::run(cmd).await,
            Command::Trigger(args) => commands::trigger::run(args).await,
            Command::Bench(args) => commands::bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
