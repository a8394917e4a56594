//! `trigger migrate`: applies the embedded migrations and exits.

use anyhow::Result;
use trigger_server::Database;

use crate::config;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "TRIGGER_DATABASE_URL", default_value = "sqlite:trigger.db")]
    database_url: String,
    /// PostgreSQL schema.
    #[arg(long, env = "TRIGGER_DATABASE_SCHEMA")]
    schema: Option<String>,
}

pub async fn run(args: Args) -> Result<()> {
    match config::database(&args.database_url, args.schema)? {
        // Opening a SQLite store applies its migrations.
        Database::Sqlite(path) => {
            trigger_storage_sqlite::SqliteStore::open(&path)?;
            eprintln!("database {} is up to date", path.display());
        }
        Database::Memory => eprintln!("an in-memory database needs no migration"),
        Database::Postgres { url, schema } => {
            let options = trigger_storage_postgres::PostgresOptions {
                schema: schema.clone(),
                migrate: true,
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || {
                trigger_storage_postgres::PostgresStore::connect(&url, options)
            })
            .await??;
            eprintln!(
                "database is up to date{}",
                schema.map(|s| format!(" (schema {s})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}
