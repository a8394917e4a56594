//! Packet URLs: presigning uploads and downloads, and the signed data URL itself.

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use serde_json::{json, Value};

use crate::auth::EnvCaller;
use crate::error::{Error, Result};
use crate::extract::{QueryPairs, RawBody};
use crate::packets::{signature, MAX_PACKET, URL_TTL_MS};
use crate::AppState;

/// A signed URL for one method on one packet.
pub(crate) fn signed_url(state: &AppState, method: &str, env_id: &str, path: &str) -> String {
    let expires = state.engine().now() + URL_TTL_MS;
    let sig = signature(state.packet_secret(), method, env_id, path, expires);
    let query = serde_urlencoded::to_string([
        ("env", env_id),
        ("path", path),
        ("expires", &expires.to_string()),
        ("sig", &sig),
    ])
    .unwrap_or_default();
    format!("{}/api/v1/packet-data?{query}", state.base_url())
}

fn check_path(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > 1024 {
        return Err(Error::unprocessable("path", "must be 1 to 1024 characters"));
    }
    Ok(())
}

/// `createUploadPayloadUrl`: where to PUT a packet, and the path to send instead of it.
pub async fn upload_url(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(path): Path<String>,
) -> Result<JsonResponse<Value>> {
    check_path(&path)?;
    Ok(JsonResponse(json!({
        "presignedUrl": signed_url(&state, "PUT", &caller.env.id, &path),
        "storagePath": path,
    })))
}

/// `getPayloadUrl`: where to GET a stored packet.
pub async fn download_url(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(path): Path<String>,
) -> Result<JsonResponse<Value>> {
    check_path(&path)?;
    if state.packets().get(&caller.env.id, &path).await.map_err(io)?.is_none() {
        return Err(Error::NotFound(format!("Packet not found: {path}")));
    }
    Ok(JsonResponse(json!({ "presignedUrl": signed_url(&state, "GET", &caller.env.id, &path) })))
}

/// `getRunPacketUrl`: the download URL of a run's offloaded payload or output.
pub async fn run_packet_url(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path((run_id, field)): Path<(String, String)>,
) -> Result<JsonResponse<Value>> {
    let details = state.engine().get_run(&caller.env.id, &run_id).await?;
    let packet = match field.as_str() {
        "payload" => Some(details.payload),
        "output" => details.output,
        _ => return Err(Error::NotFound(format!("No packet field {field:?} (payload or output)"))),
    };
    match packet {
        Some(p) if p.data_type == "application/store" => {
            let path = p.data.unwrap_or_default();
            Ok(JsonResponse(json!({ "presignedUrl": signed_url(&state, "GET", &caller.env.id, &path) })))
        }
        _ => Err(Error::NotFound(format!("Run {run_id} has no offloaded {field}"))),
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Unavailable(format!("packet storage: {e}"))
}

/// Checks a data URL's signature and expiry; returns (environment, path).
fn verify(state: &AppState, method: &str, query: &QueryPairs) -> Result<(String, String)> {
    let (Some(env), Some(path), Some(expires), Some(sig)) =
        (query.get("env"), query.get("path"), query.get("expires"), query.get("sig"))
    else {
        return Err(Error::NotFound("Packet not found".into()));
    };
    let expires: i64 = expires.parse().map_err(|_| Error::NotFound("Packet not found".into()))?;
    let expected = signature(state.packet_secret(), method, env, path, expires);
    let same = expected.len() == sig.len()
        && expected.bytes().zip(sig.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same || expires < state.engine().now() {
        // Like a token's callback URL, a bad signature reveals nothing.
        return Err(Error::NotFound("Packet not found (or the URL expired)".into()));
    }
    Ok((env.to_string(), path.to_string()))
}

/// The signed upload target.
pub async fn put_data(
    State(state): State<AppState>,
    query: QueryPairs,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<JsonResponse<Value>> {
    let (env, path) = verify(&state, "PUT", &query)?;
    if body.len() > MAX_PACKET {
        return Err(Error::TooLarge(format!("packet: over the limit of {MAX_PACKET} bytes")));
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    state.packets().put(&env, &path, content_type, body).await.map_err(io)?;
    Ok(JsonResponse(json!({})))
}

/// The signed download target: the bytes with their stored content type.
pub async fn get_data(State(state): State<AppState>, query: QueryPairs) -> Result<Response> {
    let (env, path) = verify(&state, "GET", &query)?;
    match state.packets().get(&env, &path).await.map_err(io)? {
        Some((content_type, data)) => Ok(([(CONTENT_TYPE, content_type)], data).into_response()),
        None => Err(Error::NotFound(format!("Packet not found: {path}"))),
    }
}
