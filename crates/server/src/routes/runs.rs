//! Runs: trigger, retrieve, list, cancel, replay, reschedule, tags, metadata, idempotency.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json as JsonResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use trigger_engine::{
    MachinePreset, MetadataUpdate, Millis, Packet, Page, ReplayOverrides, Run, RunFilter, RunStatus,
    TriggerOptions, TriggerRequest,
};
use trigger_types::{parse_duration, parse_idempotency_ttl};

use crate::auth::EnvCaller;
use crate::error::{Error, Result};
use crate::extract::{Json, OptionalJson, QueryPairs};
use crate::wire;
use crate::AppState;

/// `TriggerTaskRequestBody`.
#[derive(Debug, Default, Deserialize)]
pub struct TriggerBody {
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub options: Option<TriggerOptionsBody>,
}

/// `TriggerTaskRequestBody.options` (and a batch item's `options`). Unions (`delay`, `ttl`,
/// `tags`, `queue`, `metadata`) stay JSON values and are checked by `parse_options`, so
/// that a bad value is reported under its own field name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerOptionsBody {
    pub queue: Option<Value>,
    pub concurrency_key: Option<String>,
    pub delay: Option<Value>,
    pub ttl: Option<Value>,
    pub idempotency_key: Option<String>,
    #[serde(rename = "idempotencyKeyTTL")]
    pub idempotency_key_ttl: Option<String>,
    pub idempotency_key_options: Option<Value>,
    pub machine: Option<String>,
    pub max_attempts: Option<u32>,
    pub max_duration: Option<f64>,
    pub priority: Option<f64>,
    pub metadata: Option<Value>,
    pub metadata_type: Option<String>,
    pub payload_type: Option<String>,
    pub tags: Option<Value>,
    pub test: Option<bool>,
    pub parent_run_id: Option<String>,
    pub resume_parent_on_completion: Option<bool>,
    pub lock_to_version: Option<String>,
}

/// A delay or date: a duration string from now (`"1h"`), an ISO date, or epoch ms.
pub(crate) fn parse_when(field: &str, value: &Value, now: Millis) -> Result<Millis> {
    match value {
        Value::String(s) => {
            if let Ok(ms) = parse_duration(s) {
                return Ok(now.saturating_add(ms.min(i64::MAX as u64) as i64));
            }
            wire::parse_date(s).ok_or_else(|| {
                Error::unprocessable(
                    field,
                    format!("{s:?} is neither a duration (\"30s\", \"1h\", \"2h30m\") nor an ISO 8601 date"),
                )
            })
        }
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| Error::unprocessable(field, "expected a date in epoch milliseconds"))
        }
        _ => Err(Error::unprocessable(field, "expected a duration string or a date")),
    }
}

pub(crate) fn parse_tags(field: &str, value: &Value) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::unprocessable(field, "each tag must be a string"))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(Error::unprocessable(field, "expected a string or an array of strings")),
    }
}

fn parse_ttl(field: &str, value: &Value) -> Result<u64> {
    match value {
        Value::String(s) => parse_duration(s).map_err(|e| Error::unprocessable(field, e)),
        Value::Number(n) => n
            .as_u64()
            .map(|secs| secs.saturating_mul(1000))
            .ok_or_else(|| Error::unprocessable(field, "expected a whole number of seconds ≥ 0")),
        _ => Err(Error::unprocessable(field, "expected a duration string or a number of seconds")),
    }
}

/// A trigger's payload, stored verbatim with its type.
pub(crate) fn payload_packet(payload: Option<Value>, payload_type: Option<&str>) -> Result<Packet> {
    let data_type = payload_type.unwrap_or("application/json").to_string();
    let data = match payload {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    if data_type == "application/store" && data.as_deref().is_none_or(str::is_empty) {
        return Err(Error::unprocessable(
            "payload",
            "an offloaded payload (application/store) needs its storage path",
        ));
    }
    Ok(Packet { data, data_type })
}

/// Turns the wire options into engine options, naming the field of any bad value.
pub(crate) fn parse_options(o: TriggerOptionsBody, prefix: &str, now: Millis) -> Result<TriggerOptions> {
    let field = |name: &str| format!("{prefix}{name}");
    let queue = match &o.queue {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(q)) => match q.get("name") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err(Error::unprocessable(&field("queue.name"), "expected a string")),
        },
        Some(_) => return Err(Error::unprocessable(&field("queue"), "expected {name}")),
    };
    let delay_until = match &o.delay {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_when(&field("delay"), v, now)?),
    };
    let ttl_ms = match &o.ttl {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ttl(&field("ttl"), v)?),
    };
    let tags = match &o.tags {
        None => Vec::new(),
        Some(v) => parse_tags(&field("tags"), v)?,
    };
    let metadata = match o.metadata {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(_) => return Err(Error::unprocessable(&field("metadata"), "expected an object")),
    };
    let machine = match &o.machine {
        None => None,
        Some(name) => Some(MachinePreset::parse(name).ok_or_else(|| {
            Error::unprocessable(
                &field("machine"),
                format!("unknown machine preset {name:?} (micro, small-1x … large-2x)"),
            )
        })?),
    };
    let idempotency_key_ttl_ms = match &o.idempotency_key_ttl {
        None => None,
        Some(s) => Some(parse_idempotency_ttl(s).map_err(|_| {
            Error::unprocessable(
                &field("idempotencyKeyTTL"),
                format!("{s:?} must match ^(\\d+)([smhd])$, for example \"10m\""),
            )
        })?),
    };
    let priority_ms = match o.priority {
        None => 0,
        Some(p) if p.is_finite() => (p * 1000.0).round().clamp(i32::MIN as f64, i32::MAX as f64) as i64,
        Some(_) => return Err(Error::unprocessable(&field("priority"), "expected a number of seconds")),
    };
    let max_duration_secs = match o.max_duration {
        None => None,
        Some(d) if d.is_finite() && d >= 0.0 => Some(d.ceil().min(u32::MAX as f64) as u32),
        Some(_) => {
            return Err(Error::unprocessable(&field("maxDuration"), "expected a number of seconds ≥ 0"))
        }
    };
    Ok(TriggerOptions {
        queue,
        concurrency_key: o.concurrency_key,
        delay_until,
        ttl_ms,
        tags,
        metadata,
        metadata_type: o.metadata_type,
        machine,
        max_attempts: o.max_attempts,
        max_duration_secs,
        priority_ms,
        idempotency_key: o.idempotency_key.filter(|k| !k.is_empty()),
        idempotency_key_ttl_ms,
        idempotency_key_options: o.idempotency_key_options,
        parent_run_id: o.parent_run_id,
        resume_parent_on_completion: o.resume_parent_on_completion.unwrap_or(false),
        lock_to_version: o.lock_to_version,
        is_test: o.test.unwrap_or(false),
        trace_id: None,
        span_id: None,
    })
}

/// The W3C `traceparent` header's trace and span ids, so runs join the caller's trace.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(span, 16)).then(|| (trace.to_string(), span.to_string()))
}

/// Builds an engine trigger request from the wire body.
pub(crate) fn trigger_request(
    task: String,
    body: TriggerBody,
    headers: &HeaderMap,
    now: Millis,
    prefix: &str,
) -> Result<TriggerRequest> {
    let options = body.options.unwrap_or_default();
    let payload = payload_packet(body.payload, options.payload_type.as_deref())?;
    let mut options = parse_options(options, prefix, now)?;
    if let Some((trace, span)) = traceparent(headers) {
        options.trace_id = Some(trace);
        options.span_id = Some(span);
    }
    Ok(TriggerRequest { task, payload, options })
}

pub async fn trigger(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(task): Path<String>,
    headers: HeaderMap,
    Json(body): Json<TriggerBody>,
) -> Result<JsonResponse<Value>> {
    let replay_key = crate::dedupe::Replays::key(&headers);
    if let Some((_, body)) =
        replay_key.as_ref().and_then(|k| state.replays().get(&caller.env.id, "trigger", k))
    {
        return Ok(JsonResponse(body));
    }
    let request = trigger_request(task, body, &headers, state.engine().now(), "options.")?;
    let triggered = state.engine().trigger(&caller.env.id, request).await?;
    let response = json!({ "id": triggered.run.id, "isCached": triggered.is_cached });
    if let Some(key) = replay_key {
        state.replays().put(&caller.env.id, "trigger", key, 200, response.clone());
    }
    Ok(JsonResponse(response))
}

/// The full `RetrieveRunResponse` of a run of the caller's environment.
pub(crate) async fn retrieve_value(state: &AppState, env_id: &str, run_id: &str) -> Result<Value> {
    let engine = state.engine();
    let details = engine.get_run(env_id, run_id).await?;
    let mut related = wire::Related::default();
    if let Some(parent) = &details.run.parent_run_id {
        related.parent = engine.get_run(env_id, parent).await.ok().map(|d| d.run);
    }
    if let Some(root) = &details.run.root_run_id {
        related.root = if Some(root) == details.run.parent_run_id.as_ref() {
            related.parent.clone()
        } else {
            engine.get_run(env_id, root).await.ok().map(|d| d.run)
        };
    }
    related.children = engine.list_children(env_id, run_id).await?;
    let mut value = wire::retrieve_run(&details.run, &details.payload, details.output.as_ref(), &related);
    // Offloaded values are handed out as URLs, which the SDK fetches itself.
    for (packet, field) in
        [(Some(&details.payload), "payloadPresignedUrl"), (details.output.as_ref(), "outputPresignedUrl")]
    {
        if let Some(p) = packet.filter(|p| p.data_type == "application/store") {
            let path = p.data.as_deref().unwrap_or_default();
            value[field] = serde_json::json!(crate::routes::packets::signed_url(state, "GET", env_id, path));
        }
    }
    Ok(value)
}

pub async fn retrieve(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
) -> Result<JsonResponse<Value>> {
    Ok(JsonResponse(retrieve_value(&state, &caller.env.id, &run_id).await?))
}

/// Page size and cursors of a cursor-paginated list.
pub(crate) fn page(query: &QueryPairs) -> Result<Page> {
    let size = match query.get("page[size]") {
        None => 25,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(Error::unprocessable("page[size]", "expected a number from 1 to 100")),
        },
    };
    Ok(Page {
        after: query.get("page[after]").filter(|s| !s.is_empty()).map(str::to_string),
        before: query.get("page[before]").filter(|s| !s.is_empty()).map(str::to_string),
        size,
    })
}

/// Fetches one item more than the page to learn whether there is a next page, and returns
/// the page with its `{next?, previous?}` cursors.
pub(crate) fn paginate<T>(mut items: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> (Vec<T>, Value) {
    let more = items.len() > page.size as usize;
    if more {
        if page.before.is_some() {
            // Newer items come first; the extra one is the newest.
            items.remove(0);
        } else {
            items.truncate(page.size as usize);
        }
    }
    let mut pagination = json!({});
    let first = items.first().map(|i| id(i).to_string());
    let last = items.last().map(|i| id(i).to_string());
    if page.before.is_some() {
        if let Some(last) = last {
            pagination["next"] = json!(last);
        }
        if let (true, Some(first)) = (more, first) {
            pagination["previous"] = json!(first);
        }
    } else {
        if let (true, Some(last)) = (more, last) {
            pagination["next"] = json!(last);
        }
        if let (true, Some(first)) = (page.after.is_some(), first) {
            pagination["previous"] = json!(first);
        }
    }
    (items, pagination)
}

fn run_filter(query: &QueryPairs, env_id: &str, now: Millis) -> Result<Option<RunFilter>> {
    let mut filter = RunFilter { env_id: env_id.to_string(), ..RunFilter::default() };
    for s in query.list("filter[status]") {
        filter.statuses.push(
            RunStatus::parse(&s)
                .ok_or_else(|| Error::unprocessable("filter[status]", format!("unknown status {s:?}")))?,
        );
    }
    filter.tasks = query.list("filter[taskIdentifier]");
    filter.tags = query.list("filter[tag]");
    filter.versions = query.list("filter[version]");
    filter.queues = query.list("filter[queue]");
    for m in query.list("filter[machine]") {
        filter.machines.push(
            MachinePreset::parse(&m)
                .ok_or_else(|| Error::unprocessable("filter[machine]", format!("unknown machine {m:?}")))?,
        );
    }
    filter.batch_id = query.get("filter[batch]").map(str::to_string);
    filter.is_test = match query.get("filter[isTest]") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(Error::unprocessable(
                "filter[isTest]",
                format!("expected true or false, got {other:?}"),
            ))
        }
    };
    let ms = |field: &str| -> Result<Option<Millis>> {
        query
            .get(field)
            .map(|v| v.parse::<Millis>().ok().or_else(|| wire::parse_date(v)))
            .map(|v| {
                v.ok_or_else(|| Error::unprocessable(field, "expected epoch milliseconds or an ISO date"))
            })
            .transpose()
    };
    filter.created_from = ms("filter[createdAt][from]")?;
    filter.created_to = ms("filter[createdAt][to]")?;
    if let Some(period) = query.get("filter[createdAt][period]") {
        let d = parse_duration(period).map_err(|e| Error::unprocessable("filter[createdAt][period]", e))?;
        filter.created_from = Some(now - d as i64);
    }
    // Schedules, bulk actions and regions do not exist here, so nothing matches them.
    if ["filter[schedule]", "filter[bulkAction]", "filter[region]"].iter().any(|f| query.get(f).is_some()) {
        return Ok(None);
    }
    Ok(Some(filter))
}

pub async fn list(
    State(state): State<AppState>,
    caller: EnvCaller,
    query: QueryPairs,
) -> Result<JsonResponse<Value>> {
    let page = page(&query)?;
    let Some(filter) = run_filter(&query, &caller.env.id, state.engine().now())? else {
        return Ok(JsonResponse(json!({ "data": [], "pagination": {} })));
    };
    let runs = state.engine().list_runs(filter, Page { size: page.size + 1, ..page.clone() }).await?;
    let (runs, pagination) = paginate(runs, &page, |r: &Run| r.id.as_str());
    let data: Vec<Value> = runs.iter().map(|r| wire::list_item(r, &caller)).collect();
    Ok(JsonResponse(json!({ "data": data, "pagination": pagination })))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
) -> Result<JsonResponse<Value>> {
    let run = state.engine().cancel(&caller.env.id, &run_id, None).await?;
    Ok(JsonResponse(json!({ "id": run.id })))
}

/// `ReplayRunRequestBody` (4.8): what a replay may change.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayBody {
    payload: Option<Value>,
    payload_type: Option<String>,
    metadata: Option<Value>,
    tags: Option<Value>,
    queue: Option<String>,
    concurrency_key: Option<String>,
    machine: Option<String>,
    version: Option<String>,
    region: Option<String>,
    delay: Option<Value>,
    ttl: Option<Value>,
    idempotency_key: Option<String>,
    #[serde(rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
    max_attempts: Option<u32>,
    max_duration: Option<f64>,
}

pub async fn replay(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    OptionalJson(body): OptionalJson<ReplayBody>,
) -> Result<JsonResponse<Value>> {
    let body = body.unwrap_or_default();
    let now = state.engine().now();
    let overrides = ReplayOverrides {
        payload: match body.payload {
            None => None,
            Some(p) => Some(payload_packet(Some(p), body.payload_type.as_deref())?),
        },
        tags: body.tags.as_ref().map(|t| parse_tags("tags", t)).transpose()?,
        queue: body.queue,
        concurrency_key: body.concurrency_key,
        machine: body
            .machine
            .map(|m| {
                MachinePreset::parse(&m)
                    .ok_or_else(|| Error::unprocessable("machine", format!("unknown machine preset {m:?}")))
            })
            .transpose()?,
        delay_until: body.delay.as_ref().map(|d| parse_when("delay", d, now)).transpose()?,
        ttl_ms: body.ttl.as_ref().map(|t| parse_ttl("ttl", t)).transpose()?,
        max_attempts: body.max_attempts,
        max_duration_secs: body.max_duration.map(|d| d.max(0.0).ceil() as u32),
        metadata: match body.metadata {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.to_string()),
            Some(_) => return Err(Error::unprocessable("metadata", "expected an object")),
        },
    };
    // Accepted for compatibility; the engine has no regions, and a replay always runs on
    // the newest version with a fresh idempotency state.
    let _ = (body.version, body.region, body.idempotency_key, body.idempotency_key_ttl);
    let triggered = state.engine().replay(&caller.env.id, &run_id, overrides).await?;
    Ok(JsonResponse(json!({ "id": triggered.run.id })))
}

#[derive(Debug, Deserialize)]
pub struct RescheduleBody {
    delay: Value,
}

pub async fn reschedule(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    Json(body): Json<RescheduleBody>,
) -> Result<JsonResponse<Value>> {
    let at = parse_when("delay", &body.delay, state.engine().now())?;
    match state.engine().reschedule(&caller.env.id, &run_id, at).await {
        Ok(_) => {}
        // The reference answers 422, not 409, for a run that is not delayed.
        Err(trigger_engine::Error::InvalidState(m)) => return Err(Error::Unprocessable(m)),
        Err(e) => return Err(e.into()),
    }
    Ok(JsonResponse(retrieve_value(&state, &caller.env.id, &run_id).await?))
}

#[derive(Debug, Deserialize)]
pub struct TagsBody {
    tags: Value,
}

pub async fn add_tags(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    Json(body): Json<TagsBody>,
) -> Result<JsonResponse<Value>> {
    let tags = parse_tags("tags", &body.tags)?;
    let before = state.engine().get_run(&caller.env.id, &run_id).await?.run.tags.len();
    let run = state.engine().add_tags(&caller.env.id, &run_id, tags).await?;
    let added = run.tags.len().saturating_sub(before);
    Ok(JsonResponse(json!({ "message": format!("Successfully set {added} new tags.") })))
}

pub async fn put_metadata(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    Json(update): Json<MetadataUpdate>,
) -> Result<JsonResponse<Value>> {
    let metadata = state.engine().update_metadata(&caller.env.id, &run_id, update).await?;
    Ok(JsonResponse(json!({ "metadata": metadata })))
}

pub async fn get_metadata(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
) -> Result<JsonResponse<Value>> {
    let details = state.engine().get_run(&caller.env.id, &run_id).await?;
    let metadata = wire::metadata_object(&details.run).unwrap_or_else(|| json!({}));
    Ok(JsonResponse(json!({ "metadata": metadata })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetBody {
    task_identifier: String,
}

pub async fn reset_idempotency_key(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(key): Path<String>,
    Json(body): Json<ResetBody>,
) -> Result<JsonResponse<Value>> {
    state.engine().reset_idempotency_key(&caller.env.id, &body.task_identifier, &key).await?;
    Ok(JsonResponse(json!({ "id": key })))
}
