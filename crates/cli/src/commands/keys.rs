//! `trigger keys`: list, create and revoke secret keys, directly on the database.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use trigger_engine::{ApiKeyKind, Engine, EngineOptions, EnvironmentType, SystemClock};
use trigger_server::Database;

use crate::config;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the keys of an environment (hashed keys show only their prefix).
    List(Target),
    /// Create a secret key; it is printed once.
    Create {
        #[command(flatten)]
        target: Target,
        /// A name to tell the key apart.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// Environment: dev, staging, prod or preview.
    #[arg(long, default_value = "dev")]
    env: String,
    /// Database (default: the `trigger dev` database in ./.trigger/).
    #[arg(long, env = "TRIGGER_DATABASE_URL", default_value = "sqlite:.trigger/trigger.db")]
    database_url: String,
    /// PostgreSQL schema.
    #[arg(long, env = "TRIGGER_DATABASE_SCHEMA")]
    schema: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

async fn open(target: &Target) -> Result<(Engine, trigger_engine::Environment)> {
    let options = EngineOptions { clock: Arc::new(SystemClock), ..Default::default() };
    let engine = match config::database(&target.database_url, target.schema.clone())? {
        Database::Sqlite(path) => {
            if !path.exists() {
                bail!("no database at {} (start `trigger dev` or pass --database-url)", path.display());
            }
            Engine::start(trigger_storage_sqlite::SqliteStore::open(&path)?, options)
        }
        Database::Memory => bail!("an in-memory database has no keys to manage"),
        Database::Postgres { url, schema } => {
            let pg = trigger_storage_postgres::PostgresOptions { schema, ..Default::default() };
            let store = tokio::task::spawn_blocking(move || {
                trigger_storage_postgres::PostgresStore::connect(&url, pg)
            })
            .await??;
            Engine::start(store, options)
        }
    };
    let kind = EnvironmentType::parse(&target.env)
        .with_context(|| format!("--env: unknown environment {:?}", target.env))?;
    let tenancy = engine.bootstrap("Default", "Default project").await?;
    let env = tenancy.environment(kind).context("environment missing")?.clone();
    Ok((engine, env))
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::List(target) => {
            let (engine, env) = open(&target).await?;
            let keys = engine.list_api_keys(Some(&env.id)).await?;
            if target.json {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::json!({"id": k.id, "prefix": k.display_prefix, "name": k.name, "createdAt": trigger_engine::iso8601(k.created_at), "revoked": k.revoked_at.is_some()}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for k in keys {
                    let state = if k.revoked_at.is_some() { "revoked" } else { "live" };
                    println!("{}\t{}…\t{}\t{}", k.id, k.display_prefix, k.name, state);
                }
            }
            engine.shutdown().await;
        }
        Command::Create { target, name } => {
            let (engine, env) = open(&target).await?;
            let (key, plain) = engine.create_api_key(ApiKeyKind::Secret, Some(&env.id), &name).await?;
            if target.json {
                println!("{}", serde_json::json!({"id": key.id, "key": plain}));
            } else {
                println!("{plain}");
                eprintln!("created {} for {}; it is shown only now", key.id, target.env);
            }
            engine.shutdown().await;
        }
        Command::Revoke { id, target } => {
            let (engine, env) = open(&target).await?;
            let key = engine.revoke_api_key(&id).await?;
            if key.env_id.as_deref() != Some(env.id.as_str()) && key.kind == ApiKeyKind::Secret {
                eprintln!("note: {id} belongs to another environment");
            }
            eprintln!("revoked {id}");
            engine.shutdown().await;
        }
    }
    Ok(())
}
