//! What a durable timer does when it fires. Each timer is taken and acted on in one
//! command, so it fires exactly once even across restarts and replicas.

use std::sync::{Arc, Mutex};

use trigger_types::{ExecutionStatus, RunStatus, WaitpointStatus};

use crate::error::Result;
use crate::lifecycle::{attempt, queue, wait};
use crate::model::{Packet, Timer, TimerKind};
use crate::txn::Txn;

/// The key of the timer a command took, kept outside the transaction: when the timer's
/// action fails, the transaction rolls back (the timer is due again) and the key says which
/// timer to move aside.
#[derive(Debug, Clone, Default)]
pub(crate) struct Taken(Arc<Mutex<Option<String>>>);

impl Taken {
    pub(crate) fn key(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.to_string());
    }
}

/// Takes the earliest due timer and acts on it; `None` when nothing is due.
pub(crate) fn fire_next(txn: &mut Txn<'_>, taken: &Taken) -> Result<Option<Timer>> {
    let Some(timer) = txn.tx.take_due_timers(txn.now, 1)?.into_iter().next() else {
        return Ok(None);
    };
    taken.set(&timer.key);
    fire(txn, &timer)?;
    Ok(Some(timer))
}

/// How long a timer whose action failed waits before it is tried again.
const FAILED_TIMER_RETRY_MS: i64 = 60_000;

/// Moves a due timer whose action failed a minute later, so it neither is lost nor blocks
/// the timers behind it.
pub(crate) fn defer(txn: &mut Txn<'_>, key: &str) -> Result<()> {
    if let Some(mut timer) = txn.tx.get_timer(key)? {
        if timer.fire_at <= txn.now {
            timer.fire_at = txn.now + FAILED_TIMER_RETRY_MS;
            txn.tx.set_timer(&timer)?;
        }
    }
    Ok(())
}

pub(crate) fn fire(txn: &mut Txn<'_>, timer: &Timer) -> Result<()> {
    match timer.kind {
        TimerKind::Heartbeat => attempt::stalled(txn, &timer.target, &timer.fence),
        TimerKind::EnqueueDelayed => {
            let Some(mut run) = txn.tx.lock_run(&timer.target)? else { return Ok(()) };
            if run.status != RunStatus::Delayed {
                return Ok(());
            }
            run.delay_until = None;
            if txn.tx.get_queue(&run.env_id, &run.queue)?.is_some() {
                run.queue_timestamp = txn.now;
                queue::enqueue(txn, &mut run, "delay elapsed")?;
            } else {
                run.status = RunStatus::PendingVersion;
                txn.snapshot(
                    &mut run,
                    ExecutionStatus::PendingVersion,
                    "waiting for a version with its queue",
                    Vec::new(),
                )?;
            }
            txn.save_run(&mut run)
        }
        TimerKind::Expire => {
            let Some(mut run) = txn.tx.lock_run(&timer.target)? else { return Ok(()) };
            let never_started = run.attempt_number == 0
                && matches!(run.status, RunStatus::Queued | RunStatus::PendingVersion)
                && matches!(run.execution_status, ExecutionStatus::Queued | ExecutionStatus::PendingVersion);
            if never_started {
                attempt::expire(txn, &mut run)?;
            }
            Ok(())
        }
        TimerKind::Retry => {
            let Some(mut run) = txn.tx.lock_run(&timer.target)? else { return Ok(()) };
            if run.snapshot_id != timer.fence {
                return Ok(());
            }
            run.queue_timestamp = txn.now;
            queue::enqueue(txn, &mut run, "retry delay elapsed")?;
            txn.save_run(&mut run)
        }
        TimerKind::CompleteDateTime => {
            let Some(mut wp) = txn.tx.lock_waitpoint(&timer.target)? else { return Ok(()) };
            wait::complete_waitpoint(txn, &mut wp, Packet::default(), false).map(|_| ())
        }
        TimerKind::TokenTimeout => {
            let Some(mut wp) = txn.tx.lock_waitpoint(&timer.target)? else { return Ok(()) };
            if wp.status == WaitpointStatus::Completed {
                return Ok(());
            }
            wait::complete_waitpoint(txn, &mut wp, wait::timeout_output(txn.now), true).map(|_| ())
        }
    }
}
