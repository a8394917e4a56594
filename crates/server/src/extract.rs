//! Extractors whose rejections are `{error}` JSON with the statuses the API promises:
//! malformed JSON 400, wrong content type 415, a body over its limit 413, JSON that does
//! not fit the schema 422 naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// A JSON body. Requires a JSON content type (`application/json` or `…+json`).
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

/// A JSON body that may be absent: an empty body (with any content type) is `None`.
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub Option<T>);

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

pub(crate) async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge("request body is over the size limit".into())
        } else {
            Error::BadRequest(format!("could not read the request body: {rejection}"))
        }
    })
}

/// Parses JSON, telling syntax errors (400) from schema errors (422 with the field's path).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "body".to_string() } else { path };
                    Err(Error::unprocessable(&field, strip_position(&inner.to_string())))
                }
                _ => Err(Error::BadRequest(format!("malformed JSON: {inner}"))),
            }
        }
    }
}

// serde's messages end in " at line 1 column 42", which means nothing to an API client
// once the field is named.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType("expected Content-Type: application/json".into()));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(Error::UnsupportedMediaType("expected Content-Type: application/json".into()));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// A JSON body whatever its content type says, for the worker routes: the official CLI
/// posts `JSON.stringify(…)` through `fetch` without a content type, which `fetch` then
/// labels `text/plain`. Trigger.dev parses those bodies as JSON, so this does too.
#[derive(Debug, Clone)]
pub struct WorkerJson<T>(pub T);

/// Like [`WorkerJson`], but an empty body is `None`.
#[derive(Debug, Clone)]
pub struct OptionalWorkerJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for WorkerJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(WorkerJson)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalWorkerJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalWorkerJson(None));
        }
        parse_json(&bytes).map(|v| OptionalWorkerJson(Some(v)))
    }
}

/// The query string as ordered key/value pairs (`filter[status]=…`, `page[size]=…`).
#[derive(Debug, Clone, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// The last value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A comma-separated list, with repeated keys merged.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key || k.strip_suffix("[]") == Some(key))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(QueryPairs)
            .map_err(|e| Error::BadRequest(format!("malformed query string: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        options: Options,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Options {
        #[serde(rename = "maxAttempts")]
        max_attempts: u32,
    }

    #[test]
    fn syntax_errors_are_400_and_schema_errors_name_the_field() {
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_json::<Body>(br#"{"options":{"maxAttempts":"x"}}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().starts_with("options.maxAttempts: "), "{e}");
        assert!(!e.to_string().contains("line 1"), "{e}");
    }
}

/// The raw body, with over-limit bodies answered as `{error}` 413.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        body_bytes(req, state).await.map(RawBody)
    }
}
