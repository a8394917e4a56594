//! Waitpoints: blocking a run on them, completing them, and continuing the runs they
//! released, exactly once, with the completed waitpoints carried by the new snapshot.

use trigger_types::{ids, ExecutionStatus, Millis, RunStatus, WaitpointStatus, WaitpointType};

use crate::error::{not_found, Error, Result};
use crate::lifecycle::queue;
use crate::model::{BlockEdge, CompletedWaitpoint, Packet, ReadyEntry, Run, TimerKind, Waitpoint};
use crate::txn::Txn;

/// A waitpoint to block on, with its batch and index for batch items.
pub(crate) type BlockOn = (String, Option<(String, u32)>);

pub(crate) fn new_waitpoint(txn: &Txn<'_>, env_id: &str, kind: WaitpointType) -> Waitpoint {
    Waitpoint {
        id: txn.id(ids::WAITPOINT),
        env_id: env_id.to_string(),
        kind,
        status: WaitpointStatus::Pending,
        idempotency_key: None,
        idempotency_key_expires_at: None,
        user_provided_key: false,
        completed_by_run_id: None,
        completed_by_batch_id: None,
        completed_after: None,
        timeout_at: None,
        output: None,
        output_type: "application/json".into(),
        output_is_error: false,
        tags: Vec::new(),
        callback_secret: None,
        created_at: txn.now,
        completed_at: None,
    }
}

/// The `RUN` waitpoint completed by `run`, created on first use. A run that already
/// finished gets a waitpoint that is already complete with its result.
pub(crate) fn run_waitpoint(txn: &mut Txn<'_>, run: &Run) -> Result<Waitpoint> {
    if let Some(wp) = txn.tx.find_run_waitpoint(&run.id)? {
        return Ok(wp);
    }
    let mut wp = new_waitpoint(txn, &run.env_id, WaitpointType::Run);
    wp.completed_by_run_id = Some(run.id.clone());
    if run.status.is_final() {
        let (output, is_error) = run_result(txn, run)?;
        wp.status = WaitpointStatus::Completed;
        wp.completed_at = Some(run.completed_at.unwrap_or(txn.now));
        wp.output = output.data;
        wp.output_type = output.data_type;
        wp.output_is_error = is_error;
    }
    txn.tx.insert_waitpoint(&wp)?;
    if !run.has_waitpoint && !run.status.is_final() {
        // Mark the stored row (the caller's copy may be about to be written too).
        if let Some(mut stored) = txn.tx.lock_run(&run.id)? {
            stored.has_waitpoint = true;
            txn.tx.update_run(&stored)?;
        }
    }
    Ok(wp)
}

/// A finished run's result as a waitpoint carries it: the output, or the error as JSON.
pub(crate) fn run_result(txn: &mut Txn<'_>, run: &Run) -> Result<(Packet, bool)> {
    if run.status == RunStatus::Completed {
        Ok((txn.tx.get_output(&run.id)?.unwrap_or_default(), false))
    } else {
        let error =
            run.error.clone().unwrap_or_else(|| trigger_types::TaskRunError::string(run.status.as_str()));
        let json = serde_json::to_value(&error).unwrap_or_default();
        Ok((Packet::json(&json), true))
    }
}

/// Blocks an executing run on waitpoints. A run blocked on a pending waitpoint gives its
/// concurrency slot back (`EXECUTING_WITH_WAITPOINTS`, status `WAITING`); a run whose
/// waitpoints are all complete continues at once.
pub(crate) fn block_run(txn: &mut Txn<'_>, run: &mut Run, on: &[BlockOn]) -> Result<()> {
    if !matches!(run.execution_status, ExecutionStatus::Executing | ExecutionStatus::ExecutingWithWaitpoints)
    {
        return Err(Error::InvalidState(format!(
            "run {} is {} and cannot wait",
            run.id, run.execution_status
        )));
    }
    let mut added_pending = 0;
    for (waitpoint_id, slot) in on {
        let inserted = txn.tx.insert_block(&BlockEdge {
            run_id: run.id.clone(),
            waitpoint_id: waitpoint_id.clone(),
            batch_id: slot.as_ref().map(|(b, _)| b.clone()),
            batch_index: slot.as_ref().map(|(_, i)| *i),
            created_at: txn.now,
        })?;
        if inserted && is_pending(txn, waitpoint_id)? {
            added_pending += 1;
        }
    }
    if run.execution_status == ExecutionStatus::ExecutingWithWaitpoints {
        // Already waiting (a batch adding its children): count the new edges. Not a change
        // anyone watches, so the run is written without publishing it.
        if let (Some(n), true) = (run.pending_blockers, added_pending > 0) {
            run.pending_blockers = Some(n + added_pending);
            txn.tx.update_run(run)?;
        }
        return Ok(());
    }
    match take_completed(txn, &run.id)? {
        Err(pending) => {
            run.pending_blockers = Some(pending);
            run.status = RunStatus::Waiting;
            txn.snapshot(run, ExecutionStatus::ExecutingWithWaitpoints, "blocked by waitpoints", Vec::new())?;
            txn.arm_heartbeat(run)?;
            txn.save_run(run)?;
            queue::release(txn, run)
        }
        Ok(completed) => {
            run.pending_blockers = None;
            txn.snapshot(run, ExecutionStatus::Executing, "waitpoints already completed", completed)?;
            txn.arm_heartbeat(run)?;
            txn.save_run(run)
        }
    }
}

/// A waitpoint that does not exist counts as pending: it can never release the run by
/// mistake.
fn is_pending(txn: &mut Txn<'_>, waitpoint_id: &str) -> Result<bool> {
    let wp = txn.tx.lock_waitpoint(waitpoint_id)?;
    Ok(wp.is_none_or(|wp| wp.status == WaitpointStatus::Pending))
}

/// When none of the run's blocking waitpoints is pending: all of them, as completed
/// waitpoints, with the edges removed. Otherwise how many edges are still on a pending (or
/// missing) waitpoint, changing nothing. One pass over the edges either way.
fn take_completed(
    txn: &mut Txn<'_>,
    run_id: &str,
) -> Result<std::result::Result<Vec<CompletedWaitpoint>, u32>> {
    let mut out = Vec::new();
    let mut pending = 0;
    for edge in txn.tx.list_blocks(run_id)? {
        match txn.tx.lock_waitpoint(&edge.waitpoint_id)? {
            Some(wp) if wp.status != WaitpointStatus::Pending && pending == 0 => {
                out.push(CompletedWaitpoint {
                    id: wp.id,
                    kind: wp.kind,
                    completed_at: wp.completed_at.unwrap_or(txn.now),
                    index: edge.batch_index,
                    idempotency_key: wp.idempotency_key,
                    completed_by_run_id: wp.completed_by_run_id,
                    completed_by_batch_id: wp.completed_by_batch_id.or(edge.batch_id),
                    completed_after: wp.completed_after,
                    output: wp.output,
                    output_type: wp.output_type,
                    output_is_error: wp.output_is_error,
                })
            }
            Some(wp) if wp.status != WaitpointStatus::Pending => {}
            _ => pending += 1,
        }
    }
    if pending > 0 {
        return Ok(Err(pending));
    }
    txn.tx.delete_blocks(run_id)?;
    Ok(Ok(out))
}

/// Completes a waitpoint and continues every run it was the last blocker of. Completing a
/// completed waitpoint changes nothing and returns false.
pub(crate) fn complete_waitpoint(
    txn: &mut Txn<'_>,
    wp: &mut Waitpoint,
    output: Packet,
    is_error: bool,
) -> Result<bool> {
    if wp.status == WaitpointStatus::Completed {
        return Ok(false);
    }
    wp.status = WaitpointStatus::Completed;
    wp.completed_at = Some(txn.now);
    wp.output = output.data;
    wp.output_type = output.data_type;
    wp.output_is_error = is_error;
    txn.tx.update_waitpoint(wp)?;
    match wp.kind {
        WaitpointType::Manual => txn.clear_timer(TimerKind::TokenTimeout, &wp.id)?,
        WaitpointType::DateTime => txn.clear_timer(TimerKind::CompleteDateTime, &wp.id)?,
        _ => {}
    }
    for (run_id, edges) in txn.tx.runs_blocked_by(&wp.id)? {
        continue_if_unblocked(txn, &run_id, edges)?;
    }
    Ok(true)
}

/// Continues a blocked run once none of its waitpoints is pending: at once if it can take a
/// concurrency slot, otherwise `QUEUED_EXECUTING` in its queue with its original place.
/// `completed_edges` of its edges were just released. The run's count of pending edges
/// spares reading every edge while others are still pending; the edges are read (and the
/// count corrected) only when it reaches zero or is unknown, so a wrong count can delay
/// nothing and release nothing early.
pub(crate) fn continue_if_unblocked(txn: &mut Txn<'_>, run_id: &str, completed_edges: u32) -> Result<()> {
    let mut run = txn.lock_run(run_id)?;
    if run.execution_status != ExecutionStatus::ExecutingWithWaitpoints {
        return Ok(());
    }
    if let Some(left) = run.pending_blockers.map(|n| n.saturating_sub(completed_edges)).filter(|n| *n > 0) {
        run.pending_blockers = Some(left);
        txn.tx.update_run(&run)?;
        return Ok(());
    }
    let completed = match take_completed(txn, run_id)? {
        Ok(completed) => completed,
        Err(pending) => {
            run.pending_blockers = Some(pending);
            txn.tx.update_run(&run)?;
            return Ok(());
        }
    };
    run.pending_blockers = None;
    if queue::try_acquire(txn, &run)? {
        run.status = RunStatus::Executing;
        txn.snapshot(&mut run, ExecutionStatus::Executing, "waitpoints completed", completed)?;
    } else {
        txn.snapshot(
            &mut run,
            ExecutionStatus::QueuedExecuting,
            "waitpoints completed, waiting for a concurrency slot",
            completed,
        )?;
        let entry: ReadyEntry = queue::ready_entry(&run, true);
        txn.tx.enqueue(&entry)?;
        txn.work_available(&run.env_id);
    }
    txn.arm_heartbeat(&run)?;
    txn.save_run(&mut run)
}

/// Finds a waitpoint by idempotency key, forgetting the key when it has expired.
fn find_by_key(txn: &mut Txn<'_>, env_id: &str, key: &str) -> Result<Option<Waitpoint>> {
    match txn.tx.find_waitpoint_by_key(env_id, key)? {
        Some(mut wp) if wp.idempotency_key_expires_at.is_some_and(|at| at <= txn.now) => {
            wp.idempotency_key = None;
            wp.idempotency_key_expires_at = None;
            txn.tx.update_waitpoint(&wp)?;
            Ok(None)
        }
        found => Ok(found),
    }
}

/// `wait.for` / `wait.until`: blocks the run on a `DATETIME` waitpoint. With an idempotency
/// key the same waitpoint is reused (and may already be complete).
pub(crate) fn wait_for_duration(
    txn: &mut Txn<'_>,
    env_id: &str,
    run_id: &str,
    snapshot_id: &str,
    until: Millis,
    idempotency_key: Option<&str>,
    key_ttl_ms: Option<u64>,
) -> Result<Waitpoint> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    txn.check_snapshot(&run, snapshot_id)?;
    let existing = match idempotency_key {
        Some(key) => find_by_key(txn, env_id, key)?,
        None => None,
    };
    let wp = match existing {
        Some(wp) => wp,
        None => {
            let mut wp = new_waitpoint(txn, env_id, WaitpointType::DateTime);
            wp.completed_after = Some(until);
            if let Some(key) = idempotency_key {
                wp.idempotency_key = Some(key.to_string());
                wp.user_provided_key = true;
                wp.idempotency_key_expires_at =
                    Some(txn.now + key_ttl_ms.unwrap_or(txn.config.default_idempotency_ttl_ms) as i64);
            }
            if until <= txn.now {
                wp.status = WaitpointStatus::Completed;
                wp.completed_at = Some(txn.now);
                txn.tx.insert_waitpoint(&wp)?;
            } else {
                txn.tx.insert_waitpoint(&wp)?;
                let id = wp.id.clone();
                txn.set_timer(TimerKind::CompleteDateTime, &id, "", until)?;
            }
            wp
        }
    };
    block_run(txn, &mut run, &[(wp.id.clone(), None)])?;
    Ok(wp)
}

/// Options of a new token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenOptions {
    pub timeout_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub idempotency_key_ttl_ms: Option<u64>,
    pub tags: Vec<String>,
}

/// `wait.createToken`: a `MANUAL` waitpoint, completed through the API or by its timeout.
pub(crate) fn create_token(
    txn: &mut Txn<'_>,
    env_id: &str,
    opts: &TokenOptions,
) -> Result<(Waitpoint, bool)> {
    crate::lifecycle::registry::environment(txn, env_id)?;
    if opts.tags.len() > crate::config::limits::TAGS {
        return Err(Error::Invalid(format!("tags: at most {} tags per token", crate::config::limits::TAGS)));
    }
    if let Some(key) = &opts.idempotency_key {
        if let Some(wp) = find_by_key(txn, env_id, key)? {
            return Ok((wp, true));
        }
    }
    let mut wp = new_waitpoint(txn, env_id, WaitpointType::Manual);
    wp.timeout_at = opts.timeout_at;
    wp.tags = opts.tags.clone();
    wp.callback_secret = Some(trigger_types::ids::random_alphanumeric(32));
    if let Some(key) = &opts.idempotency_key {
        wp.idempotency_key = Some(key.clone());
        wp.user_provided_key = true;
        wp.idempotency_key_expires_at = Some(
            txn.now + opts.idempotency_key_ttl_ms.unwrap_or(txn.config.default_idempotency_ttl_ms) as i64,
        );
    }
    txn.tx.insert_waitpoint(&wp)?;
    if let Some(at) = opts.timeout_at {
        let id = wp.id.clone();
        txn.set_timer(TimerKind::TokenTimeout, &id, "", at.max(txn.now))?;
    }
    Ok((wp, false))
}

/// `wait.forToken`: blocks the run on a token of its environment.
pub(crate) fn wait_for_token(
    txn: &mut Txn<'_>,
    env_id: &str,
    run_id: &str,
    snapshot_id: Option<&str>,
    waitpoint_id: &str,
) -> Result<Waitpoint> {
    let mut run = txn.lock_run_in(env_id, run_id)?;
    if let Some(snapshot_id) = snapshot_id {
        txn.check_snapshot(&run, snapshot_id)?;
    }
    let wp = match txn.tx.lock_waitpoint(waitpoint_id)? {
        Some(wp) if wp.env_id == env_id => wp,
        _ => return Err(not_found("Waitpoint", waitpoint_id)),
    };
    block_run(txn, &mut run, &[(wp.id.clone(), None)])?;
    Ok(wp)
}

/// `wait.completeToken`: completes a token of the environment with data. Completing a
/// completed token changes nothing.
pub(crate) fn complete_token(
    txn: &mut Txn<'_>,
    env_id: Option<&str>,
    waitpoint_id: &str,
    data: Packet,
) -> Result<Waitpoint> {
    let mut wp = match txn.tx.lock_waitpoint(waitpoint_id)? {
        Some(wp) if env_id.is_none_or(|e| e == wp.env_id) => wp,
        _ => return Err(not_found("Waitpoint", waitpoint_id)),
    };
    if wp.kind != WaitpointType::Manual {
        return Err(Error::InvalidState(format!("waitpoint {waitpoint_id} is not a token")));
    }
    if data.data.as_ref().is_some_and(|d| d.len() > crate::config::limits::OUTPUT) {
        return Err(Error::TooLarge("data: over the 10 MiB limit".into()));
    }
    complete_waitpoint(txn, &mut wp, data, false)?;
    Ok(wp)
}

/// The output a timed-out token completes with.
pub(crate) fn timeout_output(at: Millis) -> Packet {
    Packet::json(&serde_json::json!({
        "code": "TRIGGER_WAITPOINT_TIMEOUT",
        "message": format!("Waitpoint timed out at {}", iso8601(at)),
    }))
}

/// RFC 3339 with milliseconds, UTC.
pub fn iso8601(millis: Millis) -> String {
    let date = crate::lifecycle::registry::civil_date(millis);
    let ms = millis.rem_euclid(86_400_000);
    format!(
        "{}-{}-{}T{:02}:{:02}:{:02}.{:03}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
