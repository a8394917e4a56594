//! `trigger serve`: the production server.

use anyhow::Result;
use trigger_server::ServeOptions;

use crate::config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Database: `postgres://user@host/db` (any number of replicas), `sqlite:PATH` (one
    /// node; default `sqlite:trigger.db`) or `memory`.
    #[arg(long, env = "TRIGGER_DATABASE_URL", default_value = "sqlite:trigger.db")]
    database_url: String,
    /// PostgreSQL schema, so several deployments can share one database.
    #[arg(long, env = "TRIGGER_DATABASE_SCHEMA")]
    schema: Option<String>,
    /// Folder for offloaded payloads and outputs with PostgreSQL (shared by all replicas).
    #[arg(long, env = "TRIGGER_PACKET_DIR")]
    packet_dir: Option<std::path::PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TRIGGER_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on.
    #[arg(long, env = "TRIGGER_PORT", default_value_t = 3030)]
    port: u16,
    /// The URL clients and workers reach this server at.
    #[arg(long, env = "TRIGGER_PUBLIC_URL")]
    public_url: Option<String>,
    /// Concurrency limit of each environment created from now on (one keeps the limit it
    /// was created with), as Trigger.dev's self-hosting setting of the same name.
    #[arg(long, env = "DEFAULT_ENV_EXECUTION_CONCURRENCY_LIMIT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    env_concurrency_limit: u32,
}

pub async fn run(args: Args) -> Result<()> {
    super::init_logging();
    let server = trigger_server::serve(ServeOptions {
        database: config::database(&args.database_url, args.schema)?,
        packet_dir: args.packet_dir,
        host: args.host,
        port: args.port,
        public_url: args.public_url,
        env_concurrency_limit: args.env_concurrency_limit,
        ..ServeOptions::default()
    })
    .await?;
    let boot = server.bootstrap();
    eprintln!(
        "trigger.rs listening on {} (project {})",
        server.base_url(),
        boot.tenancy.project.external_ref
    );
    eprintln!("dashboard login (valid until the next start): {}", boot.dashboard_url);
    if let Some(key) = &boot.dev_key {
        eprintln!("created the dev secret key (shown once): {key}");
    }
    if let Some(pat) = &boot.personal_access_token {
        eprintln!("created a personal access token for the CLI (shown once): {pat}");
    }
    server.wait().await?;
    Ok(())
}
