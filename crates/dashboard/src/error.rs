//! Errors of dashboard handlers, shown as a small HTML page with the matching status.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::html::esc;

/// Why a dashboard request failed.
#[derive(Debug)]
pub enum Error {
    NotFound(String),
    /// Bad form input (422).
    Invalid(String),
    /// The form's CSRF token is missing or wrong (403).
    Forbidden(String),
    /// The run is not in a state that allows this (409).
    Conflict(String),
    /// The engine or database failed (503).
    Unavailable(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m)
            | Error::Invalid(m)
            | Error::Forbidden(m)
            | Error::Conflict(m)
            | Error::Unavailable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<trigger_engine::Error> for Error {
    fn from(e: trigger_engine::Error) -> Self {
        use trigger_engine::Error as E;
        match e {
            E::NotFound(m) => Error::NotFound(m),
            E::Invalid(m) | E::TooLarge(m) => Error::Invalid(m),
            E::StaleSnapshot { .. } | E::InvalidState(_) => Error::Conflict(e.to_string()),
            E::Storage(_) | E::Shutdown => Error::Unavailable(e.to_string()),
        }
    }
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{code} · trigger.rs</title><link rel=\"stylesheet\" href=\"/dashboard/assets/app.css\"></head>\
             <body class=\"bare\"><main class=\"card narrow\"><h1>{code} {reason}</h1>\
             <p class=\"error-text\" role=\"alert\">{msg}</p><p><a href=\"/dashboard\">Back to the dashboard</a></p></main></body></html>",
            code = status.as_u16(),
            reason = status.canonical_reason().unwrap_or(""),
            msg = esc(&self.to_string()),
        );
        (status, Html(body)).into_response()
    }
}
