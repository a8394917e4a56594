//! The worker runtime: registers its tasks, claims runs, executes attempts concurrently up
//! to its capacity, heartbeats, completes attempts, and shuts down gracefully.
//!
//! - **Claiming.** One loop long-polls the backend's dequeue for as many runs as it has
//!   free slots (and cpu/memory, when set). Every run executes on its own Tokio task.
//! - **Waiting runs hold nothing.** A run blocked on a wait gives back its slot on the
//!   worker (the engine gives back its queue slot), so a parent waiting on children in a
//!   limit-1 queue cannot deadlock the worker. When it resumes it takes capacity again,
//!   ahead of new claims.
//! - **Push, not polling.** The worker subscribes to the backend's change feed and wakes a
//!   waiting run, or fires its cancellation token, when the engine changes it.
//! - **Retries.** A failed attempt reports the retry the policy and `catch_error` propose;
//!   on `RETRY_IMMEDIATELY` the worker sleeps until the retry time and starts the next
//!   attempt itself; on `RETRY_QUEUED` it lets go and the run comes back through dequeue.
//! - **Panics** fail the attempt (`Panic: the task panicked: …`); the worker keeps going.
//! - **Shutdown.** Stop claiming, let in-flight runs finish within the drain timeout, then
//!   fire their tokens: each run is handed back to its queue (its attempt is not counted as
//!   failed); a run blocked on a wait, which cannot be handed back, fails its attempt with
//!   `GRACEFUL_EXIT_TIMEOUT` and is retried six seconds later.

pub(crate) mod capacity;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use trigger_engine::{
    AttemptOutcome, AttemptStatus, Completion, DequeueRequest, Dequeued, ExecutionStatus, InternalErrorCode,
    MetadataUpdate, TaskRunError, WorkerManifest, WorkerVersion,
};

use crate::backend::{Backend, SharedBackend};
use crate::context::{CancelReason, CancellationToken, Context};
use crate::error::{Error, Result};
use crate::hooks::Globals;
use crate::scope::{self, Heard, MetadataState, RunScope};
use crate::task::{ErasedTask, ExecInput, IntoTask};
use capacity::{Capacity, Lease};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Most runs executing at once (waiting runs do not count). Default 10.
    pub concurrency: u32,
    /// vCPUs runs may use together (machine presets); unbounded when `None`.
    pub cpu: Option<f64>,
    /// Memory (GB) runs may use together; unbounded when `None`.
    pub memory: Option<f64>,
    /// How often a run's lease is extended. Default 30 s.
    pub heartbeat_interval: Duration,
    /// How often metadata and log lines are flushed. Default 1 s.
    pub flush_interval: Duration,
    /// How long one dequeue long-poll waits. Default 2 s.
    pub dequeue_wait: Duration,
    /// How long shutdown waits for in-flight runs before handing them back. Default 30 s.
    pub drain_timeout: Duration,
    /// Names this worker process in the engine.
    pub instance: String,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 10,
            cpu: None,
            memory: None,
            heartbeat_interval: Duration::from_secs(30),
            flush_interval: Duration::from_secs(1),
            dequeue_wait: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            instance: format!("worker-{}-{}", std::process::id(), trigger_types::ids::random_alphanumeric(6)),
        }
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    backend: Option<SharedBackend>,
    tasks: Vec<Arc<dyn ErasedTask>>,
    options: WorkerOptions,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder").field("options", &self.options).finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The backend to work for (required).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Adds a task.
    pub fn task(mut self, task: impl IntoTask) -> Self {
        self.tasks.push(task.into_task().0);
        self
    }

    /// Most runs executing at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.options.concurrency = n.max(1);
        self
    }

    /// cpu and memory (GB) available to runs, matched against their machine presets.
    pub fn capacity(mut self, cpu: f64, memory: f64) -> Self {
        self.options.cpu = Some(cpu);
        self.options.memory = Some(memory);
        self
    }

    /// All options at once.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// How long shutdown waits for in-flight runs.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.options.drain_timeout = timeout;
        self
    }

    /// How often metadata and logs are flushed.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.options.flush_interval = interval;
        self
    }

    /// Validates and builds. The global hooks registered so far are taken now. The backend
    /// becomes the default for calls outside tasks if none was configured.
    pub fn build(self) -> Result<Worker> {
        let backend = self.backend.ok_or(Error::NoBackend)?;
        let mut tasks = HashMap::new();
        for task in self.tasks {
            if tasks.insert(task.id().to_string(), task.clone()).is_some() {
                return Err(Error::Protocol(format!("task {:?} is registered twice", task.id())));
            }
        }
        crate::client::configure_if_unset(backend.clone());
        let capacity = Capacity::new(
            self.options.concurrency,
            self.options.cpu.unwrap_or(f64::INFINITY),
            self.options.memory.unwrap_or(f64::INFINITY),
        );
        Ok(Worker {
            inner: Arc::new(Inner {
                backend,
                tasks,
                globals: Arc::new(crate::hooks::globals()),
                options: self.options,
                capacity,
                active: Mutex::new(HashMap::new()),
            }),
        })
    }
}

struct ActiveRun {
    changes: watch::Sender<Heard>,
    token: CancellationToken,
}

struct Inner {
    backend: SharedBackend,
    tasks: HashMap<String, Arc<dyn ErasedTask>>,
    globals: Arc<Globals>,
    options: WorkerOptions,
    capacity: Arc<Capacity>,
    active: Mutex<HashMap<String, ActiveRun>>,
}

/// A worker: build it with [`Worker::builder`], then [`Worker::run`] it until a shutdown
/// signal, or [`Worker::start`] it in the background.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("instance", &self.inner.options.instance).finish_non_exhaustive()
    }
}

/// A worker running in the background.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl WorkerHandle {
    /// Stops claiming, drains, and waits for the worker to finish.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Protocol(format!("worker task failed: {e}")))?
    }
}

impl Worker {
    /// Starts building a worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder { backend: None, tasks: Vec::new(), options: WorkerOptions::default() }
    }

    /// The manifest this worker registers.
    pub fn manifest(&self) -> WorkerManifest {
        let mut tasks = Vec::new();
        let mut queues: Vec<trigger_engine::QueueManifest> = Vec::new();
        let mut ids: Vec<&String> = self.inner.tasks.keys().collect();
        ids.sort();
        for id in ids {
            let (task, queue) = self.inner.tasks[id].manifest();
            tasks.push(task);
            if let Some(q) = queue {
                if !queues.iter().any(|known| known.name == q.name) {
                    queues.push(q);
                }
            }
        }
        let json = serde_json::to_string(&(&tasks, &queues)).unwrap_or_default();
        WorkerManifest {
            content_hash: trigger_types::ids::sha256_hex(&json),
            sdk_version: Some(format!("trigger-sdk-rs/{}", env!("CARGO_PKG_VERSION"))),
            cli_version: None,
            tasks,
            queues,
        }
    }

    /// Registers, then runs in the background until [`WorkerHandle::shutdown`]. Once this
    /// returns, the worker's tasks can be triggered.
    pub async fn start(self) -> Result<WorkerHandle> {
        let version = self.register().await?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            self.serve(version, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        });
        Ok(WorkerHandle { stop, task })
    }

    /// Registers, then claims and executes runs until `shutdown` completes; then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let version = self.register().await?;
        self.serve(version, shutdown).await
    }

    async fn register(&self) -> Result<WorkerVersion> {
        let version = self.inner.backend.register_worker(self.manifest()).await?;
        let tasks = self.inner.tasks.len();
        tracing::info!(target: "trigger_sdk::worker", version = %version.version, tasks, "worker registered");
        Ok(version)
    }

    async fn serve(self, version: WorkerVersion, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let inner = self.inner.clone();
        let dispatcher =
            inner.backend.subscribe().map(|rx| tokio::spawn(dispatch(Arc::downgrade(&inner), rx)));

        let (stop_tx, stop_rx) = watch::channel(false);
        let claim = claim_loop(inner.clone(), version, stop_rx);
        tokio::pin!(claim);
        let mut runs = tokio::select! {
            r = &mut claim => r?,
            _ = shutdown => {
                let _ = stop_tx.send(true);
                claim.await?
            }
        };

        // Drain, then hand back what is left.
        let drained = tokio::time::timeout(inner.options.drain_timeout, async {
            while runs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let active: Vec<CancellationToken> = inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|a| a.token.clone())
                .collect();
            tracing::warn!(target: "trigger_sdk::worker", runs = active.len(), "drain timeout: handing runs back");
            for token in active {
                token.cancel(CancelReason::Shutdown);
            }
            if tokio::time::timeout(Duration::from_secs(10), async {
                while runs.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                runs.abort_all();
            }
        }
        if let Some(d) = dispatcher {
            d.abort();
        }
        Ok(())
    }
}

async fn claim_loop(
    inner: Arc<Inner>,
    version: WorkerVersion,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinSet<()>> {
    let mut runs = JoinSet::new();
    loop {
        if *stop.borrow() {
            return Ok(runs);
        }
        let free = tokio::select! {
            free = inner.capacity.wait_free() => free,
            _ = stop.changed() => return Ok(runs),
        };
        while runs.try_join_next().is_some() {}
        let request = DequeueRequest {
            worker_instance: inner.options.instance.clone(),
            worker_id: Some(version.id.clone()),
            max_runs: free.slots,
            cpu: free.cpu.is_finite().then_some(free.cpu),
            memory: free.memory.is_finite().then_some(free.memory),
            // Every claimed run starts at once: the claim starts its attempt too.
            start_attempts: true,
        };
        // Not raced against `stop`: a dequeue dropped midway could claim runs nobody runs.
        let claimed = match inner.backend.dequeue(request, inner.options.dequeue_wait).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "trigger_sdk::worker", error = %e, "dequeue failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return Ok(runs),
                }
                continue;
            }
        };
        for dequeued in claimed {
            let lease = Lease::take(&inner.capacity, dequeued.machine);
            let inner = inner.clone();
            runs.spawn(async move {
                let run_id = dequeued.run.id.clone();
                let guarded = tokio::spawn(execute_run(inner.clone(), dequeued, lease));
                if let Err(e) = guarded.await {
                    tracing::error!(target: "trigger_sdk::worker", run = %run_id, error = %e, "run task failed");
                    inner.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
                }
            });
        }
    }
}

/// Routes the engine's change feed to the runs this worker executes.
async fn dispatch(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<trigger_engine::RunChange>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let received = rx.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        match received {
            Ok(change) if change.run_id.is_empty() => {
                // A transport's "resync": every run re-reads its snapshot.
                for run in inner.active.lock().unwrap_or_else(|e| e.into_inner()).values() {
                    run.changes.send_replace(Heard::missed());
                }
            }
            Ok(change) => {
                let active = inner.active.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(run) = active.get(&change.run_id) {
                    if change.execution_status == ExecutionStatus::PendingCancel {
                        run.token.cancel(CancelReason::Canceled);
                    }
                    run.changes.send_replace(Heard::change(&change.snapshot_id, change.execution_status));
                }
            }
            Err(RecvError::Lagged(_)) => {
                // Missed changes: every waiting run re-reads its snapshot.
                let ids: Vec<String> = {
                    let active = inner.active.lock().unwrap_or_else(|e| e.into_inner());
                    for run in active.values() {
                        run.changes.send_replace(Heard::missed());
                    }
                    active.keys().cloned().collect()
                };
                for id in ids {
                    if let Ok((run, _)) = inner.backend.latest_snapshot(&id).await {
                        if run.execution_status == ExecutionStatus::PendingCancel {
                            if let Some(a) = inner.active.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                                a.token.cancel(CancelReason::Canceled);
                            }
                        }
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// One claimed run: its attempts (several when the engine retries it in place).
async fn execute_run(inner: Arc<Inner>, dequeued: Dequeued, lease: Arc<Lease>) {
    let run_id = dequeued.run.id.clone();
    let token = CancellationToken::new();
    let (changes_tx, changes_rx) = watch::channel(Heard::missed());
    inner
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run_id.clone(), ActiveRun { changes: changes_tx, token: token.clone() });
    let snapshot = Arc::new(Mutex::new(dequeued.snapshot.id.clone()));
    let heartbeat = tokio::spawn(heartbeat_loop(
        inner.backend.clone(),
        run_id.clone(),
        snapshot.clone(),
        inner.options.heartbeat_interval,
    ));

    let mut snapshot_id = dequeued.snapshot.id.clone();
    let mut started_with_claim = dequeued.started;
    loop {
        let started = match started_with_claim.take() {
            Some(started) => started,
            None => match inner.backend.start_attempt(&run_id, &snapshot_id).await {
                Ok(s) => s,
                Err(e) => {
                    confirm_cancel_or_log(&inner, &run_id, e).await;
                    break;
                }
            },
        };
        *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = started.snapshot.id.clone();
        let (completion, metadata) =
            attempt(&inner, started, token.clone(), snapshot.clone(), changes_rx.clone(), lease.clone())
                .await;
        let current = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if token.reason() == Some(CancelReason::Shutdown) {
            // Hand the run back without using up an attempt. A run blocked on a wait cannot be
            // handed back; it falls through to the failed attempt the task returned.
            if let Some(update) = metadata.clone() {
                let _ = inner.backend.update_metadata(&run_id, update).await;
            }
            if inner.backend.release_run(&run_id, &current).await.is_ok() {
                break;
            }
        }
        let outcome = complete_durably(&inner, &run_id, &current, &completion, &metadata).await;
        let outcome = match outcome {
            Err(e) => match inner.backend.latest_snapshot(&run_id).await {
                // The engine moved on (a wait completed as we finished): name the latest.
                Ok((run, latest)) if latest.id != current && !run.status.is_final() => {
                    inner.backend.complete_attempt(&run_id, &latest.id, completion, metadata).await
                }
                _ => Err(e),
            },
            ok => ok,
        };
        match outcome {
            Ok(_) if token.reason() == Some(CancelReason::Shutdown) => break,
            Ok(o) if o.status == AttemptStatus::RetryImmediately => {
                let at = o.retry_at.unwrap_or_else(|| inner.backend.now());
                let wait = (at - inner.backend.now()).max(0) as u64;
                *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = o.snapshot.id.clone();
                tokio::time::sleep(Duration::from_millis(wait)).await;
                snapshot_id = o.snapshot.id;
            }
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(target: "trigger_sdk::worker", run = %run_id, error = %e, "completing the attempt failed");
                break;
            }
        }
    }
    heartbeat.abort();
    drop(lease);
    // Only this execution's entry: a queued retry may already run again here under the same
    // run id, and removing its entry would cut it off from its changes.
    let mut active = inner.active.lock().unwrap_or_else(|e| e.into_inner());
    if active.get(&run_id).is_some_and(|a| a.token.same(&token)) {
        active.remove(&run_id);
    }
}

/// How long a worker keeps offering a completion the server could not take (it is down or
/// restarting): as long as the executing lease, which the heartbeat keeps alive meanwhile. A
/// result already computed is worth more than running the attempt again.
const COMPLETION_PATIENCE: Duration = Duration::from_secs(300);

/// Reports how an attempt ended until the server takes it, refuses it (a stale snapshot, a
/// run that is gone, a bad completion), or [`COMPLETION_PATIENCE`] runs out.
async fn complete_durably(
    inner: &Inner,
    run_id: &str,
    snapshot_id: &str,
    completion: &Completion,
    metadata: &Option<MetadataUpdate>,
) -> Result<AttemptOutcome> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let result =
            inner.backend.complete_attempt(run_id, snapshot_id, completion.clone(), metadata.clone()).await;
        let error = match result {
            Ok(outcome) => return Ok(outcome),
            Err(e) if !may_succeed_later(&e) || started.elapsed() >= COMPLETION_PATIENCE => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(target: "trigger_sdk::worker", run = %run_id, error = %error, "the server did not take the completion; offering it again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// An error after which the same call may succeed: the server or its database was away.
fn may_succeed_later(error: &Error) -> bool {
    match error {
        Error::Engine(e) => e.is_transient() || matches!(e, trigger_engine::Error::Shutdown),
        Error::Protocol(_) => true,
        _ => false,
    }
}

async fn confirm_cancel_or_log(inner: &Inner, run_id: &str, error: Error) {
    if let Ok((run, snap)) = inner.backend.latest_snapshot(run_id).await {
        if run.execution_status == ExecutionStatus::PendingCancel {
            let completion = Completion::failure(TaskRunError::internal(
                InternalErrorCode::TaskRunCancelled,
                "canceled before it started",
            ));
            let _ = inner.backend.complete_attempt(run_id, &snap.id, completion, None).await;
            return;
        }
    }
    tracing::warn!(target: "trigger_sdk::worker", run = %run_id, error = %error, "starting the attempt failed");
}

async fn heartbeat_loop(
    backend: SharedBackend,
    run_id: String,
    snapshot: Arc<Mutex<String>>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let id = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = backend.heartbeat(&run_id, &id).await {
            if let Ok((run, snap)) = backend.latest_snapshot(&run_id).await {
                if run.execution_status.has_worker() && snap.id != id {
                    *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snap.id.clone();
                    let _ = backend.heartbeat(&run_id, &snap.id).await;
                    continue;
                }
            }
            tracing::debug!(target: "trigger_sdk::worker", run = %run_id, error = %e, "heartbeat failed");
        }
    }
}

/// Executes one attempt in the run's scope; returns its completion and the metadata not
/// yet flushed.
async fn attempt(
    inner: &Arc<Inner>,
    started: trigger_engine::StartedAttempt,
    token: CancellationToken,
    snapshot: Arc<Mutex<String>>,
    changes: watch::Receiver<Heard>,
    lease: Arc<Lease>,
) -> (Completion, Option<trigger_engine::MetadataUpdate>) {
    let ctx = Context::from_attempt(&started, token);
    let metadata: Value = started
        .run
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Default::default()));
    let scope = Arc::new(RunScope {
        backend: inner.backend.clone(),
        ctx: ctx.clone(),
        snapshot_id: snapshot,
        changes,
        locals: Mutex::new(HashMap::new()),
        metadata: Mutex::new(MetadataState { current: metadata, ..Default::default() }),
        logs: Mutex::new(Vec::new()),
        flush_lock: tokio::sync::Mutex::new(()),
        waiting: tokio::sync::Mutex::new(()),
        lease,
        wait_hook: Mutex::new(None),
    });
    let Some(task) = inner.tasks.get(&started.run.task).cloned() else {
        let error = TaskRunError::internal(
            InternalErrorCode::CouldNotFindTask,
            format!("task {:?} is not registered with this worker", started.run.task),
        );
        return (Completion::failure(error), None);
    };
    let flusher = tokio::spawn({
        let scope = scope.clone();
        let every = inner.options.flush_interval;
        async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = scope.flush().await {
                    tracing::debug!(target: "trigger_sdk::worker", error = %e, "metadata flush failed");
                }
            }
        }
    });
    // An offloaded payload (128 KB and more from the TS SDK) is fetched first.
    let payload = match inner.backend.import_packet(started.payload.clone()).await {
        Ok(p) => p,
        Err(e) => {
            flusher.abort();
            let error = TaskRunError::internal(InternalErrorCode::TaskInputError, format!("payload: {e}"));
            return (Completion::failure(error), None);
        }
    };
    let backend = inner.backend.clone();
    let input =
        ExecInput { payload, ctx, globals: inner.globals.clone(), now: Arc::new(move || backend.now()) };
    let executed = tokio::spawn(scope::enter(scope.clone(), task.execute(input))).await;
    // A flush in flight has taken its operations already: let it finish before stopping the
    // flusher, or they are lost (neither sent nor carried by the completion).
    let _guard = scope.flush_lock.lock().await;
    flusher.abort();
    let completion = match executed {
        Ok(c) => c,
        Err(e) => Completion::failure(TaskRunError::BuiltIn {
            name: "Panic".into(),
            message: format!("the attempt panicked outside run: {e}"),
            stack_trace: String::new(),
            causes: None,
        }),
    };
    // Whatever no flush took rides with the completion; logs go first.
    let logs = std::mem::take(&mut *scope.logs.lock().unwrap_or_else(|e| e.into_inner()));
    if !logs.is_empty() {
        if let Err(e) = scope.backend.record_events(&scope.ctx.run.id, logs).await {
            tracing::debug!(target: "trigger_sdk::worker", error = %e, "storing log lines failed");
        }
    }
    let metadata = scope.metadata.lock().unwrap_or_else(|e| e.into_inner()).take();
    (completion, metadata)
}
