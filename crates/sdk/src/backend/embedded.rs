use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use trigger_engine::{
    AttemptOutcome, Batch, BatchItem, Completion, CreateBatch, DequeueRequest, Dequeued, Engine,
    EngineOptions, EnvironmentType, ItemsAdded, MetadataUpdate, Millis, Packet, Page, ReplayOverrides, Run,
    RunChange, RunDetails, RunEvent, RunFilter, Snapshot, StartedAttempt, TokenOptions, TriggerRequest,
    Triggered, Waitpoint, WorkerManifest, WorkerVersion,
};
use trigger_storage_sqlite::SqliteStore;

use super::{Backend, BoxFuture};
use crate::error::{Error, Result};

/// An engine in this process, on SQLite: no server needed. Clones share the engine.
#[derive(Clone, Debug)]
pub struct Embedded {
    engine: Engine,
    env_id: String,
}

impl Embedded {
    /// Uses an engine that is already running, in one of its environments.
    pub fn new(engine: Engine, env_id: impl Into<String>) -> Self {
        Embedded { engine, env_id: env_id.into() }
    }

    /// Opens (or creates) a SQLite file and uses its default project's development
    /// environment. Must be called inside a Tokio runtime (the engine's timers run on it).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Protocol(format!("creating {}: {e}", dir.display())))?;
        }
        let store = SqliteStore::open(path).map_err(|e| Error::Engine(e.into()))?;
        Self::start(Engine::start(store, EngineOptions::default())).await
    }

    /// An in-memory engine, for tests and examples.
    pub async fn memory() -> Result<Self> {
        let store = SqliteStore::memory().map_err(|e| Error::Engine(e.into()))?;
        Self::start(Engine::start(store, EngineOptions::default())).await
    }

    async fn start(engine: Engine) -> Result<Self> {
        let tenancy = engine.bootstrap("trigger.rs", "default").await?;
        let env = tenancy
            .environment(EnvironmentType::Development)
            .ok_or_else(|| Error::Protocol("bootstrap created no development environment".into()))?;
        Ok(Embedded { env_id: env.id.clone(), engine })
    }

    /// The engine, for inspecting runs directly.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The environment this backend acts in.
    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    /// Serves the browser dashboard for this engine on `addr` (for example
    /// `"127.0.0.1:3030"`, or port 0 for any free port) for as long as the process runs, and
    /// returns the one-time login link. Needs the `dashboard` feature.
    #[cfg(feature = "dashboard")]
    pub async fn serve_dashboard(&self, addr: &str) -> Result<String> {
        let token = trigger_dashboard::startup_token(&self.engine).await?;
        let router = trigger_dashboard::router(self.engine.clone(), trigger_dashboard::Options::default());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Protocol(format!("serving the dashboard on {addr}: {e}")))?;
        let local =
            listener.local_addr().map_err(|e| Error::Protocol(format!("serving the dashboard: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "the embedded dashboard stopped");
            }
        });
        Ok(trigger_dashboard::login_url(&format!("http://{local}"), &token))
    }
}

fn boxed<'a, T: Send + 'a>(
    f: impl std::future::Future<Output = trigger_engine::Result<T>> + Send + 'a,
) -> BoxFuture<'a, Result<T>> {
    Box::pin(async move { f.await.map_err(Error::from) })
}

impl Backend for Embedded {
    fn now(&self) -> Millis {
        self.engine.now()
    }

    fn register_worker(&self, manifest: WorkerManifest) -> BoxFuture<'_, Result<WorkerVersion>> {
        boxed(self.engine.register_worker(&self.env_id, manifest))
    }

    fn dequeue(&self, request: DequeueRequest, wait: Duration) -> BoxFuture<'_, Result<Vec<Dequeued>>> {
        boxed(self.engine.dequeue_wait(&self.env_id, request, wait))
    }

    fn start_attempt(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<StartedAttempt>> {
        let (run_id, snapshot_id) = (run_id.to_string(), snapshot_id.to_string());
        boxed(async move { self.engine.start_attempt(&self.env_id, &run_id, &snapshot_id).await })
    }

    fn complete_attempt(
        &self,
        run_id: &str,
        snapshot_id: &str,
        completion: Completion,
        metadata: Option<MetadataUpdate>,
    ) -> BoxFuture<'_, Result<AttemptOutcome>> {
        let (run_id, snapshot_id) = (run_id.to_string(), snapshot_id.to_string());
        boxed(async move {
            self.engine.complete_attempt(&self.env_id, &run_id, &snapshot_id, completion, metadata).await
        })
    }

    fn heartbeat(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        let (run_id, snapshot_id) = (run_id.to_string(), snapshot_id.to_string());
        boxed(async move { self.engine.heartbeat(&self.env_id, &run_id, &snapshot_id).await })
    }

    fn release_run(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        let (run_id, snapshot_id) = (run_id.to_string(), snapshot_id.to_string());
        boxed(async move { self.engine.release_run(&self.env_id, &run_id, &snapshot_id).await.map(|_| ()) })
    }

    fn latest_snapshot(&self, run_id: &str) -> BoxFuture<'_, Result<(Run, Snapshot)>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.latest_snapshot(&self.env_id, &run_id).await })
    }

    fn snapshots_since(&self, run_id: &str, after: Option<&str>) -> BoxFuture<'_, Result<Vec<Snapshot>>> {
        let (run_id, after) = (run_id.to_string(), after.map(str::to_string));
        boxed(async move { self.engine.snapshots_since(&self.env_id, &run_id, after.as_deref()).await })
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<RunChange>> {
        Some(self.engine.subscribe())
    }

    fn trigger(&self, request: TriggerRequest) -> BoxFuture<'_, Result<Triggered>> {
        boxed(self.engine.trigger(&self.env_id, request))
    }

    fn create_batch(&self, request: CreateBatch) -> BoxFuture<'_, Result<(Batch, bool)>> {
        boxed(self.engine.create_batch(&self.env_id, request))
    }

    fn add_batch_items(&self, batch_id: &str, items: Vec<BatchItem>) -> BoxFuture<'_, Result<ItemsAdded>> {
        let batch_id = batch_id.to_string();
        boxed(async move { self.engine.add_batch_items(&self.env_id, &batch_id, items).await })
    }

    fn wait_for_duration(
        &self,
        run_id: &str,
        snapshot_id: &str,
        until: Millis,
        idempotency_key: Option<String>,
        idempotency_key_ttl_ms: Option<u64>,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        let (run_id, snapshot_id) = (run_id.to_string(), snapshot_id.to_string());
        boxed(async move {
            self.engine
                .wait_for_duration(
                    &self.env_id,
                    &run_id,
                    &snapshot_id,
                    until,
                    idempotency_key,
                    idempotency_key_ttl_ms,
                )
                .await
        })
    }

    fn create_token(&self, options: TokenOptions) -> BoxFuture<'_, Result<(Waitpoint, bool)>> {
        boxed(self.engine.create_token(&self.env_id, options))
    }

    fn wait_for_token(
        &self,
        run_id: &str,
        snapshot_id: &str,
        token_id: &str,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        let (run_id, snapshot_id, token_id) =
            (run_id.to_string(), snapshot_id.to_string(), token_id.to_string());
        boxed(
            async move { self.engine.wait_for_token(&self.env_id, &run_id, Some(snapshot_id), &token_id).await },
        )
    }

    fn complete_token(&self, token_id: &str, data: Packet) -> BoxFuture<'_, Result<Waitpoint>> {
        let token_id = token_id.to_string();
        boxed(async move { self.engine.complete_token(Some(&self.env_id), &token_id, data).await })
    }

    fn get_waitpoint(&self, id: &str) -> BoxFuture<'_, Result<Waitpoint>> {
        let id = id.to_string();
        boxed(async move { self.engine.get_waitpoint(Some(&self.env_id), &id).await })
    }

    fn update_metadata(&self, run_id: &str, update: MetadataUpdate) -> BoxFuture<'_, Result<Value>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.update_metadata(&self.env_id, &run_id, update).await })
    }

    fn record_events(&self, run_id: &str, events: Vec<RunEvent>) -> BoxFuture<'_, Result<()>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.record_events(&self.env_id, &run_id, events).await })
    }

    fn get_run(&self, run_id: &str) -> BoxFuture<'_, Result<RunDetails>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.get_run(&self.env_id, &run_id).await })
    }

    fn list_runs(&self, mut filter: RunFilter, page: Page) -> BoxFuture<'_, Result<Vec<Run>>> {
        filter.env_id = self.env_id.clone();
        boxed(self.engine.list_runs(filter, page))
    }

    fn cancel(&self, run_id: &str) -> BoxFuture<'_, Result<Run>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.cancel(&self.env_id, &run_id, None).await })
    }

    fn replay(&self, run_id: &str, overrides: ReplayOverrides) -> BoxFuture<'_, Result<Triggered>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.replay(&self.env_id, &run_id, overrides).await })
    }

    fn reschedule(&self, run_id: &str, delay_until: Millis) -> BoxFuture<'_, Result<Run>> {
        let run_id = run_id.to_string();
        boxed(async move { self.engine.reschedule(&self.env_id, &run_id, delay_until).await })
    }
}

/// Lets `Arc<Embedded>` and friends be passed where a backend is expected.
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn now(&self) -> Millis {
        (**self).now()
    }
    fn register_worker(&self, manifest: WorkerManifest) -> BoxFuture<'_, Result<WorkerVersion>> {
        (**self).register_worker(manifest)
    }
    fn dequeue(&self, request: DequeueRequest, wait: Duration) -> BoxFuture<'_, Result<Vec<Dequeued>>> {
        (**self).dequeue(request, wait)
    }
    fn start_attempt(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<StartedAttempt>> {
        (**self).start_attempt(run_id, snapshot_id)
    }
    fn complete_attempt(
        &self,
        run_id: &str,
        snapshot_id: &str,
        completion: Completion,
        metadata: Option<MetadataUpdate>,
    ) -> BoxFuture<'_, Result<AttemptOutcome>> {
        (**self).complete_attempt(run_id, snapshot_id, completion, metadata)
    }
    fn heartbeat(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        (**self).heartbeat(run_id, snapshot_id)
    }
    fn release_run(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        (**self).release_run(run_id, snapshot_id)
    }
    fn latest_snapshot(&self, run_id: &str) -> BoxFuture<'_, Result<(Run, Snapshot)>> {
        (**self).latest_snapshot(run_id)
    }
    fn snapshots_since(&self, run_id: &str, after: Option<&str>) -> BoxFuture<'_, Result<Vec<Snapshot>>> {
        (**self).snapshots_since(run_id, after)
    }
    fn subscribe(&self) -> Option<broadcast::Receiver<RunChange>> {
        (**self).subscribe()
    }
    fn trigger(&self, request: TriggerRequest) -> BoxFuture<'_, Result<Triggered>> {
        (**self).trigger(request)
    }
    fn create_batch(&self, request: CreateBatch) -> BoxFuture<'_, Result<(Batch, bool)>> {
        (**self).create_batch(request)
    }
    fn add_batch_items(&self, batch_id: &str, items: Vec<BatchItem>) -> BoxFuture<'_, Result<ItemsAdded>> {
        (**self).add_batch_items(batch_id, items)
    }
    fn wait_for_duration(
        &self,
        run_id: &str,
        snapshot_id: &str,
        until: Millis,
        idempotency_key: Option<String>,
        idempotency_key_ttl_ms: Option<u64>,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        (**self).wait_for_duration(run_id, snapshot_id, until, idempotency_key, idempotency_key_ttl_ms)
    }
    fn create_token(&self, options: TokenOptions) -> BoxFuture<'_, Result<(Waitpoint, bool)>> {
        (**self).create_token(options)
    }
    fn wait_for_token(
        &self,
        run_id: &str,
        snapshot_id: &str,
        token_id: &str,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        (**self).wait_for_token(run_id, snapshot_id, token_id)
    }
    fn complete_token(&self, token_id: &str, data: Packet) -> BoxFuture<'_, Result<Waitpoint>> {
        (**self).complete_token(token_id, data)
    }
    fn get_waitpoint(&self, id: &str) -> BoxFuture<'_, Result<Waitpoint>> {
        (**self).get_waitpoint(id)
    }
    fn update_metadata(&self, run_id: &str, update: MetadataUpdate) -> BoxFuture<'_, Result<Value>> {
        (**self).update_metadata(run_id, update)
    }
    fn record_events(&self, run_id: &str, events: Vec<RunEvent>) -> BoxFuture<'_, Result<()>> {
        (**self).record_events(run_id, events)
    }
    fn get_run(&self, run_id: &str) -> BoxFuture<'_, Result<RunDetails>> {
        (**self).get_run(run_id)
    }
    fn import_packet(&self, packet: Packet) -> BoxFuture<'_, Result<Packet>> {
        (**self).import_packet(packet)
    }
    fn list_runs(&self, filter: RunFilter, page: Page) -> BoxFuture<'_, Result<Vec<Run>>> {
        (**self).list_runs(filter, page)
    }
    fn cancel(&self, run_id: &str) -> BoxFuture<'_, Result<Run>> {
        (**self).cancel(run_id)
    }
    fn replay(&self, run_id: &str, overrides: ReplayOverrides) -> BoxFuture<'_, Result<Triggered>> {
        (**self).replay(run_id, overrides)
    }
    fn reschedule(&self, run_id: &str, delay_until: Millis) -> BoxFuture<'_, Result<Run>> {
        (**self).reschedule(run_id, delay_until)
    }
}
