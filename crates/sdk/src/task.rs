//! Defining tasks: [`task`] returns a builder; `.run(..)` finishes it into a [`Task`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use trigger_engine::{
    Completion, InternalErrorCode, MachinePreset, Millis, Packet, QueueManifest, RetryOptions, RetryProposal,
    TaskManifest,
};

use crate::backend::BoxFuture;
use crate::context::{CancelReason, Context};
use crate::error::TaskError;
use crate::hooks::{
    self, CancelArgs, CatchError, CatchErrorArgs, CatchHook, CompleteArgs, FailureArgs, Globals, Hook,
    HookResult, Middleware, MiddlewareArgs, StartArgs, SuccessArgs, WaitArgs,
};
use crate::queue::Queue;
use crate::scope;

type RunFn<P, O> = Arc<dyn Fn(P, Context) -> BoxFuture<'static, Result<O, TaskError>> + Send + Sync>;

/// The hooks and options of a task, before `run` completes it.
pub struct TaskBuilder<P, O> {
    id: String,
    description: Option<String>,
    file_path: Option<String>,
    queue: Option<Queue>,
    machine: Option<MachinePreset>,
    max_duration: Option<Duration>,
    retry: Option<RetryOptions>,
    ttl: Option<Duration>,
    hooks: TaskHooks<P, O>,
}

struct TaskHooks<P, O> {
    on_start: Option<Hook<StartArgs<P>>>,
    on_start_attempt: Option<Hook<StartArgs<P>>>,
    on_success: Option<Hook<SuccessArgs<P, O>>>,
    on_failure: Option<Hook<FailureArgs<P>>>,
    on_complete: Option<Hook<CompleteArgs<P, O>>>,
    catch_error: Option<CatchHook<CatchErrorArgs<P>>>,
    cleanup: Option<Hook<StartArgs<P>>>,
    on_wait: Option<Hook<WaitArgs<P>>>,
    on_resume: Option<Hook<WaitArgs<P>>>,
    on_cancel: Option<Hook<CancelArgs<P>>>,
    middleware: Vec<Middleware>,
}

impl<P, O> Default for TaskHooks<P, O> {
    fn default() -> Self {
        TaskHooks {
            on_start: None,
            on_start_attempt: None,
            on_success: None,
            on_failure: None,
            on_complete: None,
            catch_error: None,
            cleanup: None,
            on_wait: None,
            on_resume: None,
            on_cancel: None,
            middleware: Vec::new(),
        }
    }
}

/// Starts defining a task with payload type `P` and output type `O`.
///
/// ```
/// use trigger_sdk::{task, TaskError};
/// let child = task::<serde_json::Value, String>("child-task")
///     .run(|item, _ctx| async move { Ok::<_, TaskError>(format!("processed-{}", item["id"])) });
/// assert_eq!(child.id(), "child-task");
/// ```
pub fn task<P, O>(id: impl Into<String>) -> TaskBuilder<P, O> {
    TaskBuilder {
        id: id.into(),
        description: None,
        file_path: None,
        queue: None,
        machine: None,
        max_duration: None,
        retry: None,
        ttl: None,
        hooks: TaskHooks::default(),
    }
}

macro_rules! hook_setter {
    ($(#[$doc:meta])* $name:ident, $args:ty) => {
        $(#[$doc])*
        pub fn $name<F, Fut, R>(mut self, f: F) -> Self
        where
            F: Fn($args) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: HookResult,
        {
            self.hooks.$name = Some(hooks::hook(f));
            self
        }
    };
}

impl<P, O> TaskBuilder<P, O>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A description, shown in the dashboard.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The source file recorded in the manifest (`ctx.task.file_path`).
    pub fn file_path(mut self, path: impl Into<String>) -> Self {
        self.file_path = Some(path.into());
        self
    }

    /// Runs on a shared queue instead of the task's own `task/<id>` queue.
    pub fn queue(mut self, queue: &Queue) -> Self {
        self.queue = Some(queue.clone());
        self
    }

    /// The machine preset (default `small-1x`).
    pub fn machine(mut self, machine: MachinePreset) -> Self {
        self.machine = Some(machine);
        self
    }

    /// Compute time an attempt may use (whole seconds, at least 5 s as the engine clamps
    /// it). Time spent waiting does not count.
    pub fn max_duration(mut self, max_duration: Duration) -> Self {
        self.max_duration = Some(max_duration);
        self
    }

    /// The retry policy. Without one a failed run is not retried.
    pub fn retry(mut self, retry: RetryOptions) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A run not started within this time expires.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    hook_setter!(
        /// Before the first attempt only (`onStart`).
        on_start, StartArgs<P>
    );
    hook_setter!(
        /// Before every attempt (`onStartAttempt`).
        on_start_attempt, StartArgs<P>
    );
    hook_setter!(
        /// After a successful attempt (`onSuccess`).
        on_success, SuccessArgs<P, O>
    );
    hook_setter!(
        /// After the final failed attempt, when no retry follows (`onFailure`). Not called
        /// for canceled or timed-out runs.
        on_failure, FailureArgs<P>
    );
    hook_setter!(
        /// After success or final failure (`onComplete`).
        on_complete, CompleteArgs<P, O>
    );
    hook_setter!(
        /// After every attempt, success or failure (`cleanup`).
        cleanup, StartArgs<P>
    );
    hook_setter!(
        /// Before the run blocks on a wait (`onWait`).
        on_wait, WaitArgs<P>
    );
    hook_setter!(
        /// After a wait completes (`onResume`).
        on_resume, WaitArgs<P>
    );
    hook_setter!(
        /// When the run is canceled while executing (`onCancel`).
        on_cancel, CancelArgs<P>
    );

    /// Decides what happens after `run` fails (`catchError`).
    pub fn catch_error<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(CatchErrorArgs<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CatchError> + Send + 'static,
    {
        self.hooks.catch_error = Some(hooks::catch_hook(f));
        self
    }

    /// A middleware of this task, inside the global ones.
    pub fn middleware<F, Fut, R>(mut self, f: F) -> Self
    where
        F: Fn(MiddlewareArgs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HookResult,
    {
        self.hooks.middleware.push(hooks::middleware_fn(f));
        self
    }

    /// The task's function; finishes the definition.
    pub fn run<F, Fut>(self, f: F) -> Task<P, O>
    where
        F: Fn(P, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    {
        let run: RunFn<P, O> = Arc::new(move |p, ctx| Box::pin(f(p, ctx)));
        Task {
            inner: Arc::new(TaskInner {
                id: self.id,
                description: self.description,
                file_path: self.file_path,
                queue: self.queue,
                machine: self.machine,
                max_duration: self.max_duration,
                retry: self.retry,
                ttl: self.ttl,
                hooks: self.hooks,
                run,
            }),
        }
    }
}

struct TaskInner<P, O> {
    id: String,
    description: Option<String>,
    file_path: Option<String>,
    queue: Option<Queue>,
    machine: Option<MachinePreset>,
    max_duration: Option<Duration>,
    retry: Option<RetryOptions>,
    ttl: Option<Duration>,
    hooks: TaskHooks<P, O>,
    run: RunFn<P, O>,
}

/// A task definition. Cheap to clone; usually kept in a `static` (`LazyLock`).
pub struct Task<P, O> {
    inner: Arc<TaskInner<P, O>>,
}

impl<P, O> Clone for Task<P, O> {
    fn clone(&self) -> Self {
        Task { inner: self.inner.clone() }
    }
}

impl<P, O> std::fmt::Debug for Task<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

impl<P, O> Task<P, O> {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

/// The payload and output types of a task, for `tasks::trigger::<T>("id", ..)` from code
/// that names the task only by type (`tasks.trigger<typeof processData>` in TS).
pub trait TaskSpec {
    /// The payload.
    type Payload: Serialize + Send + Sync;
    /// The output.
    type Output: DeserializeOwned + Send;
}

impl<P, O> TaskSpec for Task<P, O>
where
    P: Serialize + Send + Sync,
    O: DeserializeOwned + Send,
{
    type Payload = P;
    type Output = O;
}

/// A task as the worker sees it: a manifest entry and a function from a payload packet to
/// a completion.
pub(crate) trait ErasedTask: Send + Sync {
    fn id(&self) -> &str;
    fn manifest(&self) -> (TaskManifest, Option<QueueManifest>);
    fn execute(&self, input: ExecInput) -> BoxFuture<'static, Completion>;
}

/// What the worker hands a task for one attempt.
pub(crate) struct ExecInput {
    pub payload: Packet,
    pub ctx: Context,
    pub globals: Arc<Globals>,
    /// The engine's clock, for retry times.
    pub now: Arc<dyn Fn() -> Millis + Send + Sync>,
}

/// A task ready to be registered with a worker (see [`IntoTask`]).
pub struct RegisteredTask(pub(crate) Arc<dyn ErasedTask>);

impl std::fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegisteredTask").field(&self.0.id()).finish()
    }
}

/// Something a worker can run: a [`Task`], a reference to one, or a `LazyLock` static.
pub trait IntoTask {
    /// Type-erases the task for the worker.
    fn into_task(self) -> RegisteredTask;
}

impl IntoTask for RegisteredTask {
    fn into_task(self) -> RegisteredTask {
        self
    }
}

impl<P, O> IntoTask for Task<P, O>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_task(self) -> RegisteredTask {
        RegisteredTask(Arc::new(self))
    }
}

impl<P, O> IntoTask for &Task<P, O>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_task(self) -> RegisteredTask {
        RegisteredTask(Arc::new(self.clone()))
    }
}

impl<P, O> IntoTask for &LazyLock<Task<P, O>>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_task(self) -> RegisteredTask {
        RegisteredTask(Arc::new((**self).clone()))
    }
}

fn to_millis(t: std::time::SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

fn from_millis(ms: Millis) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// How long after a shutdown a handed-back run is retried.
const HAND_BACK_DELAY: Duration = Duration::from_secs(6);

fn hooks_of<A>(list: &[(String, Hook<A>)]) -> Vec<Hook<A>> {
    list.iter().map(|(_, h)| h.clone()).collect()
}

fn failure(error: TaskError, retry: Option<RetryProposal>, usage_ms: u64) -> Completion {
    let skipped_retrying = retry.is_none();
    Completion::Failure { error: error.into_run_error(), retry, skipped_retrying, usage_ms }
}

async fn call_all<A: Clone>(
    hooks: impl IntoIterator<Item = Hook<A>>,
    args: &A,
    what: &str,
) -> Result<(), TaskError> {
    for h in hooks {
        if let Err(e) = h(args.clone()).await {
            tracing::debug!(target: "trigger_sdk::worker", hook = what, error = %e, "hook failed");
            return Err(e);
        }
    }
    Ok(())
}

async fn call_ignoring<A: Clone>(hooks: impl IntoIterator<Item = Hook<A>>, args: &A, what: &str) {
    for h in hooks {
        if let Err(e) = h(args.clone()).await {
            tracing::warn!(target: "trigger_sdk::worker", hook = what, error = %e, "hook failed (ignored)");
        }
    }
}

impl<P, O> ErasedTask for Task<P, O>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn manifest(&self) -> (TaskManifest, Option<QueueManifest>) {
        let t = &self.inner;
        let mut m = TaskManifest::new(t.id.clone());
        if let Some(path) = &t.file_path {
            m.file_path = path.clone();
        }
        m.description = t.description.clone();
        m.queue_name = t.queue.as_ref().map(|q| q.name().to_string());
        m.retry = t.retry.clone();
        m.machine = t.machine;
        m.max_duration_secs = t.max_duration.map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32);
        m.ttl_ms = t.ttl.map(|d| d.as_millis() as u64);
        let queue = t
            .queue
            .as_ref()
            .map(|q| QueueManifest { name: q.name().to_string(), concurrency_limit: q.limit() });
        (m, queue)
    }

    fn execute(&self, input: ExecInput) -> BoxFuture<'static, Completion> {
        let task = self.inner.clone();
        Box::pin(execute(task, input))
    }
}

async fn execute<P, O>(task: Arc<TaskInner<P, O>>, input: ExecInput) -> Completion
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    O: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let ExecInput { payload, ctx, globals, now } = input;
    let raw: Value = match crate::packet::to_json(payload.data.as_deref(), &payload.data_type) {
        Ok(v) => v,
        Err(e) => {
            let e = TaskError::internal(InternalErrorCode::TaskInputError, format!("payload: {e}"));
            return failure(e, None, 0);
        }
    };
    let typed: P = match serde_json::from_value(raw.clone()) {
        Ok(p) => p,
        Err(e) => {
            let e = TaskError::internal(
                InternalErrorCode::TaskInputError,
                format!("payload does not match the task's payload type: {e}"),
            );
            return failure(e, None, 0);
        }
    };
    let payload = Arc::new(typed);
    let raw = Arc::new(raw);
    let scope = scope::current();

    if let Some(scope) = &scope {
        let (on_wait, on_resume) = (task.hooks.on_wait.clone(), task.hooks.on_resume.clone());
        let (global_wait, global_resume) = (hooks_of(&globals.on_wait), hooks_of(&globals.on_resume));
        let any =
            on_wait.is_some() || on_resume.is_some() || !global_wait.is_empty() || !global_resume.is_empty();
        if any {
            let (payload, raw, ctx) = (payload.clone(), raw.clone(), ctx.clone());
            let hook: scope::WaitHook = Arc::new(move |wait, resumed| {
                let (globals, own, what) = if resumed {
                    (global_resume.clone(), on_resume.clone(), "onResume")
                } else {
                    (global_wait.clone(), on_wait.clone(), "onWait")
                };
                let gargs = WaitArgs { payload: raw.clone(), ctx: ctx.clone(), wait: wait.clone() };
                let args = WaitArgs { payload: payload.clone(), ctx: ctx.clone(), wait };
                Box::pin(async move {
                    call_ignoring(globals, &gargs, what).await;
                    call_ignoring(own, &args, what).await;
                })
            });
            *scope.wait_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
        }
    }

    // The core, innermost in the middleware (as v4's executeTask): the start hooks, `run`,
    // then the hooks that follow it and `cleanup`. Its completion lands in `slot`.
    let slot: Arc<Mutex<Option<Completion>>> = Arc::new(Mutex::new(None));
    let core = {
        let (task, globals, payload, ctx, slot) =
            (task.clone(), globals.clone(), payload.clone(), ctx.clone(), slot.clone());
        let (raw, now) = (raw.clone(), now.clone());
        Box::new(move || -> BoxFuture<'static, Result<(), TaskError>> {
            Box::pin(async move {
                let result = async {
                    let gargs = StartArgs { payload: raw.clone(), ctx: ctx.clone() };
                    let args = StartArgs { payload: payload.clone(), ctx: ctx.clone() };
                    call_all(hooks_of(&globals.on_start_attempt), &gargs, "onStartAttempt").await?;
                    call_all(task.hooks.on_start_attempt.clone(), &args, "onStartAttempt").await?;
                    if ctx.attempt.number <= 1 {
                        call_all(hooks_of(&globals.on_start), &gargs, "onStart").await?;
                        call_all(task.hooks.on_start.clone(), &args, "onStart").await?;
                    }
                    CatchPanic((task.run)((*payload).clone(), ctx.clone())).await
                }
                .await;
                if ctx.signal.is_cancelled() {
                    // Canceled, out of compute time or handed back: none of the hooks that
                    // follow `run` apply (the caller reports the attempt).
                    return Err(TaskError::internal(
                        InternalErrorCode::TaskExecutionAborted,
                        "the attempt was aborted",
                    ));
                }
                let out = result.as_ref().map(|_| ()).map_err(Clone::clone);
                let completion = settle(&task, &globals, &payload, &raw, &ctx, &*now, result).await;
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(completion);
                out
            })
        })
    };
    let mut middleware: Vec<Middleware> = globals.middleware.iter().map(|(_, m)| m.clone()).collect();
    middleware.extend(task.hooks.middleware.iter().cloned());
    let chained = hooks::chain(middleware, &ctx, &raw, core);

    let limit = ctx.run.max_duration.map(|s| Duration::from_secs(s as u64));
    let usage = Arc::new(AtomicU64::new(0));
    let timed = ComputeTimed { inner: chained, used: usage.clone(), limit, signal: ctx.signal.clone() };
    let mut inner = match &scope {
        Some(scope) => tokio::spawn(scope::enter(scope.clone(), timed)),
        None => tokio::spawn(timed),
    };
    let joined = tokio::select! {
        joined = &mut inner => Some(joined),
        _ = ctx.signal.cancelled() => {
            // Stop the attempt before anything else runs: it is dropped at its next await
            // (or has just finished), so no code of it runs after the cancel hooks.
            inner.abort();
            let _ = (&mut inner).await;
            None
        }
    };
    let usage_ms = usage.load(Ordering::SeqCst) / 1000;
    let chain_result: Result<(), TaskError> = match joined {
        Some(Ok(r)) => r,
        Some(Err(join)) if join.is_panic() => {
            Err(TaskError::panic(panic_message(join.into_panic().as_ref())))
        }
        Some(Err(_)) => {
            Err(TaskError::internal(InternalErrorCode::TaskExecutionAborted, "the attempt was aborted"))
        }
        None => Err(TaskError::internal(InternalErrorCode::TaskExecutionAborted, "the attempt was aborted")),
    };

    match ctx.signal.reason() {
        Some(CancelReason::MaxDuration) => {
            let secs = ctx.run.max_duration.unwrap_or(0);
            let e = TaskError::internal(
                InternalErrorCode::MaxDurationExceeded,
                format!("the run exceeded its maximum duration of {secs}s of compute time"),
            );
            return failure(e, None, usage_ms);
        }
        Some(CancelReason::Canceled) => {
            let gargs = CancelArgs { payload: raw.clone(), ctx: ctx.clone() };
            call_ignoring(hooks_of(&globals.on_cancel), &gargs, "onCancel").await;
            let args = CancelArgs { payload: payload.clone(), ctx: ctx.clone() };
            call_ignoring(task.hooks.on_cancel.clone(), &args, "onCancel").await;
            let e = TaskError::internal(InternalErrorCode::TaskRunCancelled, "the run was canceled");
            return failure(e, None, usage_ms);
        }
        Some(CancelReason::Shutdown) => {
            // Handed back. A delay above the engine's warm-start threshold (5 s by default, with
            // a second for the trip there) makes the engine queue the retry instead of leaving
            // it with this worker, which is going away.
            let e = TaskError::internal(
                InternalErrorCode::GracefulExitTimeout,
                "the worker shut down during the attempt",
            );
            let delay_ms = HAND_BACK_DELAY.as_millis() as u64;
            return Completion::Failure {
                error: e.into_run_error(),
                retry: Some(RetryProposal { at: now() + delay_ms as Millis, delay_ms }),
                skipped_retrying: false,
                usage_ms,
            };
        }
        None => {}
    }

    let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let completion = match (taken, chain_result) {
        // A middleware failed after a successful run: its error is the attempt's.
        (Some(Completion::Success { .. }), Err(e)) => failure(e, None, 0),
        (Some(completion), _) => completion,
        // The core never finished: a middleware failed, panicked or skipped `next.run()`.
        (None, result) => {
            let error = result.err().unwrap_or_else(|| {
                TaskError::internal(
                    InternalErrorCode::TaskMiddlewareError,
                    "a middleware returned without calling next.run()",
                )
            });
            settle(&task, &globals, &payload, &raw, &ctx, &*now, Err::<O, _>(error)).await
        }
    };
    with_usage(completion, usage_ms)
}

fn with_usage(mut completion: Completion, usage: u64) -> Completion {
    match &mut completion {
        Completion::Success { usage_ms, .. } | Completion::Failure { usage_ms, .. } => *usage_ms = usage,
    }
    completion
}

/// What follows `run`: the output or the retry decision (`catch_error`), the hooks of the
/// outcome, then `cleanup`. Each hook kind runs the global hooks first, then the task's own
/// (as v4 does). The completion's usage is filled in later.
async fn settle<P, O>(
    task: &TaskInner<P, O>,
    globals: &Globals,
    payload: &Arc<P>,
    raw: &Arc<Value>,
    ctx: &Context,
    now: &(dyn Fn() -> Millis + Send + Sync),
    result: Result<O, TaskError>,
) -> Completion
where
    P: Clone + Send + Sync + 'static,
    O: Serialize + Send + Sync + 'static,
{
    let cleanup = || async {
        let gargs = StartArgs { payload: raw.clone(), ctx: ctx.clone() };
        call_ignoring(hooks_of(&globals.cleanup), &gargs, "cleanup").await;
        let args = StartArgs { payload: payload.clone(), ctx: ctx.clone() };
        call_ignoring(task.hooks.cleanup.clone(), &args, "cleanup").await;
    };
    let completion = match result {
        Ok(output) => {
            let value = match serde_json::to_value(&output) {
                Ok(v) => v,
                Err(e) => {
                    let e = TaskError::internal(InternalErrorCode::TaskOutputError, format!("output: {e}"));
                    cleanup().await;
                    return failure(e, None, 0);
                }
            };
            let output = Arc::new(output);
            let gvalue = Arc::new(value.clone());
            let gargs = SuccessArgs { payload: raw.clone(), output: gvalue.clone(), ctx: ctx.clone() };
            call_ignoring(hooks_of(&globals.on_success), &gargs, "onSuccess").await;
            let args = SuccessArgs { payload: payload.clone(), output: output.clone(), ctx: ctx.clone() };
            call_ignoring(task.hooks.on_success.clone(), &args, "onSuccess").await;
            let gargs = CompleteArgs { payload: raw.clone(), result: Ok(gvalue), ctx: ctx.clone() };
            call_ignoring(hooks_of(&globals.on_complete), &gargs, "onComplete").await;
            let args = CompleteArgs { payload: payload.clone(), result: Ok(output), ctx: ctx.clone() };
            call_ignoring(task.hooks.on_complete.clone(), &args, "onComplete").await;
            Completion::Success { output: Packet::json(&value), usage_ms: 0 }
        }
        Err(error) => {
            let (error, retry) = decide_retry(task, globals, payload, raw, ctx, error, now).await;
            if retry.is_none() {
                let gargs = FailureArgs { payload: raw.clone(), error: error.clone(), ctx: ctx.clone() };
                call_ignoring(hooks_of(&globals.on_failure), &gargs, "onFailure").await;
                let args = FailureArgs { payload: payload.clone(), error: error.clone(), ctx: ctx.clone() };
                call_ignoring(task.hooks.on_failure.clone(), &args, "onFailure").await;
                let gargs =
                    CompleteArgs { payload: raw.clone(), result: Err(error.clone()), ctx: ctx.clone() };
                call_ignoring(hooks_of(&globals.on_complete), &gargs, "onComplete").await;
                let args =
                    CompleteArgs { payload: payload.clone(), result: Err(error.clone()), ctx: ctx.clone() };
                call_ignoring(task.hooks.on_complete.clone(), &args, "onComplete").await;
            }
            failure(error, retry, 0)
        }
    };
    cleanup().await;
    completion
}

/// Turns a panic while polling `run` into the attempt's error, so the hooks that follow
/// `run` still run inside the middleware.
struct CatchPanic<F>(F);

impl<F, O> Future for CatchPanic<F>
where
    F: Future<Output = Result<O, TaskError>> + Unpin,
{
    type Output = Result<O, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(TaskError::panic(panic_message(panic.as_ref())))),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The retry policy's answer, then `catch_error` (task first, then global): the reported
/// error and, when the run retries, when.
async fn decide_retry<P, O>(
    task: &TaskInner<P, O>,
    globals: &Globals,
    payload: &Arc<P>,
    raw: &Arc<Value>,
    ctx: &Context,
    mut error: TaskError,
    now: &(dyn Fn() -> Millis + Send + Sync),
) -> (TaskError, Option<RetryProposal>) {
    let attempt = ctx.attempt.number.max(1);
    let policy = task.retry.clone();
    let max_attempts = ctx.run.max_attempts.or(policy.as_ref().map(|p| p.max_attempts)).unwrap_or(1);
    let retriable = !error.is_skip_retrying() && error.run_error().is_retriable() && attempt < max_attempts;
    let delay_with = |p: &RetryOptions| {
        let p = RetryOptions { max_attempts, ..p.clone() };
        p.delay_for_attempt(attempt, rand::random::<f64>())
    };
    let default_delay = if retriable { delay_with(&policy.clone().unwrap_or_default()) } else { None };

    let mut decision = CatchError::Default;
    let base = now();
    let make_args = |error: &TaskError| CatchErrorArgs {
        payload: payload.clone(),
        error: error.clone(),
        ctx: ctx.clone(),
        retry: policy.clone(),
        retry_at: default_delay.map(|d| from_millis(base + d as Millis)),
        retry_delay: default_delay.map(Duration::from_millis),
    };
    if let Some(h) = &task.hooks.catch_error {
        decision = h(make_args(&error)).await;
    }
    if matches!(decision, CatchError::Default) {
        for (_, h) in &globals.catch_error {
            let args = make_args(&error);
            let gargs = CatchErrorArgs {
                payload: raw.clone(),
                error: args.error,
                ctx: args.ctx,
                retry: args.retry,
                retry_at: args.retry_at,
                retry_delay: args.retry_delay,
            };
            decision = h(gargs).await;
            if !matches!(decision, CatchError::Default) {
                break;
            }
        }
    }
    let can_retry = attempt < max_attempts && error.run_error().is_retriable();
    let delay = match decision {
        CatchError::Default => default_delay,
        CatchError::SkipRetrying => None,
        CatchError::RetryAt(at) => can_retry.then(|| (to_millis(at) - base).max(0) as u64),
        CatchError::RetryAfter(d) => can_retry.then_some(d.as_millis() as u64),
        CatchError::Retry(opts) => {
            if can_retry {
                delay_with(&opts)
            } else {
                None
            }
        }
        CatchError::ReplaceError(e) => {
            error = e;
            if !error.is_skip_retrying() && error.run_error().is_retriable() {
                default_delay
            } else {
                None
            }
        }
    };
    (error, delay.map(|d| RetryProposal { at: base + d as Millis, delay_ms: d }))
}

/// Measures the time spent inside the inner future's `poll` (compute, not waiting) and
/// ends it with an error once the limit is used up.
struct ComputeTimed<F> {
    inner: F,
    /// Microseconds of compute so far.
    used: Arc<AtomicU64>,
    limit: Option<Duration>,
    signal: crate::context::CancellationToken,
}

impl<F: Future<Output = Result<(), TaskError>> + Unpin> Future for ComputeTimed<F> {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let start = Instant::now();
        let poll = Pin::new(&mut self.inner).poll(cx);
        let used = self.used.fetch_add(start.elapsed().as_micros() as u64, Ordering::SeqCst)
            + start.elapsed().as_micros() as u64;
        if let (Poll::Pending, Some(limit)) = (&poll, self.limit) {
            if used >= limit.as_micros() as u64 {
                self.signal.cancel(CancelReason::MaxDuration);
                return Poll::Ready(Err(TaskError::internal(
                    InternalErrorCode::MaxDurationExceeded,
                    "maximum compute duration exceeded",
                )));
            }
        }
        poll
    }
}

/// Unit tests of the compute-time accounting.
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compute_time_counts_polls_not_waits() {
        let used = Arc::new(AtomicU64::new(0));
        let signal = crate::context::CancellationToken::new();
        let fut: BoxFuture<'static, Result<(), TaskError>> = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        });
        let timed = ComputeTimed {
            inner: fut,
            used: used.clone(),
            limit: Some(Duration::from_millis(100)),
            signal: signal.clone(),
        };
        assert!(timed.await.is_ok(), "sleeping is not compute");
        assert!(used.load(Ordering::SeqCst) < 50_000);

        let fut: BoxFuture<'static, Result<(), TaskError>> = Box::pin(async {
            loop {
                std::thread::sleep(Duration::from_millis(10));
                tokio::task::yield_now().await;
            }
        });
        let timed = ComputeTimed {
            inner: fut,
            used: used.clone(),
            limit: Some(Duration::from_millis(100)),
            signal: signal.clone(),
        };
        let err = timed.await.unwrap_err();
        assert_eq!(err.code(), Some("MAX_DURATION_EXCEEDED"));
        assert_eq!(signal.reason(), Some(CancelReason::MaxDuration));
    }
}
