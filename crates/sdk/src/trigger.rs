//! Triggering runs: from a task (`child.trigger_and_wait(..)`) or from any backend code
//! (`tasks::trigger::<T>("id", ..)`).

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use trigger_engine::{
    BatchItem as EngineBatchItem, CreateBatch, MachinePreset, Packet, TaskRunError, TriggerRequest,
};

use crate::backend::SharedBackend;
use crate::error::{Error, Result};
use crate::idempotency_keys::IdempotencyKey;
use crate::scope::{self, RunScope};
use crate::task::Task;
use crate::wait::{self, WaitInfo};

/// Options of a trigger (`TriggerOptions`). Fill what you need and leave the rest to
/// `..Default::default()`.
#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    /// A key that makes the trigger idempotent (a raw `String` converts with the `run`
    /// scope, as [`crate::idempotency_keys::create`] does).
    pub idempotency_key: Option<IdempotencyKey>,
    /// How long the key is remembered (default 30 days).
    pub idempotency_key_ttl: Option<Duration>,
    /// Start no earlier than this from now.
    pub delay: Option<Duration>,
    /// Expire if not started within this time (`Some(Duration::ZERO)` opts out).
    pub ttl: Option<Duration>,
    /// Tags.
    pub tags: Vec<String>,
    /// Initial metadata (a JSON object).
    pub metadata: Option<Value>,
    /// The machine preset.
    pub machine: Option<MachinePreset>,
    /// Most attempts the run may make.
    pub max_attempts: Option<u32>,
    /// Compute-time limit (whole seconds).
    pub max_duration: Option<Duration>,
    /// Run ahead of runs queued up to this much earlier.
    pub priority: Option<Duration>,
    /// Queue name (the queue must be declared by a worker).
    pub queue: Option<String>,
    /// Gives each key its own copy of the queue's limit.
    pub concurrency_key: Option<String>,
    /// Lock to a worker version (plain triggers only).
    pub version: Option<String>,
    /// Mark as a test run.
    pub test: bool,
}

impl TriggerOptions {
    /// Options with an idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Options with initial metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Options with tags.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Options with a delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn into_engine(self, backend: &SharedBackend) -> trigger_engine::TriggerOptions {
        let now = backend.now();
        trigger_engine::TriggerOptions {
            queue: self.queue,
            concurrency_key: self.concurrency_key,
            delay_until: self.delay.map(|d| now + d.as_millis() as i64),
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            tags: self.tags,
            metadata: self.metadata.map(|m| m.to_string()),
            metadata_type: None,
            machine: self.machine,
            max_attempts: self.max_attempts,
            max_duration_secs: self.max_duration.map(|d| d.as_secs() as u32),
            priority_ms: self.priority.map_or(0, |d| d.as_millis() as i64),
            idempotency_key_options: self.idempotency_key.as_ref().map(|k| k.options_json()),
            idempotency_key: self.idempotency_key.map(|k| k.as_str().to_string()),
            idempotency_key_ttl_ms: self.idempotency_key_ttl.map(|d| d.as_millis() as u64),
            lock_to_version: self.version,
            is_test: self.test,
            ..Default::default()
        }
    }
}

/// A triggered run (`RunHandle`), typed by the task's output.
#[derive(Debug, Clone, PartialEq)]
pub struct RunHandle<O> {
    /// `run_…`
    pub id: String,
    /// The task id.
    pub task_identifier: String,
    /// True when an idempotency key returned an existing run.
    pub is_cached: bool,
    _output: PhantomData<fn() -> O>,
}

/// A finished child run as `trigger_and_wait` returns it (`TaskRunResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRunResult<O> {
    /// The child run.
    pub id: String,
    /// The task id.
    pub task_identifier: String,
    /// The output, or how the child failed.
    pub result: std::result::Result<O, TaskRunError>,
}

impl<O> TaskRunResult<O> {
    /// Whether the child succeeded (`result.ok`).
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The output, if it succeeded.
    pub fn output(&self) -> Option<&O> {
        self.result.as_ref().ok()
    }

    /// The error, if it failed.
    pub fn error(&self) -> Option<&TaskRunError> {
        self.result.as_ref().err()
    }

    /// The output, or [`Error::Subtask`] (`SubtaskUnwrapError`).
    pub fn unwrap(self) -> Result<O> {
        self.result.map_err(|error| Error::Subtask {
            task: self.task_identifier,
            run_id: self.id,
            error: Box::new(error),
        })
    }
}

/// A batch's runs in item order (`batchTriggerAndWait`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult<O> {
    /// `batch_…`
    pub id: String,
    /// One result per item, in item order.
    pub runs: Vec<TaskRunResult<O>>,
}

/// A triggered batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHandle {
    /// `batch_…`
    pub batch_id: String,
    /// How many runs the batch has.
    pub run_count: u32,
    /// The run of each item, in item order (the TS SDK v4 returns none; here they are free).
    pub runs: Vec<String>,
}

/// One item of a batch: a payload with its own options.
#[derive(Debug, Clone)]
pub struct BatchTriggerItem<P> {
    /// The payload.
    pub payload: P,
    /// The item's own options.
    pub options: TriggerOptions,
}

impl<P> From<P> for BatchTriggerItem<P> {
    fn from(payload: P) -> Self {
        BatchTriggerItem { payload, options: TriggerOptions::default() }
    }
}

pub(crate) fn backend() -> Result<SharedBackend> {
    match scope::current() {
        Some(s) => Ok(s.backend.clone()),
        None => crate::client::default_backend(),
    }
}

fn packet(payload: &impl Serialize) -> Result<Packet> {
    Ok(Packet::json(&serde_json::to_value(payload)?))
}

/// Triggers a run of a task by id.
pub(crate) async fn trigger_by_id<O>(
    backend: &SharedBackend,
    task: &str,
    payload: &impl Serialize,
    options: TriggerOptions,
) -> Result<RunHandle<O>> {
    let mut opts = options.into_engine(backend);
    if let Some(scope) = scope::current() {
        opts.parent_run_id = Some(scope.ctx.run.id.clone());
    }
    let triggered = backend
        .trigger(TriggerRequest { task: task.to_string(), payload: packet(payload)?, options: opts })
        .await?;
    Ok(RunHandle {
        id: triggered.run.id,
        task_identifier: task.to_string(),
        is_cached: triggered.is_cached,
        _output: PhantomData,
    })
}

fn in_task(what: &'static str) -> Result<std::sync::Arc<RunScope>> {
    scope::current().ok_or(Error::NotInTask(what))
}

fn result_of<O: DeserializeOwned>(
    task: &str,
    run_id: &str,
    wp: Option<&trigger_engine::CompletedWaitpoint>,
) -> Result<TaskRunResult<O>> {
    let wp = wp.ok_or_else(|| Error::Protocol(format!("run continued without the result of {run_id}")))?;
    let result = if wp.output_is_error {
        Err(wait::decode_error(wp.output.as_deref()))
    } else {
        Ok(wait::decode::<O>(wp.output.as_deref(), &wp.output_type)?)
    };
    Ok(TaskRunResult { id: run_id.to_string(), task_identifier: task.to_string(), result })
}

/// Triggers a child and waits for its result (inside a run).
pub(crate) async fn trigger_and_wait_by_id<O: DeserializeOwned>(
    task: &str,
    payload: &impl Serialize,
    options: TriggerOptions,
) -> Result<TaskRunResult<O>> {
    let scope = in_task("trigger_and_wait")?;
    let backend = scope.backend.clone();
    let mut opts = options.into_engine(&backend);
    opts.parent_run_id = Some(scope.ctx.run.id.clone());
    opts.resume_parent_on_completion = true;
    opts.lock_to_version = scope.ctx.run.version.clone();
    let request = TriggerRequest { task: task.to_string(), payload: packet(payload)?, options: opts };
    let (child, completed) = wait::block_and_wait(
        &scope,
        |t: &trigger_engine::Triggered| WaitInfo::Task { run_id: t.run.id.clone() },
        backend.trigger(request),
    )
    .await?;
    let wp = completed.iter().find(|wp| wp.completed_by_run_id.as_deref() == Some(child.run.id.as_str()));
    result_of(task, &child.run.id, wp)
}

async fn create_batch(backend: &SharedBackend, count: usize, wait: bool) -> Result<trigger_engine::Batch> {
    let parent = scope::current().map(|s| s.ctx.run.id.clone());
    let (batch, _) = backend
        .create_batch(CreateBatch {
            expected_count: count as u32,
            parent_run_id: parent,
            resume_parent_on_completion: wait,
            idempotency_key: None,
            idempotency_key_ttl_ms: None,
        })
        .await?;
    Ok(batch)
}

/// A batch item ready to send: task, payload and options.
pub(crate) struct Prepared {
    pub task: String,
    pub payload: Packet,
    pub options: TriggerOptions,
}

pub(crate) fn prepare<P: Serialize>(task: &str, items: Vec<BatchTriggerItem<P>>) -> Result<Vec<Prepared>> {
    items
        .into_iter()
        .map(|item| {
            Ok(Prepared { task: task.to_string(), payload: packet(&item.payload)?, options: item.options })
        })
        .collect()
}

fn batch_items(backend: &SharedBackend, items: Vec<Prepared>, lock: Option<String>) -> Vec<EngineBatchItem> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut options = item.options.into_engine(backend);
            if lock.is_some() {
                options.lock_to_version = lock.clone();
            }
            EngineBatchItem {
                index: i as u32,
                request: TriggerRequest { task: item.task, payload: item.payload, options },
            }
        })
        .collect()
}

/// Triggers a batch of prepared items (from a task, they become its children).
pub(crate) async fn batch_trigger_prepared(
    backend: &SharedBackend,
    items: Vec<Prepared>,
) -> Result<BatchHandle> {
    if items.is_empty() {
        return Err(Error::Protocol("a batch needs at least one item".into()));
    }
    let batch = create_batch(backend, items.len(), false).await?;
    let items = batch_items(backend, items, None);
    backend.add_batch_items(&batch.id, items).await?;
    runs_of_batch(backend, &batch.id).await
}

pub(crate) async fn batch_trigger_by_id<P: Serialize>(
    backend: &SharedBackend,
    task: &str,
    items: Vec<BatchTriggerItem<P>>,
) -> Result<BatchHandle> {
    batch_trigger_prepared(backend, prepare(task, items)?).await
}

async fn runs_of_batch(backend: &SharedBackend, batch_id: &str) -> Result<BatchHandle> {
    let filter = trigger_engine::RunFilter { batch_id: Some(batch_id.to_string()), ..Default::default() };
    let mut runs =
        backend.list_runs(filter, trigger_engine::Page { size: 1000, ..Default::default() }).await?;
    runs.sort_by_key(|r| r.batch_index);
    Ok(BatchHandle {
        batch_id: batch_id.to_string(),
        run_count: runs.len() as u32,
        runs: runs.into_iter().map(|r| r.id).collect(),
    })
}

/// Triggers a batch of prepared items as children and waits for all of them; results come
/// back in item order, decoded as `O`.
pub(crate) async fn batch_trigger_and_wait_prepared<O: DeserializeOwned>(
    items: Vec<Prepared>,
) -> Result<BatchResult<O>> {
    let scope = in_task("batch_trigger_and_wait")?;
    let backend = scope.backend.clone();
    if items.is_empty() {
        return Ok(BatchResult { id: String::new(), runs: Vec::new() });
    }
    let count = items.len();
    let tasks: Vec<String> = items.iter().map(|i| i.task.clone()).collect();
    let engine_items = batch_items(&backend, items, scope.ctx.run.version.clone());
    let b = backend.clone();
    let (batch, completed) = wait::block_and_wait(
        &scope,
        |batch: &trigger_engine::Batch| WaitInfo::Batch {
            batch_id: batch.id.clone(),
            run_count: count as u32,
        },
        async move {
            let batch = create_batch(&b, count, true).await?;
            b.add_batch_items(&batch.id, engine_items).await?;
            Ok(batch)
        },
    )
    .await?;
    let mut runs = Vec::with_capacity(count);
    for (index, task) in tasks.iter().enumerate() {
        let wp =
            completed.iter().find(|wp| wp.index == Some(index as u32) && wp.completed_by_run_id.is_some());
        let run_id = wp.and_then(|wp| wp.completed_by_run_id.clone()).unwrap_or_default();
        runs.push(result_of(task, &run_id, wp)?);
    }
    Ok(BatchResult { id: batch.id, runs })
}

pub(crate) async fn batch_trigger_and_wait_by_id<P: Serialize, O: DeserializeOwned>(
    task: &str,
    items: Vec<BatchTriggerItem<P>>,
) -> Result<BatchResult<O>> {
    batch_trigger_and_wait_prepared(prepare(task, items)?).await
}

impl<P, O> Task<P, O>
where
    P: Serialize + Send + Sync,
    O: DeserializeOwned + Send,
{
    /// Triggers a run (from a task, the run becomes this run's child).
    pub async fn trigger(&self, payload: impl Borrow<P>, options: TriggerOptions) -> Result<RunHandle<O>> {
        trigger_by_id(&backend()?, self.id(), payload.borrow(), options).await
    }

    /// Triggers a child run and waits for its result; only inside a run.
    pub async fn trigger_and_wait(
        &self,
        payload: impl Borrow<P>,
        options: TriggerOptions,
    ) -> Result<TaskRunResult<O>> {
        trigger_and_wait_by_id(self.id(), payload.borrow(), options).await
    }

    /// Triggers one run per item.
    pub async fn batch_trigger<I>(&self, items: I) -> Result<BatchHandle>
    where
        I: IntoIterator,
        I::Item: Into<BatchTriggerItem<P>>,
    {
        let items = items.into_iter().map(Into::into).collect();
        batch_trigger_by_id(&backend()?, self.id(), items).await
    }

    /// Triggers one child run per item and waits for all; results come in item order.
    pub async fn batch_trigger_and_wait<I>(&self, items: I) -> Result<BatchResult<O>>
    where
        I: IntoIterator,
        I::Item: Into<BatchTriggerItem<P>>,
    {
        let items = items.into_iter().map(Into::into).collect();
        batch_trigger_and_wait_by_id(self.id(), items).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trigger_engine::{CompletedWaitpoint, WaitpointType};

    fn waitpoint(output: &str, output_type: &str, is_error: bool) -> CompletedWaitpoint {
        CompletedWaitpoint {
            id: "waitpoint_1".into(),
            kind: WaitpointType::Run,
            completed_at: 0,
            index: None,
            idempotency_key: None,
            completed_by_run_id: Some("run_child".into()),
            completed_by_batch_id: None,
            completed_after: None,
            output: Some(output.into()),
            output_type: output_type.into(),
            output_is_error: is_error,
        }
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Report {
        at: String,
        rows: u64,
        #[serde(default)]
        skipped: u32,
    }

    #[test]
    fn a_typescript_childs_superjson_output_decodes_into_the_parents_type() {
        // `return { at: new Date(0), rows: 3n, skipped: undefined }` in a TS child task.
        let out = r#"{"json":{"at":"1970-01-01T00:00:00.000Z","rows":"3","skipped":null},"meta":{"values":{"at":["Date"],"rows":["bigint"],"skipped":["undefined"]}}}"#;
        let wp = waitpoint(out, "application/super+json", false);
        let result = result_of::<Report>("ts-child", "run_child", Some(&wp)).unwrap();
        assert_eq!(
            result.unwrap().unwrap(),
            Report { at: "1970-01-01T00:00:00.000Z".into(), rows: 3, skipped: 0 }
        );

        let wp = waitpoint("plain text", "text/plain", false);
        assert_eq!(result_of::<String>("t", "run_child", Some(&wp)).unwrap().output().unwrap(), "plain text");

        let error = r#"{"type":"STRING_ERROR","raw":"boom"}"#;
        let wp = waitpoint(error, "application/json", true);
        let failed = result_of::<Report>("t", "run_child", Some(&wp)).unwrap();
        assert_eq!(failed.error(), Some(&TaskRunError::String { raw: "boom".into() }));
    }
}
