//! Engine settings. Defaults follow Trigger.dev's self-hosted defaults where one exists.

/// How long a snapshot may go without a heartbeat before the run counts as stalled, per
/// execution status (ms).
#[derive(Debug, Clone)]
pub struct HeartbeatTimeouts {
    pub pending_executing: i64,
    pub executing: i64,
    pub executing_with_waitpoints: i64,
    pub pending_cancel: i64,
}

impl Default for HeartbeatTimeouts {
    fn default() -> Self {
        HeartbeatTimeouts {
            pending_executing: 60_000,
            executing: 300_000,
            executing_with_waitpoints: 300_000,
            pending_cancel: 60_000,
        }
    }
}

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub heartbeat: HeartbeatTimeouts,
    /// A retry whose delay is below this keeps the run on its worker (`RETRY_IMMEDIATELY`);
    /// longer delays put it back in the queue (`RETRY_QUEUED`).
    pub retry_immediately_threshold_ms: u64,
    /// Default environment concurrency limit (`DEFAULT_ENV_EXECUTION_CONCURRENCY_LIMIT`).
    pub default_env_concurrency_limit: u32,
    /// TTL given to dev runs that have none (`"10m"`); `None` disables it.
    pub dev_default_ttl_ms: Option<u64>,
    /// How long an idempotency key lives when the trigger gives no TTL (30 days).
    pub default_idempotency_ttl_ms: u64,
    /// Times a dequeued run may be lost before an attempt starts, then it fails.
    pub max_dequeue_count: u32,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
    /// Metadata updates are refused this long after a run completed (1 h).
    pub metadata_updatable_window_ms: i64,
    /// Delay before a run that stalled while executing is retried.
    pub stall_retry_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat: HeartbeatTimeouts::default(),
            retry_immediately_threshold_ms: 5_000,
            default_env_concurrency_limit: 100,
            dev_default_ttl_ms: Some(600_000),
            default_idempotency_ttl_ms: 30 * 24 * 3_600_000,
            max_dequeue_count: 5,
            max_batch: 512,
            metadata_updatable_window_ms: 3_600_000,
            stall_retry_delay_ms: 250,
        }
    }
}

/// Limits on sizes of user data (bytes).
pub mod limits {
    /// A trigger payload (`TASK_PAYLOAD_MAXIMUM_SIZE`).
    pub const PAYLOAD: usize = 3 * 1024 * 1024;
    /// A task output.
    pub const OUTPUT: usize = 10 * 1024 * 1024;
    /// Run metadata (`TASK_RUN_METADATA_MAXIMUM_SIZE`).
    pub const METADATA: usize = 256 * 1024;
    /// Items in one batch.
    pub const BATCH_ITEMS: u32 = 1000;
    /// Tags on one run, and the length of one tag.
    pub const TAGS: usize = 10;
    pub const TAG_LENGTH: usize = 128;
    /// Idempotency key length.
    pub const IDEMPOTENCY_KEY: usize = 2048;
    /// Queue name length.
    pub const QUEUE_NAME: usize = 128;
}
