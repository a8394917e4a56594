//! Waitpoint tokens, completed by hand.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use trigger_engine::{Packet, Page as Cursor, WaitpointFilter, WaitpointStatus, WaitpointType};

use super::{back, json_field, Ctx};
use crate::auth::{urlencode, Session};
use crate::error::Error;
use crate::html::{self, esc, Nav};
use crate::Dash;

#[derive(Debug, Deserialize)]
pub(crate) struct TokensQuery {
    after: Option<String>,
    status: Option<String>,
    notice: Option<String>,
}

/// `GET /dashboard/{env}/waitpoints`.
pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<TokensQuery>,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let slug = ctx.slug();
    let size = 50;
    let statuses = match q.status.as_deref() {
        Some("PENDING") => vec![WaitpointStatus::Pending],
        Some("COMPLETED") => vec![WaitpointStatus::Completed],
        _ => Vec::new(),
    };
    let mut tokens = dash
        .engine()
        .list_waitpoints(
            WaitpointFilter {
                env_id: ctx.env.id.clone(),
                kind: Some(WaitpointType::Manual),
                statuses,
                ..Default::default()
            },
            Cursor { after: q.after.clone().filter(|a| !a.is_empty()), before: None, size: size + 1 },
        )
        .await?;
    let more = tokens.len() > size as usize;
    tokens.truncate(size as usize);
    let csrf = html::csrf_field(&ctx.session.csrf);
    let mut rows = String::new();
    for t in &tokens {
        let timed_out = t.output_is_error && t.status == WaitpointStatus::Completed;
        let (class, label) = match t.status {
            WaitpointStatus::Pending => ("wait", "Waiting"),
            WaitpointStatus::Completed if timed_out => ("bad", "Timed out"),
            WaitpointStatus::Completed => ("ok", "Completed"),
        };
        let id = esc(&t.id);
        let action = if t.status == WaitpointStatus::Pending {
            format!(
                "<details class=\"pop\"><summary class=\"btn small\">Complete…</summary>\
                 <form method=\"post\" action=\"/dashboard/{slug}/waitpoints/{idq}/complete\" class=\"stack\">{csrf}\
                 <label for=\"out-{id}\">Output (JSON)</label><textarea id=\"out-{id}\" name=\"output\" rows=\"4\" spellcheck=\"false\">{{}}</textarea>\
                 <button class=\"btn primary\" type=\"submit\">Complete token</button></form></details>",
                idq = urlencode(&t.id),
            )
        } else {
            t.output
                .as_deref()
                .map(|o| format!("<pre class=\"code small\">{}</pre>", html::pretty(o)))
                .unwrap_or_default()
        };
        let _ = write!(
            rows,
            "<tr data-token=\"{id}\"><td><span class=\"pill {class}\">{label}</span></td><td class=\"mono\">{id}</td>\
             <td class=\"hide-sm\">{created}</td><td class=\"hide-sm\">{timeout}</td><td class=\"hide-sm\">{key}</td><td class=\"tags hide-sm\">{tags}</td><td>{action}</td></tr>",
            created = html::time(t.created_at),
            timeout = t.timeout_at.map(html::time).unwrap_or_else(|| "–".into()),
            key = t.idempotency_key.as_deref().filter(|_| t.user_provided_key).map(esc).unwrap_or_else(|| "–".into()),
            tags = t.tags.iter().map(|g| html::tag_pill("tag", g)).collect::<String>(),
        );
    }
    let older = match (more, tokens.last()) {
        (true, Some(last)) => format!(
            "<nav class=\"pager\" aria-label=\"Pages\"><a class=\"btn small\" href=\"/dashboard/{slug}/waitpoints?after={}\">Older →</a></nav>",
            urlencode(&last.id)
        ),
        _ => String::new(),
    };
    let region = format!(
        "<div class=\"table-wrap\"><table><caption class=\"sr-only\">Waitpoint tokens</caption><thead><tr><th scope=\"col\">Status</th><th scope=\"col\">Token</th>\
         <th scope=\"col\" class=\"hide-sm\">Created</th><th scope=\"col\" class=\"hide-sm\">Times out</th><th scope=\"col\" class=\"hide-sm\">Idempotency key</th>\
         <th scope=\"col\" class=\"hide-sm\">Tags</th><th scope=\"col\">Output</th></tr></thead><tbody>{rows}</tbody></table></div>{empty}{older}",
        empty = if tokens.is_empty() {
            "<p class=\"empty\">No tokens. Tasks create them with <code>wait.createToken()</code> and wait with <code>wait.forToken()</code>.</p>"
        } else {
            ""
        },
    );
    if headers.get("x-fragment").is_some() {
        return Ok(Html(region).into_response());
    }
    let sel = |v: &str| if q.status.as_deref() == Some(v) { " selected" } else { "" };
    let body = format!(
        "<div class=\"page-head\"><h1>Waitpoint tokens</h1><form method=\"get\" class=\"inline\"><label for=\"wstatus\">Status</label>\
         <select id=\"wstatus\" name=\"status\"><option value=\"\">All</option><option value=\"PENDING\"{p}>Waiting</option><option value=\"COMPLETED\"{c}>Completed</option></select>\
         <button class=\"btn small\" type=\"submit\">Filter</button></form></div>{notice}<div id=\"live-region\">{region}</div>",
        p = sel("PENDING"),
        c = sel("COMPLETED"),
        notice = html::notice(q.notice.as_deref()),
    );
    Ok(ctx.page(
        "Waitpoint tokens",
        Nav::Waitpoints,
        Some(("env", format!("/dashboard/{slug}/live/env"))),
        body,
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    output: String,
}

/// `POST /dashboard/{env}/waitpoints/{id}/complete`.
pub(crate) async fn complete(
    State(dash): State<Dash>,
    Path((slug, id)): Path<(String, String)>,
    session: Session,
    Form(form): Form<CompleteForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let output = json_field("output", &form.output)?;
    let wp = dash
        .engine()
        .complete_token(
            Some(&env.id),
            &id,
            Packet { data: Some(output), data_type: "application/json".into() },
        )
        .await?;
    Ok(back(&format!("/dashboard/{}/waitpoints", env.kind.slug()), &format!("Token {} completed.", wp.id)))
}
