//! Batches with their progress; a batch's runs are the runs list filtered by it.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use trigger_engine::{BatchStatus, Page as Cursor};

use super::Ctx;
use crate::auth::{urlencode, Session};
use crate::error::Error;
use crate::html::{self, esc, Nav};
use crate::Dash;

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    after: Option<String>,
}

/// `GET /dashboard/{env}/batches`.
pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let slug = ctx.slug();
    let size = 50;
    let mut batches = dash
        .engine()
        .list_batches(
            &ctx.env.id,
            Cursor { after: q.after.clone().filter(|a| !a.is_empty()), before: None, size: size + 1 },
        )
        .await?;
    let more = batches.len() > size as usize;
    batches.truncate(size as usize);
    let mut rows = String::new();
    for b in &batches {
        let class = match b.status {
            BatchStatus::Completed => "ok",
            BatchStatus::PartialFailed | BatchStatus::Aborted => "bad",
            BatchStatus::Processing => "run",
            BatchStatus::Pending => "queued",
        };
        let done = (b.completed_count * 100).checked_div(b.run_count).unwrap_or(0);
        let _ = write!(
            rows,
            "<tr data-batch=\"{id}\"><td><span class=\"pill {class}\">{st}</span></td><td class=\"mono\"><a href=\"/dashboard/{slug}/runs?batch={idq}\">{id}</a></td>\
             <td class=\"num\">{runs} / {exp}</td><td><progress max=\"100\" value=\"{done}\" aria-label=\"{done}% finished\"></progress> <span class=\"small\">{completed} done, {failed} failed</span></td>\
             <td class=\"hide-sm\">{created}</td><td class=\"hide-sm\">{parent}</td></tr>",
            id = esc(&b.id),
            idq = urlencode(&b.id),
            st = b.status.as_str(),
            runs = b.run_count,
            exp = b.expected_count,
            completed = b.completed_count,
            failed = b.failed_count,
            created = html::time(b.created_at),
            parent = b
                .parent_run_id
                .as_deref()
                .map(|p| format!("<a class=\"mono\" href=\"/dashboard/{slug}/runs/{0}\">{0}</a>", esc(p)))
                .unwrap_or_else(|| "–".into()),
        );
    }
    let older = match (more, batches.last()) {
        (true, Some(last)) => format!(
            "<nav class=\"pager\" aria-label=\"Pages\"><a class=\"btn small\" href=\"/dashboard/{slug}/batches?after={}\">Older →</a></nav>",
            urlencode(&last.id)
        ),
        _ => String::new(),
    };
    let region = format!(
        "<div class=\"table-wrap\"><table><caption class=\"sr-only\">Batches</caption><thead><tr><th scope=\"col\">Status</th><th scope=\"col\">Batch</th><th scope=\"col\" class=\"num\">Runs</th>\
         <th scope=\"col\">Progress</th><th scope=\"col\" class=\"hide-sm\">Created</th><th scope=\"col\" class=\"hide-sm\">Parent run</th></tr></thead><tbody>{rows}</tbody></table></div>{empty}{older}",
        empty = if batches.is_empty() { "<p class=\"empty\">No batches in this environment.</p>" } else { "" },
    );
    if headers.get("x-fragment").is_some() {
        return Ok(Html(region).into_response());
    }
    let body =
        format!("<div class=\"page-head\"><h1>Batches</h1></div><div id=\"live-region\">{region}</div>");
    Ok(ctx.page("Batches", Nav::Batches, Some(("env", format!("/dashboard/{slug}/live/env"))), body))
}
