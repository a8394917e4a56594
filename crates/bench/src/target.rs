//! The system under test of one workload: a fresh database, an engine (in-process or in a
//! `trigger serve` child), a client to trigger with, and workers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use trigger_engine::*;
use trigger_sdk::backend::{Embedded, Http, SharedBackend};
use trigger_storage_postgres::{PostgresOptions, PostgresStore};
use trigger_storage_sqlite::{SqliteOptions, SqliteStore, Synchronous};

use crate::process::{self, Server, ServerKind};
use crate::worker::process::RemoteWorker;
use crate::worker::{Behavior, Observed, Worker};
use crate::{Database, Error, Mode, Options};

/// The environment's concurrency limit in both modes: high enough that the worker's
/// capacity, not the limit, bounds what runs at once.
pub const ENV_CONCURRENCY_LIMIT: u32 = 10_000;

/// Where a workload's data lives.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Store {
    /// A fresh store named after the workload (an old one of the same name is removed).
    pub(crate) fn fresh(name: &str, options: &Options) -> Result<Store, Error> {
        std::fs::create_dir_all(&options.dir)?;
        let store = match &options.database {
            Database::Sqlite => Store::Sqlite(options.dir.join(format!("{name}-{}.db", std::process::id()))),
            Database::Postgres { url, schema_prefix } => {
                let schema = format!("{schema_prefix}_{name}_{}", std::process::id()).replace('-', "_");
                Store::Postgres { url: url.clone(), schema }
            }
        };
        store.remove()?;
        Ok(store)
    }

    pub(crate) fn remove(&self) -> Result<(), Error> {
        match self {
            Store::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Store::Postgres { url, schema } => PostgresStore::drop_schema(url, schema)?,
        }
        Ok(())
    }

    /// Bytes on disk: the SQLite file and its WAL, or the schema's tables with their indexes
    /// and TOAST.
    pub(crate) async fn bytes(&self) -> Result<u64, Error> {
        match self {
            Store::Sqlite(path) => Ok(["", "-wal"]
                .iter()
                .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
                .map(|m| m.len())
                .sum()),
            Store::Postgres { url, schema } => {
                let client = connect(url).await?;
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                        &[schema],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0) as u64)
            }
        }
    }

    /// The durability setting the workload ran with, read from the server for PostgreSQL.
    pub(crate) async fn durability(&self, mode: Mode, options: &Options) -> Result<String, Error> {
        match self {
            Store::Sqlite(_) if mode == Mode::Embedded && options.synchronous_full => {
                Ok("sqlite synchronous=FULL (WAL)".into())
            }
            Store::Sqlite(_) => Ok("sqlite synchronous=NORMAL (WAL)".into()),
            Store::Postgres { url, .. } => {
                let client = connect(url).await?;
                let mut settings = Vec::new();
                for name in ["synchronous_commit", "fsync"] {
                    let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
                    settings.push(format!("{name}={}", row.get::<_, String>(0)));
                }
                Ok(format!("postgresql {}", settings.join(" ")))
            }
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// An engine with the workload's tasks registered, reachable through [`Target::client`].
pub struct Target {
    /// Triggers, batches and tokens go through this: the engine itself (embedded) or the
    /// server's HTTP API.
    pub client: SharedBackend,
    pub mode: Mode,
    pub durability: String,
    store: Store,
    engine: Option<Engine>,
    server: Option<Server>,
    bin: Option<PathBuf>,
    packet_dir: Option<PathBuf>,
}

impl Target {
    pub async fn start(
        name: &str,
        mode: Mode,
        options: &Options,
        queues: Vec<QueueManifest>,
        tasks: Vec<TaskManifest>,
    ) -> Result<Target, Error> {
        let store = Store::fresh(name, options)?;
        let durability = store.durability(mode, options).await?;
        let manifest = WorkerManifest { content_hash: "bench".into(), tasks, queues, ..Default::default() };
        match mode {
            Mode::Embedded => {
                let config = Config { dev_default_ttl_ms: None, ..Config::default() };
                let engine_options = EngineOptions { config, clock: Arc::new(SystemClock) };
                let engine = match &store {
                    Store::Sqlite(path) => {
                        let synchronous =
                            if options.synchronous_full { Synchronous::Full } else { Synchronous::Normal };
                        Engine::start(
                            SqliteStore::open_with(path, SqliteOptions { synchronous })?,
                            engine_options,
                        )
                    }
                    Store::Postgres { url, schema } => {
                        let pg =
                            PostgresOptions { schema: Some(schema.clone()), ..PostgresOptions::default() };
                        Engine::start(PostgresStore::connect(url, pg)?, engine_options)
                    }
                };
                let env = engine
                    .create_environment(
                        "proj_bench",
                        EnvironmentType::Production,
                        Some(ENV_CONCURRENCY_LIMIT),
                    )
                    .await?;
                engine.register_worker(&env.id, manifest).await?;
                let client: SharedBackend = Arc::new(Embedded::new(engine.clone(), env.id));
                Ok(Target {
                    client,
                    mode,
                    durability,
                    store,
                    engine: Some(engine),
                    server: None,
                    bin: None,
                    packet_dir: None,
                })
            }
            Mode::Http => {
                let bin = process::trigger_bin(options)?;
                let packet_dir = options.dir.join(format!("{name}-{}-packets", std::process::id()));
                let kind = match &store {
                    Store::Sqlite(path) => ServerKind::Serve {
                        database_url: format!("sqlite:{}", path.display()),
                        schema: None,
                        packet_dir: packet_dir.clone(),
                    },
                    Store::Postgres { url, schema } => ServerKind::Serve {
                        database_url: url.clone(),
                        schema: Some(schema.clone()),
                        packet_dir: packet_dir.clone(),
                    },
                };
                let server = Server::start(&bin, &kind, true).await?;
                let client: SharedBackend = Arc::new(Http::new(
                    &server.api_url,
                    &server.secret_key,
                    Some(server.project_ref.clone()),
                )?);
                client.register_worker(manifest).await?;
                Ok(Target {
                    client,
                    mode,
                    durability,
                    store,
                    engine: None,
                    server: Some(server),
                    bin: Some(bin),
                    packet_dir: Some(packet_dir),
                })
            }
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.store {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }

    /// A report for this target, with its mode, backend and durability filled in.
    pub fn report(&self, workload: &'static str) -> crate::Report {
        crate::Report::new(workload, self.mode.name(), self.backend_name(), self.durability.clone())
    }

    /// Starts a worker: on this runtime (embedded), or as a `trigger bench worker` process
    /// talking HTTP to the server.
    pub async fn spawn_worker(
        &self,
        behaviors: &[(&str, Behavior)],
        capacity: u32,
    ) -> Result<WorkerHandle, Error> {
        let behaviors: HashMap<String, Behavior> =
            behaviors.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        match (&self.server, &self.bin) {
            (Some(server), Some(bin)) => Ok(WorkerHandle::Remote(
                RemoteWorker::spawn(bin, &server.api_url, &server.secret_key, &behaviors, capacity).await?,
            )),
            _ => Ok(WorkerHandle::Local(Worker::spawn(
                self.client.clone(),
                behaviors,
                capacity,
                Arc::new(Observed::default()),
            ))),
        }
    }

    /// Resident memory: `(server or engine process, separate worker process)` in bytes.
    /// Embedded, both live in this process and the second is `None`.
    pub fn rss(&self, worker: &WorkerHandle) -> (u64, Option<u64>) {
        let server = self.server.as_ref().map_or(std::process::id(), |s| s.pid);
        (process::rss_bytes(server).unwrap_or(0), worker.pid().and_then(process::rss_bytes))
    }

    /// CPU seconds used so far by the engine's process and the worker's (if separate).
    pub fn cpu_seconds(&self, worker: &WorkerHandle) -> f64 {
        let server = self.server.as_ref().map_or(std::process::id(), |s| s.pid);
        process::cpu_seconds(server).unwrap_or(f64::NAN)
            + worker.pid().map_or(0.0, |p| process::cpu_seconds(p).unwrap_or(f64::NAN))
    }

    pub async fn database_bytes(&self) -> Result<u64, Error> {
        self.store.bytes().await
    }

    /// The engine's clock in ms since the epoch.
    pub fn now_ms(&self) -> Millis {
        self.client.now()
    }

    /// Stops the engine or server and removes the database.
    pub async fn finish(self) -> Result<(), Error> {
        if let Some(engine) = &self.engine {
            engine.shutdown().await;
        }
        drop(self.client);
        drop(self.engine);
        if let Some(server) = self.server {
            server.stop().await;
        }
        if let Some(dir) = &self.packet_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.store.remove()
    }
}

/// A running worker, in-process or not.
pub enum WorkerHandle {
    Local(Worker),
    Remote(RemoteWorker),
}

impl WorkerHandle {
    pub fn observed(&self) -> Arc<Observed> {
        match self {
            WorkerHandle::Local(w) => w.observed.clone(),
            WorkerHandle::Remote(w) => w.observed.clone(),
        }
    }

    /// The worker's own process, when it has one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            WorkerHandle::Local(_) => None,
            WorkerHandle::Remote(w) => Some(w.pid),
        }
    }

    pub async fn stop(self) {
        match self {
            WorkerHandle::Local(w) => w.stop().await,
            WorkerHandle::Remote(w) => w.stop().await,
        }
    }
}

/// A trigger request with a small JSON payload and no TTL.
pub fn request(task: &str, i: usize, options: TriggerOptions) -> TriggerRequest {
    TriggerRequest {
        task: task.into(),
        payload: Packet::json(&serde_json::json!({ "i": i })),
        options: TriggerOptions { ttl_ms: Some(0), ..options },
    }
}
