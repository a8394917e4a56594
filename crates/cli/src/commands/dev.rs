//! `trigger dev`: a local server on SQLite under `./.trigger/`, ready at once.

use std::path::PathBuf;

use anyhow::{Context, Result};
use trigger_engine::{ApiKeyKind, EnvironmentType};
use trigger_server::{Database, ServeOptions};

use crate::config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, env = "TRIGGER_PORT", default_value_t = 3030)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "TRIGGER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Folder for the database and local credentials.
    #[arg(long, default_value = ".trigger")]
    dir: PathBuf,
    /// Print the connection details as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Concurrency limit of each environment created from now on (one keeps the limit it
    /// was created with), as Trigger.dev's self-hosting setting of the same name.
    #[arg(long, env = "DEFAULT_ENV_EXECUTION_CONCURRENCY_LIMIT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    env_concurrency_limit: u32,
}

pub async fn run(args: Args) -> Result<()> {
    super::init_logging();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let server = trigger_server::serve(ServeOptions {
        database: Database::Sqlite(args.dir.join("trigger.db")),
        host: args.host.clone(),
        port: args.port,
        env_concurrency_limit: args.env_concurrency_limit,
        ..ServeOptions::default()
    })
    .await?;
    let boot = server.bootstrap().clone();
    let mut saved = config::load_credentials(&args.dir);
    let engine = server.state().engine().clone();
    let dev = boot.tenancy.environment(EnvironmentType::Development).context("no dev environment")?.clone();

    // The database keeps keys hashed; the local credentials file remembers the dev key so
    // later starts and commands can use it. A lost file gets a fresh key.
    let dev_key = match (boot.dev_key.clone(), saved.dev_key.clone()) {
        (Some(new), _) => new,
        (None, Some(known)) if engine.authenticate(&known).await?.is_some() => known,
        (None, _) => engine.create_api_key(ApiKeyKind::Secret, Some(&dev.id), "trigger dev").await?.1,
    };
    saved.dev_key = Some(dev_key.clone());
    if let Some(pat) = boot.personal_access_token.clone() {
        saved.personal_access_token = Some(pat);
    }
    saved.api_url = Some(server.base_url().to_string());
    saved.project_ref = Some(boot.tenancy.project.external_ref.clone());
    config::save_credentials(&args.dir, &saved)?;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "apiUrl": server.base_url(),
                "dashboardUrl": boot.dashboard_url,
                "secretKey": dev_key,
                "projectRef": boot.tenancy.project.external_ref,
            })
        );
    } else {
        eprintln!();
        eprintln!("  trigger.rs dev server ready");
        eprintln!("  API        {}", server.base_url());
        eprintln!("  Dashboard  {}", boot.dashboard_url);
        eprintln!("  Project    {}", boot.tenancy.project.external_ref);
        eprintln!("  Dev key    {dev_key}");
        eprintln!();
        eprintln!("  export TRIGGER_API_URL={} TRIGGER_SECRET_KEY={dev_key}", server.base_url());
        eprintln!();
    }
    server.wait().await?;
    Ok(())
}
