//! Waitpoint tokens: create, list, retrieve, complete, and the public callback URL.

use axum::extract::{Path, State};
use axum::Json as JsonResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use trigger_engine::{Packet, TokenOptions, Waitpoint, WaitpointFilter, WaitpointStatus, WaitpointType};

use crate::auth::EnvCaller;
use crate::error::{Error, Result};
use crate::extract::{parse_json, Json, QueryPairs, RawBody};
use crate::routes::runs::{page, paginate, parse_tags, parse_when};
use crate::wire;
use crate::AppState;

/// `CreateWaitpointTokenRequestBody`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    idempotency_key: Option<String>,
    #[serde(rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
    timeout: Option<Value>,
    tags: Option<Value>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: EnvCaller,
    Json(body): Json<CreateBody>,
) -> Result<JsonResponse<Value>> {
    let now = state.engine().now();
    let options = TokenOptions {
        timeout_at: body
            .timeout
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|t| parse_when("timeout", t, now))
            .transpose()?,
        idempotency_key: body.idempotency_key.filter(|k| !k.is_empty()),
        idempotency_key_ttl_ms: body
            .idempotency_key_ttl
            .as_deref()
            .map(|s| {
                trigger_types::parse_idempotency_ttl(s).map_err(|_| {
                    Error::unprocessable("idempotencyKeyTTL", format!("{s:?} must match ^(\\d+)([smhd])$"))
                })
            })
            .transpose()?,
        tags: body.tags.as_ref().map(|t| parse_tags("tags", t)).transpose()?.unwrap_or_default(),
    };
    let (wp, is_cached) = state.engine().create_token(&caller.env.id, options).await?;
    Ok(JsonResponse(
        json!({ "id": wp.id, "isCached": is_cached, "url": wire::token_url(state.base_url(), &wp) }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: EnvCaller,
    query: QueryPairs,
) -> Result<JsonResponse<Value>> {
    let page = page(&query)?;
    let mut filter = WaitpointFilter {
        env_id: caller.env.id.clone(),
        kind: Some(WaitpointType::Manual),
        idempotency_key: query.get("filter[idempotencyKey]").map(str::to_string),
        tags: query.list("filter[tags]"),
        ..WaitpointFilter::default()
    };
    let wanted = query.list("filter[status]");
    for s in &wanted {
        if !matches!(s.as_str(), "WAITING" | "COMPLETED" | "TIMED_OUT") {
            return Err(Error::unprocessable(
                "filter[status]",
                format!("unknown status {s:?} (WAITING, COMPLETED, TIMED_OUT)"),
            ));
        }
    }
    let has = |s: &str| wanted.iter().any(|w| w == s);
    // The three API statuses over the engine's two: TIMED_OUT is a completion with an error.
    match (has("WAITING"), has("COMPLETED"), has("TIMED_OUT")) {
        (true, false, false) => filter.statuses = vec![WaitpointStatus::Pending],
        (false, true, false) => {
            filter.statuses = vec![WaitpointStatus::Completed];
            filter.timed_out = Some(false);
        }
        (false, false, true) => {
            filter.statuses = vec![WaitpointStatus::Completed];
            filter.timed_out = Some(true);
        }
        (false, true, true) => filter.statuses = vec![WaitpointStatus::Completed],
        _ => {}
    }
    let ms = |field: &str| -> Result<Option<i64>> {
        query
            .get(field)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .or_else(|| wire::parse_date(v))
                    .ok_or_else(|| Error::unprocessable(field, "expected a date"))
            })
            .transpose()
    };
    filter.created_from = ms("filter[createdAt][from]")?;
    filter.created_to = ms("filter[createdAt][to]")?;
    if let Some(period) = query.get("filter[createdAt][period]") {
        let d = trigger_types::parse_duration(period)
            .map_err(|e| Error::unprocessable("filter[createdAt][period]", e))?;
        filter.created_from = Some(state.engine().now() - d as i64);
    }
    let mut tokens = state
        .engine()
        .list_waitpoints(filter, trigger_engine::Page { size: page.size + 1, ..page.clone() })
        .await?;
    if has("WAITING") && has("TIMED_OUT") && !has("COMPLETED") {
        tokens.retain(|wp| wire::token_status(wp) != "COMPLETED");
    }
    let (tokens, pagination) = paginate(tokens, &page, |w: &Waitpoint| w.id.as_str());
    let data: Vec<Value> = tokens.iter().map(|wp| wire::token_item(wp, state.base_url())).collect();
    Ok(JsonResponse(json!({ "data": data, "pagination": pagination })))
}

async fn token(state: &AppState, env_id: Option<&str>, id: &str) -> Result<Waitpoint> {
    let wp = state.engine().get_waitpoint(env_id, id).await?;
    if wp.kind != WaitpointType::Manual {
        return Err(Error::NotFound(format!("Waitpoint token not found: {id}")));
    }
    Ok(wp)
}

pub async fn retrieve(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(id): Path<String>,
) -> Result<JsonResponse<Value>> {
    let wp = token(&state, Some(&caller.env.id), &id).await?;
    Ok(JsonResponse(wire::token_retrieve(&wp, state.base_url())))
}

/// `CompleteWaitpointTokenRequestBody`.
#[derive(Debug, Deserialize)]
pub struct CompleteBody {
    #[serde(default)]
    data: Option<Value>,
}

fn data_packet(data: Option<Value>) -> Packet {
    Packet { data: data.map(|d| d.to_string()), data_type: "application/json".into() }
}

pub async fn complete(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(id): Path<String>,
    Json(body): Json<CompleteBody>,
) -> Result<JsonResponse<Value>> {
    token(&state, Some(&caller.env.id), &id).await?;
    state.engine().complete_token(Some(&caller.env.id), &id, data_packet(body.data)).await?;
    Ok(JsonResponse(json!({ "success": true })))
}

/// The callback URL: unauthenticated, so the secret in the path is the credential. Any JSON
/// body (or none) completes the token with that body as its output.
pub async fn callback(
    State(state): State<AppState>,
    Path((id, secret)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<JsonResponse<Value>> {
    let wp = token(&state, None, &id).await?;
    if !wp.callback_secret.as_deref().is_some_and(|s| constant_time_eq(s.as_bytes(), secret.as_bytes())) {
        return Err(Error::NotFound(format!("Waitpoint token not found: {id}")));
    }
    let data: Option<Value> =
        if body.iter().all(u8::is_ascii_whitespace) { None } else { Some(parse_json(&body)?) };
    state.engine().complete_token(None, &id, data_packet(data)).await?;
    Ok(JsonResponse(json!({ "success": true })))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
