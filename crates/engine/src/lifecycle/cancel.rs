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
    cancel_run(txn, run, reason.unwrap_or("Canceled by user"))
}

fn cancel_run(txn: &mut Txn<'_>, mut run: Run, reason: &str) -> Result<Run> {
    if run.status.is_final() || run.execution_status == ExecutionStatus::PendingCancel {
        return Ok(run);
    }
    let error = TaskRunError::string(reason);
    match run.execution_status {
        ExecutionStatus::PendingExecuting
        | ExecutionStatus::Executing
        | ExecutionStatus::ExecutingWithWaitpoints
        | ExecutionStatus::QueuedExecuting => {
            if run.execution_status == ExecutionStatus::QueuedExecuting {
                txn.tx.dequeue_entry(&run.id)?;
            }
            txn.tx.delete_blocks(&run.id)?;
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
            cancel_run(txn, child, "Canceled because its parent was canceled")?;
        }
    }
    Ok(run)
}
