//! The transport seam: how the worker and the in-task APIs reach the run engine.
//!
//! [`Backend`] is the engine's worker and management surface for one environment. The
//! [`Embedded`] backend calls an [`Engine`](trigger_engine::Engine) in the same process; the
//! [`Http`] backend speaks the server's Trigger.dev-compatible endpoints. Types are the engine's own (`trigger_engine::*`), so both backends hand the
//! worker exactly the same values.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use trigger_engine::{
    AttemptOutcome, Batch, BatchItem, Completion, CreateBatch, DequeueRequest, Dequeued, ItemsAdded,
    MetadataUpdate, Millis, Packet, Page, ReplayOverrides, Run, RunChange, RunDetails, RunEvent, RunFilter,
    Snapshot, StartedAttempt, TokenOptions, TriggerRequest, Triggered, Waitpoint, WorkerManifest,
    WorkerVersion,
};

use crate::error::Result;

mod embedded;
mod http;
mod retry;

pub use embedded::Embedded;
pub use http::{Http, HttpOptions};
pub use retry::RequestRetry;

/// A boxed, sendable future (what [`Backend`] methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The engine as one environment sees it. All methods act in the backend's environment.
pub trait Backend: Send + Sync + 'static {
    /// The engine's clock (ms since the epoch): retry times are computed on it.
    fn now(&self) -> Millis;

    /// Registers a worker version (its tasks and queues).
    fn register_worker(&self, manifest: WorkerManifest) -> BoxFuture<'_, Result<WorkerVersion>>;
    /// Claims runs, waiting up to `wait` for one (long poll).
    fn dequeue(&self, request: DequeueRequest, wait: Duration) -> BoxFuture<'_, Result<Vec<Dequeued>>>;
    /// Starts the next attempt of a claimed run.
    fn start_attempt(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<StartedAttempt>>;
    /// Reports how an attempt ended, with the last metadata operations.
    fn complete_attempt(
        &self,
        run_id: &str,
        snapshot_id: &str,
        completion: Completion,
        metadata: Option<MetadataUpdate>,
    ) -> BoxFuture<'_, Result<AttemptOutcome>>;
    /// Extends the lease of a run's snapshot.
    fn heartbeat(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>>;
    /// Hands a claimed or executing run back to its queue without failing the attempt (the
    /// worker is shutting down).
    fn release_run(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>>;
    /// The run and its latest snapshot.
    fn latest_snapshot(&self, run_id: &str) -> BoxFuture<'_, Result<(Run, Snapshot)>>;
    /// A run's snapshots after one, oldest first.
    fn snapshots_since(&self, run_id: &str, after: Option<&str>) -> BoxFuture<'_, Result<Vec<Snapshot>>>;
    /// Every run change of the environment, pushed (the embedded engine's change feed).
    /// `None` when the transport cannot push; callers then re-read the snapshot.
    fn subscribe(&self) -> Option<broadcast::Receiver<RunChange>>;

    /// Creates a run.
    fn trigger(&self, request: TriggerRequest) -> BoxFuture<'_, Result<Triggered>>;
    /// Creates a batch.
    fn create_batch(&self, request: CreateBatch) -> BoxFuture<'_, Result<(Batch, bool)>>;
    /// Adds items to a batch.
    fn add_batch_items(&self, batch_id: &str, items: Vec<BatchItem>) -> BoxFuture<'_, Result<ItemsAdded>>;

    /// Blocks a run on a `DATETIME` waitpoint. With an idempotency key, a waitpoint made
    /// earlier with the same key (within its TTL) is reused, and may already be complete.
    fn wait_for_duration(
        &self,
        run_id: &str,
        snapshot_id: &str,
        until: Millis,
        idempotency_key: Option<String>,
        idempotency_key_ttl_ms: Option<u64>,
    ) -> BoxFuture<'_, Result<Waitpoint>>;
    /// Creates a waitpoint token; the flag is true when an idempotency key matched.
    fn create_token(&self, options: TokenOptions) -> BoxFuture<'_, Result<(Waitpoint, bool)>>;
    /// Blocks a run on a token.
    fn wait_for_token(
        &self,
        run_id: &str,
        snapshot_id: &str,
        token_id: &str,
    ) -> BoxFuture<'_, Result<Waitpoint>>;
    /// Completes a token with data.
    fn complete_token(&self, token_id: &str, data: Packet) -> BoxFuture<'_, Result<Waitpoint>>;
    /// A waitpoint (token) by id.
    fn get_waitpoint(&self, id: &str) -> BoxFuture<'_, Result<Waitpoint>>;

    /// Applies metadata operations; returns the metadata afterwards.
    fn update_metadata(&self, run_id: &str, update: MetadataUpdate) -> BoxFuture<'_, Result<Value>>;
    /// Stores log lines of a run.
    fn record_events(&self, run_id: &str, events: Vec<RunEvent>) -> BoxFuture<'_, Result<()>>;

    /// A run with its payload and output.
    fn get_run(&self, run_id: &str) -> BoxFuture<'_, Result<RunDetails>>;
    /// A packet with its data at hand: one the TypeScript SDK offloaded to object storage
    /// (`application/store`, 128 KB and more) is fetched, with its stored content type;
    /// others come back as they are (the default).
    fn import_packet(&self, packet: Packet) -> BoxFuture<'_, Result<Packet>> {
        Box::pin(async move { Ok(packet) })
    }
    /// Runs of the environment, newest first (`filter.env_id` is filled in).
    fn list_runs(&self, filter: RunFilter, page: Page) -> BoxFuture<'_, Result<Vec<Run>>>;
    /// Cancels a run and its unfinished children.
    fn cancel(&self, run_id: &str) -> BoxFuture<'_, Result<Run>>;
    /// Triggers a new run with an old run's payload and options.
    fn replay(&self, run_id: &str, overrides: ReplayOverrides) -> BoxFuture<'_, Result<Triggered>>;
    /// Moves a delayed run's start time.
    fn reschedule(&self, run_id: &str, delay_until: Millis) -> BoxFuture<'_, Result<Run>>;
}

/// A shared backend handle.
pub type SharedBackend = Arc<dyn Backend>;
