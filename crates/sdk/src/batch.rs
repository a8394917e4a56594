//! `batch.*`: batches whose items may run different tasks (`batch.trigger([{ id, payload,
//! options }])`). For one task, use [`Task::batch_trigger`](crate::Task::batch_trigger).

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::trigger::{self, BatchHandle, BatchResult, Prepared, TriggerOptions};

/// One item: a task id, its payload and options.
#[derive(Debug, Clone)]
pub struct Item {
    /// The task to run.
    pub id: String,
    /// Its payload.
    pub payload: Value,
    /// Its options.
    pub options: TriggerOptions,
}

impl Item {
    /// An item with default options.
    pub fn new(id: impl Into<String>, payload: impl Serialize) -> Result<Item> {
        Ok(Item {
            id: id.into(),
            payload: serde_json::to_value(payload)?,
            options: TriggerOptions::default(),
        })
    }
}

fn prepare(items: Vec<Item>) -> Vec<Prepared> {
    items
        .into_iter()
        .map(|i| Prepared {
            task: i.id,
            payload: trigger_engine::Packet::json(&i.payload),
            options: i.options,
        })
        .collect()
}

/// `batch.trigger`: one run per item.
pub async fn trigger(items: Vec<Item>) -> Result<BatchHandle> {
    trigger::batch_trigger_prepared(&trigger::backend()?, prepare(items)).await
}

/// `batch.triggerAndWait`: one child run per item, waited for; outputs as JSON, in item
/// order. Only inside a run.
pub async fn trigger_and_wait(items: Vec<Item>) -> Result<BatchResult<Value>> {
    trigger::batch_trigger_and_wait_prepared(prepare(items)).await
}
