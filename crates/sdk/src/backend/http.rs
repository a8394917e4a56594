//! The HTTP backend (see [`Http`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use trigger_engine::{
    AttemptOutcome, AttemptStatus, Batch, BatchItem, BatchStatus, CompletedWaitpoint, Completion,
    CreateBatch, DequeueRequest, Dequeued, Environment, EnvironmentType, ExecutionStatus, ItemsAdded,
    MachinePreset, MetadataUpdate, Millis, Packet, Page, QueueDef, ReplayOverrides, Run, RunChange,
    RunDetails, RunEvent, RunFilter, RunStatus, Snapshot, StartedAttempt, TaskDef, TaskRunError,
    TokenOptions, TriggerFunction, TriggerOptions, TriggerRequest, Triggered, Waitpoint, WaitpointStatus,
    WaitpointType, WorkerManifest, WorkerVersion,
};

use super::retry::{self, RequestRetry};
use super::{Backend, BoxFuture};
use crate::error::{Error, Result};

/// The server's Trigger.dev-compatible endpoints (`/api/…`, `/engine/…`, `/otel/…`) with an
/// environment's secret key, over HTTP/1.1: `http://` always, `https://` with the `tls`
/// feature (rustls with the webpki roots, plus any in [`HttpOptions::root_certificates`]).
///
/// Failed requests are retried as [`RequestRetry`] describes (connection errors, 408, 409,
/// 429, 5xx; backoff with jitter; `Retry-After` honoured), without ever doing a
/// non-idempotent thing twice: triggers and batches carry a request key the server
/// de-duplicates.
///
/// Responses are Trigger.dev's JSON shapes mapped onto the engine's types; fields the wire
/// does not carry keep their defaults (timestamps are 0, a run's retry policy is unknown,
/// replay overrides are not sent). Run changes are pushed over the server's SSE channel
/// (`/engine/v1/dev/runs/notifications`); log lines go to the OTLP logs sink.
#[derive(Clone)]
pub struct Http {
    inner: Arc<Inner>,
}

/// Options of an [`Http`] backend beyond its URL and key.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// How failed requests are retried.
    pub retry: RequestRetry,
    /// Certificates (DER) trusted for `https://` besides the webpki roots: a private CA or
    /// a self-signed server certificate. Needs the `tls` feature.
    pub root_certificates: Vec<Vec<u8>>,
}

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

struct Inner {
    base: String,
    key: String,
    project_ref: Option<String>,
    client: Client<Connector, Full<Bytes>>,
    retry: RequestRetry,
    changes: Mutex<Option<broadcast::Sender<RunChange>>>,
    /// The environment, learnt from the first attempt (log records name it).
    env_id: Mutex<Option<String>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("base", &self.inner.base).finish_non_exhaustive()
    }
}

/// What a request may go through when its connection breaks after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Reading, or writing what the server de-duplicates: send it again.
    Safe,
    /// The server may have acted on it: only an unsent request or an error status is retried.
    Unsafe,
    /// A worker call on a snapshot: like `Unsafe`, and a 409 (a stale snapshot) is final.
    Fenced,
    /// Sent once: the caller retries itself (a dequeue, which the worker loop repeats and
    /// which must not hold up a shutdown while the server is away).
    Never,
}

#[cfg(feature = "tls")]
fn client(options: &HttpOptions) -> Result<Client<Connector, Full<Bytes>>> {
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in &options.root_certificates {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| Error::Protocol(format!("a root certificate in HttpOptions is not usable: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(not(feature = "tls"))]
fn client(_: &HttpOptions) -> Result<Client<Connector, Full<Bytes>>> {
    Ok(Client::builder(TokioExecutor::new()).build_http())
}

/// An error with its causes (hyper's own message is only "client error (Connect)").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A UUID (v4) naming one logical request across its retries.
fn request_key() -> String {
    let b: [u8; 16] = rand::random();
    let hex = hex_string(&b);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] >> 4) & 0x3,
        &hex[17..20],
        &hex[20..32]
    )
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Http {
    /// A backend for a server at `api_url` with a secret key (`tr_dev_…`). The project ref
    /// (`proj_…`) is needed to register a worker. `https://` URLs need the `tls` feature.
    pub fn new(api_url: &str, secret_key: &str, project_ref: Option<String>) -> Result<Http> {
        Http::with_options(api_url, secret_key, project_ref, HttpOptions::default())
    }

    /// [`Http::new`] with options: the retry policy, extra trusted certificates.
    pub fn with_options(
        api_url: &str,
        secret_key: &str,
        project_ref: Option<String>,
        options: HttpOptions,
    ) -> Result<Http> {
        let https = api_url.starts_with("https://");
        if !https && !api_url.starts_with("http://") {
            return Err(Error::Protocol(format!(
                "the API URL must start with http:// or https://, got {api_url:?}"
            )));
        }
        if https && !cfg!(feature = "tls") {
            return Err(Error::Protocol(format!(
                "{api_url:?} is an https:// URL: enable the `tls` feature of trigger-sdk \
                 (trigger-sdk = {{ version = \"…\", features = [\"tls\"] }})"
            )));
        }
        Ok(Http {
            inner: Arc::new(Inner {
                base: api_url.trim_end_matches('/').to_string(),
                key: secret_key.to_string(),
                project_ref,
                client: client(&options)?,
                retry: options.retry,
                changes: Mutex::new(None),
                env_id: Mutex::new(None),
            }),
        })
    }

    /// From `TRIGGER_API_URL` (default `http://localhost:3030`), `TRIGGER_SECRET_KEY` and
    /// `TRIGGER_PROJECT_REF`.
    pub fn from_env() -> Result<Http> {
        let url = std::env::var("TRIGGER_API_URL").unwrap_or_else(|_| "http://localhost:3030".into());
        let key = std::env::var("TRIGGER_SECRET_KEY")
            .map_err(|_| Error::Protocol("TRIGGER_SECRET_KEY is not set".into()))?;
        Http::new(&url, &key, std::env::var("TRIGGER_PROJECT_REF").ok())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
        replay: Replay,
    ) -> Result<Value> {
        self.send_as(method, path, body, None, replay).await
    }

    /// POSTs JSON and reads the answer into `T` (the hot worker calls: no `Value` tree).
    async fn post_typed<T: DeserializeOwned>(&self, path: &str, body: Value, replay: Replay) -> Result<T> {
        self.send_as(Method::POST, path, Some((body.to_string(), "application/json")), None, replay).await
    }

    /// Sends a request, retrying as the policy and `replay` allow.
    async fn send_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
        instance: Option<&str>,
        replay: Replay,
    ) -> Result<T> {
        let body = body.map(|(text, content_type)| (Bytes::from(text), content_type.to_string()));
        let key = request_key();
        let policy = &self.inner.retry;
        let max_attempts = if replay == Replay::Never { 1 } else { policy.max_attempts.max(1) };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= max_attempts;
            let mut req = Request::builder()
                .method(method.clone())
                .uri(format!("{}{}", self.inner.base, path))
                .header("authorization", format!("Bearer {}", self.inner.key))
                .header("x-trigger-api-version", "2025-07-16")
                .header("accept", "application/json");
            if method != Method::GET {
                req = req.header(REQUEST_KEY, key.as_str());
            }
            if let Some(instance) = instance {
                req = req.header("x-trigger-worker-instance", instance);
            }
            let payload = match &body {
                Some((bytes, content_type)) => {
                    req = req.header("content-type", content_type.as_str());
                    Full::new(bytes.clone())
                }
                None => Full::new(Bytes::new()),
            };
            let req = req.body(payload).map_err(|e| Error::Protocol(e.to_string()))?;
            let failed = |what: String| {
                let tries = if attempt > 1 { format!(" (after {attempt} attempts)") } else { String::new() };
                Error::Protocol(format!("{path}: {what}{tries}"))
            };
            let response = match self.inner.client.request(req).await {
                Ok(response) => response,
                Err(e) => {
                    // A connection that never opened carried nothing to the server.
                    if last || !(e.is_connect() || replay == Replay::Safe) {
                        return Err(failed(with_causes(&e)));
                    }
                    self.pause(path, attempt, None, &with_causes(&e)).await;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = match response.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    if last || replay != Replay::Safe {
                        return Err(failed(format!("reading the answer: {e}")));
                    }
                    self.pause(path, attempt, None, &e.to_string()).await;
                    continue;
                }
            };
            let final_conflict = replay == Replay::Fenced && status == StatusCode::CONFLICT;
            if !status.is_success() && !last && !final_conflict && retry::retryable_status(status, &headers) {
                self.pause(path, attempt, Some((status, &headers)), status.as_str()).await;
                continue;
            }
            return answer(path, status, &bytes, attempt);
        }
    }

    /// GETs an absolute URL (a signed packet URL, which needs no key): its content type and
    /// bytes, retried as the policy allows.
    async fn fetch(&self, url: &str) -> Result<(String, Bytes)> {
        let max_attempts = self.inner.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= max_attempts;
            let req = Request::builder()
                .uri(url)
                .body(Full::new(Bytes::new()))
                .map_err(|e| Error::Protocol(format!("packet URL {url:?}: {e}")))?;
            let failed = |what: String| Error::Protocol(format!("fetching an offloaded packet: {what}"));
            let response = match self.inner.client.request(req).await {
                Ok(r) => r,
                Err(e) if last => return Err(failed(with_causes(&e))),
                Err(e) => {
                    self.pause("packet", attempt, None, &with_causes(&e)).await;
                    continue;
                }
            };
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = match response.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if last => return Err(failed(e.to_string())),
                Err(e) => {
                    self.pause("packet", attempt, None, &e.to_string()).await;
                    continue;
                }
            };
            if status.is_success() {
                let content_type =
                    headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
                return Ok((content_type.to_string(), bytes));
            }
            if last || !retry::retryable_status(status, &headers) {
                return Err(failed(format!("HTTP {status}")));
            }
            self.pause("packet", attempt, Some((status, &headers)), status.as_str()).await;
        }
    }

    /// A packet fetched from a signed URL.
    async fn packet_at(&self, url: &str) -> Result<Packet> {
        let (data_type, bytes) = self.fetch(url).await?;
        let data = String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Protocol("an offloaded packet is not UTF-8 text".into()))?;
        Ok(Packet { data: Some(data), data_type })
    }

    /// Waits before retry number `attempt`.
    async fn pause(&self, path: &str, attempt: u32, answer: Option<(StatusCode, &HeaderMap)>, why: &str) {
        let delay =
            retry::delay(&self.inner.retry, attempt, answer, SystemTime::now(), rand::random::<f64>());
        tracing::debug!(target: "trigger_sdk::http", path, attempt, ?delay, why, "retrying");
        tokio::time::sleep(delay).await;
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(Method::GET, path, None, Replay::Safe).await
    }

    async fn post(&self, path: &str, body: Value, replay: Replay) -> Result<Value> {
        self.post_typed(path, body, replay).await
    }

    /// Reads the push channel into `tx`, reconnecting after errors, while anyone listens.
    async fn notifications(self, tx: broadcast::Sender<RunChange>) {
        loop {
            if tx.receiver_count() == 0 {
                *self.inner.changes.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            let req = Request::builder()
                .uri(format!("{}/engine/v1/dev/runs/notifications", self.inner.base))
                .header("authorization", format!("Bearer {}", self.inner.key))
                .header("accept", "text/event-stream")
                .body(Full::new(Bytes::new()));
            if let Ok(req) = req {
                if let Ok(response) = self.inner.client.request(req).await {
                    let mut body = response.into_body();
                    let mut buffer = String::new();
                    while let Some(Ok(frame)) = body.frame().await {
                        let Ok(data) = frame.into_data() else { continue };
                        buffer.push_str(&String::from_utf8_lossy(&data));
                        while let Some(end) = buffer.find("\n\n") {
                            let event: String = buffer.drain(..end + 2).collect();
                            if let Some(change) = parse_event(&event) {
                                let _ = tx.send(change);
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The header that names one logical request across its retries (the server answers a
/// repeated trigger or batch with the first answer).
const REQUEST_KEY: &str = "x-trigger-request-idempotency-key";

/// A final answer: its JSON, or the error its status means.
fn answer<T: DeserializeOwned>(path: &str, status: StatusCode, bytes: &[u8], attempts: u32) -> Result<T> {
    if status.is_success() {
        return Ok(if bytes.is_empty() {
            T::deserialize(Value::Null)?
        } else {
            serde_json::from_slice(bytes)?
        });
    }
    let value: Option<Value> = serde_json::from_slice(bytes).ok();
    let message = match value.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None if bytes.is_empty() => "request failed".to_string(),
        None => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    };
    Err(match status {
        StatusCode::NOT_FOUND => trigger_engine::Error::NotFound(message).into(),
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
            trigger_engine::Error::Invalid(message).into()
        }
        StatusCode::PAYLOAD_TOO_LARGE => trigger_engine::Error::TooLarge(message).into(),
        StatusCode::CONFLICT => trigger_engine::Error::InvalidState(message).into(),
        other => {
            let tries = if attempts > 1 { format!(" (after {attempts} attempts)") } else { String::new() };
            Error::Protocol(format!("{path}: HTTP {other}: {message}{tries}"))
        }
    })
}

fn parse_event(event: &str) -> Option<RunChange> {
    let mut name = "";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    let v: Value = serde_json::from_str(&data).ok()?;
    match name {
        "run" => Some(RunChange {
            run_id: str_of(&v["run"]["friendlyId"]),
            env_id: String::new(),
            status: RunStatus::Executing,
            snapshot_id: str_of(&v["snapshot"]["friendlyId"]),
            execution_status: ExecutionStatus::parse(v["snapshot"]["executionStatus"].as_str()?)?,
            worker_instance: None,
        }),
        // Missed changes: an empty run id wakes every waiter to re-read its snapshot.
        "resync" => Some(RunChange {
            run_id: String::new(),
            env_id: String::new(),
            status: RunStatus::Executing,
            snapshot_id: String::new(),
            execution_status: ExecutionStatus::Executing,
            worker_instance: None,
        }),
        _ => None,
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn db_status(s: &str) -> RunStatus {
    match s {
        "PENDING_VERSION" | "WAITING_FOR_DEPLOY" => RunStatus::PendingVersion,
        "DELAYED" => RunStatus::Delayed,
        "PENDING" | "QUEUED" => RunStatus::Queued,
        "DEQUEUED" => RunStatus::Dequeued,
        "WAITING_TO_RESUME" | "PAUSED" | "WAITING" => RunStatus::Waiting,
        "COMPLETED_SUCCESSFULLY" | "COMPLETED" => RunStatus::Completed,
        "CANCELED" => RunStatus::Canceled,
        "COMPLETED_WITH_ERRORS" | "INTERRUPTED" | "FAILED" => RunStatus::Failed,
        "CRASHED" => RunStatus::Crashed,
        "SYSTEM_FAILURE" => RunStatus::SystemFailure,
        "EXPIRED" => RunStatus::Expired,
        "TIMED_OUT" => RunStatus::TimedOut,
        _ => RunStatus::Executing,
    }
}

/// A run with only an id and a task; the wire fills in what it knows.
fn blank_run(id: String, task: String) -> Run {
    Run {
        id,
        env_id: String::new(),
        task,
        status: RunStatus::Queued,
        snapshot_id: String::new(),
        execution_status: ExecutionStatus::Queued,
        queue: String::new(),
        concurrency_key: None,
        priority_ms: 0,
        queue_timestamp: 0,
        tags: Vec::new(),
        metadata: None,
        metadata_type: "application/json".into(),
        machine: None,
        max_attempts: None,
        max_duration_secs: None,
        ttl_ms: None,
        delay_until: None,
        idempotency_key: None,
        idempotency_key_expires_at: None,
        idempotency_key_options: None,
        parent_run_id: None,
        root_run_id: None,
        depth: 0,
        batch_id: None,
        batch_index: None,
        resume_parent_on_completion: false,
        trigger_function: TriggerFunction::Trigger,
        is_test: false,
        replayed_from: None,
        lock_to_version: None,
        worker_id: None,
        worker_instance: None,
        retry: None,
        attempt_number: 0,
        dequeue_count: 0,
        error: None,
        usage_ms: 0,
        trace_id: None,
        span_id: None,
        created_at: 0,
        updated_at: 0,
        queued_at: None,
        started_at: None,
        completed_at: None,
        expired_at: None,
        pending_blockers: None,
        has_waitpoint: false,
    }
}

fn completed_waitpoint(v: &Value) -> CompletedWaitpoint {
    CompletedWaitpoint {
        id: str_of(&v["id"]),
        kind: v["type"].as_str().and_then(WaitpointType::parse).unwrap_or(WaitpointType::Manual),
        completed_at: 0,
        index: v["index"].as_u64().map(|i| i as u32),
        idempotency_key: opt_str(&v["idempotencyKey"]),
        completed_by_run_id: opt_str(&v["completedByTaskRun"]["id"]),
        completed_by_batch_id: opt_str(&v["completedByBatch"]["id"])
            .or_else(|| opt_str(&v["completedByTaskRun"]["batch"]["id"])),
        completed_after: None,
        output: opt_str(&v["output"]),
        output_type: v["outputType"].as_str().unwrap_or("application/json").to_string(),
        output_is_error: v["outputIsError"].as_bool().unwrap_or(false),
    }
}

fn snapshot(run: &Run, s: &Value, completed: &Value) -> Snapshot {
    Snapshot {
        id: str_of(&s["id"]),
        run_id: run.id.clone(),
        execution_status: s["executionStatus"]
            .as_str()
            .and_then(ExecutionStatus::parse)
            .unwrap_or(ExecutionStatus::Executing),
        run_status: run.status,
        description: str_of(&s["description"]),
        attempt_number: run.attempt_number,
        worker_instance: None,
        batch_id: None,
        completed_waitpoints: completed
            .as_array()
            .map(|a| a.iter().map(completed_waitpoint).collect())
            .unwrap_or_default(),
        created_at: 0,
    }
}

/// `RunExecutionData` → the run (as far as known) and its snapshot.
fn execution_data(v: &Value) -> (Run, Snapshot) {
    let mut run = blank_run(str_of(&v["run"]["id"]), String::new());
    run.status = db_status(v["run"]["status"].as_str().unwrap_or(""));
    run.attempt_number = v["run"]["attemptNumber"].as_u64().unwrap_or(0) as u32;
    let snap = snapshot(&run, &v["snapshot"], &v["completedWaitpoints"]);
    run.snapshot_id = snap.id.clone();
    run.execution_status = snap.execution_status;
    (run, snap)
}

fn packet_of(value: &Value) -> Packet {
    match value {
        Value::Null => Packet { data: None, data_type: "application/json".into() },
        v => Packet::json(v),
    }
}

fn options_json(o: &TriggerOptions, now: Millis) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            m.insert(k.into(), v);
        }
    };
    put("queue", json!(o.queue));
    put("concurrencyKey", json!(o.concurrency_key));
    put("delay", json!(o.delay_until.filter(|at| *at > now)));
    put("ttl", json!(o.ttl_ms.map(|ms| ms / 1000)));
    if !o.tags.is_empty() {
        put("tags", json!(o.tags));
    }
    if let Some(meta) = &o.metadata {
        put("metadata", json!(meta));
        put("metadataType", json!(o.metadata_type.clone().unwrap_or_else(|| "application/json".into())));
    }
    put("machine", json!(o.machine.map(MachinePreset::name)));
    put("maxAttempts", json!(o.max_attempts));
    put("maxDuration", json!(o.max_duration_secs));
    if o.priority_ms != 0 {
        put("priority", json!(o.priority_ms as f64 / 1000.0));
    }
    put("idempotencyKey", json!(o.idempotency_key));
    put("idempotencyKeyTTL", json!(o.idempotency_key_ttl_ms.map(ttl_string)));
    put("idempotencyKeyOptions", json!(o.idempotency_key_options));
    put("parentRunId", json!(o.parent_run_id));
    if o.resume_parent_on_completion {
        put("resumeParentOnCompletion", json!(true));
    }
    put("lockToVersion", json!(o.lock_to_version));
    if o.is_test {
        put("test", json!(true));
    }
    Value::Object(m)
}

/// An idempotency key TTL as the wire takes it (`^(\d+)([smhd])$`): whole seconds, at least 1.
fn ttl_string(ms: u64) -> String {
    format!("{}s", (ms / 1000).max(1))
}

fn trigger_body(req: &TriggerRequest, now: Millis) -> Value {
    let mut options = options_json(&req.options, now);
    let payload_type =
        if req.payload.data_type.is_empty() { "application/json" } else { &req.payload.data_type };
    options["payloadType"] = json!(payload_type);
    json!({ "payload": req.payload.data, "options": options })
}

fn token(v: &Value, id: Option<&str>) -> Waitpoint {
    Waitpoint {
        id: id.map(str::to_string).unwrap_or_else(|| str_of(&v["id"])),
        env_id: String::new(),
        kind: WaitpointType::Manual,
        status: match v["status"].as_str() {
            Some("COMPLETED") | Some("TIMED_OUT") => WaitpointStatus::Completed,
            _ => WaitpointStatus::Pending,
        },
        idempotency_key: opt_str(&v["idempotencyKey"]),
        idempotency_key_expires_at: None,
        user_provided_key: false,
        completed_by_run_id: None,
        completed_by_batch_id: None,
        completed_after: None,
        timeout_at: None,
        // The server hands out the stored text with its content type.
        output: match v.get("output") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        },
        output_type: v["outputType"].as_str().unwrap_or("application/json").to_string(),
        output_is_error: v["status"].as_str() == Some("TIMED_OUT"),
        tags: Vec::new(),
        callback_secret: None,
        created_at: 0,
        completed_at: None,
    }
}

/// A storage path for a URL: its `/` kept, anything else outside the unreserved set
/// percent-encoded.
fn packet_path(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn path_id(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect()
}

impl Backend for Http {
    fn now(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }

    fn register_worker(&self, manifest: WorkerManifest) -> BoxFuture<'_, Result<WorkerVersion>> {
        Box::pin(async move {
            let project =
                self.inner.project_ref.clone().ok_or_else(|| {
                    Error::Protocol("registering a worker needs TRIGGER_PROJECT_REF".into())
                })?;
            let tasks: Vec<Value> = manifest
                .tasks
                .iter()
                .map(|t| {
                    json!({
                        "id": t.slug,
                        "filePath": t.file_path,
                        "exportName": t.export_name,
                        "description": t.description,
                        "queue": t.queue_name.as_ref().map(|n| json!({ "name": n })),
                        "retry": t.retry,
                        "machine": t.machine.map(|m| json!({ "preset": m.name() })),
                        "maxDuration": t.max_duration_secs,
                        "ttl": t.ttl_ms.map(|ms| format!("{}s", ms / 1000)),
                    })
                })
                .collect();
            let queues: Vec<Value> = manifest
                .queues
                .iter()
                .map(|q| json!({ "name": q.name, "concurrencyLimit": q.concurrency_limit }))
                .collect();
            let body = json!({ "metadata": {
                "contentHash": manifest.content_hash,
                "packageVersion": manifest.sdk_version,
                "tasks": tasks,
                "queues": queues,
            }});
            let v = self
                .post(
                    &format!("/api/v1/projects/{}/background-workers", path_id(&project)),
                    body,
                    Replay::Unsafe,
                )
                .await?;
            Ok(WorkerVersion {
                id: str_of(&v["id"]),
                env_id: String::new(),
                version: str_of(&v["version"]),
                content_hash: str_of(&v["contentHash"]),
                sdk_version: manifest.sdk_version,
                cli_version: None,
                created_at: 0,
            })
        })
    }

    fn dequeue(&self, request: DequeueRequest, wait: Duration) -> BoxFuture<'_, Result<Vec<Dequeued>>> {
        Box::pin(async move {
            let mut body = json!({
                "currentWorker": request.worker_id,
                "maxRuns": request.max_runs,
                "timeoutMs": wait.as_millis() as u64,
                "startAttempts": request.start_attempts,
            });
            if let (Some(cpu), Some(memory)) = (request.cpu, request.memory) {
                body["maxResources"] = json!({ "cpu": cpu, "memory": memory });
            }
            let answer: wire::DequeueAnswer = self
                .send_as(
                    Method::POST,
                    "/engine/v1/dev/dequeue",
                    Some((body.to_string(), "application/json")),
                    Some(&request.worker_instance),
                    Replay::Never,
                )
                .await?;
            Ok(answer
                .dequeued_messages
                .into_iter()
                .map(|m| {
                    let mut run = blank_run(m.run.id, String::new());
                    run.attempt_number = m.run.attempt_number;
                    run.is_test = m.run.is_test;
                    run.queue = m.run.master_queue;
                    let machine = m.run.machine.preset().unwrap_or_default();
                    run.machine = Some(machine);
                    let snap = snapshot(&run, &m.snapshot, &m.completed_waitpoints);
                    run.snapshot_id = snap.id.clone();
                    let worker = WorkerVersion {
                        id: m.background_worker.id,
                        env_id: String::new(),
                        version: m.background_worker.version,
                        content_hash: String::new(),
                        sdk_version: None,
                        cli_version: None,
                        created_at: 0,
                    };
                    let task = task_def(&run, &worker);
                    let started = m.attempt.map(|a| self.started_attempt(a));
                    Dequeued { run, snapshot: snap, worker, task, machine, started }
                })
                .collect())
        })
    }

    fn start_attempt(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<StartedAttempt>> {
        let path = format!(
            "/engine/v1/dev/runs/{}/snapshots/{}/attempts/start",
            path_id(run_id),
            path_id(snapshot_id)
        );
        Box::pin(async move {
            let started: wire::StartedIn = self.post_typed(&path, json!({}), Replay::Fenced).await?;
            Ok(self.started_attempt(started))
        })
    }

    fn complete_attempt(
        &self,
        run_id: &str,
        snapshot_id: &str,
        completion: Completion,
        metadata: Option<MetadataUpdate>,
    ) -> BoxFuture<'_, Result<AttemptOutcome>> {
        let path = format!(
            "/engine/v1/dev/runs/{}/snapshots/{}/attempts/complete",
            path_id(run_id),
            path_id(snapshot_id)
        );
        Box::pin(async move {
            let proposed = match &completion {
                Completion::Failure { retry: Some(r), .. } => Some(r.at),
                _ => None,
            };
            let mut c = match completion {
                Completion::Success { output, usage_ms } => json!({
                    "ok": true,
                    "output": output.data,
                    "outputType": output.data_type,
                    "usage": { "durationMs": usage_ms },
                }),
                Completion::Failure { error, retry, skipped_retrying, usage_ms } => json!({
                    "ok": false,
                    "error": error,
                    "retry": retry.map(|r| json!({ "timestamp": r.at, "delay": r.delay_ms })),
                    "skippedRetrying": skipped_retrying,
                    "usage": { "durationMs": usage_ms },
                }),
            };
            if let Some(m) = metadata {
                c["metadata"] = serde_json::to_value(m)?;
            }
            let v = self.post(&path, json!({ "completion": c }), Replay::Fenced).await?;
            let result = &v["result"];
            let mut run = blank_run(str_of(&result["run"]["id"]), String::new());
            run.status = db_status(result["run"]["status"].as_str().unwrap_or(""));
            run.attempt_number = result["run"]["attemptNumber"].as_u64().unwrap_or(0) as u32;
            let snap = snapshot(&run, &result["snapshot"], &Value::Null);
            let status = result["attemptStatus"]
                .as_str()
                .and_then(AttemptStatus::parse)
                .unwrap_or(AttemptStatus::RunFinished);
            // The engine keeps the worker's proposal, which the response does not repeat.
            let retry_at =
                (status == AttemptStatus::RetryImmediately).then(|| proposed.unwrap_or_else(|| self.now()));
            Ok(AttemptOutcome { status, run, snapshot: snap, retry_at })
        })
    }

    fn heartbeat(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        let path =
            format!("/engine/v1/dev/runs/{}/snapshots/{}/heartbeat", path_id(run_id), path_id(snapshot_id));
        Box::pin(async move { self.post(&path, json!({}), Replay::Fenced).await.map(|_| ()) })
    }

    fn release_run(&self, run_id: &str, snapshot_id: &str) -> BoxFuture<'_, Result<()>> {
        let path =
            format!("/engine/v1/dev/runs/{}/snapshots/{}/release", path_id(run_id), path_id(snapshot_id));
        Box::pin(async move { self.post(&path, json!({}), Replay::Fenced).await.map(|_| ()) })
    }

    fn latest_snapshot(&self, run_id: &str) -> BoxFuture<'_, Result<(Run, Snapshot)>> {
        let path = format!("/engine/v1/dev/runs/{}/snapshots/latest", path_id(run_id));
        Box::pin(async move { Ok(execution_data(&self.get(&path).await?["execution"])) })
    }

    fn snapshots_since(&self, run_id: &str, after: Option<&str>) -> BoxFuture<'_, Result<Vec<Snapshot>>> {
        let path = format!(
            "/engine/v1/dev/runs/{}/snapshots/since/{}",
            path_id(run_id),
            path_id(after.unwrap_or(""))
        );
        Box::pin(async move {
            let v = self.get(&path).await?;
            Ok(v["snapshots"]
                .as_array()
                .map(|a| a.iter().map(|s| execution_data(s).1).collect())
                .unwrap_or_default())
        })
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<RunChange>> {
        let mut guard = self.inner.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            return Some(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(1024);
        *guard = Some(tx.clone());
        tokio::spawn(self.clone().notifications(tx));
        Some(rx)
    }

    fn trigger(&self, request: TriggerRequest) -> BoxFuture<'_, Result<Triggered>> {
        Box::pin(async move {
            let body = trigger_body(&request, self.now());
            let v = self
                .post(&format!("/api/v1/tasks/{}/trigger", path_id(&request.task)), body, Replay::Safe)
                .await?;
            let mut run = blank_run(str_of(&v["id"]), request.task.clone());
            run.parent_run_id = request.options.parent_run_id.clone();
            Ok(Triggered { run, is_cached: v["isCached"].as_bool().unwrap_or(false) })
        })
    }

    fn create_batch(&self, request: CreateBatch) -> BoxFuture<'_, Result<(Batch, bool)>> {
        Box::pin(async move {
            let body = json!({
                "runCount": request.expected_count,
                "parentRunId": request.parent_run_id,
                "resumeParentOnCompletion": request.resume_parent_on_completion,
                "idempotencyKey": request.idempotency_key,
            });
            let v = self.post("/api/v3/batches", body, Replay::Safe).await?;
            Ok((
                Batch {
                    id: str_of(&v["id"]),
                    env_id: String::new(),
                    status: BatchStatus::Pending,
                    expected_count: request.expected_count,
                    run_count: 0,
                    completed_count: 0,
                    failed_count: 0,
                    sealed: false,
                    idempotency_key: request.idempotency_key,
                    idempotency_key_expires_at: None,
                    parent_run_id: request.parent_run_id,
                    resume_parent_on_completion: request.resume_parent_on_completion,
                    waitpoint_id: None,
                    errors: Vec::new(),
                    created_at: 0,
                    updated_at: 0,
                    completed_at: None,
                },
                v["isCached"].as_bool().unwrap_or(false),
            ))
        })
    }

    fn add_batch_items(&self, batch_id: &str, items: Vec<BatchItem>) -> BoxFuture<'_, Result<ItemsAdded>> {
        let path = format!("/api/v3/batches/{}/items", path_id(batch_id));
        Box::pin(async move {
            let now = self.now();
            let lines: String = items
                .iter()
                .map(|i| {
                    let mut line = trigger_body(&i.request, now);
                    line["index"] = json!(i.index);
                    line["task"] = json!(i.request.task);
                    format!("{line}\n")
                })
                .collect();
            let v =
                self.send(Method::POST, &path, Some((lines, "application/x-ndjson")), Replay::Safe).await?;
            let accepted = v["itemsAccepted"].as_u64().unwrap_or(items.len() as u64) as u32;
            let (batch, _) = self.create_batch_stub(&v, &path);
            Ok(ItemsAdded {
                batch,
                accepted,
                deduplicated: v["itemsDeduplicated"].as_u64().unwrap_or(0) as u32,
            })
        })
    }

    fn wait_for_duration(
        &self,
        run_id: &str,
        _snapshot_id: &str,
        until: Millis,
        idempotency_key: Option<String>,
        idempotency_key_ttl_ms: Option<u64>,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        let path = format!("/engine/v1/runs/{}/wait/duration", path_id(run_id));
        Box::pin(async move {
            let mut body = json!({ "date": trigger_engine::iso8601(until) });
            // Without a key a repeat would block the run on a second waitpoint.
            let replay = if idempotency_key.is_some() { Replay::Safe } else { Replay::Unsafe };
            if let Some(key) = idempotency_key {
                body["idempotencyKey"] = json!(key);
            }
            if let Some(ttl) = idempotency_key_ttl_ms {
                body["idempotencyKeyTTL"] = json!(ttl_string(ttl));
            }
            let v = self.post(&path, body, replay).await?;
            let mut wp = token(&Value::Null, v["waitpoint"]["id"].as_str());
            wp.kind = WaitpointType::DateTime;
            wp.completed_after = Some(until);
            Ok(wp)
        })
    }

    fn create_token(&self, options: TokenOptions) -> BoxFuture<'_, Result<(Waitpoint, bool)>> {
        Box::pin(async move {
            let mut body = json!({ "tags": options.tags });
            let replay = if options.idempotency_key.is_some() { Replay::Safe } else { Replay::Unsafe };
            if let Some(at) = options.timeout_at {
                body["timeout"] = json!(trigger_engine::iso8601(at));
            }
            if let Some(key) = options.idempotency_key {
                body["idempotencyKey"] = json!(key);
            }
            if let Some(ttl) = options.idempotency_key_ttl_ms {
                body["idempotencyKeyTTL"] = json!(ttl_string(ttl));
            }
            let v = self.post("/api/v1/waitpoints/tokens", body, replay).await?;
            Ok((token(&v, None), v["isCached"].as_bool().unwrap_or(false)))
        })
    }

    fn wait_for_token(
        &self,
        run_id: &str,
        _snapshot_id: &str,
        token_id: &str,
    ) -> BoxFuture<'_, Result<Waitpoint>> {
        let path =
            format!("/engine/v1/runs/{}/waitpoints/tokens/{}/wait", path_id(run_id), path_id(token_id));
        let id = token_id.to_string();
        Box::pin(async move {
            self.post(&path, json!({}), Replay::Unsafe).await?;
            Ok(token(&Value::Null, Some(&id)))
        })
    }

    fn complete_token(&self, token_id: &str, data: Packet) -> BoxFuture<'_, Result<Waitpoint>> {
        let path = format!("/api/v1/waitpoints/tokens/{}/complete", path_id(token_id));
        let id = token_id.to_string();
        Box::pin(async move {
            let data: Value =
                data.data.as_deref().map(serde_json::from_str).transpose()?.unwrap_or(Value::Null);
            self.post(&path, json!({ "data": data }), Replay::Safe).await?;
            Ok(token(&json!({ "status": "COMPLETED" }), Some(&id)))
        })
    }

    fn get_waitpoint(&self, id: &str) -> BoxFuture<'_, Result<Waitpoint>> {
        let path = format!("/api/v1/waitpoints/tokens/{}", path_id(id));
        Box::pin(async move { Ok(token(&self.get(&path).await?, None)) })
    }

    fn update_metadata(&self, run_id: &str, update: MetadataUpdate) -> BoxFuture<'_, Result<Value>> {
        let path = format!("/api/v1/runs/{}/metadata", path_id(run_id));
        Box::pin(async move {
            let body = serde_json::to_string(&update)?;
            let v = self.send(Method::PUT, &path, Some((body, "application/json")), Replay::Unsafe).await?;
            Ok(v["metadata"].clone())
        })
    }

    fn record_events(&self, _run_id: &str, events: Vec<RunEvent>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let env_id =
                self.inner.env_id.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
            let records: Vec<Value> = events
                .iter()
                .map(|e| {
                    let attributes: Vec<Value> = e
                        .attributes
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| json!({ "key": k, "value": { "stringValue": match v { Value::String(s) => s.clone(), v => v.to_string() } } }))
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut attributes = attributes;
                    attributes.push(json!({ "key": "ctx.run.id", "value": { "stringValue": e.run_id } }));
                    attributes.push(json!({ "key": "ctx.environment.id", "value": { "stringValue": env_id } }));
                    if let Some(n) = e.attempt_number {
                        attributes.push(json!({ "key": "ctx.attempt.number", "value": { "intValue": n.to_string() } }));
                    }
                    json!({
                        "timeUnixNano": e.start_time_ns.to_string(),
                        "severityText": e.level.to_uppercase(),
                        "body": { "stringValue": e.message },
                        "attributes": attributes,
                    })
                })
                .collect();
            let body = json!({ "resourceLogs": [{ "scopeLogs": [{ "logRecords": records }] }] });
            self.post("/otel/v1/logs", body, Replay::Unsafe).await.map(|_| ())
        })
    }

    fn get_run(&self, run_id: &str) -> BoxFuture<'_, Result<RunDetails>> {
        let path = format!("/api/v3/runs/{}", path_id(run_id));
        Box::pin(async move {
            let v = self.get(&path).await?;
            let mut run = blank_run(str_of(&v["id"]), str_of(&v["taskIdentifier"]));
            run.status = v["status"].as_str().and_then(RunStatus::parse).unwrap_or(RunStatus::Queued);
            run.attempt_number = v["attemptCount"].as_u64().unwrap_or(0) as u32;
            run.tags = serde_json::from_value(v["tags"].clone()).unwrap_or_default();
            run.is_test = v["isTest"].as_bool().unwrap_or(false);
            run.idempotency_key = opt_str(&v["idempotencyKey"]);
            run.metadata = v.get("metadata").filter(|m| m.is_object()).map(|m| m.to_string());
            run.batch_id = opt_str(&v["batchId"]);
            run.error = v.get("error").filter(|e| e.is_object()).map(|e| TaskRunError::BuiltIn {
                name: e["name"].as_str().unwrap_or("Error").to_string(),
                message: str_of(&e["message"]),
                stack_trace: str_of(&e["stackTrace"]),
                causes: None,
            });
            // Offloaded values come as signed URLs instead.
            let payload = match v["payloadPresignedUrl"].as_str() {
                Some(url) => self.packet_at(url).await?,
                None => packet_of(&v["payload"]),
            };
            let output = match v["outputPresignedUrl"].as_str() {
                Some(url) => Some(self.packet_at(url).await?),
                None => v.get("output").map(packet_of),
            };
            Ok(RunDetails { run, payload, output })
        })
    }

    fn import_packet(&self, packet: Packet) -> BoxFuture<'_, Result<Packet>> {
        Box::pin(async move {
            if packet.data_type != "application/store" {
                return Ok(packet);
            }
            let path = packet.data.unwrap_or_default();
            let v = self.get(&format!("/api/v1/packets/{}", packet_path(&path))).await?;
            let url = v["presignedUrl"]
                .as_str()
                .ok_or_else(|| Error::Protocol(format!("no download URL for the packet {path:?}")))?;
            self.packet_at(url).await
        })
    }

    fn list_runs(&self, filter: RunFilter, page: Page) -> BoxFuture<'_, Result<Vec<Run>>> {
        Box::pin(async move {
            // A size of 0 means the default page (25), as with the embedded engine.
            let size = if page.size == 0 { 25 } else { page.size.min(100) };
            let mut query = vec![format!("page[size]={size}")];
            if !filter.tasks.is_empty() {
                query.push(format!("filter[taskIdentifier]={}", filter.tasks.join(",")));
            }
            if !filter.statuses.is_empty() {
                let s: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
                query.push(format!("filter[status]={}", s.join(",")));
            }
            if let Some(b) = &filter.batch_id {
                query.push(format!("filter[batch]={}", path_id(b)));
            }
            if let Some(after) = &page.after {
                query.push(format!("page[after]={}", path_id(after)));
            }
            let v = self.get(&format!("/api/v1/runs?{}", query.join("&"))).await?;
            Ok(v["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            let mut run = blank_run(str_of(&r["id"]), str_of(&r["taskIdentifier"]));
                            run.status =
                                r["status"].as_str().and_then(RunStatus::parse).unwrap_or(RunStatus::Queued);
                            run
                        })
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn cancel(&self, run_id: &str) -> BoxFuture<'_, Result<Run>> {
        let path = format!("/api/v2/runs/{}/cancel", path_id(run_id));
        let id = run_id.to_string();
        Box::pin(async move {
            self.post(&path, json!({}), Replay::Safe).await?;
            Ok(self.get_run(&id).await?.run)
        })
    }

    fn replay(&self, run_id: &str, _overrides: ReplayOverrides) -> BoxFuture<'_, Result<Triggered>> {
        let path = format!("/api/v1/runs/{}/replay", path_id(run_id));
        Box::pin(async move {
            let v = self.post(&path, json!({}), Replay::Unsafe).await?;
            Ok(Triggered { run: blank_run(str_of(&v["id"]), String::new()), is_cached: false })
        })
    }

    fn reschedule(&self, run_id: &str, delay_until: Millis) -> BoxFuture<'_, Result<Run>> {
        let path = format!("/api/v1/runs/{}/reschedule", path_id(run_id));
        Box::pin(async move {
            let v = self
                .post(&path, json!({ "delay": trigger_engine::iso8601(delay_until) }), Replay::Safe)
                .await?;
            let mut run = blank_run(str_of(&v["id"]), str_of(&v["taskIdentifier"]));
            run.status = v["status"].as_str().and_then(RunStatus::parse).unwrap_or(RunStatus::Delayed);
            run.delay_until = Some(delay_until);
            Ok(run)
        })
    }
}

impl Http {
    /// Decodes the answer to an attempt start (`StartRunAttemptResult`), also carried by a
    /// dequeued message as `attempt` when the claim started it.
    fn started_attempt(&self, v: wire::StartedIn) -> StartedAttempt {
        let e = v.execution;
        let r = e.run;
        let mut run = blank_run(r.id, e.task.id);
        run.status = db_status(&v.run.status);
        run.attempt_number = e.attempt.number;
        run.tags = r.tags;
        run.is_test = r.is_test;
        run.idempotency_key = r.idempotency_key;
        run.max_attempts = r.max_attempts;
        run.max_duration_secs = r.max_duration;
        run.metadata = r.metadata.filter(Value::is_object).map(|m| m.to_string());
        run.parent_run_id = r.parent_task_run_id;
        run.root_run_id = r.root_task_run_id;
        run.queue = e.queue.name;
        run.machine = e.machine.preset();
        run.batch_id = e.batch.map(|b| b.id);
        let snap = snapshot(&run, &v.snapshot, &Value::Null);
        run.snapshot_id = snap.id.clone();
        run.execution_status = snap.execution_status;
        let worker = WorkerVersion {
            id: String::new(),
            env_id: String::new(),
            version: r.version,
            content_hash: String::new(),
            sdk_version: None,
            cli_version: None,
            created_at: 0,
        };
        let mut task = task_def(&run, &worker);
        task.file_path = e.task.file_path;
        let environment = Environment {
            id: e.environment.id,
            project_id: e.project.id,
            kind: EnvironmentType::parse(&e.environment.kind).unwrap_or(EnvironmentType::Development),
            concurrency_limit: 0,
            paused: false,
            created_at: 0,
        };
        *self.inner.env_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(environment.id.clone());
        let queue = QueueDef {
            id: e.queue.id,
            env_id: environment.id.clone(),
            name: run.queue.clone(),
            concurrency_limit: None,
            paused: false,
            named: true,
            created_at: 0,
            updated_at: 0,
        };
        let payload = Packet {
            data: r.payload.filter(|p| !p.is_empty()),
            data_type: r.payload_type.unwrap_or_else(|| "application/json".to_string()),
        };
        StartedAttempt {
            run,
            snapshot: snap,
            payload,
            environment,
            worker: Some(worker),
            task: Some(task),
            queue: Some(queue),
        }
    }

    fn create_batch_stub(&self, v: &Value, path: &str) -> (Batch, bool) {
        let id = v["id"].as_str().map(str::to_string).unwrap_or_else(|| {
            path.trim_start_matches("/api/v3/batches/").trim_end_matches("/items").to_string()
        });
        let batch = Batch {
            id,
            env_id: String::new(),
            status: BatchStatus::Processing,
            expected_count: 0,
            run_count: 0,
            completed_count: 0,
            failed_count: 0,
            sealed: v["sealed"].as_bool().unwrap_or(false),
            idempotency_key: None,
            idempotency_key_expires_at: None,
            parent_run_id: None,
            resume_parent_on_completion: false,
            waitpoint_id: None,
            errors: Vec::new(),
            created_at: 0,
            updated_at: 0,
            completed_at: None,
        };
        (batch, false)
    }
}

fn task_def(run: &Run, worker: &WorkerVersion) -> TaskDef {
    TaskDef {
        env_id: String::new(),
        worker_id: worker.id.clone(),
        slug: run.task.clone(),
        file_path: String::new(),
        export_name: None,
        description: None,
        queue: run.queue.clone(),
        retry: None,
        machine: run.machine,
        max_duration_secs: run.max_duration_secs,
        ttl_ms: None,
        payload_schema: None,
        created_at: 0,
    }
}

/// The worker protocol's hot answers, read straight into what the SDK uses (fields it does
/// not use are skipped; small parts it hands to shared helpers stay JSON values).
mod wire {
    use serde::Deserialize;
    use serde_json::Value;
    use trigger_engine::MachinePreset;

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct DequeueAnswer {
        pub dequeued_messages: Vec<DequeuedIn>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct DequeuedIn {
        pub run: DequeuedRunIn,
        pub snapshot: Value,
        pub completed_waitpoints: Value,
        pub background_worker: WorkerIn,
        pub attempt: Option<StartedIn>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct DequeuedRunIn {
        pub id: String,
        pub attempt_number: u32,
        pub is_test: bool,
        pub master_queue: String,
        pub machine: MachineIn,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct MachineIn {
        pub name: Option<String>,
    }

    impl MachineIn {
        pub fn preset(&self) -> Option<MachinePreset> {
            self.name.as_deref().and_then(MachinePreset::parse)
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct WorkerIn {
        pub id: String,
        pub version: String,
    }

    /// `StartRunAttemptResult`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct StartedIn {
        pub execution: ExecutionIn,
        pub run: RunMetaIn,
        pub snapshot: Value,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct RunMetaIn {
        pub status: String,
    }

    /// `TaskRunExecution`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct ExecutionIn {
        pub run: ExecutionRunIn,
        pub task: TaskIn,
        pub attempt: AttemptIn,
        pub queue: QueueIn,
        pub machine: MachineIn,
        pub batch: Option<IdIn>,
        pub environment: EnvironmentIn,
        pub project: IdIn,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct ExecutionRunIn {
        pub id: String,
        pub tags: Vec<String>,
        pub is_test: bool,
        pub idempotency_key: Option<String>,
        pub max_attempts: Option<u32>,
        pub max_duration: Option<u32>,
        pub metadata: Option<Value>,
        pub parent_task_run_id: Option<String>,
        pub root_task_run_id: Option<String>,
        pub version: String,
        pub payload: Option<String>,
        pub payload_type: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct TaskIn {
        pub id: String,
        pub file_path: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct AttemptIn {
        pub number: u32,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct QueueIn {
        pub id: String,
        pub name: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct IdIn {
        pub id: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct EnvironmentIn {
        pub id: String,
        #[serde(rename = "type")]
        pub kind: String,
    }
}
