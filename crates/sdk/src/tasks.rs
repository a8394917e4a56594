//! `tasks.*`: global hooks and middleware, and triggering tasks by id.

use std::future::Future;

use serde_json::Value;

use crate::client::default_backend;
use crate::error::Result;
use crate::hooks::{
    self, CancelArgs, CatchError, CatchErrorArgs, CompleteArgs, FailureArgs, HookResult, MiddlewareArgs,
    StartArgs, SuccessArgs, WaitArgs,
};
use crate::task::TaskSpec;
use crate::trigger::{self, BatchHandle, BatchTriggerItem, RunHandle, TriggerOptions};

/// Global middleware (`tasks.middleware(name, fn)`): wraps every attempt of every task, in
/// registration order, outside the task's own middleware. Registering a name again replaces
/// it. Register before building the worker: a worker takes the globals it finds then.
///
/// ```
/// use trigger_sdk::{hooks::MiddlewareArgs, tasks};
/// tasks::middleware("timing", |MiddlewareArgs { next, .. }| async move {
///     let started = std::time::Instant::now();
///     let result = next.run().await;
///     println!("attempt took {:?}", started.elapsed());
///     result
/// });
/// ```
pub fn middleware<F, Fut, R>(name: &str, f: F)
where
    F: Fn(MiddlewareArgs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_middleware(name, hooks::middleware_fn(f));
}

/// Global `onStart` (first attempt of every run), with the payload as JSON; before the
/// task's own.
pub fn on_start<F, Fut, R>(name: &str, f: F)
where
    F: Fn(StartArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_start(name, hooks::hook(f));
}

/// Global `onStartAttempt`; before the task's own.
pub fn on_start_attempt<F, Fut, R>(name: &str, f: F)
where
    F: Fn(StartArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_start_attempt(name, hooks::hook(f));
}

/// Global `onSuccess`, with payload and output as JSON; before the task's own.
pub fn on_success<F, Fut, R>(name: &str, f: F)
where
    F: Fn(SuccessArgs<Value, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_success(name, hooks::hook(f));
}

/// Global `onFailure` (final failure only); before the task's own.
pub fn on_failure<F, Fut, R>(name: &str, f: F)
where
    F: Fn(FailureArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_failure(name, hooks::hook(f));
}

/// Global `onComplete`; before the task's own.
pub fn on_complete<F, Fut, R>(name: &str, f: F)
where
    F: Fn(CompleteArgs<Value, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_complete(name, hooks::hook(f));
}

/// Global `catchError`, asked after the task's own when that one returned the default.
pub fn catch_error<F, Fut>(name: &str, f: F)
where
    F: Fn(CatchErrorArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CatchError> + Send + 'static,
{
    hooks::register_catch_error(name, hooks::catch_hook(f));
}

/// Global `cleanup`: after every attempt of every task (success or failure, not when the
/// run was canceled or timed out), before the task's own.
pub fn cleanup<F, Fut, R>(name: &str, f: F)
where
    F: Fn(StartArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_cleanup(name, hooks::hook(f));
}

/// Global `onWait`: before any run blocks on a wait (a duration, a token, a child or a
/// batch), before the task's own.
///
/// ```
/// use trigger_sdk::{hooks::WaitArgs, tasks, wait::WaitInfo};
/// tasks::on_wait("audit", |WaitArgs { ctx, wait, .. }| async move {
///     if let WaitInfo::Token { id } = wait {
///         println!("{} waits for token {id}", ctx.run.id);
///     }
/// });
/// ```
pub fn on_wait<F, Fut, R>(name: &str, f: F)
where
    F: Fn(WaitArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_wait(name, hooks::hook(f));
}

/// Global `onResume`: after a wait of any run completes, before the task's own.
pub fn on_resume<F, Fut, R>(name: &str, f: F)
where
    F: Fn(WaitArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_resume(name, hooks::hook(f));
}

/// Global `onCancel`: when a run is canceled while it executes (not while queued or
/// waiting), before the task's own.
pub fn on_cancel<F, Fut, R>(name: &str, f: F)
where
    F: Fn(CancelArgs<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult,
{
    hooks::register_on_cancel(name, hooks::hook(f));
}

fn backend() -> Result<crate::backend::SharedBackend> {
    match crate::scope::current() {
        Some(s) => Ok(s.backend.clone()),
        None => default_backend(),
    }
}

/// `tasks.trigger<typeof task>("id", payload, options)`: triggers by id, typed by the task
/// (`T` is usually a type alias of the task's [`crate::Task`] type).
pub async fn trigger<T: TaskSpec>(
    id: &str,
    payload: T::Payload,
    options: TriggerOptions,
) -> Result<RunHandle<T::Output>> {
    trigger::trigger_by_id(&backend()?, id, &payload, options).await
}

/// `tasks.triggerAndWait`: triggers a child by id and waits (inside a run).
pub async fn trigger_and_wait<T: TaskSpec>(
    id: &str,
    payload: T::Payload,
    options: TriggerOptions,
) -> Result<trigger::TaskRunResult<T::Output>> {
    trigger::trigger_and_wait_by_id(id, &payload, options).await
}

/// `tasks.batchTrigger`: one run per item.
pub async fn batch_trigger<T: TaskSpec>(
    id: &str,
    items: impl IntoIterator<Item = BatchTriggerItem<T::Payload>>,
) -> Result<BatchHandle> {
    trigger::batch_trigger_by_id(&backend()?, id, items.into_iter().collect()).await
}
