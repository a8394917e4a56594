//! Putting runs in queues and giving them concurrency slots.
//!
//! A queue has one *subqueue* per concurrency key in use (`""` without a key), each with
//! its own copy of the queue's limit; the environment's limit caps them all. Only runs that
//! execute hold a slot. A run blocked on a waitpoint gives its slot back and queues for it
//! again, ahead of newer work, when it continues (see `docs/state-machine.md`).

use trigger_types::{ExecutionStatus, MachinePreset, RunStatus};

use crate::error::Result;
use crate::model::{CompletedWaitpoint, Holder, ReadyEntry, Run, TimerKind};
use crate::txn::Txn;

/// The run's place in the queue: older first, `priority` seconds ahead.
pub(crate) fn score(run: &Run) -> i64 {
    run.queue_timestamp - run.priority_ms
}

pub(crate) fn ready_entry(run: &Run, resume: bool) -> ReadyEntry {
    ReadyEntry {
        run_id: run.id.clone(),
        env_id: run.env_id.clone(),
        queue: run.queue.clone(),
        concurrency_key: run.concurrency_key.clone().unwrap_or_default(),
        score: score(run),
        task: run.task.clone(),
        machine: run.machine.unwrap_or(MachinePreset::Small1x),
        resume,
    }
}

/// Puts a run in its queue, `QUEUED`. Arms its TTL the first time it is queued.
pub(crate) fn enqueue(txn: &mut Txn<'_>, run: &mut Run, description: &str) -> Result<()> {
    run.status = RunStatus::Queued;
    let first = run.queued_at.is_none();
    if first {
        run.queued_at = Some(txn.now);
        if let Some(ttl) = run.ttl_ms.filter(|ttl| *ttl > 0) {
            let id = run.id.clone();
            txn.set_timer(TimerKind::Expire, &id, "", txn.now + ttl as i64)?;
        }
    }
    txn.snapshot(run, ExecutionStatus::Queued, description, Vec::new())?;
    // No lease to clear: a run comes here fresh, or after its lease timer fired (taken) or
    // was cleared by the transition that took it off its worker.
    if first {
        // Never queued before: it has no entry to replace.
        txn.tx.enqueue_first(&ready_entry(run, false))?;
    } else {
        txn.tx.enqueue(&ready_entry(run, false))?;
    }
    txn.work_available(&run.env_id);
    Ok(())
}

/// The environment's limit and the number of its runs holding slots.
pub(crate) fn env_capacity(txn: &mut Txn<'_>, env_id: &str) -> Result<(u32, u32)> {
    let limit = match txn.tx.get_environment(env_id)? {
        Some(env) => env.concurrency_limit,
        None => txn.config.default_env_concurrency_limit,
    };
    Ok((limit, txn.tx.env_running(env_id)?))
}

/// Takes a slot for the run if its subqueue and environment have one free and no older
/// run waits ahead of it in the subqueue.
pub(crate) fn try_acquire(txn: &mut Txn<'_>, run: &Run) -> Result<bool> {
    let (env_limit, env_running) = env_capacity(txn, &run.env_id)?;
    if env_running >= env_limit {
        return Ok(false);
    }
    let key = run.concurrency_key.clone().unwrap_or_default();
    if let Some(sub) = txn.tx.get_subqueue(&run.env_id, &run.queue, &key)? {
        let limit = sub.limit.unwrap_or(env_limit).min(env_limit);
        if sub.paused || sub.running >= limit {
            return Ok(false);
        }
        if sub.head_score.is_some_and(|head| head < score(run)) {
            return Ok(false);
        }
    } else if let Some(queue) = txn.tx.get_queue(&run.env_id, &run.queue)? {
        if queue.paused || queue.concurrency_limit == Some(0) {
            return Ok(false);
        }
    }
    acquire(txn, run)?;
    Ok(true)
}

/// Records the run as holding a slot (the caller has checked the limits).
pub(crate) fn acquire(txn: &mut Txn<'_>, run: &Run) -> Result<bool> {
    Ok(txn.tx.acquire(&holder(run))?)
}

/// The slot a run takes in its subqueue.
pub(crate) fn holder(run: &Run) -> Holder {
    Holder {
        run_id: run.id.clone(),
        env_id: run.env_id.clone(),
        queue: run.queue.clone(),
        concurrency_key: run.concurrency_key.clone().unwrap_or_default(),
    }
}

/// Gives the run's slot back, then lets runs that wait only for a slot continue.
pub(crate) fn release(txn: &mut Txn<'_>, run: &Run) -> Result<()> {
    let key = run.concurrency_key.clone().unwrap_or_default();
    let (released, head) = txn.tx.release_and_peek(&run.id, &run.env_id, &run.queue, &key)?;
    if released {
        continue_resumes(txn, &run.env_id, &run.queue, &key, head)?;
        txn.work_available(&run.env_id);
    }
    Ok(())
}

/// Continues the runs at the head of a subqueue that are still on their worker and only
/// wait for a slot (`QUEUED_EXECUTING`), while slots are free.
pub(crate) fn pump_resumes(txn: &mut Txn<'_>, env_id: &str, queue: &str, key: &str) -> Result<()> {
    let head = txn.tx.peek_subqueue(env_id, queue, key, 1)?.into_iter().next();
    continue_resumes(txn, env_id, queue, key, head)
}

/// [`pump_resumes`] given the subqueue's current head.
fn continue_resumes(
    txn: &mut Txn<'_>,
    env_id: &str,
    queue: &str,
    key: &str,
    mut head: Option<ReadyEntry>,
) -> Result<()> {
    // Most of the time the head is fresh work (or nothing), and then there is no limit to
    // check.
    while let Some(entry) = head.take().filter(|entry| entry.resume) {
        let Some(sub) = txn.tx.get_subqueue(env_id, queue, key)? else { return Ok(()) };
        let (env_limit, env_running) = env_capacity(txn, env_id)?;
        let limit = sub.limit.unwrap_or(env_limit).min(env_limit);
        if sub.paused || sub.running >= limit || env_running >= env_limit {
            return Ok(());
        }
        txn.tx.dequeue_entry(&entry.run_id)?;
        let mut run = txn.lock_run(&entry.run_id)?;
        promote(txn, &mut run)?;
        head = txn.tx.peek_subqueue(env_id, queue, key, 1)?.into_iter().next();
    }
    Ok(())
}

/// A `QUEUED_EXECUTING` run got its slot back: it continues on its worker with the
/// waitpoints that completed while it waited.
pub(crate) fn promote(txn: &mut Txn<'_>, run: &mut Run) -> Result<()> {
    acquire(txn, run)?;
    let carried: Vec<CompletedWaitpoint> =
        txn.tx.get_snapshot(&run.snapshot_id)?.map(|s| s.completed_waitpoints).unwrap_or_default();
    run.status = RunStatus::Executing;
    txn.snapshot(run, ExecutionStatus::Executing, "concurrency slot acquired, continuing", carried)?;
    txn.arm_heartbeat(run)?;
    txn.save_run(run)
}
