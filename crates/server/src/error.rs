//! The server's error type: every failure becomes one status and a `{ "error": "…" }` body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use trigger_engine::storage::ErrorKind;

/// Why a request failed. Engine errors keep their own variant so that the mapping to a
/// status lives in one place ([`Error::status`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input: JSON that does not parse, a bad query string (400).
    #[error("{0}")]
    BadRequest(String),
    /// No key, or a key that opens nothing (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key of the wrong kind for this route (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A body over its size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// A body in a content type the route does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed input that is not acceptable, naming the field (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The server is shutting down or the database is unreachable (503).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(#[from] trigger_engine::Error),
}

/// Result of a handler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        use trigger_engine::Error as E;
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Engine(e) => match e {
                E::NotFound(_) => StatusCode::NOT_FOUND,
                E::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                E::StaleSnapshot { .. } | E::InvalidState(_) => StatusCode::CONFLICT,
                E::Storage(s) if s.kind == ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                // A lost race: the SDK retries 409s.
                E::Storage(s) if matches!(s.kind, ErrorKind::Conflict | ErrorKind::UniqueViolation) => {
                    StatusCode::CONFLICT
                }
                E::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
                E::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    pub(crate) fn unprocessable(field: &str, why: impl std::fmt::Display) -> Error {
        Error::Unprocessable(format!("{field}: {why}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The details go to the log, not to the client.
            tracing::error!(error = %self, "request failed");
            "Internal server error".to_string()
        } else {
            self.to_string()
        };
        let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trigger_engine::storage::StorageError;

    #[test]
    fn engine_errors_map_to_the_documented_statuses() {
        let cases = [
            (trigger_engine::Error::NotFound("x".into()), 404),
            (trigger_engine::Error::Invalid("x".into()), 422),
            (trigger_engine::Error::TooLarge("x".into()), 413),
            (trigger_engine::Error::InvalidState("x".into()), 409),
            (trigger_engine::Error::Shutdown, 503),
            (trigger_engine::Error::Storage(StorageError::new(ErrorKind::Unavailable, "down")), 503),
            (trigger_engine::Error::Storage(StorageError::new(ErrorKind::Other, "boom")), 500),
        ];
        for (error, status) in cases {
            let response = Error::from(error).into_response();
            assert_eq!(response.status().as_u16(), status);
            if status == 503 {
                assert!(response.headers().contains_key(header::RETRY_AFTER));
            }
        }
    }
}
