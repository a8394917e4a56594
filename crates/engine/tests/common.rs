//! Shared set-up for the engine's tests: an engine with a virtual clock on either backend,
//! in-memory SQLite or a fresh PostgreSQL schema. [`on_every_backend!`] instantiates each
//! test once per backend (`sqlite::name`, `postgres::name`).

#![allow(dead_code)]

use std::cell::Cell;
use std::sync::Arc;

use serde_json::json;
use trigger_engine::storage::{RemoteSink, StorageResult, Store, Tx};
use trigger_engine::*;
use trigger_storage_postgres::{PostgresOptions, PostgresStore, SynchronousCommit};
use trigger_storage_sqlite::SqliteStore;

/// Defines each `async fn name() { … }` as a Tokio test in module `sqlite` and in module
/// `postgres`, its body run with that backend selected.
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {
        mod sqlite {
            use super::*;
            $( $(#[$meta])* #[tokio::test] async fn $name() { crate::common::Backend::Sqlite.select(); $body } )*
        }
        mod postgres {
            use super::*;
            $( $(#[$meta])* #[tokio::test] async fn $name() { crate::common::Backend::Postgres.select(); $body } )*
        }
    };
}

/// Where the engines of this thread's test keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

thread_local! {
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Sqlite) };
}

impl Backend {
    /// Selects the backend for the stores this thread creates next.
    pub fn select(self) {
        BACKEND.with(|b| b.set(self));
    }

    pub fn current() -> Self {
        BACKEND.with(Cell::get)
    }
}

/// `TRIGGER_TEST_DATABASE_URL`, or the local server.
pub fn database_url() -> String {
    std::env::var("TRIGGER_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A store of the selected backend; a PostgreSQL one has a schema of its own, dropped with
/// the store.
pub enum TestStore {
    Sqlite(Box<SqliteStore>),
    /// Fields drop in order: the connection closes before the schema goes (`None`: the
    /// schema outlives the store, as across a restart).
    Postgres(Box<PostgresStore>, Option<DropSchema>),
}

/// Drops a PostgreSQL schema when dropped.
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        if let Err(e) = PostgresStore::drop_schema(&database_url(), &self.0) {
            eprintln!("could not drop schema {}: {e}", self.0);
        }
    }
}

impl Store for TestStore {
    fn begin(&mut self) -> StorageResult<Box<dyn Tx + '_>> {
        match self {
            TestStore::Sqlite(s) => s.begin(),
            TestStore::Postgres(s, _) => s.begin(),
        }
    }

    fn listen(&mut self, sink: RemoteSink) {
        match self {
            TestStore::Sqlite(s) => s.listen(sink),
            TestStore::Postgres(s, _) => s.listen(sink),
        }
    }
}

/// A unique schema name for this process.
pub fn unique_schema(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("trigger_test_{what}_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Connects to a PostgreSQL schema (created if needed). An unreachable database fails the
/// test: it never skips.
pub fn postgres_store(schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: Some(schema.to_string()),
        synchronous_commit: Some(SynchronousCommit::Off),
        ..PostgresOptions::default()
    };
    PostgresStore::connect(&database_url(), options)
        .unwrap_or_else(|e| panic!("cannot connect to {} (is PostgreSQL running?): {e}", database_url()))
}

/// A fresh, empty store of the selected backend.
pub fn store() -> TestStore {
    match Backend::current() {
        Backend::Sqlite => TestStore::Sqlite(Box::new(SqliteStore::memory().expect("memory store"))),
        Backend::Postgres => {
            let schema = unique_schema("engine");
            TestStore::Postgres(Box::new(postgres_store(&schema)), Some(DropSchema(schema)))
        }
    }
}

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub env: Environment,
}

pub fn config() -> Config {
    Config { retry_immediately_threshold_ms: 0, dev_default_ttl_ms: None, ..Config::default() }
}

pub async fn harness(tasks: Vec<TaskManifest>, queues: Vec<QueueManifest>) -> Harness {
    harness_with(config(), tasks, queues).await
}

pub async fn harness_with(config: Config, tasks: Vec<TaskManifest>, queues: Vec<QueueManifest>) -> Harness {
    harness_on(store(), config, tasks, queues).await
}

/// [`harness_with`] on a given store.
pub async fn harness_on(
    store: impl Store,
    config: Config,
    tasks: Vec<TaskManifest>,
    queues: Vec<QueueManifest>,
) -> Harness {
    let clock = ManualClock::new(T0);
    let engine = Engine::start(store, EngineOptions { config, clock: Arc::new(clock.clone()) });
    let env = engine.create_environment("proj_test", EnvironmentType::Production, None).await.unwrap();
    engine
        .register_worker(
            &env.id,
            WorkerManifest { content_hash: "v1".into(), tasks, queues, ..Default::default() },
        )
        .await
        .unwrap();
    Harness { engine, clock, env }
}

pub fn task(slug: &str) -> TaskManifest {
    TaskManifest::new(slug)
}

pub fn retrying(slug: &str, max_attempts: u32) -> TaskManifest {
    TaskManifest {
        retry: Some(RetryOptions {
            max_attempts,
            factor: 2.0,
            min_timeout_in_ms: 1000,
            max_timeout_in_ms: 60_000,
            randomize: false,
        }),
        ..TaskManifest::new(slug)
    }
}

pub fn on_queue(slug: &str, queue: &str) -> TaskManifest {
    TaskManifest { queue_name: Some(queue.into()), ..TaskManifest::new(slug) }
}

pub fn request(task: &str) -> TriggerRequest {
    TriggerRequest {
        task: task.into(),
        payload: Packet::json(&json!({"n": 1})),
        options: TriggerOptions::default(),
    }
}

pub fn request_with(task: &str, options: TriggerOptions) -> TriggerRequest {
    TriggerRequest { options, ..request(task) }
}

impl Harness {
    pub async fn trigger(&self, task: &str) -> Run {
        self.engine.trigger(&self.env.id, request(task)).await.unwrap().run
    }

    pub async fn trigger_with(&self, task: &str, options: TriggerOptions) -> Triggered {
        self.engine.trigger(&self.env.id, request_with(task, options)).await.unwrap()
    }

    pub async fn dequeue(&self, max: u32) -> Vec<Dequeued> {
        self.engine.dequeue(&self.env.id, DequeueRequest::new("worker-a", max)).await.unwrap()
    }

    /// Claims and starts one specific run; returns the executing snapshot id.
    pub async fn claim_and_start(&self, run_id: &str) -> String {
        let claimed = self.dequeue(100).await;
        let d =
            claimed.iter().find(|d| d.run.id == run_id).unwrap_or_else(|| panic!("{run_id} not claimable"));
        self.engine.start_attempt(&self.env.id, run_id, &d.snapshot.id).await.unwrap().snapshot.id
    }

    pub async fn start(&self, d: &Dequeued) -> String {
        self.engine.start_attempt(&self.env.id, &d.run.id, &d.snapshot.id).await.unwrap().snapshot.id
    }

    pub async fn succeed(&self, run_id: &str, snapshot: &str, output: serde_json::Value) -> AttemptOutcome {
        self.engine
            .complete_attempt(
                &self.env.id,
                run_id,
                snapshot,
                Completion::success(Packet::json(&output)),
                None,
            )
            .await
            .unwrap()
    }

    pub async fn fail(&self, run_id: &str, snapshot: &str, message: &str) -> AttemptOutcome {
        let error = TaskRunError::BuiltIn {
            name: "Error".into(),
            message: message.into(),
            stack_trace: String::new(),
            causes: None,
        };
        self.engine
            .complete_attempt(&self.env.id, run_id, snapshot, Completion::failure(error), None)
            .await
            .unwrap()
    }

    pub async fn run(&self, id: &str) -> Run {
        self.engine.get_run(&self.env.id, id).await.unwrap().run
    }

    pub async fn snapshot(&self, id: &str) -> Snapshot {
        self.engine.latest_snapshot(&self.env.id, id).await.unwrap().1
    }

    /// Moves virtual time and fires what is due.
    pub async fn advance(&self, ms: i64) -> usize {
        self.clock.advance(ms);
        self.engine.fire_due_timers().await.unwrap()
    }

    pub async fn running(&self) -> u32 {
        self.engine.env_running(&self.env.id).await.unwrap()
    }
}
