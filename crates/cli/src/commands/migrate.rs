//! `trigger migrate`: applies the embedded migrations and exits.

use anyhow::Result;
use trigger_server::Database;

use crate::config;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "TRIGGER_DATABASE_URL", default_value = "sqlite:trigger.db")]
    database_url: String,
}

pub async fn run(args: Args) -> Result<()> {
    match config::database(&args.database_url)? {
        // Opening a SQLite store applies its migrations.
        Database::Sqlite(path) => {
            trigger_storage_sqlite::SqliteStore::open(&path)?;
            eprintln!("database {} is up to date", path.display());
        }
        Database::Memory => eprintln!("an in-memory database needs no migration"),
    }
    Ok(())
}
