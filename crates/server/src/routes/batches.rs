//! Two-phase batches: create with an expected count, then stream items as NDJSON.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::Json as JsonResponse;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use trigger_engine::{BatchItem, CreateBatch, ItemsAdded};

use crate::auth::EnvCaller;
use crate::error::{Error, Result};
use crate::extract::{parse_json, Json};
use crate::routes::runs::{trigger_request, TriggerBody, TriggerOptionsBody};
use crate::AppState;

/// Most items in one batch (`STREAMING_BATCH_MAX_ITEMS`).
pub const MAX_ITEMS: i64 = 1000;
/// Longest NDJSON line: a 3 MiB payload with its options.
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// Most bytes in one items stream.
pub const MAX_STREAM: usize = 256 * 1024 * 1024;
/// Items are handed to the engine in chunks of this many (or [`CHUNK_BYTES`]), so memory
/// stays bounded however long the stream is.
const CHUNK_ITEMS: usize = 100;
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// `CreateBatchRequestBody`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    run_count: i64,
    #[serde(default)]
    parent_run_id: Option<String>,
    #[serde(default)]
    resume_parent_on_completion: Option<bool>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default, rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: EnvCaller,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Result<(StatusCode, JsonResponse<Value>)> {
    let replay_key = crate::dedupe::Replays::key(&headers);
    if let Some((_, body)) = replay_key.as_ref().and_then(|k| state.replays().get(&caller.env.id, "batch", k))
    {
        return Ok((StatusCode::ACCEPTED, JsonResponse(body)));
    }
    if body.run_count > MAX_ITEMS {
        // The reference answers 400 here (not 422), and the SDK does not retry it.
        return Err(Error::BadRequest(format!(
            "runCount: a batch has at most {MAX_ITEMS} items, got {}",
            body.run_count
        )));
    }
    if body.run_count < 1 {
        return Err(Error::unprocessable("runCount", "must be a positive integer"));
    }
    let idempotency_key_ttl_ms = body
        .idempotency_key_ttl
        .as_deref()
        .map(|s| {
            trigger_types::parse_idempotency_ttl(s).map_err(|_| {
                Error::unprocessable("idempotencyKeyTTL", format!("{s:?} must match ^(\\d+)([smhd])$"))
            })
        })
        .transpose()?;
    let request = CreateBatch {
        expected_count: body.run_count as u32,
        parent_run_id: body.parent_run_id,
        resume_parent_on_completion: body.resume_parent_on_completion.unwrap_or(false),
        idempotency_key: body.idempotency_key.filter(|k| !k.is_empty()),
        idempotency_key_ttl_ms,
    };
    let (batch, is_cached) = state.engine().create_batch(&caller.env.id, request).await?;
    let mut response = json!({ "id": batch.id, "runCount": batch.expected_count, "isCached": is_cached });
    if let Some(key) = &batch.idempotency_key {
        response["idempotencyKey"] = json!(key);
    }
    if let Some(key) = replay_key {
        state.replays().put(&caller.env.id, "batch", key, 202, response.clone());
    }
    Ok((StatusCode::ACCEPTED, JsonResponse(response)))
}

/// `BatchItemNDJSON`.
#[derive(Debug, Deserialize)]
struct ItemLine {
    index: u32,
    task: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    options: Option<TriggerOptionsBody>,
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            matches!(m.trim().to_ascii_lowercase().as_str(), "application/x-ndjson" | "application/ndjson")
        })
        .unwrap_or(false)
}

/// Reads NDJSON lines as they arrive and hands items to the engine in bounded chunks.
/// Items already handed over stay accepted if a later line is bad: items are idempotent by
/// index, and a client re-sends the stream until the batch is sealed.
pub async fn items(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<JsonResponse<Value>> {
    if !is_ndjson(&headers) {
        return Err(Error::UnsupportedMediaType("expected Content-Type: application/x-ndjson".into()));
    }
    // Fail fast (before reading the body) on a batch that is not ours.
    let (batch, _) = state.engine().get_batch(&caller.env.id, &batch_id).await?;
    let mut sink = Sink {
        state: &state,
        env_id: &caller.env.id,
        batch_id: &batch_id,
        headers: &headers,
        pending: Vec::new(),
        pending_bytes: 0,
        accepted: 0,
        deduplicated: 0,
        last: None,
        lines: 0,
    };

    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::BadRequest(format!("could not read the request body: {e}")))?;
        total += chunk.len();
        if total > MAX_STREAM {
            return Err(Error::TooLarge(format!("the items stream is over {MAX_STREAM} bytes")));
        }
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(pos) = buffer[start..].iter().position(|b| *b == b'\n') {
            let line = buffer[start..start + pos].to_vec();
            start += pos + 1;
            sink.line(&line).await?;
        }
        buffer.drain(..start);
        if buffer.len() > MAX_LINE {
            return Err(Error::TooLarge(format!("line {}: over {MAX_LINE} bytes", sink.lines + 1)));
        }
    }
    sink.line(&buffer).await?;
    sink.flush().await?;

    let batch = match sink.last.take() {
        Some(added) => added.batch,
        None => state.engine().get_batch(&caller.env.id, &batch_id).await.map(|(b, _)| b).unwrap_or(batch),
    };
    let enqueued = batch.run_count + batch.errors.len() as u32;
    let mut response = json!({
        "id": batch.id,
        "itemsAccepted": sink.accepted,
        "itemsDeduplicated": sink.deduplicated,
        "sealed": batch.sealed,
    });
    if !batch.sealed {
        response["enqueuedCount"] = json!(enqueued);
        response["expectedCount"] = json!(batch.expected_count);
    }
    Ok(JsonResponse(response))
}

struct Sink<'a> {
    state: &'a AppState,
    env_id: &'a str,
    batch_id: &'a str,
    headers: &'a HeaderMap,
    pending: Vec<BatchItem>,
    pending_bytes: usize,
    accepted: u32,
    deduplicated: u32,
    last: Option<ItemsAdded>,
    lines: usize,
}

impl Sink<'_> {
    async fn line(&mut self, raw: &[u8]) -> Result<()> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.lines += 1;
        let n = self.lines;
        if n as i64 > MAX_ITEMS {
            return Err(Error::Unprocessable(format!("line {n}: a batch has at most {MAX_ITEMS} items")));
        }
        let at_line = |e: Error| match e {
            Error::BadRequest(m) => Error::BadRequest(format!("line {n}: {m}")),
            Error::Unprocessable(m) => Error::Unprocessable(format!("line {n}: {m}")),
            other => other,
        };
        let item: ItemLine = parse_json(raw).map_err(at_line)?;
        let now = self.state.engine().now();
        let request = trigger_request(
            item.task,
            TriggerBody { payload: item.payload, options: item.options },
            self.headers,
            now,
            "options.",
        )
        .map_err(at_line)?;
        self.pending_bytes += raw.len();
        self.pending.push(BatchItem { index: item.index, request });
        if self.pending.len() >= CHUNK_ITEMS || self.pending_bytes >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let added = self.state.engine().add_batch_items(self.env_id, self.batch_id, items).await?;
        self.accepted += added.accepted;
        self.deduplicated += added.deduplicated;
        self.last = Some(added);
        Ok(())
    }
}

pub async fn retrieve(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(batch_id): Path<String>,
) -> Result<JsonResponse<Value>> {
    let (batch, items) = state.engine().get_batch(&caller.env.id, &batch_id).await?;
    Ok(JsonResponse(crate::wire::batch(&batch, &items)))
}
