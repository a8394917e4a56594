//! Batches: created with an expected item count, filled idempotently by index, sealed when
//! every item is in; a waiting parent resumes when all of the batch's runs have finished.

use std::collections::HashSet;

use trigger_types::{ids, BatchStatus, RunStatus, WaitpointType};

use crate::config::limits;
use crate::error::{not_found, Error, Result};
use crate::lifecycle::trigger::{self, BatchSlot, TriggerRequest};
use crate::lifecycle::{registry, wait};
use crate::model::{Batch, BatchError, Packet};
use crate::txn::Txn;

/// A new batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateBatch {
    pub expected_count: u32,
    pub parent_run_id: Option<String>,
    pub resume_parent_on_completion: bool,
    pub idempotency_key: Option<String>,
    pub idempotency_key_ttl_ms: Option<u64>,
}

/// One item of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub index: u32,
    pub request: TriggerRequest,
}

/// What adding items did.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemsAdded {
    pub batch: Batch,
    pub accepted: u32,
    pub deduplicated: u32,
}

pub(crate) fn create_batch(txn: &mut Txn<'_>, env_id: &str, req: &CreateBatch) -> Result<(Batch, bool)> {
    registry::environment(txn, env_id)?;
    if req.expected_count == 0 || req.expected_count > limits::BATCH_ITEMS {
        return Err(Error::Invalid(format!(
            "runCount: a batch has 1 to {} items, got {}",
            limits::BATCH_ITEMS,
            req.expected_count
        )));
    }
    if let Some(key) = &req.idempotency_key {
        if let Some(mut existing) = txn.tx.find_batch_by_key(env_id, key)? {
            if existing.idempotency_key_expires_at.is_some_and(|at| at <= txn.now) {
                existing.idempotency_key = None;
                existing.idempotency_key_expires_at = None;
                txn.tx.update_batch(&existing)?;
            } else {
                return Ok((existing, true));
            }
        }
    }
    let parent = match &req.parent_run_id {
        Some(id) => Some(txn.lock_run_in(env_id, id)?),
        None => None,
    };
    let mut batch = Batch {
        id: txn.id(ids::BATCH),
        env_id: env_id.to_string(),
        status: BatchStatus::Pending,
        expected_count: req.expected_count,
        run_count: 0,
        completed_count: 0,
        failed_count: 0,
        sealed: false,
        idempotency_key: req.idempotency_key.clone(),
        idempotency_key_expires_at: req.idempotency_key.as_ref().map(|_| {
            txn.now + req.idempotency_key_ttl_ms.unwrap_or(txn.config.default_idempotency_ttl_ms) as i64
        }),
        parent_run_id: parent.as_ref().map(|p| p.id.clone()),
        resume_parent_on_completion: req.resume_parent_on_completion && parent.is_some(),
        waitpoint_id: None,
        errors: Vec::new(),
        created_at: txn.now,
        updated_at: txn.now,
        completed_at: None,
    };
    if let (Some(mut parent), true) = (parent, batch.resume_parent_on_completion) {
        let mut wp = wait::new_waitpoint(txn, env_id, WaitpointType::Batch);
        wp.completed_by_batch_id = Some(batch.id.clone());
        txn.tx.insert_waitpoint(&wp)?;
        batch.waitpoint_id = Some(wp.id.clone());
        txn.tx.insert_batch(&batch)?;
        wait::block_run(txn, &mut parent, &[(wp.id, None)])?;
    } else {
        txn.tx.insert_batch(&batch)?;
    }
    Ok((batch, false))
}

/// Adds items; an index already present is skipped (a retried stream changes nothing). An
/// item that cannot be triggered is recorded as the batch's error for that index.
pub(crate) fn add_items(
    txn: &mut Txn<'_>,
    env_id: &str,
    batch_id: &str,
    items: &[BatchItem],
) -> Result<ItemsAdded> {
    let mut batch = match txn.tx.lock_batch(batch_id)? {
        Some(b) if b.env_id == env_id => b,
        _ => return Err(not_found("Batch", batch_id)),
    };
    for item in items {
        if item.index >= batch.expected_count {
            return Err(Error::Invalid(format!(
                "index: item {} is outside the batch of {} items",
                item.index, batch.expected_count
            )));
        }
    }
    let (mut accepted, mut deduplicated) = (0, 0);
    // The indexes already recorded, read once (a batch's first request has none).
    let mut recorded: HashSet<u32> = if batch.run_count > 0 {
        txn.tx.list_batch_items(&batch.id)?.into_iter().map(|(index, _)| index).collect()
    } else {
        HashSet::new()
    };
    for item in items {
        if batch.sealed || batch.errors.iter().any(|e| e.index == item.index) {
            deduplicated += 1;
            continue;
        }
        let mut request = item.request.clone();
        if batch.resume_parent_on_completion {
            request.options.parent_run_id = batch.parent_run_id.clone();
            request.options.resume_parent_on_completion = true;
        } else if request.options.parent_run_id.is_none() {
            request.options.parent_run_id = batch.parent_run_id.clone();
        }
        let slot = BatchSlot { batch_id: batch.id.clone(), index: item.index };
        if !recorded.insert(item.index) {
            deduplicated += 1;
            continue;
        }
        accepted += 1;
        match trigger::trigger(txn, env_id, &request, Some(&slot)) {
            Ok(triggered) => {
                txn.tx.record_batch_item(&batch.id, item.index, &triggered.run.id)?;
                batch.run_count += 1;
                if triggered.is_cached {
                    // A cached run reports to its own batch once, for its own item: count
                    // this item now (its waitpoint still gates a waiting parent). Two items
                    // with one key in the same batch would otherwise never add up.
                    batch.completed_count += 1;
                    if triggered.run.status.is_failure() {
                        batch.failed_count += 1;
                    }
                }
            }
            Err(e @ (Error::Storage(_) | Error::Shutdown)) => return Err(e),
            Err(e) => {
                batch.errors.push(BatchError {
                    index: item.index,
                    task: item.request.task.clone(),
                    error: e.to_string(),
                    code: Some("BATCH_ITEM_COULD_NOT_TRIGGER".into()),
                });
            }
        }
    }
    let filled = batch.run_count + batch.errors.len() as u32;
    if filled >= batch.expected_count && !batch.sealed {
        batch.sealed = true;
        batch.status =
            if batch.errors.is_empty() { BatchStatus::Completed } else { BatchStatus::PartialFailed };
        batch.completed_at = Some(txn.now);
    } else if !batch.sealed && filled > 0 {
        batch.status = BatchStatus::Processing;
    }
    batch.updated_at = txn.now;
    txn.tx.update_batch(&batch)?;
    check_done(txn, &mut batch)?;
    Ok(ItemsAdded { batch, accepted, deduplicated })
}

/// A run of the batch finished.
pub(crate) fn run_finished(txn: &mut Txn<'_>, batch_id: &str, status: RunStatus) -> Result<()> {
    let Some(mut batch) = txn.tx.lock_batch(batch_id)? else { return Ok(()) };
    batch.completed_count += 1;
    if status.is_failure() {
        batch.failed_count += 1;
    }
    batch.updated_at = txn.now;
    txn.tx.update_batch(&batch)?;
    check_done(txn, &mut batch)
}

/// Completes the batch's waitpoint once it is sealed and all its runs have finished.
fn check_done(txn: &mut Txn<'_>, batch: &mut Batch) -> Result<()> {
    if !batch.sealed || batch.completed_count < batch.run_count {
        return Ok(());
    }
    if let Some(wp_id) = &batch.waitpoint_id {
        if let Some(mut wp) = txn.tx.lock_waitpoint(wp_id)? {
            let output = Packet::json(&serde_json::json!({ "id": batch.id }));
            wait::complete_waitpoint(txn, &mut wp, output, false)?;
        }
    }
    Ok(())
}
