//! Lifecycle hooks and middleware: their arguments, their return values, and the global
//! registry behind `tasks::middleware`, `tasks::on_start`, ….
//!
//! Order of one attempt (see the crate docs for the whole picture):
//!
//! 1. middleware, global first (in registration order), then the task's own, each wrapping
//!    the rest through [`Next::run`];
//! 2. inside them (as v4's `executeTask`): `on_start_attempt` (global, then task), `on_start`
//!    on the first attempt only (global, then task), then `run`;
//! 3. on success: `on_success`, then `on_complete`;
//!    on failure (an error or a panic in `run`, or a start hook's error): `catch_error`
//!    (task, then global; the first non-default answer wins) and, when no retry follows,
//!    `on_failure`, then `on_complete`;
//! 4. `cleanup`, after every attempt that was not canceled or timed out;
//!
//! so a middleware's code after `next.run().await` sees all of them done, and what it set
//! up (a connection in a local, say) is still there for them. A middleware that fails
//! before calling `next`, or returns without calling it, fails the attempt; steps 3–4 then
//! run outside it.
//!
//! Around every wait inside `run`: `on_wait` before the run blocks, `on_resume` once it
//! continues. When the run is canceled while executing: `on_cancel`, instead of steps 3–4,
//! once the attempt has stopped (`run` returned after seeing `ctx.signal`, or was dropped at
//! its next await), so no code of the attempt runs after it.
//!
//! As in v4, every hook kind runs its global hooks (registered with [`crate::tasks`], in
//! registration order) before the task's own, except `catch_error`, where the task's hook
//! is asked first. Global hooks see the payload (and output) as JSON.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use trigger_engine::RetryOptions;

use crate::backend::BoxFuture;
use crate::context::Context;
use crate::error::TaskError;
use crate::wait::WaitInfo;

/// What a hook may return: nothing, or a `Result` whose error fails the attempt (for the
/// hooks that run before `run` returns) or is logged (for the others).
pub trait HookResult: Send + 'static {
    /// The hook's outcome as a result.
    fn into_result(self) -> Result<(), TaskError>;
}

impl HookResult for () {
    fn into_result(self) -> Result<(), TaskError> {
        Ok(())
    }
}

impl<E: Into<TaskError> + Send + 'static> HookResult for Result<(), E> {
    fn into_result(self) -> Result<(), TaskError> {
        self.map_err(Into::into)
    }
}

pub(crate) type Hook<A> = Arc<dyn Fn(A) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync>;
pub(crate) type CatchHook<A> = Arc<dyn Fn(A) -> BoxFuture<'static, CatchError> + Send + Sync>;
pub(crate) type Middleware =
    Arc<dyn Fn(MiddlewareArgs) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync>;

pub(crate) fn hook<A, F, Fut, R>(f: F) -> Hook<A>
where
    A: 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    Arc::new(move |args| {
        let fut = f(args);
        Box::pin(async move { fut.await.into_result() })
    })
}

pub(crate) fn catch_hook<A, F, Fut>(f: F) -> CatchHook<A>
where
    A: 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CatchError> + Send + 'static,
{
    Arc::new(move |args| Box::pin(f(args)))
}

pub(crate) fn middleware_fn<F, Fut, R>(f: F) -> Middleware
where
    F: Fn(MiddlewareArgs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    Arc::new(move |args| {
        let fut = f(args);
        Box::pin(async move { fut.await.into_result() })
    })
}

/// Arguments of `on_start`, `on_start_attempt` and `cleanup`.
#[derive(Debug, Clone)]
pub struct StartArgs<P> {
    /// The payload.
    pub payload: Arc<P>,
    /// The run context.
    pub ctx: Context,
}

/// Arguments of `on_success`.
#[derive(Debug)]
pub struct SuccessArgs<P, O> {
    /// The payload.
    pub payload: Arc<P>,
    /// The output.
    pub output: Arc<O>,
    /// The run context.
    pub ctx: Context,
}

/// Arguments of `on_failure` (the final failure only).
#[derive(Debug, Clone)]
pub struct FailureArgs<P> {
    /// The payload.
    pub payload: Arc<P>,
    /// The error.
    pub error: TaskError,
    /// The run context.
    pub ctx: Context,
}

/// Arguments of `on_complete`: the output or the final error.
#[derive(Debug)]
pub struct CompleteArgs<P, O> {
    /// The payload.
    pub payload: Arc<P>,
    /// The output, or the final error.
    pub result: Result<Arc<O>, TaskError>,
    /// The run context.
    pub ctx: Context,
}

/// Arguments of `catch_error`.
#[derive(Debug, Clone)]
pub struct CatchErrorArgs<P> {
    /// The payload.
    pub payload: Arc<P>,
    /// The error.
    pub error: TaskError,
    /// The run context.
    pub ctx: Context,
    /// The retry policy in force, if any.
    pub retry: Option<RetryOptions>,
    /// When the default policy would retry (`None`: it would not).
    pub retry_at: Option<SystemTime>,
    /// The default policy's delay.
    pub retry_delay: Option<Duration>,
}

/// Arguments of `on_wait` and `on_resume`.
#[derive(Debug, Clone)]
pub struct WaitArgs<P> {
    /// The payload.
    pub payload: Arc<P>,
    /// The run context.
    pub ctx: Context,
    /// What the run waits on.
    pub wait: WaitInfo,
}

/// Arguments of `on_cancel`.
#[derive(Debug, Clone)]
pub struct CancelArgs<P> {
    /// The payload.
    pub payload: Arc<P>,
    /// The run context.
    pub ctx: Context,
}

/// What `catch_error` decides (`HandleErrorModificationOptions`).
#[derive(Debug, Clone, Default)]
pub enum CatchError {
    /// Use the retry policy (`undefined` in TS); the next hook may still decide.
    #[default]
    Default,
    /// Fail now (`{ skipRetrying: true }`).
    SkipRetrying,
    /// Retry at this time (`{ retryAt }`).
    RetryAt(SystemTime),
    /// Retry after this delay (`{ retryDelayInMs }`).
    RetryAfter(Duration),
    /// Recompute the delay with these options (`{ retry: RetryOptions }`).
    Retry(RetryOptions),
    /// Report this error instead, keeping the default retry (`{ error }`).
    ReplaceError(TaskError),
}

impl CatchError {
    /// `{ retry: bool }`: `true` keeps the default behaviour, `false` skips retrying.
    pub fn retry(retry: bool) -> Self {
        if retry {
            CatchError::Default
        } else {
            CatchError::SkipRetrying
        }
    }
}

/// Arguments of a middleware: call `next.run().await` to run the rest of the attempt.
pub struct MiddlewareArgs {
    /// The run context.
    pub ctx: Context,
    /// The payload as JSON.
    pub payload: Arc<Value>,
    /// The task id.
    pub task: String,
    /// The rest of the attempt.
    pub next: Next,
}

impl std::fmt::Debug for MiddlewareArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiddlewareArgs").field("task", &self.task).finish_non_exhaustive()
    }
}

/// The rest of the attempt, handed to a middleware.
pub struct Next {
    inner: Box<dyn FnOnce() -> BoxFuture<'static, Result<(), TaskError>> + Send>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

impl Next {
    /// Runs the inner middleware, the start hooks and `run`. Its error is the attempt's
    /// error; a middleware that swallows it does not turn the attempt into a success.
    pub async fn run(self) -> Result<(), TaskError> {
        (self.inner)().await
    }
}

/// Wraps `core` in middleware, outermost first.
pub(crate) fn chain(
    middleware: Vec<Middleware>,
    ctx: &Context,
    payload: &Arc<Value>,
    core: Box<dyn FnOnce() -> BoxFuture<'static, Result<(), TaskError>> + Send>,
) -> BoxFuture<'static, Result<(), TaskError>> {
    let mut next = core;
    for mw in middleware.into_iter().rev() {
        let inner = next;
        let (ctx, payload) = (ctx.clone(), payload.clone());
        next = Box::new(move || {
            mw(MiddlewareArgs { task: ctx.task.id.clone(), ctx, payload, next: Next { inner } })
        });
    }
    next()
}

/// Hooks registered for every task (`tasks.onStart(...)`, `tasks.middleware(...)`, …).
/// Payloads and outputs are JSON here. A name registered again replaces its hook.
#[derive(Clone, Default)]
pub(crate) struct Globals {
    pub middleware: Vec<(String, Middleware)>,
    pub on_start: Vec<(String, Hook<StartArgs<Value>>)>,
    pub on_start_attempt: Vec<(String, Hook<StartArgs<Value>>)>,
    pub on_success: Vec<(String, Hook<SuccessArgs<Value, Value>>)>,
    pub on_failure: Vec<(String, Hook<FailureArgs<Value>>)>,
    pub on_complete: Vec<(String, Hook<CompleteArgs<Value, Value>>)>,
    pub catch_error: Vec<(String, CatchHook<CatchErrorArgs<Value>>)>,
    pub cleanup: Vec<(String, Hook<StartArgs<Value>>)>,
    pub on_wait: Vec<(String, Hook<WaitArgs<Value>>)>,
    pub on_resume: Vec<(String, Hook<WaitArgs<Value>>)>,
    pub on_cancel: Vec<(String, Hook<CancelArgs<Value>>)>,
}

static GLOBALS: RwLock<Option<Globals>> = RwLock::new(None);

pub(crate) fn globals() -> Globals {
    GLOBALS.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
}

fn upsert<T>(list: &mut Vec<(String, T)>, name: &str, value: T) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name.to_string(), value)),
    }
}

pub(crate) fn register(f: impl FnOnce(&mut Globals)) {
    let mut guard = GLOBALS.write().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Globals::default));
}

pub(crate) fn register_middleware(name: &str, mw: Middleware) {
    register(|g| upsert(&mut g.middleware, name, mw));
}

pub(crate) fn register_on_start(name: &str, h: Hook<StartArgs<Value>>) {
    register(|g| upsert(&mut g.on_start, name, h));
}

pub(crate) fn register_on_start_attempt(name: &str, h: Hook<StartArgs<Value>>) {
    register(|g| upsert(&mut g.on_start_attempt, name, h));
}

pub(crate) fn register_on_success(name: &str, h: Hook<SuccessArgs<Value, Value>>) {
    register(|g| upsert(&mut g.on_success, name, h));
}

pub(crate) fn register_on_failure(name: &str, h: Hook<FailureArgs<Value>>) {
    register(|g| upsert(&mut g.on_failure, name, h));
}

pub(crate) fn register_on_complete(name: &str, h: Hook<CompleteArgs<Value, Value>>) {
    register(|g| upsert(&mut g.on_complete, name, h));
}

pub(crate) fn register_catch_error(name: &str, h: CatchHook<CatchErrorArgs<Value>>) {
    register(|g| upsert(&mut g.catch_error, name, h));
}

pub(crate) fn register_cleanup(name: &str, h: Hook<StartArgs<Value>>) {
    register(|g| upsert(&mut g.cleanup, name, h));
}

pub(crate) fn register_on_wait(name: &str, h: Hook<WaitArgs<Value>>) {
    register(|g| upsert(&mut g.on_wait, name, h));
}

pub(crate) fn register_on_resume(name: &str, h: Hook<WaitArgs<Value>>) {
    register(|g| upsert(&mut g.on_resume, name, h));
}

pub(crate) fn register_on_cancel(name: &str, h: Hook<CancelArgs<Value>>) {
    register(|g| upsert(&mut g.on_cancel, name, h));
}

impl<P, O> Clone for SuccessArgs<P, O> {
    fn clone(&self) -> Self {
        SuccessArgs { payload: self.payload.clone(), output: self.output.clone(), ctx: self.ctx.clone() }
    }
}

impl<P, O> Clone for CompleteArgs<P, O> {
    fn clone(&self) -> Self {
        CompleteArgs { payload: self.payload.clone(), result: self.result.clone(), ctx: self.ctx.clone() }
    }
}
