//! [`Engine`]: the cheap, clonable handle everything else drives the engine through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};
use trigger_types::Millis;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::{not_found, Result};
use crate::lifecycle::attempt::{AttemptOutcome, Completion, StartedAttempt};
use crate::lifecycle::batch::{BatchItem, CreateBatch, ItemsAdded};
use crate::lifecycle::dequeue::{DequeueRequest, Dequeued};
use crate::lifecycle::manage::ReplayOverrides;
use crate::lifecycle::metadata::MetadataUpdate;
use crate::lifecycle::registry::WorkerManifest;
use crate::lifecycle::trigger::{TriggerRequest, Triggered};
use crate::lifecycle::wait::TokenOptions;
use crate::lifecycle::{
    attempt, batch, cancel, dequeue, manage, metadata, queue, registry, timers, trigger, wait,
};
use crate::model::*;
use crate::runtime::{Notifier, RunHint, Writer};
use crate::storage::Store;
use crate::txn::{RunChange, Txn};

/// How to build an engine.
#[derive(Clone)]
pub struct EngineOptions {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { config: Config::default(), clock: Arc::new(SystemClock) }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions").field("config", &self.config).finish_non_exhaustive()
    }
}

struct Inner {
    writer: Writer,
    /// Ids of waiting claims.
    waiting_claims: AtomicU64,
    notifier: Arc<Notifier>,
    clock: Arc<dyn Clock>,
    stop: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.writer.shutdown();
    }
}

/// Timers taken per round of [`Engine::fire_due_timers`] (one command each).
const TIMER_ROUND: usize = 256;

/// A run with its payload and output.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetails {
    pub run: Run,
    pub payload: Packet,
    pub output: Option<Packet>,
}

/// The run engine. Clone it freely: clones share one writer thread and one store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts an engine on a store. With a real clock this must be called inside a Tokio
    /// runtime: timers then fire by themselves. With a [`crate::ManualClock`] nothing fires
    /// until [`Engine::fire_due_timers`] is called.
    pub fn start(mut store: impl Store, options: EngineOptions) -> Engine {
        let notifier = Arc::new(Notifier::new());
        // Effects committed by other processes on a shared database wake this one too.
        let remote = Arc::downgrade(&notifier);
        store.listen(Arc::new(move |effects| {
            if let Some(notifier) = remote.upgrade() {
                notifier.publish_remote(effects);
            }
        }));
        let writer =
            Writer::start(Box::new(store), options.clock.clone(), Arc::new(options.config), notifier.clone());
        let (stop, stopped) = watch::channel(false);
        let engine = Engine {
            inner: Arc::new(Inner {
                writer,
                waiting_claims: AtomicU64::new(0),
                notifier,
                clock: options.clock.clone(),
                stop,
            }),
        };
        if !options.clock.is_manual() {
            tokio::spawn(timer_loop(Arc::downgrade(&engine.inner), stopped));
        }
        engine
    }

    /// Finishes queued commands and stops the writer thread and the timer loop. Calls made
    /// afterwards fail with [`crate::Error::Shutdown`].
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.writer.shutdown()).await;
    }

    /// The engine's clock.
    pub fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.inner.writer.call(None, f).await
    }

    /// [`Engine::call`] for a command that starts by changing one run (`payload`: and reads
    /// its payload), named so the store can read the runs of a whole batch at once.
    async fn call_on_run<T, F>(&self, run_id: String, payload: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.inner.writer.call(Some(RunHint { run_id, payload }), f).await
    }

    /// Every run change after commit: for pushing snapshots to workers and live views.
    pub fn subscribe(&self) -> broadcast::Receiver<RunChange> {
        self.inner.notifier.changes.subscribe()
    }

    // Tenancy.

    /// The default organisation, project and environments, created on first start.
    pub async fn bootstrap(&self, org_title: &str, project_name: &str) -> Result<crate::Tenancy> {
        let (org_title, project_name) = (org_title.to_string(), project_name.to_string());
        self.call(move |txn| crate::tenancy::bootstrap(txn, &org_title, &project_name)).await
    }

    pub async fn find_project_by_ref(&self, external_ref: &str) -> Result<Option<Project>> {
        let external_ref = external_ref.to_string();
        self.call(move |txn| Ok(txn.tx.find_project_by_ref(&external_ref)?)).await
    }

    pub async fn get_project(&self, id: &str) -> Result<Option<Project>> {
        let id = id.to_string();
        self.call(move |txn| Ok(txn.tx.get_project(&id)?)).await
    }

    pub async fn list_organizations(&self) -> Result<Vec<Organization>> {
        self.call(|txn| Ok(txn.tx.list_organizations()?)).await
    }

    /// Creates a key; the returned string is its only plain-text copy.
    pub async fn create_api_key(
        &self,
        kind: ApiKeyKind,
        env_id: Option<&str>,
        name: &str,
    ) -> Result<(ApiKey, String)> {
        let (env_id, name) = (env_id.map(str::to_string), name.to_string());
        self.call(move |txn| crate::tenancy::create_api_key(txn, kind, env_id.as_deref(), &name)).await
    }

    /// The live key matching a plain-text key, with its environment for secret keys.
    pub async fn authenticate(&self, plain: &str) -> Result<Option<(ApiKey, Option<Environment>)>> {
        let plain = plain.to_string();
        self.call(move |txn| crate::tenancy::authenticate(txn, &plain)).await
    }

    pub async fn list_api_keys(&self, env_id: Option<&str>) -> Result<Vec<ApiKey>> {
        let env_id = env_id.map(str::to_string);
        self.call(move |txn| Ok(txn.tx.list_api_keys(env_id.as_deref())?)).await
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        let id = id.to_string();
        self.call(move |txn| crate::tenancy::revoke_api_key(txn, &id)).await
    }

    // Environments and registry.

    /// Creates an environment of a project.
    pub async fn create_environment(
        &self,
        project_id: &str,
        kind: EnvironmentType,
        concurrency_limit: Option<u32>,
    ) -> Result<Environment> {
        let project_id = project_id.to_string();
        self.call(move |txn| registry::create_environment(txn, &project_id, kind, concurrency_limit)).await
    }

    pub async fn environment(&self, env_id: &str) -> Result<Environment> {
        let env_id = env_id.to_string();
        self.call(move |txn| registry::environment(txn, &env_id)).await
    }

    pub async fn list_environments(&self, project_id: &str) -> Result<Vec<Environment>> {
        let project_id = project_id.to_string();
        self.call(move |txn| Ok(txn.tx.list_environments(&project_id)?)).await
    }

    /// Changes an environment's concurrency limit or pauses it.
    pub async fn update_environment(
        &self,
        env_id: &str,
        limit: Option<u32>,
        paused: Option<bool>,
    ) -> Result<Environment> {
        let env_id = env_id.to_string();
        self.call(move |txn| {
            let mut env = registry::environment(txn, &env_id)?;
            if let Some(limit) = limit {
                env.concurrency_limit = limit;
            }
            if let Some(paused) = paused {
                env.paused = paused;
            }
            txn.tx.update_environment(&env)?;
            txn.work_available(&env_id);
            Ok(env)
        })
        .await
    }

    /// Registers a worker version with its tasks and queues.
    pub async fn register_worker(&self, env_id: &str, manifest: WorkerManifest) -> Result<WorkerVersion> {
        let env_id = env_id.to_string();
        self.call(move |txn| registry::register_worker(txn, &env_id, &manifest)).await
    }

    pub async fn latest_worker(&self, env_id: &str) -> Result<Option<WorkerVersion>> {
        let env_id = env_id.to_string();
        self.call(move |txn| Ok(txn.tx.latest_worker(&env_id)?)).await
    }

    pub async fn list_workers(&self, env_id: &str, limit: u32) -> Result<Vec<WorkerVersion>> {
        let env_id = env_id.to_string();
        self.call(move |txn| Ok(txn.tx.list_workers(&env_id, limit)?)).await
    }

    pub async fn list_tasks(&self, env_id: &str, worker_id: &str) -> Result<Vec<TaskDef>> {
        let (env_id, worker_id) = (env_id.to_string(), worker_id.to_string());
        self.call(move |txn| Ok(txn.tx.list_tasks(&env_id, &worker_id)?)).await
    }

    pub async fn list_queues(&self, env_id: &str) -> Result<Vec<QueueDef>> {
        let env_id = env_id.to_string();
        self.call(move |txn| Ok(txn.tx.list_queues(&env_id)?)).await
    }

    /// A queue's subqueues (one per concurrency key in use) with their counts.
    pub async fn list_subqueues(&self, env_id: &str, queue: &str) -> Result<Vec<Subqueue>> {
        let (env_id, queue) = (env_id.to_string(), queue.to_string());
        self.call(move |txn| Ok(txn.tx.list_subqueues(&env_id, &queue)?)).await
    }

    /// Pauses or resumes a queue: a paused queue keeps its runs but hands none out.
    pub async fn set_queue_paused(&self, env_id: &str, name: &str, paused: bool) -> Result<QueueDef> {
        let (env_id, name) = (env_id.to_string(), name.to_string());
        self.call(move |txn| {
            let mut q = txn.tx.get_queue(&env_id, &name)?.ok_or_else(|| not_found("Queue", &name))?;
            q.paused = paused;
            q.updated_at = txn.now;
            txn.tx.upsert_queue(&q)?;
            txn.work_available(&env_id);
            Ok(q)
        })
        .await
    }

    /// Runs of an environment holding a concurrency slot.
    pub async fn env_running(&self, env_id: &str) -> Result<u32> {
        let env_id = env_id.to_string();
        self.call(move |txn| Ok(txn.tx.env_running(&env_id)?)).await
    }

    // Runs.

    /// Creates a run (`tasks.trigger`).
    pub async fn trigger(&self, env_id: &str, request: TriggerRequest) -> Result<Triggered> {
        let env_id = env_id.to_string();
        self.call(move |txn| trigger::trigger(txn, &env_id, &request, None)).await
    }

    /// Validates a trigger without touching storage (for servers that reject early).
    pub fn validate_trigger(request: &TriggerRequest) -> Result<()> {
        trigger::validate(request)
    }

    /// Claims runs for a worker now; empty when nothing fits.
    ///
    /// Safe to cancel: if the caller drops this future after the claim was submitted, the
    /// runs it claimed are handed back to their queues instead of waiting out their lease.
    pub async fn dequeue(&self, env_id: &str, request: DequeueRequest) -> Result<Vec<Dequeued>> {
        let env = env_id.to_string();
        let receiver = self.inner.writer.submit(None, move |txn| dequeue::dequeue(txn, &env, &request))?;
        let mut claim = UnreceivedClaim {
            receiver: Some(receiver),
            engine: self.clone(),
            env_id: env_id.to_string(),
            waiting: None,
        };
        let receiver = claim.receiver.as_mut().ok_or(crate::Error::Shutdown)?;
        let result = receiver.await.map_err(|_| crate::Error::Shutdown)?;
        claim.receiver = None;
        result
    }

    /// Claims runs, waiting up to `timeout` for one to become available (long poll).
    ///
    /// A claim that finds nothing waits in the writer and is applied again in the
    /// transaction of the first command that makes work available in the environment (or on
    /// a wake-up from another process sharing the database), so the run and its claim commit
    /// together. Safe to cancel, as [`Engine::dequeue`] is.
    pub async fn dequeue_wait(
        &self,
        env_id: &str,
        request: DequeueRequest,
        timeout: Duration,
    ) -> Result<Vec<Dequeued>> {
        let id = self.inner.waiting_claims.fetch_add(1, Ordering::Relaxed);
        let receiver = self.inner.writer.submit_waiting(env_id, id, request)?;
        let mut claim = UnreceivedClaim {
            receiver: Some(receiver),
            engine: self.clone(),
            env_id: env_id.to_string(),
            waiting: Some(id),
        };
        let receiver = claim.receiver.as_mut().ok_or(crate::Error::Shutdown)?;
        let answer = match tokio::time::timeout(timeout, &mut *receiver).await {
            Ok(answer) => answer,
            Err(_) => {
                // The writer answers a stopped wait at once (nothing claimed), or has just
                // claimed something for it.
                self.inner.writer.stop_waiting(env_id, id);
                receiver.await
            }
        };
        claim.receiver = None;
        answer.map_err(|_| crate::Error::Shutdown)?
    }

    pub async fn start_attempt(
        &self,
        env_id: &str,
        run_id: &str,
        snapshot_id: &str,
    ) -> Result<StartedAttempt> {
        let (env_id, run_id, snapshot_id) = (env_id.to_string(), run_id.to_string(), snapshot_id.to_string());
        self.call_on_run(run_id.clone(), true, move |txn| {
            attempt::start_attempt(txn, &env_id, &run_id, &snapshot_id)
        })
        .await
    }

    pub async fn complete_attempt(
        &self,
        env_id: &str,
        run_id: &str,
        snapshot_id: &str,
        completion: Completion,
        flushed_metadata: Option<MetadataUpdate>,
    ) -> Result<AttemptOutcome> {
        let (env_id, run_id, snapshot_id) = (env_id.to_string(), run_id.to_string(), snapshot_id.to_string());
        self.call_on_run(run_id.clone(), false, move |txn| {
            attempt::complete_attempt(
                txn,
                &env_id,
                &run_id,
                &snapshot_id,
                &completion,
                flushed_metadata.as_ref(),
            )
        })
        .await
    }

    /// Extends the lease of the run's current snapshot.
    pub async fn heartbeat(&self, env_id: &str, run_id: &str, snapshot_id: &str) -> Result<()> {
        let (env_id, run_id, snapshot_id) = (env_id.to_string(), run_id.to_string(), snapshot_id.to_string());
        self.call_on_run(run_id.clone(), false, move |txn| {
            attempt::heartbeat(txn, &env_id, &run_id, &snapshot_id)
        })
        .await
    }

    /// The run and its latest snapshot.
    pub async fn latest_snapshot(&self, env_id: &str, run_id: &str) -> Result<(Run, Snapshot)> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            let run = txn.lock_run_in(&env_id, &run_id)?;
            let snapshot = txn
                .tx
                .get_snapshot(&run.snapshot_id)?
                .ok_or_else(|| not_found("Snapshot", &run.snapshot_id))?;
            Ok((run, snapshot))
        })
        .await
    }

    /// A run's snapshots after one (all when `None`), oldest first.
    pub async fn snapshots_since(
        &self,
        env_id: &str,
        run_id: &str,
        after: Option<&str>,
    ) -> Result<Vec<Snapshot>> {
        let (env_id, run_id, after) = (env_id.to_string(), run_id.to_string(), after.map(str::to_string));
        self.call(move |txn| {
            txn.lock_run_in(&env_id, &run_id)?;
            Ok(txn.tx.list_snapshots(&run_id, after.as_deref())?)
        })
        .await
    }

    pub async fn cancel(&self, env_id: &str, run_id: &str, reason: Option<String>) -> Result<Run> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| cancel::cancel(txn, &env_id, &run_id, reason.as_deref())).await
    }

    /// Cancels a run whose worker is gone (a disconnected dev CLI): it finishes `CANCELED` at
    /// once even while executing, since nobody is left to confirm. Children follow.
    pub async fn cancel_abandoned(&self, env_id: &str, run_id: &str, reason: &str) -> Result<Run> {
        let (env_id, run_id, reason) = (env_id.to_string(), run_id.to_string(), reason.to_string());
        self.call(move |txn| cancel::cancel_abandoned(txn, &env_id, &run_id, &reason)).await
    }

    /// A worker hands back a run it claimed or is executing (it is shutting down): the run is
    /// queued again with its place in line, without failing the attempt.
    pub async fn release_run(&self, env_id: &str, run_id: &str, snapshot_id: &str) -> Result<Run> {
        let (env_id, run_id, snapshot_id) = (env_id.to_string(), run_id.to_string(), snapshot_id.to_string());
        self.call(move |txn| cancel::release_run(txn, &env_id, &run_id, &snapshot_id)).await
    }

    /// The environment a run belongs to (for unauthenticated sinks such as OTLP, which name
    /// only the run).
    pub async fn run_environment(&self, run_id: &str) -> Result<Option<String>> {
        let run_id = run_id.to_string();
        self.call(move |txn| Ok(txn.tx.get_run(&run_id)?.map(|r| r.env_id))).await
    }

    pub async fn replay(&self, env_id: &str, run_id: &str, overrides: ReplayOverrides) -> Result<Triggered> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| manage::replay(txn, &env_id, &run_id, &overrides)).await
    }

    pub async fn reschedule(&self, env_id: &str, run_id: &str, delay_until: Millis) -> Result<Run> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| manage::reschedule(txn, &env_id, &run_id, delay_until)).await
    }

    pub async fn add_tags(&self, env_id: &str, run_id: &str, tags: Vec<String>) -> Result<Run> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| manage::add_tags(txn, &env_id, &run_id, &tags)).await
    }

    pub async fn reset_idempotency_key(&self, env_id: &str, task: &str, key: &str) -> Result<Run> {
        let (env_id, task, key) = (env_id.to_string(), task.to_string(), key.to_string());
        self.call(move |txn| manage::reset_idempotency_key(txn, &env_id, &task, &key)).await
    }

    /// Applies a metadata flush; returns the run's metadata afterwards.
    pub async fn update_metadata(&self, env_id: &str, run_id: &str, update: MetadataUpdate) -> Result<Value> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            let mut run = txn.lock_run_in(&env_id, &run_id)?;
            metadata::apply_update(txn, &mut run, &update)
        })
        .await
    }

    pub async fn get_run(&self, env_id: &str, run_id: &str) -> Result<RunDetails> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            let run = match txn.tx.get_run(&run_id)? {
                Some(run) if run.env_id == env_id => run,
                _ => return Err(not_found("Run", &run_id)),
            };
            let payload = txn.tx.get_payload(&run.id)?.unwrap_or_default();
            let output = txn.tx.get_output(&run.id)?;
            Ok(RunDetails { run, payload, output })
        })
        .await
    }

    pub async fn list_runs(&self, filter: RunFilter, page: Page) -> Result<Vec<Run>> {
        self.call(move |txn| Ok(txn.tx.list_runs(&filter, &page)?)).await
    }

    pub async fn list_children(&self, env_id: &str, run_id: &str) -> Result<Vec<Run>> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            txn.lock_run_in(&env_id, &run_id)?;
            Ok(txn.tx.list_children(&run_id)?)
        })
        .await
    }

    // Waits and tokens.

    pub async fn wait_for_duration(
        &self,
        env_id: &str,
        run_id: &str,
        snapshot_id: &str,
        until: Millis,
        idempotency_key: Option<String>,
        idempotency_key_ttl_ms: Option<u64>,
    ) -> Result<Waitpoint> {
        let (env_id, run_id, snapshot_id) = (env_id.to_string(), run_id.to_string(), snapshot_id.to_string());
        self.call(move |txn| {
            wait::wait_for_duration(
                txn,
                &env_id,
                &run_id,
                &snapshot_id,
                until,
                idempotency_key.as_deref(),
                idempotency_key_ttl_ms,
            )
        })
        .await
    }

    /// Creates a token; the flag is true when an idempotency key returned an existing one.
    pub async fn create_token(&self, env_id: &str, options: TokenOptions) -> Result<(Waitpoint, bool)> {
        let env_id = env_id.to_string();
        self.call(move |txn| wait::create_token(txn, &env_id, &options)).await
    }

    pub async fn wait_for_token(
        &self,
        env_id: &str,
        run_id: &str,
        snapshot_id: Option<String>,
        waitpoint_id: &str,
    ) -> Result<Waitpoint> {
        let (env_id, run_id, waitpoint_id) =
            (env_id.to_string(), run_id.to_string(), waitpoint_id.to_string());
        self.call(move |txn| {
            wait::wait_for_token(txn, &env_id, &run_id, snapshot_id.as_deref(), &waitpoint_id)
        })
        .await
    }

    /// Completes a token. `env_id` `None` is for callback URLs, which carry their own secret.
    pub async fn complete_token(
        &self,
        env_id: Option<&str>,
        waitpoint_id: &str,
        data: Packet,
    ) -> Result<Waitpoint> {
        let (env_id, waitpoint_id) = (env_id.map(str::to_string), waitpoint_id.to_string());
        self.call(move |txn| wait::complete_token(txn, env_id.as_deref(), &waitpoint_id, data.clone())).await
    }

    pub async fn get_waitpoint(&self, env_id: Option<&str>, waitpoint_id: &str) -> Result<Waitpoint> {
        let (env_id, waitpoint_id) = (env_id.map(str::to_string), waitpoint_id.to_string());
        self.call(move |txn| match txn.tx.lock_waitpoint(&waitpoint_id)? {
            Some(wp) if env_id.as_deref().is_none_or(|e| e == wp.env_id) => Ok(wp),
            _ => Err(not_found("Waitpoint", &waitpoint_id)),
        })
        .await
    }

    pub async fn list_waitpoints(&self, filter: WaitpointFilter, page: Page) -> Result<Vec<Waitpoint>> {
        self.call(move |txn| Ok(txn.tx.list_waitpoints(&filter, &page)?)).await
    }

    // Batches.

    /// Creates a batch; the flag is true when an idempotency key returned an existing one.
    pub async fn create_batch(&self, env_id: &str, request: CreateBatch) -> Result<(Batch, bool)> {
        let env_id = env_id.to_string();
        self.call(move |txn| batch::create_batch(txn, &env_id, &request)).await
    }

    pub async fn add_batch_items(
        &self,
        env_id: &str,
        batch_id: &str,
        items: Vec<BatchItem>,
    ) -> Result<ItemsAdded> {
        let (env_id, batch_id) = (env_id.to_string(), batch_id.to_string());
        self.call(move |txn| batch::add_items(txn, &env_id, &batch_id, &items)).await
    }

    /// A batch and its items' run ids by index.
    pub async fn get_batch(&self, env_id: &str, batch_id: &str) -> Result<(Batch, Vec<(u32, String)>)> {
        let (env_id, batch_id) = (env_id.to_string(), batch_id.to_string());
        self.call(move |txn| {
            let batch = match txn.tx.lock_batch(&batch_id)? {
                Some(b) if b.env_id == env_id => b,
                _ => return Err(not_found("Batch", &batch_id)),
            };
            let items = txn.tx.list_batch_items(&batch_id)?;
            Ok((batch, items))
        })
        .await
    }

    pub async fn list_batches(&self, env_id: &str, page: Page) -> Result<Vec<Batch>> {
        let env_id = env_id.to_string();
        self.call(move |txn| Ok(txn.tx.list_batches(&env_id, &page)?)).await
    }

    // Events.

    /// Stores log lines and spans of a run of the environment.
    pub async fn record_events(&self, env_id: &str, run_id: &str, events: Vec<RunEvent>) -> Result<()> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            txn.lock_run_in(&env_id, &run_id)?;
            let events: Vec<RunEvent> =
                events.iter().cloned().map(|e| RunEvent { run_id: run_id.clone(), ..e }).collect();
            Ok(txn.tx.insert_events(&events)?)
        })
        .await
    }

    pub async fn list_events(
        &self,
        env_id: &str,
        run_id: &str,
        after_seq: i64,
        max: u32,
    ) -> Result<Vec<RunEvent>> {
        let (env_id, run_id) = (env_id.to_string(), run_id.to_string());
        self.call(move |txn| {
            txn.lock_run_in(&env_id, &run_id)?;
            Ok(txn.tx.list_events(&run_id, after_seq, max)?)
        })
        .await
    }

    // Timers.

    /// Fires every timer due now; returns how many fired. Called by the timer loop, and by
    /// tests after moving a [`crate::ManualClock`].
    pub async fn fire_due_timers(&self) -> Result<usize> {
        let mut fired = 0;
        loop {
            // A round of commands that find nothing due costs a statement each: look first.
            if self.next_timer_at().await?.is_none_or(|at| at > self.now()) {
                return Ok(fired);
            }
            // Submit a round of commands at once so they share one transaction; each takes
            // and fires one timer, and notes its key outside the transaction so that a
            // timer whose action fails can be moved aside instead of blocking the others.
            let slots: Vec<timers::Taken> = (0..TIMER_ROUND).map(|_| timers::Taken::default()).collect();
            let round = slots
                .iter()
                .map(|slot| {
                    let slot = slot.clone();
                    self.inner.writer.submit(None, move |txn| timers::fire_next(txn, &slot))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut exhausted = false;
            for (receiver, slot) in round.into_iter().zip(slots) {
                match receiver.await.map_err(|_| crate::Error::Shutdown)? {
                    Ok(Some(_)) => fired += 1,
                    Ok(None) => exhausted = true,
                    Err(e) if e.is_transient() || matches!(e, crate::Error::Shutdown) => return Err(e),
                    Err(e) => match slot.key() {
                        Some(key) => {
                            tracing::error!(timer = %key, error = %e, "a timer's action failed; retrying it later");
                            self.call(move |txn| timers::defer(txn, &key)).await?;
                        }
                        None => return Err(e),
                    },
                }
            }
            if exhausted {
                return Ok(fired);
            }
        }
    }

    /// When the next timer fires.
    pub async fn next_timer_at(&self) -> Result<Option<Millis>> {
        self.call(|txn| Ok(txn.tx.next_timer_at()?)).await
    }

    /// Whether a run holds a concurrency slot (for tests and diagnostics).
    pub async fn holds_slot(&self, run_id: &str) -> Result<bool> {
        let run_id = run_id.to_string();
        self.call(move |txn| Ok(txn.tx.get_holder(&run_id)?.is_some())).await
    }

    /// Re-checks a subqueue for runs waiting only for a slot (used after limit changes).
    pub async fn pump(&self, env_id: &str, queue_name: &str, concurrency_key: &str) -> Result<()> {
        let (env_id, queue_name, key) =
            (env_id.to_string(), queue_name.to_string(), concurrency_key.to_string());
        self.call(move |txn| queue::pump_resumes(txn, &env_id, &queue_name, &key)).await
    }
}

/// A claim whose caller went away before reading it: the claimed runs go back to their
/// queues once the claim commits.
struct UnreceivedClaim {
    receiver: Option<tokio::sync::oneshot::Receiver<Result<Vec<Dequeued>>>>,
    engine: Engine,
    env_id: String,
    /// The id of a waiting claim ([`Engine::dequeue_wait`]), whose wait ends with the caller.
    waiting: Option<u64>,
}

impl Drop for UnreceivedClaim {
    fn drop(&mut self) {
        let Some(receiver) = self.receiver.take() else { return };
        if let Some(id) = self.waiting {
            self.engine.inner.writer.stop_waiting(&self.env_id, id);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (engine, env_id) = (self.engine.clone(), std::mem::take(&mut self.env_id));
        runtime.spawn(async move {
            if let Ok(Ok(claimed)) = receiver.await {
                for d in claimed {
                    if let Err(e) = engine.release_run(&env_id, &d.run.id, &d.snapshot.id).await {
                        tracing::warn!(run = %d.run.id, error = %e, "could not hand back an abandoned claim");
                    }
                }
            }
        });
    }
}

async fn timer_loop(inner: Weak<Inner>, mut stopped: watch::Receiver<bool>) {
    loop {
        let wait = {
            let Some(inner) = inner.upgrade() else { return };
            let engine = Engine { inner };
            let mut wait = Duration::from_secs(30);
            match engine.fire_due_timers().await {
                Ok(_) => match engine.next_timer_at().await {
                    Ok(next) => {
                        *engine.inner.notifier.earliest_timer.lock().unwrap_or_else(|e| e.into_inner()) =
                            next;
                        if let Some(at) = next {
                            let ms = (at - engine.now()).clamp(0, 30_000);
                            wait = Duration::from_millis(ms as u64);
                        }
                    }
                    Err(crate::Error::Shutdown) => return,
                    Err(e) => tracing::warn!(error = %e, "reading the next timer failed"),
                },
                Err(crate::Error::Shutdown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "firing timers failed; retrying shortly");
                    wait = Duration::from_secs(1);
                }
            }
            let notifier = engine.inner.notifier.clone();
            drop(engine);
            (wait, notifier)
        };
        let (wait, notifier) = wait;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notifier.timers.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}
