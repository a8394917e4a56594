//! Trigger.dev v4's JSON shapes, built from engine rows.
//!
//! The official SDK and CLI validate every response with Zod, so each builder here emits
//! every field its schema requires (names and types as in `@trigger.dev/core` 4.8.3) and
//! leaves optional fields out rather than sending `null`.

use serde_json::{json, Map, Value};
use trigger_engine::lifecycle::attempt::StartedAttempt;
use trigger_engine::{
    iso8601, Batch, CompletedWaitpoint, Dequeued, ExecutionStatus, Millis, Packet, Run, RunStatus, Snapshot,
    TaskRunError, TriggerFunction, Waitpoint, WaitpointStatus, WaitpointType,
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

/// `ExecutionSnapshot`.
pub fn snapshot(s: &Snapshot) -> Value {
    json!({
        "id": s.id,
        "friendlyId": s.id,
        "executionStatus": execution_status(s.execution_status),
        "description": s.description,
        "createdAt": iso(s.created_at),
    })
}

/// `BaseRunMetadata`.
pub fn run_meta(run: &Run) -> Value {
    json!({
        "id": run.id,
        "friendlyId": run.id,
        "status": db_status(run.status),
        "attemptNumber": run.attempt_number,
    })
}

/// `CompletedWaitpoint`.
pub fn completed_waitpoint(w: &CompletedWaitpoint) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(w.id));
    o.insert("friendlyId".into(), json!(w.id));
    o.insert("type".into(), json!(w.kind.as_str()));
    o.insert("completedAt".into(), json!(iso(w.completed_at)));
    if let Some(i) = w.index {
        o.insert("index".into(), json!(i));
    }
    if let Some(k) = &w.idempotency_key {
        o.insert("idempotencyKey".into(), json!(k));
    }
    if let Some(run) = &w.completed_by_run_id {
        let mut by = json!({ "id": run, "friendlyId": run });
        // A batch item's RUN waitpoint is matched by `<batch>_<index>` in the worker.
        if let (WaitpointType::Run, Some(batch)) = (w.kind, &w.completed_by_batch_id) {
            by["batch"] = json!({ "id": batch, "friendlyId": batch });
        }
        o.insert("completedByTaskRun".into(), by);
    }
    if let Some(after) = w.completed_after {
        o.insert("completedAfter".into(), json!(iso(after)));
    }
    if let (WaitpointType::Batch, Some(batch)) = (w.kind, &w.completed_by_batch_id) {
        o.insert("completedByBatch".into(), json!({ "id": batch, "friendlyId": batch }));
    }
    if let Some(output) = &w.output {
        o.insert("output".into(), json!(output));
    }
    if !w.output_type.is_empty() {
        o.insert("outputType".into(), json!(w.output_type));
    }
    o.insert("outputIsError".into(), json!(w.output_is_error));
    Value::Object(o)
}

/// `RunExecutionData`.
pub fn execution_data(run: &Run, s: &Snapshot) -> Value {
    let mut v = json!({
        "version": "1",
        "snapshot": snapshot(s),
        "run": run_meta(run),
        "completedWaitpoints": s.completed_waitpoints.iter().map(completed_waitpoint).collect::<Vec<_>>(),
    });
    if let Some(batch) = &s.batch_id {
        v["batch"] = json!({ "id": batch, "friendlyId": batch });
    }
    v
}

fn trace_context(run: &Run) -> Value {
    match (&run.trace_id, &run.span_id) {
        (Some(t), Some(s)) => json!({ "traceparent": format!("00-{t}-{s}-01") }),
        _ => json!({}),
    }
}

/// `DequeuedMessage`.
pub fn dequeued_message(d: &Dequeued, caller: &EnvCaller, dequeued_at: Millis) -> Value {
    json!({
        "version": "1",
        "snapshot": snapshot(&d.snapshot),
        "dequeuedAt": iso(dequeued_at),
        "completedWaitpoints": d.snapshot.completed_waitpoints.iter().map(completed_waitpoint).collect::<Vec<_>>(),
        "backgroundWorker": { "id": d.worker.id, "friendlyId": d.worker.id, "version": d.worker.version },
        "deployment": {},
        "run": {
            "id": d.run.id,
            "friendlyId": d.run.id,
            "isTest": d.run.is_test,
            "machine": d.machine.to_json(),
            "attemptNumber": d.run.attempt_number,
            "masterQueue": d.run.queue,
            "traceContext": trace_context(&d.run),
        },
        "environment": { "id": caller.env.id, "type": caller.env.kind.as_str() },
        "organization": { "id": caller.org.id },
        "project": { "id": caller.project.id },
    })
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
pub fn task_run_execution(a: &StartedAttempt, caller: &EnvCaller) -> Value {
    let run = &a.run;
    let mut r = json!({
        "id": run.id,
        "payload": a.payload.data.clone().unwrap_or_default(),
        "payloadType": if a.payload.data_type.is_empty() { "application/json" } else { a.payload.data_type.as_str() },
        "tags": run.tags,
        "isTest": run.is_test,
        "createdAt": iso(run.created_at),
        "startedAt": iso(run.started_at.unwrap_or(a.snapshot.created_at)),
        "baseCostInCents": 0,
        "costInCents": 0,
        "durationMs": run.usage_ms,
        "traceContext": trace_context(run),
    });
    let o = r.as_object_mut().expect("object literal");
    if let Some(k) = &run.idempotency_key {
        o.insert("idempotencyKey".into(), json!(k));
    }
    if let Some(n) = run.max_attempts.or(run.retry.as_ref().map(|r| r.max_attempts)) {
        o.insert("maxAttempts".into(), json!(n));
    }
    if let Some(w) = &a.worker {
        o.insert("version".into(), json!(w.version));
    }
    if let Some(m) = metadata_object(run) {
        o.insert("metadata".into(), m);
    }
    if let Some(d) = run.max_duration_secs.or(a.task.as_ref().and_then(|t| t.max_duration_secs)) {
        o.insert("maxDuration".into(), json!(d));
    }
    if run.priority_ms != 0 {
        o.insert("priority".into(), json!(run.priority_ms as f64 / 1000.0));
    }
    if let Some(p) = &run.parent_run_id {
        o.insert("parentTaskRunId".into(), json!(p));
    }
    if let Some(p) = &run.root_run_id {
        o.insert("rootTaskRunId".into(), json!(p));
    }
    let machine = run.machine.or(a.task.as_ref().and_then(|t| t.machine)).unwrap_or_default();
    let mut execution = json!({
        "attempt": { "number": run.attempt_number, "startedAt": iso(a.snapshot.created_at) },
        "run": r,
        "task": {
            "id": run.task,
            "filePath": a.task.as_ref().map(|t| t.file_path.clone()).unwrap_or_default(),
        },
        "queue": {
            "id": a.queue.as_ref().map(|q| q.id.clone()).unwrap_or_else(|| run.queue.clone()),
            "name": run.queue,
        },
        "environment": {
            "id": caller.env.id,
            "slug": caller.env.kind.slug(),
            "type": caller.env.kind.as_str(),
        },
        "organization": { "id": caller.org.id, "slug": caller.org.slug, "name": caller.org.title },
        "project": {
            "id": caller.project.id,
            "ref": caller.project.external_ref,
            "slug": caller.project.slug,
            "name": caller.project.name,
        },
        "machine": machine.to_json(),
    });
    if let Some(export) = a.task.as_ref().and_then(|t| t.export_name.clone()) {
        execution["task"]["exportName"] = json!(export);
    }
    if let Some(batch) = &run.batch_id {
        execution["batch"] = json!({ "id": batch });
    }
    execution
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
