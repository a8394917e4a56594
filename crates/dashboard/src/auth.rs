//! Login, sessions and CSRF.
//!
//! A login token (an engine `Dashboard` key, a configured token, or optionally a dev
//! secret key) opens a server-side session kept in memory; the browser holds only its
//! random id in an `HttpOnly`, `SameSite=Strict` cookie. Each session has a CSRF token that
//! every state-changing form carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use trigger_engine::{ApiKeyKind, EnvironmentType};
use trigger_types::ids::random_alphanumeric;

use crate::error::Error;
use crate::html::esc;
use crate::Dash;

pub(crate) const COOKIE_NAME: &str = "trigger_dash";

/// A signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub csrf: String,
    pub expires: Instant,
}

impl Session {
    /// Checks a form's CSRF token (constant time in the token's length).
    pub(crate) fn check_csrf(&self, given: &str) -> Result<(), Error> {
        let (a, b) = (self.csrf.as_bytes(), given.as_bytes());
        let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "The form has expired or did not come from this dashboard; reload the page and try again."
                    .into(),
            ))
        }
    }
}

pub(crate) struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Sessions {
        Sessions { ttl, map: Mutex::new(HashMap::new()) }
    }

    fn create(&self) -> String {
        let id = random_alphanumeric(40);
        let session = Session { csrf: random_alphanumeric(32), expires: Instant::now() + self.ttl };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(id.clone(), session);
        id
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

fn session_id(parts_headers: &axum::http::HeaderMap) -> Option<String> {
    parts_headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|header| {
        header.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.to_string())
        })
    })
}

/// Every protected route: a live session, or the login page (pages) / 401 (the rest).
pub(crate) async fn require_session(State(dash): State<Dash>, mut req: Request, next: Next) -> Response {
    let session = session_id(req.headers()).and_then(|id| dash.sessions().get(&id).map(|s| (id, s)));
    let Some((id, session)) = session else {
        let accepts_html = req
            .headers()
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("text/html") || v.contains("*/*"));
        if req.method() == Method::GET && accepts_html && !req.uri().path().contains("/live/") {
            let next = req.uri().path_and_query().map_or("/dashboard".to_string(), |p| p.to_string());
            let target = format!("/dashboard/login?next={}", urlencode(&next));
            return Redirect::to(&target).into_response();
        }
        return (StatusCode::UNAUTHORIZED, "Sign in to the dashboard first").into_response();
    };
    req.extensions_mut().insert(SessionId(id));
    req.extensions_mut().insert(session);
    let mut response = next.run(req).await;
    // Pages show live data and secrets revealed once: never cache them.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(&mut response);
    response
}

/// Only this origin's script and styles, no framing (clickjacking), forms post here only.
pub(crate) fn harden(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(axum::http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(axum::http::header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

#[derive(Debug, Clone)]
struct SessionId(String);

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| Error::Forbidden("Not signed in".into()))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    token: Option<String>,
}

/// `GET /dashboard/login`: the form, or (with `?token=`) a sign-in straight from the link
/// the server printed.
pub(crate) async fn login_page(State(dash): State<Dash>, Query(q): Query<LoginQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if let Some(token) = q.token.as_deref() {
        return sign_in(&dash, token, &next).await;
    }
    login_form(&next, None, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /dashboard/login`.
pub(crate) async fn login(State(dash): State<Dash>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    sign_in(&dash, &form.token, &next).await
}

async fn sign_in(dash: &Dash, token: &str, next: &str) -> Response {
    let token = token.trim();
    if !token_is_valid(dash, token).await {
        // Slows down guessing; tokens are long and random anyway.
        tokio::time::sleep(Duration::from_millis(250)).await;
        return login_form(next, Some("That token is not valid."), StatusCode::UNAUTHORIZED);
    }
    let id = dash.sessions().create();
    let secure = if dash.options().secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}={id}; Path=/dashboard; HttpOnly; SameSite=Strict{secure}");
    // A page that moves on by itself instead of a redirect: a Strict cookie set while
    // arriving from another site (a terminal link) is sent on the next same-site request.
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed in · trigger.rs</title>\
         <meta http-equiv=\"refresh\" content=\"0;url={n}\"></head>\
         <body><p>Signed in. <a href=\"{n}\">Continue</a></p></body></html>",
        n = esc(next)
    );
    let mut response = Html(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(&mut response);
    response
}

async fn token_is_valid(dash: &Dash, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    if dash.options().tokens.iter().any(|t| constant_eq(t.as_bytes(), token.as_bytes())) {
        return true;
    }
    match dash.engine().authenticate(token).await {
        Ok(Some((key, env))) => match key.kind {
            ApiKeyKind::Dashboard => true,
            ApiKeyKind::Secret => {
                dash.options().accept_dev_secret_key
                    && env.is_some_and(|e| e.kind == EnvironmentType::Development)
            }
            ApiKeyKind::PersonalAccessToken => false,
        },
        _ => false,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /dashboard/logout`.
pub(crate) async fn logout(
    State(dash): State<Dash>,
    req_parts: SessionIdExtract,
    session: Session,
    Form(form): Form<crate::pages::CsrfOnly>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    dash.sessions().remove(&req_parts.0);
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("trigger_dash=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

/// The session id, for logging out.
pub(crate) struct SessionIdExtract(String);

impl<S: Send + Sync> FromRequestParts<S> for SessionIdExtract {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<SessionId>()
            .map(|s| SessionIdExtract(s.0.clone()))
            .ok_or_else(|| Error::Forbidden("Not signed in".into()))
    }
}

/// Only same-site paths under the dashboard: never an open redirect.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/dashboard") && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/dashboard".to_string(),
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn login_form(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error-text\" role=\"alert\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · trigger.rs</title><link rel="stylesheet" href="/dashboard/assets/app.css"></head>
<body class="bare"><main class="card narrow login">
<div class="brand big"><span class="logo" aria-hidden="true">▲</span> trigger.rs</div>
<h1>Sign in to the dashboard</h1>
<p class="muted">Use the login link or token that <code>trigger dev</code> printed, a dashboard token configured for
<code>trigger serve</code> (<code>TRIGGER_DASHBOARD_TOKEN</code>), or a dashboard key.</p>
{error}
<form method="post" action="/dashboard/login" class="stack">
<input type="hidden" name="next" value="{next}">
<label for="token">Login token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus spellcheck="false">
<button type="submit" class="btn primary">Sign in</button>
</form></main></body></html>"#,
        next = esc(next),
    );
    let mut response = (status, [(CACHE_CONTROL, "no-store")], Html(body)).into_response();
    harden(&mut response);
    response
}
