//! Registered tasks per version, with recent run counts and a Test form.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use trigger_engine::{Packet, Page as Cursor, RunFilter, TriggerOptions, TriggerRequest};

use super::{back, json_field, split_list, Ctx};
use crate::auth::{urlencode, Session};
use crate::error::Error;
use crate::html::{self, esc, Nav};
use crate::Dash;

/// Recent means the last 24 hours; at most this many runs are counted per task.
const RECENT_MS: i64 = 24 * 3600 * 1000;
const COUNT_CAP: u32 = 500;

#[derive(Debug, Deserialize)]
pub(crate) struct TasksQuery {
    version: Option<String>,
    notice: Option<String>,
}

/// `GET /dashboard/{env}/tasks`.
pub(crate) async fn list_page(
    dash: &Dash,
    slug: &str,
    session: Session,
    q: TasksQuery,
) -> Result<Response, Error> {
    let ctx = Ctx::load(dash, slug, session).await?;
    let slug = ctx.slug();
    let engine = dash.engine();
    let workers = engine.list_workers(&ctx.env.id, 50).await?;
    let worker = match q.version.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => workers.iter().find(|w| w.id == v || w.version == v),
        None => workers.first(),
    };
    let Some(worker) = worker else {
        let body = format!(
            "<div class=\"page-head\"><h1>Tasks</h1></div>{}<p class=\"empty\">No worker has registered tasks in this environment yet. \
             Start one (<code>trigger dev</code> with your tasks, or a Rust worker) and its tasks appear here.</p>",
            html::notice(q.notice.as_deref())
        );
        return Ok(ctx.page("Tasks", Nav::Tasks, None, body));
    };
    let tasks = engine.list_tasks(&ctx.env.id, &worker.id).await?;
    let queues = engine.list_queues(&ctx.env.id).await?;
    let since = engine.now() - RECENT_MS;

    let mut cards = String::new();
    for task in &tasks {
        let recent = engine
            .list_runs(
                RunFilter {
                    env_id: ctx.env.id.clone(),
                    tasks: vec![task.slug.clone()],
                    created_from: Some(since),
                    ..Default::default()
                },
                Cursor { size: COUNT_CAP, ..Default::default() },
            )
            .await?;
        let count =
            |f: &dyn Fn(trigger_engine::RunStatus) -> bool| recent.iter().filter(|r| f(r.status)).count();
        let capped = if recent.len() as u32 >= COUNT_CAP { "+" } else { "" };
        let total = recent.len();
        let ok = count(&|s| s == trigger_engine::RunStatus::Completed);
        let failed = count(&|s| s.is_failure());
        let active = count(&|s| !s.is_final());
        let queue = queues.iter().find(|q| q.name == task.queue);
        let limit =
            queue.and_then(|q| q.concurrency_limit).map_or("env limit".to_string(), |l| format!("limit {l}"));
        let paused =
            if queue.is_some_and(|q| q.paused) { " <span class=\"pill muted\">paused</span>" } else { "" };
        let retry = match &task.retry {
            Some(r) => format!(
                "{} attempts · ×{} · {}–{}",
                r.max_attempts,
                r.factor,
                html::duration(r.min_timeout_in_ms as i64),
                html::duration(r.max_timeout_in_ms as i64)
            ),
            None => "no retries".into(),
        };
        let machine = task.machine.map_or("small-1x (default)".to_string(), |m| m.name().to_string());
        let max_dur =
            task.max_duration_secs.map_or("–".to_string(), |s| html::duration(i64::from(s) * 1000));
        let desc = task
            .description
            .as_deref()
            .map(|d| format!("<p class=\"muted\">{}</p>", esc(d)))
            .unwrap_or_default();
        // Prefill with the payload of the task's latest run, as a starting point.
        let sample = match recent.first() {
            Some(r) => engine
                .get_run(&ctx.env.id, &r.id)
                .await
                .ok()
                .and_then(|d| d.payload.data)
                .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| "{}".into()),
            None => "{}".into(),
        };
        let tid = esc(&task.slug);
        let _ = write!(
            cards,
            r#"<article class="card task" data-task="{tid}" aria-labelledby="t-{tid}">
<div class="task-head"><h2 id="t-{tid}" class="mono">{tid}</h2>
<a class="btn small ghost" href="/dashboard/{slug}/runs?task={tq}">View runs</a></div>{desc}
<dl class="props cols">
<div><dt>Queue</dt><dd><a href="/dashboard/{slug}/queues#q-{qid}">{queue}</a> <span class="muted">({limit})</span>{paused}</dd></div>
<div><dt>Retry</dt><dd>{retry}</dd></div>
<div><dt>Machine</dt><dd>{machine}</dd></div>
<div><dt>Max duration</dt><dd>{max_dur}</dd></div>
<div><dt>File</dt><dd class="mono small">{file}</dd></div>
<div><dt>Last 24 h</dt><dd class="counts" data-total="{total}"><span>{total}{capped} runs</span> <span class="ok-text">{ok} completed</span> <span class="bad-text">{failed} failed</span> <span class="run-text">{active} active</span></dd></div>
</dl>
<details class="test-form"><summary class="btn primary">Test</summary>
<form method="post" action="/dashboard/{slug}/tasks/{tq}/test" class="stack">{csrf}
<label for="payload-{tid}">Payload (JSON)</label>
<textarea id="payload-{tid}" name="payload" rows="6" spellcheck="false">{sample}</textarea>
<label for="tags-{tid}">Tags (comma separated, optional)</label>
<input id="tags-{tid}" name="tags" placeholder="test, user:123">
<label for="delay-{tid}">Delay (optional: 30s, 10m)</label>
<input id="delay-{tid}" name="delay" placeholder="">
<button class="btn primary" type="submit">Run test</button></form></details>
</article>"#,
            tq = urlencode(&task.slug),
            qid = esc(&task.queue),
            queue = esc(&task.queue),
            file = esc(&task.file_path),
            csrf = html::csrf_field(&ctx.session.csrf),
            sample = esc(&sample),
        );
    }
    let mut versions = String::new();
    for w in &workers {
        let sel = if w.id == worker.id { " selected" } else { "" };
        let _ = write!(versions, "<option value=\"{}\"{sel}>{}</option>", esc(&w.id), esc(&w.version));
    }
    let body = format!(
        "<div class=\"page-head\"><h1>Tasks</h1>\
         <form method=\"get\" class=\"inline\"><label for=\"version\">Version</label><select id=\"version\" name=\"version\">{versions}</select>\
         <button class=\"btn small\" type=\"submit\">Show</button></form></div>{notice}\
         <p class=\"muted\">Version <strong class=\"mono\">{v}</strong> registered {when} · {n} tasks</p><div class=\"task-grid\">{cards}</div>",
        notice = html::notice(q.notice.as_deref()),
        v = esc(&worker.version),
        when = html::time(worker.created_at),
        n = tasks.len(),
    );
    Ok(ctx.page("Tasks", Nav::Tasks, None, body))
}

pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    Query(q): Query<TasksQuery>,
) -> Result<Response, Error> {
    list_page(&dash, &slug, session, q).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct TestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    delay: String,
}

/// `POST /dashboard/{env}/tasks/{task}/test`: triggers a test run and opens it.
pub(crate) async fn test(
    State(dash): State<Dash>,
    Path((slug, task)): Path<(String, String)>,
    session: Session,
    Form(form): Form<TestForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let payload = json_field("payload", &form.payload)?;
    let delay_until = if form.delay.trim().is_empty() {
        None
    } else {
        let ms =
            trigger_types::parse_duration(&form.delay).map_err(|e| Error::Invalid(format!("delay: {e}")))?;
        Some(dash.engine().now() + ms as i64)
    };
    let request = TriggerRequest {
        task: task.clone(),
        payload: Packet { data: Some(payload), data_type: "application/json".into() },
        options: TriggerOptions {
            tags: split_list(&form.tags),
            delay_until,
            is_test: true,
            ..Default::default()
        },
    };
    trigger_engine::Engine::validate_trigger(&request)?;
    let triggered = dash.engine().trigger(&env.id, request).await?;
    let to = format!("/dashboard/{}/runs/{}", env.kind.slug(), urlencode(&triggered.run.id));
    let _ = Redirect::to(&to);
    Ok(back(&to, &format!("Test run of {task} triggered.")).into_response())
}
