//! OTLP/HTTP sink: log records and spans of task processes become run events.
//!
//! Unauthenticated, as in Trigger.dev: the SDK exports without a key. A record is stored
//! only when it names both its run (`ctx.run.id`, or `trigger.run_id`) and that run's
//! environment (`ctx.environment.id`, or `trigger.env_id`), each also accepted with the
//! `$metadata.` prefix the 4.8 SDK puts on span attributes — the engine checks that the
//! run belongs to the environment, so a guessed run id alone writes nothing. Protobuf
//! bodies are accepted and ignored.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json as JsonResponse;
use serde_json::{json, Map, Value};
use trigger_engine::RunEvent;

use crate::extract::{is_json, RawBody};
use crate::AppState;

const RUN_ID_KEYS: &[&str] = &["ctx.run.id", "trigger.run_id"];
const ENV_ID_KEYS: &[&str] = &["ctx.environment.id", "trigger.env_id"];
const ATTEMPT_KEYS: &[&str] = &["ctx.attempt.number"];

pub async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> JsonResponse<Value> {
    if let Some(doc) = json_body(&headers, &body) {
        store(&state, collect(&doc, "resourceLogs", "scopeLogs", "logRecords", log_event)).await;
    }
    JsonResponse(json!({}))
}

pub async fn traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> JsonResponse<Value> {
    if let Some(doc) = json_body(&headers, &body) {
        store(&state, collect(&doc, "resourceSpans", "scopeSpans", "spans", span_event)).await;
    }
    JsonResponse(json!({}))
}

/// Metrics are accepted so exporters stay quiet; nothing reads them yet.
pub async fn metrics(RawBody(_body): RawBody) -> JsonResponse<Value> {
    JsonResponse(json!({}))
}

fn json_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    if !is_json(headers) {
        tracing::debug!(content_type = ?headers.get("content-type"), bytes = body.len(), "ignoring a non-JSON OTLP body");
        return None;
    }
    match serde_json::from_slice(body) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring an OTLP body that is not JSON");
            None
        }
    }
}

/// An OTLP `AnyValue` as plain JSON.
fn any_value(v: &Value) -> Value {
    let Some(o) = v.as_object() else { return Value::Null };
    if let Some(s) = o.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = o.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = o.get("intValue") {
        // int64 is a string in OTLP JSON.
        return match i {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or_else(|_| i.clone()),
            other => other.clone(),
        };
    }
    if let Some(d) = o.get("doubleValue") {
        return d.clone();
    }
    if let Some(a) = o.get("arrayValue") {
        let values = a
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().map(any_value).collect())
            .unwrap_or_default();
        return Value::Array(values);
    }
    if let Some(kv) = o.get("kvlistValue") {
        return Value::Object(attributes(kv.get("values")));
    }
    Value::Null
}

fn attributes(list: Option<&Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for kv in list.and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(v)) = (kv.get("key").and_then(Value::as_str), kv.get("value")) {
            out.insert(k.to_string(), any_value(v));
        }
    }
    out
}

fn find<'a>(keys: &[&str], a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Option<&'a Value> {
    keys.iter().find_map(|k| {
        let prefixed = format!("$metadata.{k}");
        [a, b].into_iter().find_map(|m| m.get(*k).or_else(|| m.get(&prefixed)))
    })
}

fn nanos(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn id(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

type Builder = fn(&Value, Map<String, Value>) -> RunEvent;

/// Walks `resource*[].scope*[].records[]`, keeping records that name a run and environment.
fn collect(
    doc: &Value,
    resources: &str,
    scopes: &str,
    records: &str,
    build: Builder,
) -> BTreeMap<(String, String), Vec<RunEvent>> {
    let mut out: BTreeMap<(String, String), Vec<RunEvent>> = BTreeMap::new();
    let list = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    for resource in list(doc, resources) {
        let resource_attrs = attributes(resource.get("resource").and_then(|r| r.get("attributes")));
        for scope in list(&resource, scopes) {
            for record in list(&scope, records) {
                let attrs = attributes(record.get("attributes"));
                let run =
                    find(RUN_ID_KEYS, &attrs, &resource_attrs).and_then(Value::as_str).map(str::to_string);
                let env =
                    find(ENV_ID_KEYS, &attrs, &resource_attrs).and_then(Value::as_str).map(str::to_string);
                let attempt = find(ATTEMPT_KEYS, &attrs, &resource_attrs)
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                let (Some(run), Some(env)) = (run, env) else { continue };
                let mut event = build(&record, attrs);
                event.attempt_number = attempt.map(|a| a as u32);
                out.entry((env, run)).or_default().push(event);
            }
        }
    }
    out
}

fn level(severity_text: Option<&str>, severity_number: i64) -> &'static str {
    match severity_text.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => "trace",
        Some("debug") => "debug",
        Some("info") => "info",
        Some("log") => "log",
        Some("warn" | "warning") => "warn",
        Some("error" | "fatal") => "error",
        _ => match severity_number {
            1..=4 => "trace",
            5..=8 => "debug",
            13..=16 => "warn",
            17.. => "error",
            _ => "info",
        },
    }
}

fn log_event(record: &Value, attrs: Map<String, Value>) -> RunEvent {
    let message = match record.get("body").map(any_value) {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let time = nanos(record.get("timeUnixNano"));
    RunEvent {
        seq: 0,
        run_id: String::new(),
        kind: "log".into(),
        level: level(record.get("severityText").and_then(Value::as_str), nanos(record.get("severityNumber")))
            .into(),
        message,
        attributes: Value::Object(attrs),
        trace_id: id(record.get("traceId")),
        span_id: id(record.get("spanId")),
        parent_span_id: None,
        start_time_ns: if time != 0 { time } else { nanos(record.get("observedTimeUnixNano")) },
        duration_ns: 0,
        attempt_number: None,
    }
}

fn span_event(span: &Value, attrs: Map<String, Value>) -> RunEvent {
    let start = nanos(span.get("startTimeUnixNano"));
    let end = nanos(span.get("endTimeUnixNano"));
    let is_error =
        span.get("status").and_then(|s| s.get("code")).is_some_and(|c| c == 2 || c == "STATUS_CODE_ERROR");
    RunEvent {
        seq: 0,
        run_id: String::new(),
        kind: "span".into(),
        level: if is_error { "error" } else { "info" }.into(),
        message: span.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
        attributes: Value::Object(attrs),
        trace_id: id(span.get("traceId")),
        span_id: id(span.get("spanId")),
        parent_span_id: id(span.get("parentSpanId")),
        start_time_ns: start,
        duration_ns: (end - start).max(0),
        attempt_number: None,
    }
}

async fn store(state: &AppState, events: BTreeMap<(String, String), Vec<RunEvent>>) {
    for ((env, run), events) in events {
        tracing::debug!(run = %run, count = events.len(), "storing telemetry");
        if let Err(e) = state.engine().record_events(&env, &run, events).await {
            tracing::debug!(run = %run, error = %e, "dropping telemetry for a run that could not take it");
        }
    }
}
