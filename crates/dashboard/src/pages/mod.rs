//! The pages, one module per section.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use trigger_engine::Environment;

use crate::auth::Session;
use crate::error::Error;
use crate::html::{Nav, Page};
use crate::Dash;

pub(crate) mod batches;
pub(crate) mod keys;
pub(crate) mod queues;
pub(crate) mod runs;
pub(crate) mod tasks;
pub(crate) mod waitpoints;

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

/// What every page of an environment needs.
pub(crate) struct Ctx {
    pub env: Environment,
    pub envs: Vec<Environment>,
    pub session: Session,
}

impl Ctx {
    pub(crate) async fn load(dash: &Dash, slug: &str, session: Session) -> Result<Ctx, Error> {
        let (env, envs) = dash.environment(slug).await?;
        Ok(Ctx { env, envs, session })
    }

    pub(crate) fn slug(&self) -> &'static str {
        self.env.kind.slug()
    }

    pub(crate) fn page(&self, title: &str, nav: Nav, live: Option<(&str, String)>, body: String) -> Response {
        let html =
            Page { title, nav, env: &self.env, envs: &self.envs, csrf: &self.session.csrf, live, body }
                .render();
        axum::response::Html(html).into_response()
    }
}

/// `/dashboard`: the dev environment's runs.
pub(crate) async fn home() -> Redirect {
    Redirect::to("/dashboard/dev/runs")
}

/// `/dashboard/{env}`: its runs.
pub(crate) async fn env_home(Path(env): Path<String>) -> Redirect {
    Redirect::to(&format!("/dashboard/{}/runs", crate::auth::urlencode(&env)))
}

const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");

/// The embedded stylesheet and script.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Redirect after a form, with a notice to show.
pub(crate) fn back(to: &str, notice: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}notice={}", crate::auth::urlencode(notice))).into_response()
}

/// Parses a JSON text field into a JSON packet's text, naming the field when it is bad.
pub(crate) fn json_field(name: &str, text: &str) -> Result<String, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text.trim() };
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| v.to_string())
        .map_err(|e| Error::Invalid(format!("{name}: not valid JSON ({e})")))
}

/// Splits a comma-separated list, dropping blanks.
pub(crate) fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}
