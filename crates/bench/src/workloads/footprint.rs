//! W8: the footprint of a server process — `trigger dev` on SQLite, `trigger serve` on
//! PostgreSQL: cold start to ready, restart to ready, idle memory, and memory once many
//! runs are queued (no worker).

use std::sync::Arc;
use std::time::Instant;

use trigger_engine::{TriggerOptions, WorkerManifest};
use trigger_sdk::backend::{Http, SharedBackend};

use super::{noop_task, per_second, trigger_batches};
use crate::process::{self, Server, ServerKind};
use crate::target::Store;
use crate::{Database, Error, Mode, Options, Report};

pub async fn footprint(options: &Options) -> Result<Report, Error> {
    let bin = process::trigger_bin(options)?;
    let dir = options.dir.join(format!("w8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (kind, store) = match &options.database {
        Database::Sqlite => (ServerKind::Dev { dir: dir.clone() }, Store::Sqlite(dir.join("trigger.db"))),
        Database::Postgres { .. } => match Store::fresh("w8", options)? {
            Store::Postgres { url, schema } => (
                ServerKind::Serve {
                    database_url: url.clone(),
                    schema: Some(schema.clone()),
                    packet_dir: dir.join("packets"),
                },
                Store::Postgres { url, schema },
            ),
            other => (ServerKind::Dev { dir: dir.clone() }, other),
        },
    };
    let durability = store.durability(Mode::Http, options).await?;
    let command = match kind {
        ServerKind::Dev { .. } => "trigger dev",
        ServerKind::Serve { .. } => "trigger serve",
    };

    // The first start creates the database (and, on PostgreSQL, migrates the schema).
    let first = Server::start(&bin, &kind, true).await?;
    let cold = first.ready_after;
    let (key, project) = (first.secret_key.clone(), first.project_ref.clone());
    first.stop().await;

    let server = Server::start(&bin, &kind, false).await?;
    let restart = server.ready_after;
    tokio::time::sleep(options.settle).await;
    let idle_rss = process::rss_bytes(server.pid).unwrap_or(0);

    let n = options.count(100_000);
    let client: SharedBackend = Arc::new(Http::new(&server.api_url, &key, Some(project))?);
    client
        .register_worker(WorkerManifest {
            content_hash: "bench".into(),
            tasks: vec![noop_task("noop")],
            ..Default::default()
        })
        .await?;
    let t0 = Instant::now();
    trigger_batches(&client, "noop", n, |_| TriggerOptions::default()).await?;
    let triggered = t0.elapsed();
    tokio::time::sleep(options.settle).await;
    let queued_rss = process::rss_bytes(server.pid).unwrap_or(0);
    let db_bytes = store.bytes().await?;
    server.stop().await;
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
    let mb = |b: u64| (b as f64 / 1_048_576.0 * 10.0).round() / 10.0;
    let mut report = Report::new("w8-footprint", "http", options.database.name(), durability);
    report
        .metric("server", command)
        .metric("cold_start_ready_ms", (cold.as_secs_f64() * 10_000.0).round() / 10.0)
        .metric("restart_ready_ms", (restart.as_secs_f64() * 10_000.0).round() / 10.0)
        .metric("idle_rss_mb", mb(idle_rss))
        .metric("queued_runs", n)
        .metric("queued_rss_mb", mb(queued_rss))
        .metric("database_mb", mb(db_bytes))
        .metric("batch_trigger_runs_per_s", per_second(n, triggered));
    store.remove()?;
    Ok(report)
}
