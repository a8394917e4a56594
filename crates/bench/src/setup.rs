//! A fresh engine on a fresh SQLite file per workload.

use std::path::PathBuf;
use std::sync::Arc;

use trigger_engine::*;
use trigger_storage_sqlite::{SqliteOptions, SqliteStore, Synchronous};

use crate::{Error, Options};

/// An engine, an environment with the bench tasks registered, and where its data lives.
pub struct Bench {
    pub engine: Engine,
    pub env: Environment,
    pub path: PathBuf,
    pub durability: String,
}

impl Bench {
    pub async fn start(
        name: &str,
        options: &Options,
        queues: Vec<QueueManifest>,
        tasks: Vec<TaskManifest>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(&options.dir)?;
        let path = options.dir.join(format!("{name}-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let synchronous = if options.synchronous_full { Synchronous::Full } else { Synchronous::Normal };
        let store = SqliteStore::open_with(&path, SqliteOptions { synchronous })?;
        let config = Config { dev_default_ttl_ms: None, ..Config::default() };
        let engine = Engine::start(store, EngineOptions { config, clock: Arc::new(SystemClock) });
        let env = engine.create_environment("proj_bench", EnvironmentType::Production, Some(10_000)).await?;
        engine
            .register_worker(
                &env.id,
                WorkerManifest { content_hash: "bench".into(), tasks, queues, ..Default::default() },
            )
            .await?;
        let durability =
            format!("sqlite synchronous={} (WAL)", if options.synchronous_full { "FULL" } else { "NORMAL" });
        Ok(Bench { engine, env, path, durability })
    }

    /// Bytes of the database file and its WAL.
    pub fn database_bytes(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", self.path.display())).ok())
            .map(|m| m.len())
            .sum()
    }

    pub async fn finish(self) {
        self.engine.shutdown().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// A trigger request with a small JSON payload.
pub fn request(task: &str, i: usize, options: TriggerOptions) -> TriggerRequest {
    TriggerRequest {
        task: task.into(),
        payload: Packet::json(&serde_json::json!({ "i": i })),
        options: TriggerOptions { ttl_ms: Some(0), ..options },
    }
}

/// Resident memory of this process in bytes (Linux), if known.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) this process has used, in seconds (Linux), if known.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
