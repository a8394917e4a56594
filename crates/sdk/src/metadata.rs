//! Run metadata (`metadata.*`): updated in the task, applied to the task's own copy at
//! once, and sent to the engine about once a second and with the attempt's completion
//! (`flushedMetadata`). Outside a run every call is a no-op.
//!
//! Setters chain, as in the TS SDK:
//!
//! ```
//! use trigger_sdk::metadata;
//! metadata::set("progress", 0.5).append("processed", 1).increment("count", 1);
//! ```

use serde::Serialize;
use serde_json::Value;
use trigger_engine::lifecycle::metadata::apply_ops;
use trigger_engine::MetadataOp;

use crate::error::Result;
use crate::scope;

/// Which run's metadata a chain updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Own,
    Parent,
    Root,
}

/// Returned by every setter so calls chain.
#[derive(Debug, Clone, Copy)]
pub struct Metadata {
    target: Target,
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn push(target: Target, op: MetadataOp) {
    let Some(scope) = scope::current() else { return };
    let mut state = scope.metadata.lock().unwrap_or_else(|e| e.into_inner());
    match target {
        Target::Own => {
            if let Err(e) = apply_ops(&mut state.current, std::slice::from_ref(&op)) {
                tracing::warn!(target: "trigger_sdk::metadata", error = %e, "metadata operation rejected");
                return;
            }
            state.pending.push(op);
        }
        Target::Parent => state.parent.push(op),
        Target::Root => state.root.push(op),
    }
}

impl Metadata {
    /// Sets a key (a `$.a.b` key is a JSON path).
    pub fn set(self, key: &str, value: impl Serialize) -> Self {
        push(self.target, MetadataOp::Set { key: key.into(), value: to_value(value) });
        self
    }

    /// Deletes a key.
    pub fn del(self, key: &str) -> Self {
        push(self.target, MetadataOp::Delete { key: key.into() });
        self
    }

    /// Appends to an array (creating it).
    pub fn append(self, key: &str, value: impl Serialize) -> Self {
        push(self.target, MetadataOp::Append { key: key.into(), value: to_value(value) });
        self
    }

    /// Removes every element equal to `value` from an array.
    pub fn remove(self, key: &str, value: impl Serialize) -> Self {
        push(self.target, MetadataOp::Remove { key: key.into(), value: to_value(value) });
        self
    }

    /// Adds to a number (a missing key counts as 0).
    pub fn increment(self, key: &str, by: impl Into<f64>) -> Self {
        push(self.target, MetadataOp::Increment { key: key.into(), value: by.into() });
        self
    }

    /// Subtracts from a number.
    pub fn decrement(self, key: &str, by: impl Into<f64>) -> Self {
        push(self.target, MetadataOp::Increment { key: key.into(), value: -by.into() });
        self
    }

    /// Replaces the whole object.
    pub fn replace(self, value: impl Serialize) -> Self {
        push(self.target, MetadataOp::Update { value: to_value(value) });
        self
    }
}

const OWN: Metadata = Metadata { target: Target::Own };

/// Sets a key of the current run's metadata.
pub fn set(key: &str, value: impl Serialize) -> Metadata {
    OWN.set(key, value)
}

/// Deletes a key.
pub fn del(key: &str) -> Metadata {
    OWN.del(key)
}

/// Appends to an array.
pub fn append(key: &str, value: impl Serialize) -> Metadata {
    OWN.append(key, value)
}

/// Removes a value from an array.
pub fn remove(key: &str, value: impl Serialize) -> Metadata {
    OWN.remove(key, value)
}

/// Adds to a number.
pub fn increment(key: &str, by: impl Into<f64>) -> Metadata {
    OWN.increment(key, by)
}

/// Subtracts from a number.
pub fn decrement(key: &str, by: impl Into<f64>) -> Metadata {
    OWN.decrement(key, by)
}

/// Replaces the whole object.
pub fn replace(value: impl Serialize) -> Metadata {
    OWN.replace(value)
}

/// Updates of the parent run's metadata (a root run is its own parent).
pub fn parent() -> Metadata {
    Metadata { target: Target::Parent }
}

/// Updates of the root run's metadata.
pub fn root() -> Metadata {
    Metadata { target: Target::Root }
}

/// The current run's metadata (`{}` outside a run).
pub fn current() -> Value {
    scope::current()
        .map(|s| s.metadata.lock().unwrap_or_else(|e| e.into_inner()).current.clone())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// One key of the current run's metadata.
pub fn get(key: &str) -> Option<Value> {
    current().get(key).cloned()
}

/// Sends pending updates (and buffered log lines) now rather than at the next tick.
pub async fn flush() -> Result<()> {
    match scope::current() {
        Some(scope) => scope.flush().await,
        None => Ok(()),
    }
}
