//! The current run: a task-local set around every attempt, so `metadata`, `logger`,
//! `locals`, `wait` and triggering find their run without being handed it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::watch;
use trigger_engine::{ExecutionStatus, MetadataOp, MetadataUpdate, RunEvent};

use crate::backend::SharedBackend;
use crate::context::Context;
use crate::worker::capacity::Lease;

tokio::task_local! {
    static CURRENT: Arc<RunScope>;
}

/// What a wait reports to `on_wait` / `on_resume`.
pub(crate) type WaitHook =
    Arc<dyn Fn(crate::wait::WaitInfo, bool) -> crate::backend::BoxFuture<'static, ()> + Send + Sync>;

/// What a worker last heard of one of its runs on the engine's change feed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heard {
    /// The run's latest snapshot and its execution status, as the change said; `None` after
    /// changes were missed (read the snapshot instead).
    pub snapshot: Option<(String, ExecutionStatus)>,
}

impl Heard {
    /// A change of the run.
    pub fn change(snapshot_id: &str, status: ExecutionStatus) -> Heard {
        Heard { snapshot: (!snapshot_id.is_empty()).then(|| (snapshot_id.to_string(), status)) }
    }

    /// Changes were missed.
    pub fn missed() -> Heard {
        Heard { snapshot: None }
    }
}

/// Everything in-task APIs need about the run executing on this task.
pub(crate) struct RunScope {
    pub backend: SharedBackend,
    pub ctx: Context,
    /// The run's latest snapshot as this worker knows it (waits move it).
    pub snapshot_id: Arc<Mutex<String>>,
    /// What the engine's change feed last said about this run.
    pub changes: watch::Receiver<Heard>,
    pub locals: Mutex<HashMap<&'static str, Box<dyn Any + Send + Sync>>>,
    pub metadata: Mutex<MetadataState>,
    pub logs: Mutex<Vec<RunEvent>>,
    /// Serializes flushes, so the completion carries whatever no flush took.
    pub flush_lock: tokio::sync::Mutex<()>,
    /// Only one wait at a time.
    pub waiting: tokio::sync::Mutex<()>,
    /// The worker capacity this run holds; given back while the run waits.
    pub lease: Arc<Lease>,
    pub wait_hook: Mutex<Option<WaitHook>>,
}

/// The run's metadata as the task sees it, and the operations not yet flushed.
#[derive(Debug, Default)]
pub(crate) struct MetadataState {
    pub current: Value,
    pub pending: Vec<MetadataOp>,
    pub parent: Vec<MetadataOp>,
    pub root: Vec<MetadataOp>,
}

impl MetadataState {
    pub fn take(&mut self) -> Option<MetadataUpdate> {
        if self.pending.is_empty() && self.parent.is_empty() && self.root.is_empty() {
            return None;
        }
        Some(MetadataUpdate {
            metadata: None,
            operations: std::mem::take(&mut self.pending),
            parent_operations: std::mem::take(&mut self.parent),
            root_operations: std::mem::take(&mut self.root),
        })
    }
}

impl RunScope {
    pub fn snapshot_id(&self) -> String {
        self.snapshot_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_snapshot_id(&self, id: &str) {
        *self.snapshot_id.lock().unwrap_or_else(|e| e.into_inner()) = id.to_string();
    }

    /// Sends buffered metadata operations and log lines now.
    pub async fn flush(&self) -> crate::Result<()> {
        let _guard = self.flush_lock.lock().await;
        let update = self.metadata.lock().unwrap_or_else(|e| e.into_inner()).take();
        let logs = std::mem::take(&mut *self.logs.lock().unwrap_or_else(|e| e.into_inner()));
        if !logs.is_empty() {
            self.backend.record_events(&self.ctx.run.id, logs).await?;
        }
        if let Some(update) = update {
            self.backend.update_metadata(&self.ctx.run.id, update).await?;
        }
        Ok(())
    }
}

/// The scope of the run executing on this task, if any.
pub(crate) fn current() -> Option<Arc<RunScope>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs a future with `scope` as the current run.
pub(crate) async fn enter<F: std::future::Future>(scope: Arc<RunScope>, f: F) -> F::Output {
    CURRENT.scope(scope, f).await
}
