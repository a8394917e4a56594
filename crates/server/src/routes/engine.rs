//! The engine (worker) API: dequeue, attempts, heartbeats, snapshots, waits, and a push
//! channel of snapshot changes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use trigger_engine::{
    Completion, DequeueRequest, MetadataUpdate, Packet, RetryProposal, StartedAttempt, TaskRunError,
};

use crate::auth::EnvCaller;
use crate::error::{Error, Result};
use crate::extract::{OptionalWorkerJson, QueryPairs, WorkerJson};
use crate::routes::cli::DevEnvVars;
use crate::wire;
use crate::AppState;

/// The longest a dequeue waits for work before answering empty.
pub const DEQUEUE_WAIT: Duration = Duration::from_secs(10);
/// How often the presence stream says it is alive.
const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);

/// `DevConfigResponseBody`.
pub async fn dev_config(State(state): State<AppState>, caller: EnvCaller) -> JsonResponse<Value> {
    JsonResponse(json!({
        "environmentId": caller.env.id,
        "dequeueIntervalWithRun": 250,
        "dequeueIntervalWithoutRun": 1000,
        "maxConcurrentRuns": caller.env.concurrency_limit,
        "engineUrl": state.base_url(),
    }))
}

/// Presence: a stream that only says "connected" every few seconds, until the client or
/// the server goes away.
pub async fn presence(
    State(state): State<AppState>,
    caller: EnvCaller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shutdown = state.shutdown_signal();
    let data = json!({ "environmentId": caller.env.id }).to_string();
    let events = stream::unfold((shutdown, true), move |(mut shutdown, first)| {
        let data = data.clone();
        async move {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(PRESENCE_INTERVAL) => {}
                    _ = shutdown.wait_for(|v| *v) => return None,
                }
            }
            if *shutdown.borrow() {
                return None;
            }
            Some((Ok(Event::default().event("presence").data(data)), (shutdown, false)))
        }
    });
    Sse::new(events)
}

/// Snapshot changes of the caller's environment's runs, as server-sent events:
/// `{"run":{"friendlyId"},"snapshot":{"friendlyId","executionStatus"}}`. `?runs=a,b` limits
/// it to some runs. A first `ready` event says the subscription is live; `resync` says
/// events were dropped (the client should re-fetch its runs' latest snapshots).
pub async fn notifications(
    State(state): State<AppState>,
    caller: EnvCaller,
    query: QueryPairs,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    struct Feed {
        changes: broadcast::Receiver<trigger_engine::RunChange>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        env_id: String,
        runs: Vec<String>,
        ready: bool,
    }
    let feed = Feed {
        changes: state.engine().subscribe(),
        shutdown: state.shutdown_signal(),
        env_id: caller.env.id.clone(),
        runs: query.list("runs"),
        ready: false,
    };
    let events = stream::unfold(feed, |mut feed| async move {
        if !feed.ready {
            feed.ready = true;
            return Some((Ok(Event::default().event("ready").data("{}")), feed));
        }
        loop {
            let change = tokio::select! {
                c = feed.changes.recv() => c,
                _ = feed.shutdown.wait_for(|v| *v) => return None,
            };
            match change {
                Ok(c)
                    if c.env_id == feed.env_id && (feed.runs.is_empty() || feed.runs.contains(&c.run_id)) =>
                {
                    let data = json!({
                        "run": { "friendlyId": c.run_id },
                        "snapshot": { "friendlyId": c.snapshot_id, "executionStatus": wire::execution_status(c.execution_status) },
                    });
                    return Some((Ok(Event::default().event("run").data(data.to_string())), feed));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some((
                        Ok(Event::default().event("resync").data(json!({ "missed": n }).to_string())),
                        feed,
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `DevDequeueRequestBody`, plus `maxRuns` and `timeoutMs` for fast workers, and
/// `startAttempts` for workers that start every run they claim (the Rust SDK's): each
/// message then carries `attempt`, the answer `…/attempts/start` would give.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeueBody {
    #[serde(default)]
    current_worker: Option<String>,
    #[serde(default)]
    max_resources: Option<Resources>,
    #[serde(default)]
    max_runs: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    start_attempts: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    cpu: f64,
    memory: f64,
}

pub async fn dequeue(
    State(state): State<AppState>,
    caller: EnvCaller,
    headers: HeaderMap,
    OptionalWorkerJson(body): OptionalWorkerJson<DequeueBody>,
) -> Result<Response> {
    let body = body.unwrap_or_default();
    let instance = headers
        .get("x-trigger-worker-instance")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("dev:{}", caller.key_id));
    let request = DequeueRequest {
        worker_instance: instance,
        worker_id: body.current_worker.filter(|w| !w.is_empty()),
        max_runs: body.max_runs.unwrap_or(10).clamp(1, 100),
        cpu: body.max_resources.as_ref().map(|r| r.cpu),
        memory: body.max_resources.as_ref().map(|r| r.memory),
        start_attempts: body.start_attempts,
    };
    let wait = body.timeout_ms.map_or(DEQUEUE_WAIT, |ms| Duration::from_millis(ms).min(DEQUEUE_WAIT));
    let mut shutdown = state.shutdown_signal();
    let claimed = tokio::select! {
        claimed = state.engine().dequeue_wait(&caller.env.id, request, wait) => claimed?,
        _ = shutdown.wait_for(|v| *v) => Vec::new(),
    };
    let now = state.engine().now();
    let env_vars = crate::routes::cli::dev_env_vars(&state);
    let messages: Vec<_> = claimed
        .iter()
        .map(|d| {
            let attempt = d.started.as_ref().map(|started| started_attempt(started, &caller, &env_vars));
            wire::dequeued_message(d, &caller, now, attempt)
        })
        .collect();
    Ok(JsonResponse(DequeueAnswer { dequeued_messages: messages }).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DequeueAnswer<'a, A> {
    dequeued_messages: Vec<wire::DequeuedMessage<'a, A>>,
}

/// The answer to an attempt start (`StartRunAttemptResult`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartedAttemptJson<'a> {
    snapshot: wire::SnapshotJson<'a>,
    run: wire::RunMeta<'a>,
    execution: wire::TaskRunExecution<'a>,
    env_vars: &'a DevEnvVars,
}

fn started_attempt<'a>(
    started: &'a StartedAttempt,
    caller: &'a EnvCaller,
    env_vars: &'a DevEnvVars,
) -> StartedAttemptJson<'a> {
    StartedAttemptJson {
        snapshot: wire::snapshot(&started.snapshot),
        run: wire::run_meta(&started.run),
        execution: wire::task_run_execution(started, caller),
        env_vars,
    }
}

pub async fn start_attempt(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, snapshot_id)): Path<(String, String)>,
    OptionalWorkerJson(_body): OptionalWorkerJson<Value>,
) -> Result<Response> {
    let started = state.engine().start_attempt(&caller.env.id, &run_id, &snapshot_id).await?;
    let env_vars = crate::routes::cli::dev_env_vars(&state);
    Ok(JsonResponse(started_attempt(&started, &caller, &env_vars)).into_response())
}

/// `TaskRunExecutionResult`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionBody {
    ok: bool,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    output_type: Option<String>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    retry: Option<RetryBody>,
    #[serde(default)]
    skipped_retrying: Option<bool>,
    #[serde(default)]
    usage: Option<Usage>,
    /// Deprecated form of the final metadata flush.
    #[serde(default)]
    metadata: Option<MetadataUpdate>,
    #[serde(default)]
    flushed_metadata: Option<FlushedPacket>,
}

#[derive(Debug, Deserialize)]
pub struct RetryBody {
    timestamp: f64,
    delay: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    duration_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushedPacket {
    #[serde(default)]
    data: Option<String>,
    data_type: String,
}

#[derive(Debug, Deserialize)]
pub struct CompleteBody {
    completion: CompletionBody,
}

/// A `TaskRunError` as sent; an unknown shape (a newer SDK's code) is kept as a message
/// rather than refusing the completion, which would strand the run.
fn task_run_error(value: Value) -> TaskRunError {
    match serde_json::from_value::<TaskRunError>(value.clone()) {
        Ok(e) => e,
        Err(_) => {
            let message = value.get("message").and_then(Value::as_str).map(str::to_string);
            let code = value.get("code").and_then(Value::as_str).map(str::to_string);
            TaskRunError::string(match (code, message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                (None, Some(m)) => m,
                (None, None) => value.to_string(),
            })
        }
    }
}

pub(crate) fn completion(c: CompletionBody) -> Result<(Completion, Option<MetadataUpdate>)> {
    let usage_ms = c.usage.map_or(0, |u| u.duration_ms.max(0.0) as u64);
    let metadata = match c.flushed_metadata {
        Some(p) => match p.data.as_deref().and_then(|d| wire::deserialize(d, &p.data_type)) {
            Some(v @ Value::Object(_)) => {
                Some(MetadataUpdate { metadata: Some(v), ..MetadataUpdate::default() })
            }
            _ => None,
        },
        None => c.metadata,
    };
    let completion = if c.ok {
        Completion::Success {
            output: Packet {
                data: c.output,
                data_type: c.output_type.unwrap_or_else(|| "application/json".into()),
            },
            usage_ms,
        }
    } else {
        let error = c
            .error
            .ok_or_else(|| Error::unprocessable("completion.error", "a failed completion needs an error"))?;
        Completion::Failure {
            error: task_run_error(error),
            retry: c
                .retry
                .map(|r| RetryProposal { at: r.timestamp as i64, delay_ms: r.delay.max(0.0) as u64 }),
            skipped_retrying: c.skipped_retrying.unwrap_or(false),
            usage_ms,
        }
    };
    Ok((completion, metadata))
}

pub async fn complete_attempt(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, snapshot_id)): Path<(String, String)>,
    WorkerJson(body): WorkerJson<CompleteBody>,
) -> Result<Response> {
    let (completion, metadata) = completion(body.completion)?;
    let outcome =
        state.engine().complete_attempt(&caller.env.id, &run_id, &snapshot_id, completion, metadata).await?;
    let result = CompletionResult {
        attempt_status: outcome.status.as_str(),
        snapshot: wire::snapshot(&outcome.snapshot),
        run: wire::run_meta(&outcome.run),
    };
    Ok(JsonResponse(CompletionAnswer { result }).into_response())
}

/// `CompleteRunAttemptResult`.
#[derive(Serialize)]
struct CompletionAnswer<'a> {
    result: CompletionResult<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompletionResult<'a> {
    attempt_status: &'static str,
    snapshot: wire::SnapshotJson<'a>,
    run: wire::RunMeta<'a>,
}

pub async fn heartbeat(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, snapshot_id)): Path<(String, String)>,
    OptionalWorkerJson(_body): OptionalWorkerJson<Value>,
) -> Result<JsonResponse<Value>> {
    state.engine().heartbeat(&caller.env.id, &run_id, &snapshot_id).await?;
    Ok(JsonResponse(json!({ "ok": true })))
}

/// A worker that is shutting down hands a run back: it is queued again with its place in
/// line, without failing the attempt (a trigger.rs extension of the worker protocol).
pub async fn release(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, snapshot_id)): Path<(String, String)>,
) -> Result<JsonResponse<Value>> {
    let run = state.engine().release_run(&caller.env.id, &run_id, &snapshot_id).await?;
    Ok(JsonResponse(json!({ "ok": true, "status": run.status.as_str() })))
}

pub async fn latest_snapshot(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
) -> Result<Response> {
    let (run, snapshot) = state.engine().latest_snapshot(&caller.env.id, &run_id).await?;
    Ok(JsonResponse(LatestSnapshot { execution: wire::execution_data(&run, &snapshot) }).into_response())
}

pub async fn snapshots_since(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, snapshot_id)): Path<(String, String)>,
) -> Result<Response> {
    let (run, _) = state.engine().latest_snapshot(&caller.env.id, &run_id).await?;
    let snapshots = state.engine().snapshots_since(&caller.env.id, &run_id, Some(&snapshot_id)).await?;
    let snapshots = snapshots.iter().map(|s| wire::execution_data(&run, s)).collect();
    Ok(JsonResponse(SnapshotsSince { snapshots }).into_response())
}

#[derive(Serialize)]
struct LatestSnapshot<'a> {
    execution: wire::ExecutionData<'a>,
}

#[derive(Serialize)]
struct SnapshotsSince<'a> {
    snapshots: Vec<wire::ExecutionData<'a>>,
}

/// The CLI's debug lines: logged here at debug level, not stored.
pub async fn debug_log(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    OptionalWorkerJson(body): OptionalWorkerJson<Value>,
) -> Result<JsonResponse<Value>> {
    // Only for runs of the caller's environment, like every other run route.
    state.engine().latest_snapshot(&caller.env.id, &run_id).await?;
    let message = body.as_ref().and_then(|b| b.get("message")).and_then(Value::as_str).unwrap_or("");
    tracing::debug!(env = %caller.env.id, run = %run_id, message, "worker debug log");
    Ok(JsonResponse(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisconnectBody {
    run_friendly_ids: Vec<String>,
}

/// A dev worker went away: its runs cannot finish, so they are cancelled at once (there is
/// no worker left to run cancel hooks and confirm).
pub async fn disconnect(
    State(state): State<AppState>,
    caller: EnvCaller,
    WorkerJson(body): WorkerJson<DisconnectBody>,
) -> Result<JsonResponse<Value>> {
    let mut cancelled = 0;
    for run_id in body.run_friendly_ids.iter().take(1000) {
        match state.engine().cancel_abandoned(&caller.env.id, run_id, "The dev worker disconnected").await {
            Ok(_) => cancelled += 1,
            Err(trigger_engine::Error::NotFound(_) | trigger_engine::Error::InvalidState(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(JsonResponse(json!({ "cancelled": cancelled })))
}

/// `WaitForDurationRequestBody`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitDurationBody {
    date: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default, rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
}

pub async fn wait_for_duration(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(run_id): Path<String>,
    WorkerJson(body): WorkerJson<WaitDurationBody>,
) -> Result<JsonResponse<Value>> {
    let until = match &body.date {
        Value::String(s) => {
            wire::parse_date(s).ok_or_else(|| Error::unprocessable("date", "expected an ISO 8601 date"))?
        }
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| Error::unprocessable("date", "expected epoch milliseconds"))?
        }
        _ => return Err(Error::unprocessable("date", "expected a date")),
    };
    let ttl = body
        .idempotency_key_ttl
        .as_deref()
        .map(|s| {
            trigger_types::parse_idempotency_ttl(s).map_err(|_| {
                Error::unprocessable("idempotencyKeyTTL", format!("{s:?} must match ^(\\d+)([smhd])$"))
            })
        })
        .transpose()?;
    // The SDK names no snapshot here: act on the latest, and retry once if it moved.
    let mut attempt = 0;
    let waitpoint = loop {
        let (_, snapshot) = state.engine().latest_snapshot(&caller.env.id, &run_id).await?;
        match state
            .engine()
            .wait_for_duration(
                &caller.env.id,
                &run_id,
                &snapshot.id,
                until,
                body.idempotency_key.clone(),
                ttl,
            )
            .await
        {
            Err(trigger_engine::Error::StaleSnapshot { .. }) if attempt == 0 => attempt += 1,
            other => break other?,
        }
    };
    Ok(JsonResponse(json!({
        "waitUntil": wire::iso(waitpoint.completed_after.unwrap_or(until)),
        "waitpoint": { "id": waitpoint.id },
    })))
}

pub async fn wait_for_token(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, waitpoint_id)): Path<(String, String)>,
) -> Result<JsonResponse<Value>> {
    state.engine().wait_for_token(&caller.env.id, &run_id, None, &waitpoint_id).await?;
    Ok(JsonResponse(json!({ "success": true })))
}
