//! Cancelling a run and, recursively, its unfinished children.

use trigger_types::{ExecutionStatus, RunStatus, TaskRunError};

use crate::error::Result;
use crate::lifecycle::attempt;
use crate::model::Run;
use crate::txn::Txn;

/// Cancels a run. A finished run is left as it is. A run on a worker goes to
/// `PENDING_CANCEL`, so the worker can run its cancel hooks and confirm (or the lease
/// finalizes it); any other run finishes `CANCELED` at once. Children follow.
pub(crate) fn cancel(txn: &mut Txn<'_>, env_id: &str, run_id: &str, reason: Option<&str>) -> Result<Run> {
    let run = txn.lock_run_in(env_id, run_id)?;
    cancel_run(txn, run, reason.unwrap_or("Canceled by user"), false)
}

/// Cancels a run whose worker is known to be gone (a dev CLI that disconnected): nobody is
/// left to run cancel hooks, so even an executing run finishes `CANCELED` at once.
pub(crate) fn cancel_abandoned(txn: &mut Txn<'_>, env_id: &str, run_id: &str, reason: &str) -> Result<Run> {
    let run = txn.lock_run_in(env_id, run_id)?;
    cancel_run(txn, run, reason, true)
}

fn cancel_run(txn: &mut Txn<'_>, mut run: Run, reason: &str, worker_gone: bool) -> Result<Run> {
    if run.status.is_final() {
        return Ok(run);
    }
    if run.execution_status == ExecutionStatus::PendingCancel && !worker_gone {
        return Ok(run);
    }
    let error = TaskRunError::string(reason);
    match run.execution_status {
        ExecutionStatus::PendingExecuting
        | ExecutionStatus::Executing
        | ExecutionStatus::ExecutingWithWaitpoints
        | ExecutionStatus::QueuedExecuting
            if !worker_gone =>
        {
            if run.execution_status == ExecutionStatus::QueuedExecuting {
                txn.tx.dequeue_entry(&run.id)?;
            }
            txn.tx.delete_blocks(&run.id)?;
            run.pending_blockers = None;
            run.error = Some(error);
            txn.snapshot(&mut run, ExecutionStatus::PendingCancel, "cancel requested", Vec::new())?;
            txn.arm_heartbeat(&run)?;
            txn.save_run(&mut run)?;
        }
        _ => attempt::finish_run(txn, &mut run, RunStatus::Canceled, None, Some(error))?,
    }
    for child in txn.tx.list_children(&run.id)? {
        if !child.status.is_final() {
            let child = txn.lock_run(&child.id)?;
            cancel_run(txn, child, "Canceled because its parent was canceled", false)?;
        }
    }
    Ok(run)
}

/// A worker hands a claimed or executing run back (it is shutting down): the run returns to
/// its queue with its original place and is started again elsewhere. The attempt it was on
/// does not fail.
pub(crate) fn release_run(txn: &mut Txn<'_>, env_id: &str, run_id: &str, snapshot_id: &str) -> Result<Run> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    txn.check_snapshot(&run, snapshot_id)?;
    if !matches!(run.execution_status, ExecutionStatus::PendingExecuting | ExecutionStatus::Executing) {
        return Err(crate::Error::InvalidState(format!(
            "run {} is {}; only a claimed or executing run can be handed back",
            run.id, run.execution_status
        )));
    }
    run.worker_instance = None;
    txn.clear_timer(crate::model::TimerKind::Heartbeat, &run.id)?;
    crate::lifecycle::queue::enqueue(txn, &mut run, "handed back by its worker")?;
    txn.save_run(&mut run)?;
    crate::lifecycle::queue::release(txn, &run)?;
    Ok(run)
}
