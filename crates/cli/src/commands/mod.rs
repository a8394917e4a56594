//! One module per subcommand.

pub mod bench;
pub mod dev;
pub mod keys;
pub mod migrate;
pub mod runs;
pub mod serve;
pub mod trigger;

/// Logs to stderr at info level (or `RUST_LOG`'s level name), without colours unless stderr
/// is a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .try_init();
}
