//! Attempts: starting one, completing it, the retry decision, and finishing a run.

use rand::Rng;
use trigger_types::{
    AttemptStatus, ExecutionStatus, InternalErrorCode, Millis, RunStatus, TaskRunError, WaitpointType,
};

use crate::config::limits;
use crate::error::{Error, Result};
use crate::lifecycle::{batch, metadata, queue, wait};
use crate::model::{Environment, Packet, QueueDef, Run, Snapshot, TaskDef, TimerKind, WorkerVersion};
use crate::txn::Txn;

/// Everything a worker needs to execute an attempt (the `TaskRunExecution`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartedAttempt {
    pub run: Run,
    pub snapshot: Snapshot,
    pub payload: Packet,
    pub environment: Environment,
    pub worker: Option<WorkerVersion>,
    pub task: Option<TaskDef>,
    pub queue: Option<QueueDef>,
}

/// The worker's proposal for when to retry (from the retry policy or `catchError`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryProposal {
    pub at: Millis,
    pub delay_ms: u64,
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Success {
        output: Packet,
        usage_ms: u64,
    },
    Failure {
        error: TaskRunError,
        /// When set, the worker's chosen retry time; when `None` the engine computes one
        /// from the run's policy.
        retry: Option<RetryProposal>,
        /// The worker decided not to retry (`catchError` returned `skipRetrying`, a
        /// payload that did not parse, …).
        skipped_retrying: bool,
        usage_ms: u64,
    },
}

/// What completing an attempt led to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub status: AttemptStatus,
    pub run: Run,
    pub snapshot: Snapshot,
    /// For a retry: when the next attempt may start.
    pub retry_at: Option<Millis>,
}

/// Starts the next attempt of a claimed run.
pub(crate) fn start_attempt(
    txn: &mut Txn<'_>,
    env_id: &str,
    run_id: &str,
    snapshot_id: &str,
) -> Result<StartedAttempt> {
    let (run, payload) = match txn.tx.lock_run_with_payload(run_id)? {
        Some((run, payload)) if run.env_id == env_id => (run, payload.unwrap_or_default()),
        _ => return Err(crate::error::not_found("Run", run_id)),
    };
    txn.check_snapshot(&run, snapshot_id)?;
    begin_attempt(txn, env_id, run, payload)
}

/// Starts the next attempt of a run in `PENDING_EXECUTING` the transaction holds (read for
/// change, or claimed and not yet written), given its payload.
pub(crate) fn begin_attempt(
    txn: &mut Txn<'_>,
    env_id: &str,
    mut run: Run,
    payload: Packet,
) -> Result<StartedAttempt> {
    if run.execution_status != ExecutionStatus::PendingExecuting {
        return Err(Error::InvalidState(format!(
            "run {} is {}; an attempt starts only from PENDING_EXECUTING",
            run.id, run.execution_status
        )));
    }
    run.attempt_number += 1;
    run.status = RunStatus::Executing;
    if run.started_at.is_none() {
        run.started_at = Some(txn.now);
    }
    let description = format!("attempt {} started", run.attempt_number);
    let snapshot = txn.snapshot(&mut run, ExecutionStatus::Executing, &description, Vec::new())?;
    txn.arm_heartbeat(&run)?;
    txn.save_run(&mut run)?;
    let environment = crate::lifecycle::registry::environment(txn, env_id)?;
    let worker = match &run.worker_id {
        Some(id) => txn.tx.get_worker(id)?,
        None => None,
    };
    let task = match &worker {
        Some(w) => txn.tx.get_task(env_id, &w.id, &run.task)?,
        None => None,
    };
    let queue = txn.tx.get_queue(env_id, &run.queue)?;
    Ok(StartedAttempt { run, snapshot, payload, environment, worker, task, queue })
}

/// Records how an attempt ended and decides what happens next.
pub(crate) fn complete_attempt(
    txn: &mut Txn<'_>,
    env_id: &str,
    run_id: &str,
    snapshot_id: &str,
    completion: &Completion,
    flushed_metadata: Option<&metadata::MetadataUpdate>,
) -> Result<AttemptOutcome> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    let pending_cancel = run.execution_status == ExecutionStatus::PendingCancel;
    if !pending_cancel {
        txn.check_snapshot(&run, snapshot_id)?;
        if !matches!(
            run.execution_status,
            ExecutionStatus::Executing | ExecutionStatus::ExecutingWithWaitpoints
        ) {
            return Err(Error::InvalidState(format!(
                "run {} is {}; only an executing attempt can complete",
                run.id, run.execution_status
            )));
        }
    } else if run.snapshot_id != snapshot_id
        && txn.tx.get_snapshot(snapshot_id)?.is_none_or(|s| s.run_id != run.id)
    {
        txn.check_snapshot(&run, snapshot_id)?;
    }
    if let Some(update) = flushed_metadata {
        // Metadata flushed with the completion is applied even if it is over the limit
        // elsewhere: the run must still complete, so a bad flush is dropped, not fatal.
        if let Err(e) = metadata::apply_update(txn, &mut run, update) {
            tracing::debug!(run = %run.id, error = %e, "metadata flushed with a completion was not applied");
        }
    }

    if pending_cancel {
        let error = run.error.clone().unwrap_or_else(|| TaskRunError::string("Canceled by user"));
        finish_run(txn, &mut run, RunStatus::Canceled, None, Some(error))?;
        return outcome(txn, run, AttemptStatus::RunFinished, None);
    }

    match completion {
        Completion::Success { output, usage_ms } => {
            if output.data.as_ref().is_some_and(|o| o.len() > limits::OUTPUT) {
                return Err(Error::TooLarge(format!("output: over the limit of {} bytes", limits::OUTPUT)));
            }
            run.usage_ms += usage_ms;
            finish_run(txn, &mut run, RunStatus::Completed, Some(output.clone()), None)?;
            outcome(txn, run, AttemptStatus::RunFinished, None)
        }
        Completion::Failure { error, retry, skipped_retrying, usage_ms } => {
            run.usage_ms += usage_ms;
            fail_attempt(txn, &mut run, error.clone(), *retry, *skipped_retrying, false)
        }
    }
}

fn outcome(
    txn: &mut Txn<'_>,
    run: Run,
    status: AttemptStatus,
    retry_at: Option<Millis>,
) -> Result<AttemptOutcome> {
    let snapshot = match txn.last_snapshot.take() {
        Some(s) if s.id == run.snapshot_id => s,
        _ => txn
            .tx
            .get_snapshot(&run.snapshot_id)?
            .ok_or_else(|| Error::InvalidState(format!("run {} has no snapshot", run.id)))?,
    };
    Ok(AttemptOutcome { status, run, snapshot, retry_at })
}

/// The retry decision after a failed attempt (`retrying.ts`): cancel errors cancel, errors
/// that must not be retried and the last attempt fail the run, anything else retries —
/// keeping the run on its worker for a short delay, or queueing it again for a long one.
pub(crate) fn fail_attempt(
    txn: &mut Txn<'_>,
    run: &mut Run,
    error: TaskRunError,
    proposal: Option<RetryProposal>,
    skipped_retrying: bool,
    force_requeue: bool,
) -> Result<AttemptOutcome> {
    if error.code() == Some(InternalErrorCode::TaskRunCancelled) {
        finish_run(txn, run, RunStatus::Canceled, None, Some(error))?;
        return outcome(txn, run.clone(), AttemptStatus::RunFinished, None);
    }
    let max_attempts = run.max_attempts.unwrap_or(1).min(trigger_types::retry::MAX_ATTEMPTS_CAP);
    let retriable = error.is_retriable() && !skipped_retrying && run.attempt_number < max_attempts;
    let delay = if retriable {
        match proposal {
            Some(p) => Some(p.at.max(txn.now) - txn.now),
            None => {
                let policy = run.retry.clone().unwrap_or_default();
                let policy = trigger_types::RetryOptions { max_attempts, ..policy };
                let jitter: f64 = rand::thread_rng().gen();
                policy.delay_for_attempt(run.attempt_number, jitter).map(|d| d as i64)
            }
        }
    } else {
        None
    };
    let Some(delay) = delay else {
        let status = error.final_status();
        finish_run(txn, run, status, None, Some(error))?;
        return outcome(txn, run.clone(), AttemptStatus::RunFinished, None);
    };

    run.error = Some(error);
    if run.execution_status == ExecutionStatus::ExecutingWithWaitpoints {
        txn.tx.delete_blocks(&run.id)?;
        run.pending_blockers = None;
    }
    let retry_at = txn.now + delay;
    // Only a run that still holds its slot (not one blocked on a waitpoint) can retry in place.
    let holds_slot = txn.tx.get_holder(&run.id)?.is_some();
    if !force_requeue && holds_slot && (delay as u64) < txn.config.retry_immediately_threshold_ms {
        // The worker sleeps and starts the next attempt on this snapshot; the run keeps
        // its slot, and the lease covers the delay.
        run.status = RunStatus::Executing;
        txn.snapshot(run, ExecutionStatus::PendingExecuting, "retrying immediately", Vec::new())?;
        let (id, snapshot) = (run.id.clone(), run.snapshot_id.clone());
        txn.set_timer(
            TimerKind::Heartbeat,
            &id,
            &snapshot,
            retry_at + txn.config.heartbeat.pending_executing,
        )?;
        txn.save_run(run)?;
        outcome(txn, run.clone(), AttemptStatus::RetryImmediately, Some(retry_at))
    } else {
        run.status = RunStatus::Queued;
        run.worker_instance = None;
        txn.snapshot(run, ExecutionStatus::Queued, "retry scheduled", Vec::new())?;
        txn.clear_timer(TimerKind::Heartbeat, &run.id)?;
        let (id, snapshot) = (run.id.clone(), run.snapshot_id.clone());
        txn.set_timer(TimerKind::Retry, &id, &snapshot, retry_at)?;
        txn.save_run(run)?;
        queue::release(txn, run)?;
        outcome(txn, run.clone(), AttemptStatus::RetryQueued, Some(retry_at))
    }
}

/// Ends a run: final status, output or error, slot released, lease and timers cleared,
/// its `RUN` waitpoint completed (which continues a waiting parent) and its batch counted.
pub(crate) fn finish_run(
    txn: &mut Txn<'_>,
    run: &mut Run,
    status: RunStatus,
    output: Option<Packet>,
    error: Option<TaskRunError>,
) -> Result<()> {
    debug_assert!(status.is_final());
    let was_queued =
        matches!(run.execution_status, ExecutionStatus::Queued | ExecutionStatus::QueuedExecuting);
    if was_queued {
        txn.tx.dequeue_entry(&run.id)?;
    }
    run.status = status;
    run.completed_at = Some(txn.now);
    if status == RunStatus::Expired {
        run.expired_at = Some(txn.now);
    }
    if let Some(output) = &output {
        txn.tx.set_output(&run.id, output)?;
    }
    if error.is_some() || status == RunStatus::Completed {
        run.error = error;
    }
    // Only a run blocked on waitpoints still has blocking edges (a continued run's were
    // taken with its completed waitpoints; a cancel removes them).
    let blocked = run.execution_status == ExecutionStatus::ExecutingWithWaitpoints;
    let description = format!("run finished: {status}");
    txn.snapshot(run, ExecutionStatus::Finished, &description, Vec::new())?;
    // Clear only the timers this run can have armed: one statement fewer per kind on the
    // hot path of every completion.
    let mut armed = vec![TimerKind::Heartbeat];
    if run.attempt_number > 1 || run.error.is_some() {
        armed.push(TimerKind::Retry);
    }
    if run.delay_until.is_some() || run.status == RunStatus::Canceled {
        armed.push(TimerKind::EnqueueDelayed);
    }
    if run.ttl_ms.is_some_and(|ttl| ttl > 0) && run.attempt_number == 0 {
        armed.push(TimerKind::Expire);
    }
    for kind in armed {
        txn.clear_timer(kind, &run.id)?;
    }
    if blocked {
        txn.tx.delete_blocks(&run.id)?;
        run.pending_blockers = None;
    }
    txn.save_run(run)?;
    queue::release(txn, run)?;

    let waitpoint = if run.has_waitpoint { txn.tx.find_run_waitpoint(&run.id)? } else { None };
    if let Some(mut wp) = waitpoint {
        if wp.kind == WaitpointType::Run {
            let (packet, is_error) = wait::run_result(txn, run)?;
            wait::complete_waitpoint(txn, &mut wp, packet, is_error)?;
        }
    }
    if let Some(batch_id) = run.batch_id.clone() {
        batch::run_finished(txn, &batch_id, status)?;
    }
    Ok(())
}

/// TTL expiry: a run never dequeued within its TTL ends `EXPIRED`.
pub(crate) fn expire(txn: &mut Txn<'_>, run: &mut Run) -> Result<()> {
    let ttl = run.ttl_ms.unwrap_or(0);
    let error =
        TaskRunError::string(format!("Run expired because the TTL ({}) was reached", human_duration(ttl)));
    finish_run(txn, run, RunStatus::Expired, None, Some(error))
}

fn human_duration(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 && ms > 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A worker's heartbeat: the lease of the named snapshot is extended.
pub(crate) fn heartbeat(txn: &mut Txn<'_>, env_id: &str, run_id: &str, snapshot_id: &str) -> Result<()> {
    let run = txn.lock_run_in(env_id, run_id)?;
    txn.check_snapshot(&run, snapshot_id)?;
    if !run.execution_status.has_worker() {
        return Err(Error::InvalidState(format!(
            "run {} is {} and has no lease",
            run.id, run.execution_status
        )));
    }
    if run.execution_status == ExecutionStatus::PendingExecuting {
        // Keep a retry's delay covered: never move the lease earlier.
        if let Some(timer) = txn.tx.get_timer(&crate::txn::timer_key(TimerKind::Heartbeat, &run.id))? {
            if timer.fire_at > txn.now + txn.config.heartbeat.pending_executing {
                return Ok(());
            }
        }
    }
    txn.arm_heartbeat(&run)
}

/// A stalled run is retried (if its policy allows) after a short, fixed delay.
fn stall_retry(txn: &Txn<'_>) -> RetryProposal {
    let delay_ms = txn.config.stall_retry_delay_ms;
    RetryProposal { at: txn.now + delay_ms as i64, delay_ms }
}

/// A lease ran out: the worker holding the snapshot is presumed gone.
pub(crate) fn stalled(txn: &mut Txn<'_>, run_id: &str, snapshot_id: &str) -> Result<()> {
    let Some(mut run) = txn.tx.lock_run(run_id)? else { return Ok(()) };
    if run.snapshot_id != snapshot_id {
        return Ok(());
    }
    match run.execution_status {
        ExecutionStatus::PendingExecuting => {
            // Claimed (or waiting to retry) but the attempt never started: put it back in
            // the queue, up to a limit.
            run.dequeue_count += 1;
            if run.dequeue_count >= txn.config.max_dequeue_count {
                let error = TaskRunError::internal(
                    InternalErrorCode::TaskRunDequeuedMaxRetries,
                    format!("run was dequeued {} times without starting", run.dequeue_count),
                );
                return finish_run(txn, &mut run, error.final_status(), None, Some(error));
            }
            txn.tx.release(&run.id)?;
            run.worker_instance = None;
            queue::enqueue(txn, &mut run, "worker lost before the attempt started")?;
            txn.save_run(&mut run)?;
            let key = run.concurrency_key.clone().unwrap_or_default();
            queue::pump_resumes(txn, &run.env_id, &run.queue, &key)
        }
        ExecutionStatus::Executing => {
            let error = TaskRunError::internal(
                InternalErrorCode::TaskRunStalledExecuting,
                "the worker stopped sending heartbeats while the run was executing",
            );
            fail_attempt(txn, &mut run, error, Some(stall_retry(txn)), false, true).map(|_| ())
        }
        ExecutionStatus::ExecutingWithWaitpoints | ExecutionStatus::QueuedExecuting => {
            let error = TaskRunError::internal(
                InternalErrorCode::TaskRunStalledExecutingWithWaitpoints,
                "the worker stopped sending heartbeats while the run was waiting",
            );
            if run.execution_status == ExecutionStatus::QueuedExecuting {
                txn.tx.dequeue_entry(&run.id)?;
            }
            fail_attempt(txn, &mut run, error, Some(stall_retry(txn)), false, true).map(|_| ())
        }
        ExecutionStatus::PendingCancel => {
            let error = run.error.clone().unwrap_or_else(|| TaskRunError::string("Canceled by user"));
            finish_run(txn, &mut run, RunStatus::Canceled, None, Some(error))
        }
        _ => Ok(()),
    }
}

impl Completion {
    /// A successful attempt with an output and no usage.
    pub fn success(output: Packet) -> Self {
        Completion::Success { output, usage_ms: 0 }
    }

    /// A failed attempt, leaving the retry decision to the engine's policy.
    pub fn failure(error: TaskRunError) -> Self {
        Completion::Failure { error, retry: None, skipped_retrying: false, usage_ms: 0 }
    }
}
