//! Queues: limits, running and queued counts (per concurrency key), pause and resume.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::{back, Ctx};
use crate::auth::Session;
use crate::error::Error;
use crate::html::{self, esc, Nav};
use crate::Dash;

#[derive(Debug, Deserialize)]
pub(crate) struct NoticeQuery {
    notice: Option<String>,
}

/// `GET /dashboard/{env}/queues`.
pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let slug = ctx.slug();
    let engine = dash.engine();
    let queues = engine.list_queues(&ctx.env.id).await?;
    let env_running = engine.env_running(&ctx.env.id).await?;
    let csrf = html::csrf_field(&ctx.session.csrf);

    let mut rows = String::new();
    let (mut total_running, mut total_queued) = (0u32, 0u32);
    for queue in &queues {
        let subs = engine.list_subqueues(&ctx.env.id, &queue.name).await?;
        let running: u32 = subs.iter().map(|s| s.running).sum();
        let queued: u32 = subs.iter().map(|s| s.ready_count).sum();
        total_running += running;
        total_queued += queued;
        let limit = queue.concurrency_limit.map_or("–".to_string(), |l| l.to_string());
        let state = if queue.paused {
            "<span class=\"pill muted\">Paused</span>"
        } else {
            "<span class=\"pill ok\">Active</span>"
        };
        let (label, value) = if queue.paused { ("Resume", "false") } else { ("Pause", "true") };
        let name = esc(&queue.name);
        let _ = write!(
            rows,
            "<tr id=\"q-{name}\" data-queue=\"{name}\" data-paused=\"{paused}\"><th scope=\"row\" class=\"mono\">{name}{kind}</th>\
             <td class=\"num\">{limit}</td><td class=\"num\" data-col=\"running\">{running}</td><td class=\"num\" data-col=\"queued\">{queued}</td><td>{state}</td>\
             <td><form method=\"post\" action=\"/dashboard/{slug}/queues/pause\">{csrf}<input type=\"hidden\" name=\"queue\" value=\"{name}\">\
             <input type=\"hidden\" name=\"paused\" value=\"{value}\"><button class=\"btn small\" type=\"submit\" aria-label=\"{label} {name}\">{label}</button></form></td></tr>",
            paused = queue.paused,
            kind = if queue.named { "" } else { " <span class=\"muted small\">task queue</span>" },
        );
        for sub in subs.iter().filter(|s| !s.concurrency_key.is_empty()) {
            let _ = write!(
                rows,
                "<tr class=\"sub\"><th scope=\"row\" class=\"mono small\">↳ key <span>{}</span></th><td class=\"num\">{limit}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td></td><td></td></tr>",
                esc(&sub.concurrency_key),
                sub.running,
                sub.ready_count
            );
        }
    }
    let region = format!(
        "<div class=\"stats\"><div class=\"stat\"><span class=\"muted\">Environment limit</span><strong>{limit}</strong></div>\
         <div class=\"stat\"><span class=\"muted\">Running</span><strong id=\"env-running\">{env_running}</strong></div>\
         <div class=\"stat\"><span class=\"muted\">Queued</span><strong>{total_queued}</strong></div>\
         <div class=\"stat\"><span class=\"muted\">Environment</span><strong>{env_state}</strong></div></div>\
         <div class=\"table-wrap\"><table class=\"queues\"><caption class=\"sr-only\">Queues</caption><thead><tr><th scope=\"col\">Queue</th><th scope=\"col\" class=\"num\">Limit</th>\
         <th scope=\"col\" class=\"num\">Running</th><th scope=\"col\" class=\"num\">Queued</th><th scope=\"col\">State</th><th scope=\"col\"><span class=\"sr-only\">Action</span></th></tr></thead>\
         <tbody>{rows}</tbody></table></div>{empty}",
        limit = ctx.env.concurrency_limit,
        env_state = if ctx.env.paused { "Paused" } else { "Active" },
        empty = if queues.is_empty() { "<p class=\"empty\">No queues yet: they appear when a worker registers tasks.</p>" } else { "" },
    );
    let _ = total_running;
    if headers.get("x-fragment").is_some() {
        return Ok(Html(region).into_response());
    }
    let body = format!(
        "<div class=\"page-head\"><h1>Queues</h1></div>{}<div id=\"live-region\">{region}</div>",
        html::notice(q.notice.as_deref())
    );
    Ok(ctx.page("Queues", Nav::Queues, Some(("env", format!("/dashboard/{slug}/live/env"))), body))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PauseForm {
    #[serde(default)]
    csrf: String,
    queue: String,
    paused: bool,
}

/// `POST /dashboard/{env}/queues/pause`.
pub(crate) async fn pause(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    Form(form): Form<PauseForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let queue = dash.engine().set_queue_paused(&env.id, &form.queue, form.paused).await?;
    let what = if queue.paused { "paused: its runs stay queued" } else { "resumed" };
    Ok(back(&format!("/dashboard/{}/queues", env.kind.slug()), &format!("Queue {} {what}.", queue.name)))
}
