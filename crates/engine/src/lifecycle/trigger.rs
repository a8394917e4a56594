//! Creating runs: `trigger`, `triggerAndWait` and batch items all come through here, so
//! idempotency, limits and queue resolution follow one code path.

use serde_json::Value;
use trigger_types::{ids, ExecutionStatus, MachinePreset, Millis, RunStatus};

use crate::config::limits;
use crate::error::{Error, Result};
use crate::lifecycle::{queue, registry, wait};
use crate::model::{Packet, Run, TimerKind, TriggerFunction};
use crate::txn::Txn;

/// Options of a trigger, already parsed (durations in ms, dates as timestamps).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerOptions {
    pub queue: Option<String>,
    pub concurrency_key: Option<String>,
    /// Run no earlier than this (`delay`).
    pub delay_until: Option<Millis>,
    /// `Some(0)` opts out of the task's and the environment's default TTL.
    pub ttl_ms: Option<u64>,
    pub tags: Vec<String>,
    /// JSON text of the initial metadata.
    pub metadata: Option<String>,
    pub metadata_type: Option<String>,
    pub machine: Option<MachinePreset>,
    pub max_attempts: Option<u32>,
    pub max_duration_secs: Option<u32>,
    /// Priority in ms (the API's seconds × 1000).
    pub priority_ms: i64,
    pub idempotency_key: Option<String>,
    pub idempotency_key_ttl_ms: Option<u64>,
    pub idempotency_key_options: Option<Value>,
    pub parent_run_id: Option<String>,
    pub resume_parent_on_completion: bool,
    pub lock_to_version: Option<String>,
    pub is_test: bool,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// A request to create a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRequest {
    pub task: String,
    pub payload: Packet,
    pub options: TriggerOptions,
}

/// The run a trigger created, or found through its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggered {
    pub run: Run,
    /// True when an idempotency key matched an existing run.
    pub is_cached: bool,
}

/// Where a batch item goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchSlot {
    pub batch_id: String,
    pub index: u32,
}

/// Validates what a trigger carries, naming the field at fault.
pub(crate) fn validate(req: &TriggerRequest) -> Result<()> {
    let o = &req.options;
    if req.task.is_empty() {
        return Err(Error::Invalid("task: must not be empty".into()));
    }
    if req.payload.data.as_ref().is_some_and(|p| p.len() > limits::PAYLOAD) {
        return Err(Error::TooLarge(format!(
            "payload: {} bytes is over the limit of {} bytes",
            req.payload.data.as_ref().map_or(0, |p| p.len()),
            limits::PAYLOAD
        )));
    }
    if o.tags.len() > limits::TAGS {
        return Err(Error::Invalid(format!(
            "tags: at most {} tags per run, got {}",
            limits::TAGS,
            o.tags.len()
        )));
    }
    if let Some(tag) = o.tags.iter().find(|t| t.is_empty() || t.len() > limits::TAG_LENGTH) {
        return Err(Error::Invalid(format!(
            "tags: each tag must be 1 to {} characters, got {:?}",
            limits::TAG_LENGTH,
            tag
        )));
    }
    if let Some(m) = &o.metadata {
        if m.len() > limits::METADATA {
            return Err(Error::TooLarge(format!(
                "metadata: {} bytes is over the limit of {} bytes",
                m.len(),
                limits::METADATA
            )));
        }
        if o.metadata_type.as_deref().unwrap_or("application/json").contains("json") {
            serde_json::from_str::<Value>(m)
                .map_err(|e| Error::Invalid(format!("metadata: not valid JSON: {e}")))?;
        }
    }
    if let Some(key) = &o.idempotency_key {
        if key.is_empty() || key.len() > limits::IDEMPOTENCY_KEY {
            return Err(Error::Invalid(format!(
                "idempotencyKey: must be 1 to {} characters",
                limits::IDEMPOTENCY_KEY
            )));
        }
    }
    if let Some(q) = &o.queue {
        if registry::sanitize_queue_name(q).is_empty() {
            return Err(Error::Invalid(format!("queue: invalid queue name {q:?}")));
        }
    }
    if o.max_attempts == Some(0) {
        return Err(Error::Invalid("maxAttempts: must be at least 1".into()));
    }
    if o.resume_parent_on_completion && o.parent_run_id.is_none() {
        return Err(Error::Invalid("resumeParentOnCompletion: requires parentRunId".into()));
    }
    Ok(())
}

/// Creates a run (or returns the one its idempotency key names).
pub(crate) fn trigger(
    txn: &mut Txn<'_>,
    env_id: &str,
    req: &TriggerRequest,
    batch: Option<&BatchSlot>,
) -> Result<Triggered> {
    validate(req)?;
    let env = registry::environment(txn, env_id)?;
    let o = &req.options;

    let parent = match &o.parent_run_id {
        Some(id) => Some(txn.lock_run_in(env_id, id)?),
        None => None,
    };
    if let (Some(parent), true) = (&parent, o.resume_parent_on_completion) {
        let blockable = match parent.execution_status {
            ExecutionStatus::Executing => true,
            // Items of a waited-for batch block a parent that the batch already blocks.
            ExecutionStatus::ExecutingWithWaitpoints => batch.is_some(),
            _ => false,
        };
        if !blockable {
            return Err(Error::InvalidState(format!(
                "parentRunId: run {} is {} and cannot wait for a child",
                parent.id, parent.execution_status
            )));
        }
    }

    if let Some(key) = &o.idempotency_key {
        if let Some(mut existing) = txn.tx.find_run_by_idempotency_key(env_id, &req.task, key)? {
            let expired = existing.idempotency_key_expires_at.is_some_and(|at| at <= txn.now);
            if expired || existing.status.releases_idempotency_key() {
                existing.idempotency_key = None;
                existing.idempotency_key_expires_at = None;
                txn.tx.update_run(&existing)?;
            } else {
                if let (Some(parent), true) = (&parent, o.resume_parent_on_completion) {
                    let waitpoint = wait::run_waitpoint(txn, &existing)?;
                    let mut parent = txn.lock_run(&parent.id)?;
                    let slot = batch.map(|b| (b.batch_id.clone(), b.index));
                    wait::block_run(txn, &mut parent, &[(waitpoint.id, slot)])?;
                }
                return Ok(Triggered { run: existing, is_cached: true });
            }
        }
    }

    let (_, task) = registry::resolve_task(txn, env_id, &req.task, o.lock_to_version.as_deref())?;
    let queue_name = match &o.queue {
        Some(q) => registry::sanitize_queue_name(q),
        None => task.queue.clone(),
    };
    let queue_exists = txn.tx.get_queue(env_id, &queue_name)?.is_some();
    let ttl_ms = match o.ttl_ms {
        Some(0) => None,
        Some(ttl) => Some(ttl),
        None => task.ttl_ms.filter(|t| *t > 0).or(match env.kind {
            crate::model::EnvironmentType::Development => txn.config.dev_default_ttl_ms,
            _ => None,
        }),
    };
    let waits = parent.is_some() && o.resume_parent_on_completion;
    let mut run = Run {
        id: txn.id(ids::RUN),
        env_id: env_id.to_string(),
        task: req.task.clone(),
        status: RunStatus::Queued,
        snapshot_id: String::new(),
        execution_status: ExecutionStatus::RunCreated,
        queue: queue_name,
        concurrency_key: o.concurrency_key.clone().filter(|k| !k.is_empty()),
        priority_ms: o.priority_ms,
        // A waited-for child inherits its parent's place in line, so resumed work runs
        // ahead of newer work.
        queue_timestamp: match (&parent, waits) {
            (Some(p), true) => p.queue_timestamp,
            _ => txn.now,
        },
        tags: dedup(&o.tags),
        metadata: o.metadata.clone(),
        metadata_type: o.metadata_type.clone().unwrap_or_else(|| "application/json".into()),
        machine: o.machine.or(task.machine),
        max_attempts: o.max_attempts,
        max_duration_secs: o.max_duration_secs,
        ttl_ms,
        delay_until: o.delay_until.filter(|at| *at > txn.now),
        idempotency_key: o.idempotency_key.clone(),
        idempotency_key_expires_at: o.idempotency_key.as_ref().map(|_| {
            txn.now + o.idempotency_key_ttl_ms.unwrap_or(txn.config.default_idempotency_ttl_ms) as i64
        }),
        idempotency_key_options: o.idempotency_key_options.clone(),
        parent_run_id: parent.as_ref().map(|p| p.id.clone()),
        root_run_id: parent.as_ref().map(|p| p.root_run_id.clone().unwrap_or_else(|| p.id.clone())),
        depth: parent.as_ref().map_or(0, |p| p.depth + 1),
        batch_id: batch.map(|b| b.batch_id.clone()),
        batch_index: batch.map(|b| b.index),
        resume_parent_on_completion: waits,
        trigger_function: match (batch.is_some(), waits) {
            (false, false) => TriggerFunction::Trigger,
            (false, true) => TriggerFunction::TriggerAndWait,
            (true, false) => TriggerFunction::BatchTrigger,
            (true, true) => TriggerFunction::BatchTriggerAndWait,
        },
        is_test: o.is_test,
        replayed_from: None,
        lock_to_version: o.lock_to_version.clone(),
        worker_id: None,
        worker_instance: None,
        retry: None,
        attempt_number: 0,
        dequeue_count: 0,
        error: None,
        usage_ms: 0,
        trace_id: o.trace_id.clone(),
        span_id: o.span_id.clone(),
        created_at: txn.now,
        updated_at: txn.now,
        queued_at: None,
        started_at: None,
        completed_at: None,
        expired_at: None,
        pending_blockers: None,
        has_waitpoint: false,
    };
    if let Some(at) = run.delay_until {
        run.status = RunStatus::Delayed;
        txn.snapshot(&mut run, ExecutionStatus::Delayed, "delayed until its start time", Vec::new())?;
        let id = run.id.clone();
        txn.set_timer(TimerKind::EnqueueDelayed, &id, "", at)?;
    } else if !queue_exists {
        run.status = RunStatus::PendingVersion;
        txn.snapshot(
            &mut run,
            ExecutionStatus::PendingVersion,
            "waiting for a version with its queue",
            Vec::new(),
        )?;
    } else {
        queue::enqueue(txn, &mut run, "run was triggered")?;
    }
    // One insert with the final state; a lost idempotency race surfaces here as a unique
    // violation and the whole command is rolled back to its savepoint.
    run.has_waitpoint = parent.is_some() && waits;
    txn.tx.insert_run(&run, &req.payload)?;
    txn.changed(&run);

    if let (Some(parent), true) = (parent, waits) {
        let waitpoint = wait::run_waitpoint(txn, &run)?;
        let mut parent = txn.lock_run(&parent.id)?;
        let slot = batch.map(|b| (b.batch_id.clone(), b.index));
        wait::block_run(txn, &mut parent, &[(waitpoint.id, slot)])?;
    }
    Ok(Triggered { run, is_cached: false })
}

fn dedup(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}
