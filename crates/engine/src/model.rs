//! The rows the engine keeps: environments, worker versions, tasks, queues, runs, execution
//! snapshots, waitpoints, batches, timers and run events.
//!
//! Backends persist these structs; which fields become indexed columns is the backend's
//! business, but every field must round-trip unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trigger_types::{
    BatchStatus, ExecutionStatus, MachinePreset, Millis, RetryOptions, RunStatus, TaskRunError,
    WaitpointStatus, WaitpointType,
};

/// Kind of environment. Environments are separate worlds: nothing crosses between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvironmentType {
    Development,
    Staging,
    Production,
    Preview,
}

impl EnvironmentType {
    /// The slug used in URLs and keys (`dev`, `stg`, `prod`, `preview`).
    pub fn slug(self) -> &'static str {
        match self {
            EnvironmentType::Development => "dev",
            EnvironmentType::Staging => "stg",
            EnvironmentType::Production => "prod",
            EnvironmentType::Preview => "preview",
        }
    }

    /// The wire name (`DEVELOPMENT`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentType::Development => "DEVELOPMENT",
            EnvironmentType::Staging => "STAGING",
            EnvironmentType::Production => "PRODUCTION",
            EnvironmentType::Preview => "PREVIEW",
        }
    }

    /// Parses a slug or wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "dev" | "development" => Some(EnvironmentType::Development),
            "stg" | "staging" => Some(EnvironmentType::Staging),
            "prod" | "production" => Some(EnvironmentType::Production),
            "preview" => Some(EnvironmentType::Preview),
            _ => None,
        }
    }
}

/// An environment of a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub id: String,
    pub project_id: String,
    pub kind: EnvironmentType,
    /// How many runs of this environment may execute at once.
    pub concurrency_limit: u32,
    pub paused: bool,
    pub created_at: Millis,
}

/// One registered worker version (`BackgroundWorker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerVersion {
    /// `worker_…`
    pub id: String,
    pub env_id: String,
    /// `YYYYMMDD.N`
    pub version: String,
    pub content_hash: String,
    pub sdk_version: Option<String>,
    pub cli_version: Option<String>,
    pub created_at: Millis,
}

/// A task as registered by a worker version (`BackgroundWorkerTask`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub env_id: String,
    pub worker_id: String,
    /// The task id (`slug`).
    pub slug: String,
    pub file_path: String,
    pub export_name: Option<String>,
    pub description: Option<String>,
    /// The queue name (`task/<slug>` unless the task names one).
    pub queue: String,
    pub retry: Option<RetryOptions>,
    pub machine: Option<MachinePreset>,
    pub max_duration_secs: Option<u32>,
    pub ttl_ms: Option<u64>,
    pub payload_schema: Option<Value>,
    pub created_at: Millis,
}

/// A queue of an environment (`TaskQueue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// `queue_…`
    pub id: String,
    pub env_id: String,
    pub name: String,
    /// `None` means limited only by the environment.
    pub concurrency_limit: Option<u32>,
    pub paused: bool,
    /// A task's own `task/<id>` queue is virtual; a `queue()` declaration is named.
    pub named: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// How a run was triggered (`triggerFunction` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TriggerFunction {
    Trigger,
    TriggerAndWait,
    BatchTrigger,
    BatchTriggerAndWait,
}

/// A serialized value with its content type (payload, output, waitpoint output).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Packet {
    pub data: Option<String>,
    /// `application/json`, `application/super+json`, `text/plain`, …
    pub data_type: String,
}

impl Packet {
    /// A JSON packet.
    pub fn json(value: &Value) -> Self {
        Packet { data: Some(value.to_string()), data_type: "application/json".into() }
    }
}

/// A run (`TaskRun`) without its payload and output, which are stored apart so that the
/// many small updates of a run never rewrite them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `run_…`, sortable by creation time.
    pub id: String,
    pub env_id: String,
    pub task: String,
    pub status: RunStatus,
    /// The latest snapshot: the truth about the run's execution.
    pub snapshot_id: String,
    pub execution_status: ExecutionStatus,
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    pub priority_ms: i64,
    /// The time the run entered the queue; its score is `queue_timestamp - priority_ms`.
    pub queue_timestamp: Millis,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    pub metadata_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachinePreset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key_expires_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_run_id: Option<String>,
    pub depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    pub resume_parent_on_completion: bool,
    pub trigger_function: TriggerFunction,
    pub is_test: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<String>,
    /// Worker version the run must execute on (`lockToVersion`), as a version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_to_version: Option<String>,
    /// Worker version (`worker_…`) the run was dequeued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The worker instance (process) holding the run while it executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_instance: Option<String>,
    /// Retry policy locked at dequeue from the task definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOptions>,
    pub attempt_number: u32,
    /// Times the run was dequeued and then lost before an attempt started.
    pub dequeue_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskRunError>,
    pub usage_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<Millis>,
    /// While the run waits: how many of its blocking edges are on a pending waitpoint, so
    /// that completing one of many (a batch's children) does not re-read them all. `None`
    /// when unknown; the edges are then read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_blockers: Option<u32>,
    /// A `RUN` waitpoint exists for this run (a parent waits on it): finishing the run
    /// completes it. Spares every other run the lookup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_waitpoint: bool,
}

/// A waitpoint this run was blocked on, as carried by the snapshot that resumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletedWaitpoint {
    pub id: String,
    pub kind: WaitpointType,
    pub completed_at: Millis,
    /// Position in a batch, for `batchTriggerAndWait` items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by_batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_after: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub output_type: String,
    pub output_is_error: bool,
}

/// An execution snapshot: one entry of a run's append-only execution log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `snapshot_…`, increasing within a run.
    pub id: String,
    pub run_id: String,
    pub execution_status: ExecutionStatus,
    pub run_status: RunStatus,
    pub description: String,
    pub attempt_number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    pub completed_waitpoints: Vec<CompletedWaitpoint>,
    pub created_at: Millis,
}

/// A waitpoint: something runs can block on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waitpoint {
    /// `waitpoint_…`
    pub id: String,
    pub env_id: String,
    pub kind: WaitpointType,
    pub status: WaitpointStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key_expires_at: Option<Millis>,
    pub user_provided_key: bool,
    /// The run whose completion completes this waitpoint (`RUN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by_run_id: Option<String>,
    /// The batch whose completion completes this waitpoint (`BATCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by_batch_id: Option<String>,
    /// When a `DATETIME` waitpoint completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_after: Option<Millis>,
    /// When a `MANUAL` token times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub output_type: String,
    pub output_is_error: bool,
    pub tags: Vec<String>,
    /// Secret part of a token's callback URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<String>,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
}

/// A run blocked on a waitpoint (`TaskRunWaitpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockEdge {
    pub run_id: String,
    pub waitpoint_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    pub created_at: Millis,
}

/// An item of a batch that could not be triggered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchError {
    pub index: u32,
    pub task: String,
    pub error: String,
    pub code: Option<String>,
}

/// A batch (`BatchTaskRun`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// `batch_…`
    pub id: String,
    pub env_id: String,
    pub status: BatchStatus,
    pub expected_count: u32,
    pub run_count: u32,
    /// Runs of the batch that have finished.
    pub completed_count: u32,
    pub failed_count: u32,
    pub sealed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key_expires_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    pub resume_parent_on_completion: bool,
    /// The `BATCH` waitpoint a waiting parent is blocked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waitpoint_id: Option<String>,
    pub errors: Vec<BatchError>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
}

/// A run waiting in a queue to be claimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyEntry {
    pub run_id: String,
    pub env_id: String,
    pub queue: String,
    /// `""` when the run has no concurrency key.
    pub concurrency_key: String,
    /// `queue_timestamp - priority_ms`: lower runs first.
    pub score: i64,
    pub task: String,
    pub machine: MachinePreset,
    /// A run that is still held by its worker and only waits for a concurrency slot to
    /// continue (`QUEUED_EXECUTING`); it is promoted, not handed to a new worker.
    pub resume: bool,
}

/// One concurrency unit: a queue, or one concurrency key's copy of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subqueue {
    pub env_id: String,
    pub queue: String,
    pub concurrency_key: String,
    pub ready_count: u32,
    pub running: u32,
    /// The queue's limit (`None`: only the environment's).
    pub limit: Option<u32>,
    pub paused: bool,
    /// The lowest score among its ready entries.
    pub head_score: Option<i64>,
}

/// A run holding a concurrency slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub env_id: String,
    pub queue: String,
    pub concurrency_key: String,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The run's lease (heartbeat) ran out for the snapshot named by the fence.
    Heartbeat,
    /// A delayed run's time has come.
    EnqueueDelayed,
    /// A run that was never dequeued reached its TTL.
    Expire,
    /// A failed run's retry delay is over.
    Retry,
    /// A `DATETIME` waitpoint's time has come.
    CompleteDateTime,
    /// A token's timeout has passed.
    TokenTimeout,
}

impl TimerKind {
    /// Wire name, stored by backends.
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::Heartbeat => "heartbeat",
            TimerKind::EnqueueDelayed => "enqueue_delayed",
            TimerKind::Expire => "expire",
            TimerKind::Retry => "retry",
            TimerKind::CompleteDateTime => "complete_datetime",
            TimerKind::TokenTimeout => "token_timeout",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            TimerKind::Heartbeat,
            TimerKind::EnqueueDelayed,
            TimerKind::Expire,
            TimerKind::Retry,
            TimerKind::CompleteDateTime,
            TimerKind::TokenTimeout,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A durable timer. Its key is stable (`heartbeat:<run>`), so setting it again moves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub key: String,
    pub kind: TimerKind,
    /// The run or waitpoint it acts on.
    pub target: String,
    /// A value the target must still have for the timer to act (a snapshot id), or `""`.
    pub fence: String,
    pub fire_at: Millis,
}

/// A log line or span of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// Assigned by the backend on insert; increasing.
    pub seq: i64,
    pub run_id: String,
    /// `log` or `span`.
    pub kind: String,
    /// `trace`, `debug`, `info`, `log`, `warn`, `error`.
    pub level: String,
    pub message: String,
    pub attributes: Value,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    /// Start (spans) or time (logs), in nanoseconds since the epoch.
    pub start_time_ns: i64,
    pub duration_ns: i64,
    pub attempt_number: Option<u32>,
}

/// Filters for listing runs (all optional, combined with AND; lists inside one filter are OR).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub env_id: String,
    pub statuses: Vec<RunStatus>,
    pub tasks: Vec<String>,
    pub tags: Vec<String>,
    pub queues: Vec<String>,
    pub versions: Vec<String>,
    pub machines: Vec<MachinePreset>,
    pub batch_id: Option<String>,
    pub parent_run_id: Option<String>,
    pub is_test: Option<bool>,
    pub created_from: Option<Millis>,
    pub created_to: Option<Millis>,
    pub idempotency_key: Option<String>,
}

/// Cursor paging over ids (which sort by creation time). Lists are newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Return runs older than this id.
    pub after: Option<String>,
    /// Return runs newer than this id (the page before), still newest first.
    pub before: Option<String>,
    pub size: u32,
}

/// Filters for listing waitpoint tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitpointFilter {
    pub env_id: String,
    pub kind: Option<WaitpointType>,
    pub statuses: Vec<WaitpointStatus>,
    /// Only tokens that timed out (`TIMED_OUT` in the API) when `Some(true)`.
    pub timed_out: Option<bool>,
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    pub created_from: Option<Millis>,
    pub created_to: Option<Millis>,
}

/// An organisation: the top of the tenancy tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// `org_…`
    pub id: String,
    pub slug: String,
    pub title: String,
    pub created_at: Millis,
}

/// A project of an organisation; its environments are separate worlds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Internal id.
    pub id: String,
    /// `proj_` + 20 lowercase letters: the ref the CLI and URLs use.
    pub external_ref: String,
    pub org_id: String,
    pub slug: String,
    pub name: String,
    pub created_at: Millis,
}

/// What a key grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyKind {
    /// `tr_<env>_…`: full access to one environment.
    Secret,
    /// `tr_pat_…`: a personal access token for the CLI, across projects.
    PersonalAccessToken,
    /// A dashboard login token.
    Dashboard,
}

/// A credential, stored as a SHA-256 hash of the key; the key itself is shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub kind: ApiKeyKind,
    /// The environment a secret key belongs to.
    pub env_id: Option<String>,
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    /// The first characters of the key, to tell keys apart in lists.
    pub display_prefix: String,
    pub name: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}
