//! Run management: replay, reschedule, tags, idempotency key reset.

use trigger_types::{ExecutionStatus, Millis, RunStatus};

use crate::config::limits;
use crate::error::{not_found, Error, Result};
use crate::lifecycle::trigger::{self, TriggerOptions, TriggerRequest, Triggered};
use crate::model::{Packet, Run, TimerKind};
use crate::txn::Txn;

/// What a replay may change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayOverrides {
    pub payload: Option<Packet>,
    pub tags: Option<Vec<String>>,
    pub queue: Option<String>,
    pub concurrency_key: Option<String>,
    pub machine: Option<trigger_types::MachinePreset>,
    pub delay_until: Option<Millis>,
    pub ttl_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub max_duration_secs: Option<u32>,
    pub metadata: Option<String>,
}

/// A new run of the same task with the old run's payload and options, on the newest
/// version. It has no idempotency key and no parent.
pub(crate) fn replay(
    txn: &mut Txn<'_>,
    env_id: &str,
    run_id: &str,
    o: &ReplayOverrides,
) -> Result<Triggered> {
    let old = txn.lock_run_in(env_id, run_id)?;
    let payload = match &o.payload {
        Some(p) => p.clone(),
        None => txn.tx.get_payload(&old.id)?.unwrap_or_default(),
    };
    let is_task_queue = old.queue == format!("task/{}", old.task);
    let request = TriggerRequest {
        task: old.task.clone(),
        payload,
        options: TriggerOptions {
            queue: o.queue.clone().or_else(|| (!is_task_queue).then(|| old.queue.clone())),
            concurrency_key: o.concurrency_key.clone().or_else(|| old.concurrency_key.clone()),
            delay_until: o.delay_until,
            ttl_ms: o.ttl_ms.or(old.ttl_ms),
            tags: o.tags.clone().unwrap_or_else(|| old.tags.clone()),
            metadata: o.metadata.clone().or_else(|| old.metadata.clone()),
            metadata_type: Some(old.metadata_type.clone()),
            machine: o.machine.or(old.machine),
            max_attempts: o.max_attempts.or(old.max_attempts),
            max_duration_secs: o.max_duration_secs.or(old.max_duration_secs),
            priority_ms: old.priority_ms,
            is_test: old.is_test,
            ..TriggerOptions::default()
        },
    };
    let mut triggered = trigger::trigger(txn, env_id, &request, None)?;
    triggered.run.replayed_from = Some(old.id.clone());
    txn.tx.update_run(&triggered.run)?;
    Ok(triggered)
}

/// Moves a delayed run's start time; only a run that is still `DELAYED` can move.
pub(crate) fn reschedule(txn: &mut Txn<'_>, env_id: &str, run_id: &str, delay_until: Millis) -> Result<Run> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    if run.status != RunStatus::Delayed || run.execution_status != ExecutionStatus::Delayed {
        return Err(Error::InvalidState(format!(
            "Cannot reschedule a run that is not delayed (it is {})",
            run.status
        )));
    }
    run.delay_until = Some(delay_until);
    let id = run.id.clone();
    txn.set_timer(TimerKind::EnqueueDelayed, &id, "", delay_until.max(txn.now))?;
    txn.save_run(&mut run)?;
    Ok(run)
}

/// Adds tags to a run, keeping at most 10.
pub(crate) fn add_tags(txn: &mut Txn<'_>, env_id: &str, run_id: &str, tags: &[String]) -> Result<Run> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    let mut merged = run.tags.clone();
    for tag in tags {
        if tag.is_empty() || tag.len() > limits::TAG_LENGTH {
            return Err(Error::Invalid(format!(
                "tags: each tag must be 1 to {} characters",
                limits::TAG_LENGTH
            )));
        }
        if !merged.contains(tag) {
            merged.push(tag.clone());
        }
    }
    if merged.len() > limits::TAGS {
        return Err(Error::Invalid(format!(
            "tags: a run can have at most {} tags; it would have {}",
            limits::TAGS,
            merged.len()
        )));
    }
    run.tags = merged;
    txn.save_run(&mut run)?;
    Ok(run)
}

/// Forgets an idempotency key, so the next trigger with it starts a new run.
pub(crate) fn reset_idempotency_key(txn: &mut Txn<'_>, env_id: &str, task: &str, key: &str) -> Result<Run> {
    let mut run = txn
        .tx
        .find_run_by_idempotency_key(env_id, task, key)?
        .ok_or_else(|| not_found("Idempotency key", key))?;
    run.idempotency_key = None;
    run.idempotency_key_expires_at = None;
    txn.tx.update_run(&run)?;
    Ok(run)
}
