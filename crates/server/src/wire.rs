//! Trigger.dev v4's JSON shapes, built from engine rows.
//!
//! The official SDK and CLI validate every response with Zod, so each builder here emits
//! every field its schema requires (names and types as in `@trigger.dev/core` 4.8.3) and
//! leaves optional fields out rather than sending `null`.

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};
use trigger_engine::lifecycle::attempt::StartedAttempt;
use trigger_engine::{
    iso8601, Batch, CompletedWaitpoint, Dequeued, ExecutionStatus, MachinePreset, Millis, Packet, Run,
    RunStatus, Snapshot, TaskRunError, TriggerFunction, Waitpoint, WaitpointStatus, WaitpointType,
};

use crate::auth::EnvCaller;

/// RFC 3339 with milliseconds, UTC.
pub fn iso(ms: Millis) -> String {
    iso8601(ms)
}

/// Parses an RFC 3339 / ISO 8601 date-time (`2025-01-01T00:00:00.000Z`, with an offset, or
/// a bare date) into epoch milliseconds.
pub fn parse_date(s: &str) -> Option<Millis> {
    let s = s.trim();
    let (date, rest) = if s.len() >= 10 { s.split_at(10) } else { return None };
    let mut parts = date.split('-');
    let (y, m, d): (i64, i64, i64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.as_bytes()[4] != b'-' {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let mut ms = days * 86_400_000;
    if rest.is_empty() {
        return Some(ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (time, offset_ms) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (oh, om) = off.split_once(':').unwrap_or((off.get(..2)?, off.get(2..).unwrap_or("0")));
        let om = if om.is_empty() { "0" } else { om };
        (t, sign * (oh.parse::<i64>().ok()? * 3_600_000 + om.parse::<i64>().ok()? * 60_000))
    } else {
        (rest, 0)
    };
    let mut hms = time.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let sec = hms.next().unwrap_or("0");
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let sec: i64 = sec.parse().ok()?;
    if h > 23 || mi > 59 || sec > 60 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    ms += h * 3_600_000 + mi * 60_000 + sec * 1000 + frac_ms;
    Some(ms - offset_ms)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A TTL in the duration syntax the SDK accepts (`"10m"`, `"1h"`, `"90s"`).
pub fn format_duration(ms: u64) -> String {
    for (unit, per) in [("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// The database status (`TaskRunStatus`) that the worker schemas expect.
pub fn db_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::PendingVersion => "PENDING_VERSION",
        RunStatus::Delayed => "DELAYED",
        RunStatus::Queued => "PENDING",
        RunStatus::Dequeued => "DEQUEUED",
        RunStatus::Executing => "EXECUTING",
        RunStatus::Waiting => "WAITING_TO_RESUME",
        RunStatus::Completed => "COMPLETED_SUCCESSFULLY",
        RunStatus::Canceled => "CANCELED",
        RunStatus::Failed => "COMPLETED_WITH_ERRORS",
        RunStatus::Crashed => "CRASHED",
        RunStatus::SystemFailure => "SYSTEM_FAILURE",
        RunStatus::Expired => "EXPIRED",
        RunStatus::TimedOut => "TIMED_OUT",
    }
}

/// The snapshot status as the worker schema's enum has it; it has no `DELAYED` or
/// `PENDING_VERSION`, which a worker never sees on a run it holds.
pub fn execution_status(status: ExecutionStatus) -> &'static str {
    match status {
        ExecutionStatus::Delayed => "RUN_CREATED",
        ExecutionStatus::PendingVersion => "QUEUED",
        other => other.as_str(),
    }
}

/// Epoch milliseconds, serialized as [`iso`] writes them.
#[derive(Debug, Clone, Copy)]
pub struct Iso(pub Millis);

impl Serialize for Iso {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&iso8601(self.0))
    }
}

/// `{ id, friendlyId }`: a record whose friendly id is its id.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ids<'a> {
    id: &'a str,
    friendly_id: &'a str,
}

fn ids(id: &str) -> Ids<'_> {
    Ids { id, friendly_id: id }
}

/// `{ id }`.
#[derive(Debug, Serialize)]
pub struct Id<'a> {
    id: &'a str,
}

/// `ExecutionSnapshot`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotJson<'a> {
    id: &'a str,
    friendly_id: &'a str,
    execution_status: &'static str,
    description: &'a str,
    created_at: Iso,
}

pub fn snapshot(s: &Snapshot) -> SnapshotJson<'_> {
    SnapshotJson {
        id: &s.id,
        friendly_id: &s.id,
        execution_status: execution_status(s.execution_status),
        description: &s.description,
        created_at: Iso(s.created_at),
    }
}

/// `BaseRunMetadata`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMeta<'a> {
    id: &'a str,
    friendly_id: &'a str,
    status: &'static str,
    attempt_number: u32,
}

pub fn run_meta(run: &Run) -> RunMeta<'_> {
    RunMeta {
        id: &run.id,
        friendly_id: &run.id,
        status: db_status(run.status),
        attempt_number: run.attempt_number,
    }
}

/// `CompletedWaitpoint`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedWaitpointJson<'a> {
    id: &'a str,
    friendly_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    completed_at: Iso,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_by_task_run: Option<CompletedBy<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_after: Option<Iso>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_by_batch: Option<Ids<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    output_type: &'a str,
    output_is_error: bool,
}

/// The run that completed a waitpoint, and its batch for a batch item's `RUN` waitpoint
/// (the worker matches those by `<batch>_<index>`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedBy<'a> {
    id: &'a str,
    friendly_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<Ids<'a>>,
}

pub fn completed_waitpoint(w: &CompletedWaitpoint) -> CompletedWaitpointJson<'_> {
    let batch = w.completed_by_batch_id.as_deref();
    CompletedWaitpointJson {
        id: &w.id,
        friendly_id: &w.id,
        kind: w.kind.as_str(),
        completed_at: Iso(w.completed_at),
        index: w.index,
        idempotency_key: w.idempotency_key.as_deref(),
        completed_by_task_run: w.completed_by_run_id.as_deref().map(|run| CompletedBy {
            id: run,
            friendly_id: run,
            batch: batch.filter(|_| w.kind == WaitpointType::Run).map(ids),
        }),
        completed_after: w.completed_after.map(Iso),
        completed_by_batch: batch.filter(|_| w.kind == WaitpointType::Batch).map(ids),
        output: w.output.as_deref(),
        output_type: &w.output_type,
        output_is_error: w.output_is_error,
    }
}

fn completed_waitpoints(s: &Snapshot) -> Vec<CompletedWaitpointJson<'_>> {
    s.completed_waitpoints.iter().map(completed_waitpoint).collect()
}

/// `RunExecutionData`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionData<'a> {
    version: &'static str,
    snapshot: SnapshotJson<'a>,
    run: RunMeta<'a>,
    completed_waitpoints: Vec<CompletedWaitpointJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<Ids<'a>>,
}

pub fn execution_data<'a>(run: &'a Run, s: &'a Snapshot) -> ExecutionData<'a> {
    ExecutionData {
        version: "1",
        snapshot: snapshot(s),
        run: run_meta(run),
        completed_waitpoints: completed_waitpoints(s),
        batch: s.batch_id.as_deref().map(ids),
    }
}

/// A run's `traceContext`: `{ traceparent }` when it has a trace, else `{}`.
#[derive(Debug, Serialize)]
pub struct TraceContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

fn trace_context(run: &Run) -> TraceContext {
    TraceContext {
        traceparent: match (&run.trace_id, &run.span_id) {
            (Some(t), Some(s)) => Some(format!("00-{t}-{s}-01")),
            _ => None,
        },
    }
}

/// `MachinePreset` as the worker schemas have it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    name: &'static str,
    cpu: f64,
    memory: f64,
    cents_per_ms: f64,
}

fn machine(m: MachinePreset) -> Machine {
    Machine { name: m.name(), cpu: m.cpu(), memory: m.memory(), cents_per_ms: m.cents_per_ms() }
}

/// `DequeuedMessage`, with the started attempt when the claim started it (a trigger.rs
/// extension the official CLI never asks for).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeuedMessage<'a, A> {
    version: &'static str,
    snapshot: SnapshotJson<'a>,
    dequeued_at: Iso,
    completed_waitpoints: Vec<CompletedWaitpointJson<'a>>,
    background_worker: BackgroundWorker<'a>,
    deployment: Empty,
    run: DequeuedRun<'a>,
    environment: EnvironmentRef<'a>,
    organization: Id<'a>,
    project: Id<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<A>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundWorker<'a> {
    id: &'a str,
    friendly_id: &'a str,
    version: &'a str,
}

/// `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeuedRun<'a> {
    id: &'a str,
    friendly_id: &'a str,
    is_test: bool,
    machine: Machine,
    attempt_number: u32,
    master_queue: &'a str,
    trace_context: TraceContext,
}

#[derive(Debug, Serialize)]
pub struct EnvironmentRef<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

pub fn dequeued_message<'a, A>(
    d: &'a Dequeued,
    caller: &'a EnvCaller,
    dequeued_at: Millis,
    attempt: Option<A>,
) -> DequeuedMessage<'a, A> {
    DequeuedMessage {
        version: "1",
        snapshot: snapshot(&d.snapshot),
        dequeued_at: Iso(dequeued_at),
        completed_waitpoints: completed_waitpoints(&d.snapshot),
        background_worker: BackgroundWorker {
            id: &d.worker.id,
            friendly_id: &d.worker.id,
            version: &d.worker.version,
        },
        deployment: Empty {},
        run: DequeuedRun {
            id: &d.run.id,
            friendly_id: &d.run.id,
            is_test: d.run.is_test,
            machine: machine(d.machine),
            attempt_number: d.run.attempt_number,
            master_queue: &d.run.queue,
            trace_context: trace_context(&d.run),
        },
        environment: EnvironmentRef { id: &caller.env.id, kind: caller.env.kind.as_str() },
        organization: Id { id: &caller.org.id },
        project: Id { id: &caller.project.id },
        attempt,
    }
}

/// Run metadata as a JSON object, if it is one.
pub fn metadata_object(run: &Run) -> Option<Value> {
    let text = run.metadata.as_deref()?;
    let v = deserialize(text, &run.metadata_type)?;
    v.is_object().then_some(v)
}

/// A stored value as the API presents it: parsed JSON (SuperJSON decoded to plain JSON as
/// [`trigger_types::superjson`] describes, or unwrapped to its `json` field when its
/// annotations do not fit), or a plain string for text.
pub fn deserialize(data: &str, data_type: &str) -> Option<Value> {
    match data_type {
        "application/super+json" => trigger_types::superjson::to_json(data).ok().or_else(|| {
            let v: Value = serde_json::from_str(data).ok()?;
            Some(v.get("json").cloned().unwrap_or(Value::Null))
        }),
        t if t.contains("json") => serde_json::from_str(data).ok(),
        "text/plain" => Some(Value::String(data.to_string())),
        _ => None,
    }
}

/// A packet as the API presents it.
pub fn packet_value(p: &Packet) -> Option<Value> {
    deserialize(p.data.as_deref()?, &p.data_type)
}

/// `TaskRunExecution`.
#[derive(Debug, Serialize)]
pub struct TaskRunExecution<'a> {
    attempt: ExecutionAttempt,
    run: ExecutionRun<'a>,
    task: ExecutionTask<'a>,
    queue: QueueRef<'a>,
    environment: ExecutionEnvironment<'a>,
    organization: ExecutionOrganization<'a>,
    project: ExecutionProject<'a>,
    machine: Machine,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<Id<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionAttempt {
    number: u32,
    started_at: Iso,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRun<'a> {
    id: &'a str,
    payload: &'a str,
    payload_type: &'a str,
    tags: &'a [String],
    is_test: bool,
    created_at: Iso,
    started_at: Iso,
    base_cost_in_cents: u32,
    cost_in_cents: u32,
    duration_ms: u64,
    trace_context: TraceContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_duration: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_task_run_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_task_run_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionTask<'a> {
    id: &'a str,
    file_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    export_name: Option<&'a str>,
}

/// A queue: `{ id, name }`.
#[derive(Debug, Serialize)]
pub struct QueueRef<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ExecutionEnvironment<'a> {
    id: &'a str,
    slug: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ExecutionOrganization<'a> {
    id: &'a str,
    slug: &'a str,
    name: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ExecutionProject<'a> {
    id: &'a str,
    #[serde(rename = "ref")]
    external_ref: &'a str,
    slug: &'a str,
    name: &'a str,
}

pub fn task_run_execution<'a>(a: &'a StartedAttempt, caller: &'a EnvCaller) -> TaskRunExecution<'a> {
    let run = &a.run;
    let task = a.task.as_ref();
    let data_type = a.payload.data_type.as_str();
    TaskRunExecution {
        attempt: ExecutionAttempt { number: run.attempt_number, started_at: Iso(a.snapshot.created_at) },
        run: ExecutionRun {
            id: &run.id,
            payload: a.payload.data.as_deref().unwrap_or_default(),
            payload_type: if data_type.is_empty() { "application/json" } else { data_type },
            tags: &run.tags,
            is_test: run.is_test,
            created_at: Iso(run.created_at),
            started_at: Iso(run.started_at.unwrap_or(a.snapshot.created_at)),
            base_cost_in_cents: 0,
            cost_in_cents: 0,
            duration_ms: run.usage_ms,
            trace_context: trace_context(run),
            idempotency_key: run.idempotency_key.as_deref(),
            max_attempts: run.max_attempts.or(run.retry.as_ref().map(|r| r.max_attempts)),
            version: a.worker.as_ref().map(|w| w.version.as_str()),
            metadata: metadata_object(run),
            max_duration: run.max_duration_secs.or(task.and_then(|t| t.max_duration_secs)),
            priority: (run.priority_ms != 0).then(|| run.priority_ms as f64 / 1000.0),
            parent_task_run_id: run.parent_run_id.as_deref(),
            root_task_run_id: run.root_run_id.as_deref(),
        },
        task: ExecutionTask {
            id: &run.task,
            file_path: task.map(|t| t.file_path.as_str()).unwrap_or_default(),
            export_name: task.and_then(|t| t.export_name.as_deref()),
        },
        queue: QueueRef {
            id: a.queue.as_ref().map_or(run.queue.as_str(), |q| q.id.as_str()),
            name: &run.queue,
        },
        environment: ExecutionEnvironment {
            id: &caller.env.id,
            slug: caller.env.kind.slug(),
            kind: caller.env.kind.as_str(),
        },
        organization: ExecutionOrganization {
            id: &caller.org.id,
            slug: &caller.org.slug,
            name: &caller.org.title,
        },
        project: ExecutionProject {
            id: &caller.project.id,
            external_ref: &caller.project.external_ref,
            slug: &caller.project.slug,
            name: &caller.project.name,
        },
        machine: machine(run.machine.or(task.and_then(|t| t.machine)).unwrap_or_default()),
        batch: run.batch_id.as_deref().map(|id| Id { id }),
    }
}

/// `SerializedError`.
pub fn serialized_error(e: &TaskRunError) -> Value {
    match e {
        TaskRunError::BuiltIn { name, message, stack_trace, .. } => {
            json!({ "name": name, "message": message, "stackTrace": stack_trace })
        }
        TaskRunError::String { raw } | TaskRunError::Custom { raw } => json!({ "message": raw }),
        TaskRunError::Internal { code, message, stack_trace } => {
            let mut v = json!({
                "name": code.as_str(),
                "message": message.clone().unwrap_or_else(|| code.as_str().to_string()),
            });
            if let Some(st) = stack_trace {
                v["stackTrace"] = json!(st);
            }
            v
        }
    }
}

fn trigger_function(f: TriggerFunction) -> &'static str {
    match f {
        TriggerFunction::Trigger => "trigger",
        TriggerFunction::TriggerAndWait => "triggerAndWait",
        TriggerFunction::BatchTrigger => "batchTrigger",
        TriggerFunction::BatchTriggerAndWait => "batchTriggerAndWait",
    }
}

/// `CommonRunFields`.
pub fn common_run_fields(run: &Run) -> Map<String, Value> {
    let s = run.status;
    let completed = s.is_completed_api();
    let mut o = Map::new();
    o.insert("id".into(), json!(run.id));
    o.insert("status".into(), json!(s.as_str()));
    o.insert("taskIdentifier".into(), json!(run.task));
    if let Some(k) = &run.idempotency_key {
        o.insert("idempotencyKey".into(), json!(k));
    }
    if let Some(v) = &run.lock_to_version {
        o.insert("version".into(), json!(v));
    }
    o.insert("isQueued".into(), json!(s.is_queued()));
    o.insert("isExecuting".into(), json!(s.is_executing()));
    o.insert("isWaiting".into(), json!(s == RunStatus::Waiting));
    o.insert("isCompleted".into(), json!(completed));
    o.insert("isSuccess".into(), json!(completed && s == RunStatus::Completed));
    o.insert("isFailed".into(), json!(completed && s != RunStatus::Completed));
    o.insert("isCancelled".into(), json!(s == RunStatus::Canceled));
    o.insert("isTest".into(), json!(run.is_test));
    o.insert("createdAt".into(), json!(iso(run.created_at)));
    o.insert("updatedAt".into(), json!(iso(run.updated_at)));
    if let Some(t) = run.started_at {
        o.insert("startedAt".into(), json!(iso(t)));
    }
    if let Some(t) = run.completed_at {
        o.insert("finishedAt".into(), json!(iso(t)));
    }
    if let Some(t) = run.delay_until {
        o.insert("delayedUntil".into(), json!(iso(t)));
    }
    if let Some(ttl) = run.ttl_ms {
        o.insert("ttl".into(), json!(format_duration(ttl)));
    }
    if let Some(t) = run.expired_at {
        o.insert("expiredAt".into(), json!(iso(t)));
    }
    o.insert("tags".into(), json!(run.tags));
    o.insert("costInCents".into(), json!(0));
    o.insert("baseCostInCents".into(), json!(0));
    o.insert("durationMs".into(), json!(run.usage_ms));
    if let Some(m) = metadata_object(run) {
        o.insert("metadata".into(), m);
    }
    o.insert("taskKind".into(), json!("STANDARD"));
    o
}

/// `RetrieveRunCommandFields` (also `RelatedRunDetails`).
pub fn run_command_fields(run: &Run) -> Map<String, Value> {
    let mut o = common_run_fields(run);
    o.insert("depth".into(), json!(run.depth));
    o.insert("triggerFunction".into(), json!(trigger_function(run.trigger_function)));
    if let Some(b) = &run.batch_id {
        o.insert("batchId".into(), json!(b));
    }
    o
}

/// `ListRunResponseItem`.
pub fn list_item(run: &Run, caller: &EnvCaller) -> Value {
    let mut o = common_run_fields(run);
    o.insert("env".into(), json!({ "id": caller.env.id, "name": caller.env.kind.slug() }));
    Value::Object(o)
}

/// Runs related to a retrieved run.
#[derive(Debug, Default)]
pub struct Related {
    pub root: Option<Run>,
    pub parent: Option<Run>,
    pub children: Vec<Run>,
}

/// `RetrieveRunResponse`.
pub fn retrieve_run(run: &Run, payload: &Packet, output: Option<&Packet>, related: &Related) -> Value {
    let mut o = run_command_fields(run);
    if let Some(p) = packet_value(payload) {
        o.insert("payload".into(), p);
    }
    if let Some(p) = output.and_then(packet_value) {
        o.insert("output".into(), p);
    }
    if let Some(e) = &run.error {
        o.insert("error".into(), serialized_error(e));
    }
    let mut rel = Map::new();
    if let Some(r) = &related.root {
        rel.insert("root".into(), Value::Object(run_command_fields(r)));
    }
    if let Some(r) = &related.parent {
        rel.insert("parent".into(), Value::Object(run_command_fields(r)));
    }
    rel.insert(
        "children".into(),
        Value::Array(related.children.iter().map(|c| Value::Object(run_command_fields(c))).collect()),
    );
    o.insert("relatedRuns".into(), Value::Object(rel));
    o.insert("attemptCount".into(), json!(run.attempt_number));
    Value::Object(o)
}

/// `RetrieveBatchV2Response`.
pub fn batch(b: &Batch, items: &[(u32, String)]) -> Value {
    let mut processing = json!({
        "errors": b.errors.iter().map(|e| {
            let mut v = json!({ "index": e.index, "taskIdentifier": e.task, "error": e.error });
            if let Some(code) = &e.code {
                v["errorCode"] = json!(code);
            }
            v
        }).collect::<Vec<_>>(),
    });
    if let Some(t) = b.completed_at {
        processing["completedAt"] = json!(iso(t));
    }
    let mut items = items.to_vec();
    items.sort_by_key(|(i, _)| *i);
    let mut v = json!({
        "id": b.id,
        "status": b.status.as_str(),
        "createdAt": iso(b.created_at),
        "updatedAt": iso(b.updated_at),
        "runCount": b.expected_count,
        "runs": items.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        "processing": processing,
    });
    if let Some(k) = &b.idempotency_key {
        v["idempotencyKey"] = json!(k);
    }
    v
}

/// A token's callback URL: a POST to it with any JSON body completes the token.
pub fn token_url(base_url: &str, wp: &Waitpoint) -> String {
    format!(
        "{}/api/v1/waitpoints/tokens/{}/callback/{}",
        base_url.trim_end_matches('/'),
        wp.id,
        wp.callback_secret.as_deref().unwrap_or("")
    )
}

/// The API's token status: `WAITING`, `COMPLETED` or `TIMED_OUT`.
pub fn token_status(wp: &Waitpoint) -> &'static str {
    match wp.status {
        WaitpointStatus::Pending => "WAITING",
        WaitpointStatus::Completed if wp.output_is_error => "TIMED_OUT",
        WaitpointStatus::Completed => "COMPLETED",
    }
}

/// `WaitpointListTokenItem`.
pub fn token_item(wp: &Waitpoint, base_url: &str) -> Value {
    let mut v = json!({
        "id": wp.id,
        "url": token_url(base_url, wp),
        "status": token_status(wp),
        "tags": wp.tags,
        "createdAt": iso(wp.created_at),
    });
    if let Some(t) = wp.completed_at {
        v["completedAt"] = json!(iso(t));
    }
    if let Some(t) = wp.timeout_at {
        v["timeoutAt"] = json!(iso(t));
    }
    if let Some(k) = &wp.idempotency_key {
        v["idempotencyKey"] = json!(k);
    }
    if let Some(t) = wp.idempotency_key_expires_at {
        v["idempotencyKeyExpiresAt"] = json!(iso(t));
    }
    v
}

/// `WaitpointRetrieveTokenResponse`.
pub fn token_retrieve(wp: &Waitpoint, base_url: &str) -> Value {
    let mut v = token_item(wp, base_url);
    if let Some(o) = &wp.output {
        v["output"] = json!(o);
    }
    if !wp.output_type.is_empty() && wp.output.is_some() {
        v["outputType"] = json!(wp.output_type);
    }
    if wp.status == WaitpointStatus::Completed {
        v["outputIsError"] = json!(wp.output_is_error);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_in_the_forms_the_sdk_sends() {
        assert_eq!(parse_date("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_date("2023-11-14T22:13:20.000Z"), Some(1_700_000_000_000));
        assert_eq!(parse_date("2023-11-14T23:13:20.5+01:00"), Some(1_700_000_000_500));
        assert_eq!(parse_date("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_date(&iso(1_700_000_000_123)), Some(1_700_000_000_123));
        assert_eq!(parse_date("1h"), None);
        assert_eq!(parse_date("2023-13-01T00:00:00Z"), None);
    }

    #[test]
    fn durations_format_in_their_largest_exact_unit() {
        assert_eq!(format_duration(600_000), "10m");
        assert_eq!(format_duration(3_600_000), "1h");
        assert_eq!(format_duration(90_000), "90s");
        assert_eq!(format_duration(1500), "1500ms");
    }

    #[test]
    fn superjson_values_are_unwrapped() {
        let v = deserialize(r#"{"json":{"a":1},"meta":{}}"#, "application/super+json");
        assert_eq!(v, Some(json!({"a": 1})));
        let v = r#"{"json":{"n":"7","m":[["k",1]],"u":null},"meta":{"values":{"n":["bigint"],"m":["map"],"u":["undefined"]}}}"#;
        assert_eq!(deserialize(v, "application/super+json"), Some(json!({"n": 7, "m": {"k": 1}})));
        let bad = r#"{"json":{"a":1},"meta":{"values":{"zz":["bigint"]}}}"#;
        assert_eq!(deserialize(bad, "application/super+json"), Some(json!({"a": 1})));
        assert_eq!(deserialize("hi", "text/plain"), Some(json!("hi")));
        assert_eq!(deserialize("path/x", "application/store"), None);
    }
}
