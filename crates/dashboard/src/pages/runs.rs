//! The runs list and the run page, with cancel, replay and reschedule.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use trigger_engine::{
    Engine, MachinePreset, Packet, Page as Cursor, ReplayOverrides, Run, RunDetails, RunEvent, RunFilter,
    RunStatus, Snapshot, TaskRunError,
};

use super::{back, json_field, split_list, Ctx};
use crate::auth::{urlencode, Session};
use crate::error::Error;
use crate::html::{self, esc, pill, tag_pill, time, Nav};
use crate::Dash;

pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;

/// The runs list's filters and cursor, as they appear in the URL.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunsQuery {
    pub statuses: Vec<RunStatus>,
    pub task: String,
    pub tag: String,
    pub queue: String,
    pub version: String,
    pub batch: String,
    pub from: String,
    pub to: String,
    pub q: String,
    pub after: Option<String>,
    pub before: Option<String>,
    pub size: u32,
    pub notice: Option<String>,
}

impl RunsQuery {
    pub(crate) fn parse(raw: Option<&str>) -> RunsQuery {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
        let mut q = RunsQuery { size: DEFAULT_PAGE_SIZE, ..Default::default() };
        for (k, v) in pairs {
            let v = v.trim().to_string();
            match k.as_str() {
                "status" => q.statuses.extend(split_list(&v).iter().filter_map(|s| RunStatus::parse(s))),
                "task" => q.task = v,
                "tag" => q.tag = v,
                "queue" => q.queue = v,
                "version" => q.version = v,
                "batch" => q.batch = v,
                "from" => q.from = v,
                "to" => q.to = v,
                "q" => q.q = v,
                "after" if !v.is_empty() => q.after = Some(v),
                "before" if !v.is_empty() => q.before = Some(v),
                "size" => q.size = v.parse().unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, 200),
                "notice" => q.notice = Some(v),
                _ => {}
            }
        }
        q
    }

    pub(crate) fn filter(&self, env_id: &str) -> Result<RunFilter, Error> {
        let time = |name: &str, v: &str| {
            if v.is_empty() {
                Ok(None)
            } else {
                html::parse_utc(v).map(Some).ok_or_else(|| {
                    Error::Invalid(format!("{name}: expected a date and time like 2025-01-31T09:30"))
                })
            }
        };
        Ok(RunFilter {
            env_id: env_id.to_string(),
            statuses: self.statuses.clone(),
            tasks: split_list(&self.task),
            tags: split_list(&self.tag),
            queues: split_list(&self.queue),
            versions: split_list(&self.version),
            batch_id: (!self.batch.is_empty()).then(|| self.batch.clone()),
            created_from: time("from", &self.from)?,
            created_to: time("to", &self.to)?,
            ..Default::default()
        })
    }

    /// Whether this page shows the newest runs (so new runs appear at its top).
    pub(crate) fn is_first_page(&self) -> bool {
        self.after.is_none() && self.before.is_none()
    }

    /// The query string of the filters (without the cursor).
    pub(crate) fn filter_query(&self) -> String {
        let mut parts: Vec<(String, String)> = Vec::new();
        if !self.statuses.is_empty() {
            let s: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            parts.push(("status".into(), s.join(",")));
        }
        for (k, v) in [
            ("task", &self.task),
            ("tag", &self.tag),
            ("queue", &self.queue),
            ("version", &self.version),
            ("batch", &self.batch),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !v.is_empty() {
                parts.push((k.into(), v.clone()));
            }
        }
        if self.size != DEFAULT_PAGE_SIZE {
            parts.push(("size".into(), self.size.to_string()));
        }
        serde_urlencoded::to_string(parts).unwrap_or_default()
    }
}

/// Whether a run passes a filter (for rows pushed live).
pub(crate) fn matches(f: &RunFilter, run: &Run, version: Option<&str>) -> bool {
    (f.statuses.is_empty() || f.statuses.contains(&run.status))
        && (f.tasks.is_empty() || f.tasks.contains(&run.task))
        && (f.tags.is_empty() || f.tags.iter().any(|t| run.tags.contains(t)))
        && (f.queues.is_empty() || f.queues.contains(&run.queue))
        && (f.versions.is_empty() || version.is_some_and(|v| f.versions.iter().any(|x| x == v)))
        && f.batch_id.as_ref().is_none_or(|b| run.batch_id.as_ref() == Some(b))
        && f.created_from.is_none_or(|t| run.created_at >= t)
        && f.created_to.is_none_or(|t| run.created_at <= t)
}

/// Worker ids to version strings, for the version column.
pub(crate) async fn versions(engine: &Engine, env_id: &str) -> Result<HashMap<String, String>, Error> {
    Ok(engine.list_workers(env_id, 200).await?.into_iter().map(|w| (w.id, w.version)).collect())
}

pub(crate) fn version_of<'a>(run: &'a Run, versions: &'a HashMap<String, String>) -> Option<&'a str> {
    run.worker_id
        .as_ref()
        .and_then(|w| versions.get(w))
        .map(String::as_str)
        .or(run.lock_to_version.as_deref())
}

fn run_duration(run: &Run, now: i64) -> Option<i64> {
    let start = run.started_at?;
    Some(run.completed_at.unwrap_or(now) - start)
}

/// One row of the runs table.
pub(crate) fn row(slug: &str, run: &Run, versions: &HashMap<String, String>, now: i64) -> String {
    let href = format!("/dashboard/{slug}/runs/{}", esc(&run.id));
    let tags: String = run.tags.iter().map(|t| tag_pill("tag", t)).collect();
    let dur = run_duration(run, now).map(html::duration).unwrap_or_else(|| "–".into());
    let live_dur = match (run.started_at, run.completed_at) {
        (Some(s), None) => format!(" data-since=\"{s}\""),
        _ => String::new(),
    };
    format!(
        "<tr data-run=\"{id}\" data-status=\"{st}\"><td>{pill}</td><td class=\"task\"><a href=\"{href}\">{task}</a></td>\
         <td class=\"mono id\"><a href=\"{href}\">{id}</a></td><td class=\"hide-sm\">{created}</td>\
         <td class=\"num\"{live_dur}>{dur}</td><td class=\"tags hide-sm\">{tags}</td><td class=\"mono hide-sm\">{version}</td>\
         <td class=\"hide-md\">{queue}</td></tr>",
        id = esc(&run.id),
        st = run.status.as_str(),
        pill = pill(run.status),
        task = esc(&run.task),
        created = time(run.created_at),
        version = esc(version_of(run, versions).unwrap_or("–")),
        queue = esc(&run.queue),
    )
}

const TABLE_HEAD: &str = "<thead><tr><th scope=\"col\">Status</th><th scope=\"col\">Task</th><th scope=\"col\">Run ID</th>\
<th scope=\"col\" class=\"hide-sm\">Created</th><th scope=\"col\" class=\"num\">Duration</th><th scope=\"col\" class=\"hide-sm\">Tags</th>\
<th scope=\"col\" class=\"hide-sm\">Version</th><th scope=\"col\" class=\"hide-md\">Queue</th></tr></thead>";

/// `GET /dashboard/{env}/runs`.
pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let slug = ctx.slug();
    let engine = dash.engine();
    let query = RunsQuery::parse(raw.as_deref());

    // Search by id: a run opens its page; a batch filters by it.
    if !query.q.is_empty() {
        let q = query.q.clone();
        if q.starts_with("run_") {
            return match engine.get_run(&ctx.env.id, &q).await {
                Ok(_) => {
                    Ok(Redirect::to(&format!("/dashboard/{slug}/runs/{}", urlencode(&q))).into_response())
                }
                Err(_) => {
                    Ok(back(&format!("/dashboard/{slug}/runs"), &format!("No run {q} in this environment")))
                }
            };
        }
        if q.starts_with("batch_") {
            return Ok(
                Redirect::to(&format!("/dashboard/{slug}/runs?batch={}", urlencode(&q))).into_response()
            );
        }
        return Ok(back(
            &format!("/dashboard/{slug}/runs"),
            "Search takes a run id (run_…) or a batch id (batch_…)",
        ));
    }

    let filter = query.filter(&ctx.env.id)?;
    // One more than a page tells whether there is a next one.
    let mut runs = engine
        .list_runs(
            filter.clone(),
            Cursor { after: query.after.clone(), before: query.before.clone(), size: query.size + 1 },
        )
        .await?;
    let more = runs.len() > query.size as usize;
    if more {
        if query.before.is_some() {
            runs.remove(0);
        } else {
            runs.truncate(query.size as usize);
        }
    }
    let has_newer = query.after.is_some() || (query.before.is_some() && more);
    let has_older = (query.before.is_none() && more) || query.before.is_some();
    let versions = versions(engine, &ctx.env.id).await?;
    let now = engine.now();

    let mut rows = String::new();
    for run in &runs {
        rows.push_str(&row(slug, run, &versions, now));
    }
    let fq = query.filter_query();
    let amp = if fq.is_empty() { "" } else { "&" };
    let mut pager = String::from("<nav class=\"pager\" aria-label=\"Pages\">");
    if has_newer {
        if let Some(first) = runs.first() {
            let _ = write!(
                pager,
                "<a class=\"btn small\" href=\"/dashboard/{slug}/runs?{fq}{amp}before={}\" rel=\"prev\">← Newer</a>",
                urlencode(&first.id)
            );
        }
        let _ = write!(pager, "<a class=\"btn small ghost\" href=\"/dashboard/{slug}/runs?{fq}\">Newest</a>");
    }
    if has_older {
        if let Some(last) = runs.last() {
            let _ = write!(
                pager,
                "<a class=\"btn small\" href=\"/dashboard/{slug}/runs?{fq}{amp}after={}\" rel=\"next\">Older →</a>",
                urlencode(&last.id)
            );
        }
    }
    pager.push_str("</nav>");

    let empty = if runs.is_empty() {
        "<p class=\"empty\" id=\"runs-empty\">No runs match. Trigger a task from its <strong>Test</strong> form on the Tasks page, or from your code.</p>"
    } else {
        ""
    };
    let table = format!(
        "<div class=\"table-wrap\"><table class=\"runs\" id=\"runs-table\" data-first-page=\"{first}\" data-size=\"{size}\">\
         <caption class=\"sr-only\">Runs, newest first</caption>{TABLE_HEAD}<tbody id=\"runs-body\">{rows}</tbody></table></div>{empty}{pager}",
        first = query.is_first_page(),
        size = query.size,
    );
    // A fetch after missed live updates asks for the table only.
    if headers.get("x-fragment").is_some() {
        return Ok(Html(table).into_response());
    }

    let status_options: String = RunStatus::ALL
        .iter()
        .map(|s| {
            let sel = if query.statuses.len() == 1 && query.statuses[0] == *s { " selected" } else { "" };
            format!("<option value=\"{}\"{sel}>{}</option>", s.as_str(), html::status_label(*s))
        })
        .collect();
    let multi = if query.statuses.len() > 1 {
        let v: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
        format!("<option value=\"{0}\" selected>{0}</option>", v.join(","))
    } else {
        String::new()
    };
    let field = |name: &str, label: &str, value: &str, kind: &str, placeholder: &str| {
        format!(
            "<div class=\"field\"><label for=\"f-{name}\">{label}</label><input id=\"f-{name}\" name=\"{name}\" type=\"{kind}\" value=\"{}\" placeholder=\"{placeholder}\"></div>",
            esc(value)
        )
    };
    let filters = format!(
        "<form class=\"filters\" method=\"get\" action=\"/dashboard/{slug}/runs\" role=\"search\" aria-label=\"Filter runs\">\
         <div class=\"field\"><label for=\"f-status\">Status</label><select id=\"f-status\" name=\"status\"><option value=\"\">Any status</option>{multi}{status_options}</select></div>\
         {task}{tag}{queue}{version}{batch}{from}{to}\
         <div class=\"field actions\"><button class=\"btn primary\" type=\"submit\">Apply</button><a class=\"btn ghost\" href=\"/dashboard/{slug}/runs\">Clear</a></div></form>",
        task = field("task", "Task", &query.task, "text", "process-data"),
        tag = field("tag", "Tag", &query.tag, "text", "user:123"),
        queue = field("queue", "Queue", &query.queue, "text", "task/…"),
        version = field("version", "Version", &query.version, "text", "20250101.1"),
        batch = field("batch", "Batch", &query.batch, "text", "batch_…"),
        from = field("from", "Created from (UTC)", &query.from, "datetime-local", ""),
        to = field("to", "Created to (UTC)", &query.to, "datetime-local", ""),
    );
    let search = format!(
        "<form class=\"search\" method=\"get\" action=\"/dashboard/{slug}/runs\" role=\"search\" aria-label=\"Find by id\">\
         <label for=\"q\" class=\"sr-only\">Run or batch id</label><input id=\"q\" name=\"q\" type=\"search\" placeholder=\"Find run_… or batch_…\" spellcheck=\"false\">\
         <button class=\"btn\" type=\"submit\">Find</button></form>"
    );
    let body = format!(
        "<div class=\"page-head\"><h1>Runs</h1>{search}</div>{notice}{filters}<div id=\"live-region\">{table}</div>",
        notice = html::notice(query.notice.as_deref()),
    );
    let live_url = format!("/dashboard/{slug}/live/runs?{fq}");
    Ok(ctx.page("Runs", Nav::Runs, Some(("runs", live_url)), body))
}

/// Everything the run page shows, read together.
pub(crate) struct RunView {
    pub details: RunDetails,
    pub snapshots: Vec<Snapshot>,
    pub children: Vec<Run>,
    pub events: Vec<RunEvent>,
    pub version: Option<String>,
    pub now: i64,
}

impl RunView {
    pub(crate) async fn load(
        engine: &Engine,
        env_id: &str,
        run_id: &str,
        after_seq: i64,
    ) -> Result<RunView, Error> {
        let details = engine.get_run(env_id, run_id).await?;
        let snapshots = engine.snapshots_since(env_id, run_id, None).await?;
        let children = engine.list_children(env_id, run_id).await?;
        let events = engine.list_events(env_id, run_id, after_seq, 2000).await?;
        let version = match &details.run.worker_id {
            Some(w) => {
                engine.list_workers(env_id, 200).await?.into_iter().find(|v| &v.id == w).map(|v| v.version)
            }
            None => details.run.lock_to_version.clone(),
        };
        Ok(RunView { details, snapshots, children, events, version, now: engine.now() })
    }

    fn run(&self) -> &Run {
        &self.details.run
    }

    /// The parts of the page that change while the run executes, by element id.
    pub(crate) fn fragments(&self, slug: &str, csrf: &str) -> Vec<(&'static str, String)> {
        vec![
            ("run-status", pill(self.run().status)),
            ("run-actions", self.actions(slug, csrf)),
            ("run-summary", self.summary(slug)),
            ("run-metadata", self.metadata()),
            ("run-output", self.output()),
            ("run-tree", self.tree(slug)),
            ("run-timeline", self.timeline()),
        ]
    }

    fn actions(&self, slug: &str, csrf: &str) -> String {
        let run = self.run();
        let base = format!("/dashboard/{slug}/runs/{}", esc(&run.id));
        let csrf = html::csrf_field(csrf);
        let mut out = String::new();
        if !run.status.is_final() {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"{base}/cancel\" data-confirm=\"Cancel this run?\">{csrf}\
                 <button class=\"btn danger\" type=\"submit\" id=\"cancel-run\">Cancel run</button></form>"
            );
        }
        let _ = write!(
            out,
            "<form method=\"post\" action=\"{base}/replay\">{csrf}<button class=\"btn\" type=\"submit\" id=\"replay-run\">Replay</button></form>"
        );
        if run.status == RunStatus::Delayed {
            let until = run.delay_until.map(html::utc).unwrap_or_default();
            let _ = write!(
                out,
                "<details class=\"pop\"><summary class=\"btn\">Reschedule</summary><form method=\"post\" action=\"{base}/reschedule\" class=\"stack\">{csrf}\
                 <p class=\"muted\">Runs at {until} UTC.</p>\
                 <label for=\"delay\">New delay from now (30s, 10m, 2h) or a UTC time (2025-01-31T09:30)</label>\
                 <input id=\"delay\" name=\"delay\" required placeholder=\"10m\">\
                 <button class=\"btn primary\" type=\"submit\">Reschedule</button></form></details>"
            );
        }
        out
    }

    fn summary(&self, slug: &str) -> String {
        let run = self.run();
        let mut dl = String::new();
        let mut item = |k: &str, v: String| {
            let _ = write!(dl, "<div><dt>{k}</dt><dd>{v}</dd></div>");
        };
        let link =
            |id: &str| format!("<a class=\"mono\" href=\"/dashboard/{slug}/runs/{0}\">{0}</a>", esc(id));
        item("Run ID", format!("<span class=\"mono\" id=\"run-id\">{}</span>", esc(&run.id)));
        item("Task", format!("<span class=\"mono\">{}</span>", esc(&run.task)));
        item("Version", esc(self.version.as_deref().unwrap_or("–")));
        item("Created", time(run.created_at));
        if let Some(t) = run.delay_until.filter(|_| run.status == RunStatus::Delayed) {
            item("Delayed until", time(t));
        }
        if let Some(t) = run.started_at {
            item("Started", time(t));
        }
        if let Some(t) = run.completed_at {
            item("Finished", time(t));
        }
        let dur = run_duration(run, self.now).map(html::duration).unwrap_or_else(|| "–".into());
        item("Duration", dur);
        let machine = run.machine.unwrap_or(MachinePreset::Small1x);
        let cost = run.usage_ms as f64 * machine.cents_per_ms() / 100.0;
        item("Compute", format!("{} · ${cost:.6}", html::duration(run.usage_ms as i64)));
        item("Attempts", run.attempt_number.to_string());
        item(
            "Queue",
            format!(
                "<a href=\"/dashboard/{slug}/runs?queue={}\">{}</a>",
                urlencode(&run.queue),
                esc(&run.queue)
            ),
        );
        if let Some(k) = &run.concurrency_key {
            item("Concurrency key", esc(k));
        }
        item(
            "Machine",
            format!(
                "{}{}",
                machine.name(),
                if run.machine.is_none() { " <span class=\"muted\">(default)</span>" } else { "" }
            ),
        );
        if let Some(m) = run.max_duration_secs {
            item("Max duration", html::duration(i64::from(m) * 1000));
        }
        if let Some(t) = run.ttl_ms {
            item("TTL", html::duration(t as i64));
        }
        item(
            "Idempotency key",
            run.idempotency_key
                .as_deref()
                .map(esc)
                .map_or("–".into(), |k| format!("<span class=\"mono wrap\">{k}</span>")),
        );
        item(
            "Tags",
            if run.tags.is_empty() {
                "–".into()
            } else {
                run.tags
                    .iter()
                    .map(|t| {
                        format!(
                            "<a class=\"pill tag\" href=\"/dashboard/{slug}/runs?tag={}\">{}</a>",
                            urlencode(t),
                            esc(t)
                        )
                    })
                    .collect()
            },
        );
        if let Some(b) = &run.batch_id {
            item(
                "Batch",
                format!(
                    "<a class=\"mono\" href=\"/dashboard/{slug}/runs?batch={}\">{}</a>",
                    urlencode(b),
                    esc(b)
                ),
            );
        }
        if let Some(r) = &run.replayed_from {
            item("Replayed from", link(r));
        }
        if run.is_test {
            item("Test run", "yes".into());
        }
        format!("<dl class=\"props\">{dl}</dl>")
    }

    fn metadata(&self) -> String {
        let run = self.run();
        let Some(text) = run.metadata.as_deref().filter(|m| !m.is_empty() && *m != "{}") else {
            return "<p class=\"muted\">No metadata.</p>".into();
        };
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let mut bar = String::new();
        if let Some(p) = value.get("progress").and_then(|p| p.as_f64()) {
            let pct = if p <= 1.0 { p * 100.0 } else { p }.clamp(0.0, 100.0);
            let _ = write!(
                bar,
                "<div class=\"progress\"><label for=\"meta-progress\">Progress</label>\
                 <progress id=\"meta-progress\" max=\"100\" value=\"{pct:.0}\">{pct:.0}%</progress>\
                 <output id=\"meta-progress-text\" for=\"meta-progress\">{pct:.0}%</output></div>"
            );
        }
        format!("{bar}<pre class=\"code\" id=\"metadata-json\">{}</pre>", html::pretty(text))
    }

    fn output(&self) -> String {
        let run = self.run();
        let mut out = String::new();
        if let Some(error) = &run.error {
            let (name, message, stack) = match error {
                TaskRunError::BuiltIn { name, message, stack_trace, .. } => {
                    (name.clone(), message.clone(), stack_trace.clone())
                }
                TaskRunError::Internal { code, message, stack_trace } => (
                    code.as_str().to_string(),
                    message.clone().unwrap_or_default(),
                    stack_trace.clone().unwrap_or_default(),
                ),
                TaskRunError::String { raw } => ("Error".into(), raw.clone(), String::new()),
                TaskRunError::Custom { raw } => ("Error".into(), raw.clone(), String::new()),
            };
            let stack = if stack.is_empty() {
                String::new()
            } else {
                format!("<details open><summary>Stack trace</summary><pre class=\"code stack\">{}</pre></details>", esc(&stack))
            };
            let _ = write!(
                out,
                "<div class=\"error-box\" role=\"alert\" id=\"run-error\"><strong>{}</strong>: {}{stack}</div>",
                esc(&name),
                esc(&message)
            );
        }
        match &self.details.output {
            Some(p) => {
                let _ = write!(
                    out,
                    "<h3>Output <span class=\"muted small\">{}</span></h3><pre class=\"code\" id=\"output-json\">{}</pre>",
                    esc(&p.data_type),
                    html::pretty(p.data.as_deref().unwrap_or(""))
                );
            }
            None if run.error.is_none() => {
                out.push_str("<p class=\"muted\">No output yet.</p>");
            }
            None => {}
        }
        out
    }

    fn tree(&self, slug: &str) -> String {
        let run = self.run();
        let link =
            |id: &str| format!("<a class=\"mono\" href=\"/dashboard/{slug}/runs/{0}\">{0}</a>", esc(id));
        let mut out = String::from("<ul class=\"tree\">");
        if let Some(root) =
            run.root_run_id.as_deref().filter(|r| Some(*r) != run.parent_run_id.as_deref() && *r != run.id)
        {
            let _ = write!(out, "<li><span class=\"muted\">Root</span> {}</li>", link(root));
        }
        if let Some(parent) = &run.parent_run_id {
            let _ = write!(out, "<li><span class=\"muted\">Parent</span> {}</li>", link(parent));
        }
        let _ = write!(
            out,
            "<li class=\"self\" aria-current=\"true\">{} <span class=\"mono\">{}</span> <span class=\"muted\">{}</span><ul>",
            pill(run.status),
            esc(&run.id),
            esc(&run.task)
        );
        for child in &self.children {
            let _ = write!(
                out,
                "<li>{} {} <span class=\"muted\">{}</span></li>",
                pill(child.status),
                link(&child.id),
                esc(&child.task)
            );
        }
        out.push_str("</ul></li></ul>");
        if self.children.is_empty() && run.parent_run_id.is_none() {
            out.push_str("<p class=\"muted small\">No parent or children.</p>");
        }
        out
    }

    fn timeline(&self) -> String {
        let mut out = String::from("<ol class=\"timeline\">");
        let mut attempt = 0;
        let created = self.run().created_at;
        for s in &self.snapshots {
            if s.attempt_number != attempt && s.attempt_number > 0 {
                attempt = s.attempt_number;
                let _ = write!(out, "<li class=\"attempt\"><strong>Attempt {attempt}</strong></li>");
            }
            let _ = write!(
                out,
                "<li><span class=\"dot {cls}\" aria-hidden=\"true\"></span><span class=\"mono small\">{st}</span> \
                 <span class=\"muted small\">+{off}</span><div class=\"small\">{desc}</div></li>",
                cls = html::status_class(s.run_status),
                st = esc(s.execution_status.as_str()),
                off = html::duration(s.created_at - created),
                desc = esc(&s.description),
            );
        }
        out.push_str("</ol>");
        out
    }

    /// Log lines and spans in time order, each expandable to its attributes.
    pub(crate) fn event_items(events: &[RunEvent], run_start_ms: i64) -> String {
        let mut sorted: Vec<&RunEvent> = events.iter().collect();
        sorted.sort_by_key(|e| (e.start_time_ns, e.seq));
        let depth_of: HashMap<&str, &str> = events
            .iter()
            .filter_map(|e| Some((e.span_id.as_deref()?, e.parent_span_id.as_deref()?)))
            .collect();
        let mut out = String::new();
        for e in sorted {
            let mut depth = 0;
            let mut cur = e.parent_span_id.as_deref();
            while let Some(p) = cur {
                if depth > 8 || !depth_of.contains_key(p) {
                    break;
                }
                depth += 1;
                cur = depth_of.get(p).copied();
            }
            let level = match e.level.as_str() {
                "trace" | "debug" | "info" | "log" | "warn" | "error" => e.level.as_str(),
                _ => "info",
            };
            let offset_ms = e.start_time_ns / 1_000_000 - run_start_ms;
            let dur = if e.kind == "span" {
                format!("<span class=\"span-dur\">{}</span>", html::duration(e.duration_ns / 1_000_000))
            } else {
                String::new()
            };
            let attrs = if e.attributes.is_null() || e.attributes.as_object().is_some_and(|o| o.is_empty()) {
                "<p class=\"muted small\">No attributes.</p>".to_string()
            } else {
                format!(
                    "<pre class=\"code\">{}</pre>",
                    esc(&serde_json::to_string_pretty(&e.attributes).unwrap_or_default())
                )
            };
            let attempt = e.attempt_number.map(|a| format!(" · attempt {a}")).unwrap_or_default();
            let _ = write!(
                out,
                "<li class=\"ev lvl-{level} kind-{kind}\" data-seq=\"{seq}\" style=\"--depth:{depth}\"><details><summary>\
                 <span class=\"ev-time mono\">+{off}</span><span class=\"lvl\">{level}</span>\
                 <span class=\"ev-kind\" aria-label=\"{kind}\">{icon}</span><span class=\"ev-msg\">{msg}</span>{dur}</summary>\
                 <div class=\"ev-body\"><p class=\"muted small\">{time}{attempt}{span}</p>{attrs}</div></details></li>",
                kind = if e.kind == "span" { "span" } else { "log" },
                seq = e.seq,
                off = html::duration(offset_ms),
                icon = if e.kind == "span" { "◆" } else { "•" },
                msg = esc(&e.message),
                time = esc(&html::iso(e.start_time_ns / 1_000_000)),
                span = e.span_id.as_deref().map(|s| format!(" · span {}", esc(s))).unwrap_or_default(),
            );
        }
        out
    }
}

/// `GET /dashboard/{env}/runs/{run}`.
pub(crate) async fn show(
    State(dash): State<Dash>,
    Path((slug, run_id)): Path<(String, String)>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let slug = ctx.slug();
    let view = RunView::load(dash.engine(), &ctx.env.id, &run_id, 0).await?;
    let run = view.run();
    let notice: Option<String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == "notice")
            .map(|(_, v)| v);
    let mut frags: HashMap<&str, String> = view.fragments(slug, &ctx.session.csrf).into_iter().collect();
    let mut take = |k: &str| frags.remove(k).unwrap_or_default();
    let last_seq = view.events.iter().map(|e| e.seq).max().unwrap_or(0);
    let events = RunView::event_items(&view.events, run.created_at);
    let payload = html::pretty(view.details.payload.data.as_deref().unwrap_or(""));
    let payload_raw = view
        .details
        .payload
        .data
        .as_deref()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d)
                .map_or(d.to_string(), |v| serde_json::to_string_pretty(&v).unwrap_or_default())
        })
        .unwrap_or_default();
    let body = format!(
        r#"<div class="crumbs"><a href="/dashboard/{slug}/runs">Runs</a> / <span class="mono">{id}</span></div>
{notice}
<div class="page-head run-head"><h1><span class="mono">{task}</span> <span id="run-status" aria-live="polite">{status}</span></h1>
<div class="actions" id="run-actions">{actions}</div></div>
<div class="run-grid">
<div class="col-main">
<section class="card" aria-labelledby="h-trace"><h2 id="h-trace">Trace &amp; logs</h2>
<div class="log-tools"><label><input type="checkbox" id="logs-expand"> Expand all</label>
<label for="log-level">Level</label><select id="log-level"><option value="">All</option><option value="debug">Debug and up</option><option value="info">Info and up</option><option value="warn">Warnings and errors</option><option value="error">Errors</option></select></div>
<ol class="events" id="run-logs" data-last-seq="{last_seq}">{events}</ol>
<p class="muted small empty-logs">Logs and spans appear here as the run writes them.</p></section>
<section class="card" aria-labelledby="h-out"><h2 id="h-out">Output</h2><div id="run-output">{output}</div></section>
<section class="card" aria-labelledby="h-payload"><h2 id="h-payload">Payload <span class="muted small">{ptype}</span></h2><pre class="code" id="payload-json">{payload}</pre>
<details class="replay-edit"><summary class="btn">Replay with an edited payload…</summary>
<form method="post" action="/dashboard/{slug}/runs/{id}/replay" class="stack">{csrf}
<label for="replay-payload">Payload (JSON)</label><textarea id="replay-payload" name="payload" rows="8" spellcheck="false">{payload_raw}</textarea>
<button class="btn primary" type="submit" id="replay-edited">Replay with this payload</button></form></details></section>
</div>
<div class="col-side">
<section class="card" aria-labelledby="h-meta"><h2 id="h-meta">Metadata</h2><div id="run-metadata" aria-live="polite">{metadata}</div></section>
<section class="card" aria-labelledby="h-sum"><h2 id="h-sum">Details</h2><div id="run-summary">{summary}</div></section>
<section class="card" aria-labelledby="h-tree"><h2 id="h-tree">Run tree</h2><div id="run-tree">{tree}</div></section>
<section class="card" aria-labelledby="h-tl"><h2 id="h-tl">Timeline</h2><div id="run-timeline">{timeline}</div></section>
</div></div>"#,
        id = esc(&run.id),
        task = esc(&run.task),
        notice = html::notice(notice.as_deref()),
        status = take("run-status"),
        actions = take("run-actions"),
        output = take("run-output"),
        metadata = take("run-metadata"),
        summary = take("run-summary"),
        tree = take("run-tree"),
        timeline = take("run-timeline"),
        ptype = esc(&view.details.payload.data_type),
        csrf = html::csrf_field(&ctx.session.csrf),
        payload_raw = esc(&payload_raw),
    );
    let live = format!("/dashboard/{slug}/live/runs/{}?after_seq={last_seq}", urlencode(&run.id));
    Ok(ctx.page(&format!("{} {}", run.task, run.id), Nav::Runs, Some(("run", live)), body))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    payload: Option<String>,
    delay: Option<String>,
}

/// `POST …/cancel`.
pub(crate) async fn cancel(
    State(dash): State<Dash>,
    Path((slug, run_id)): Path<(String, String)>,
    session: Session,
    Form(form): Form<ActionForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let run = dash.engine().cancel(&env.id, &run_id, Some("Canceled from the dashboard".into())).await?;
    let to = format!("/dashboard/{}/runs/{}", env.kind.slug(), urlencode(&run.id));
    let what = if run.status.is_final() {
        "Run canceled."
    } else {
        "Cancel requested; the worker is stopping the run."
    };
    Ok(back(&to, what))
}

/// `POST …/replay`, optionally with an edited payload.
pub(crate) async fn replay(
    State(dash): State<Dash>,
    Path((slug, run_id)): Path<(String, String)>,
    session: Session,
    Form(form): Form<ActionForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let payload = match form.payload.as_deref() {
        Some(text) => {
            Some(Packet { data: Some(json_field("payload", text)?), data_type: "application/json".into() })
        }
        None => None,
    };
    let overrides = ReplayOverrides { payload, ..Default::default() };
    let triggered = dash.engine().replay(&env.id, &run_id, overrides).await?;
    let to = format!("/dashboard/{}/runs/{}", env.kind.slug(), urlencode(&triggered.run.id));
    Ok(back(&to, &format!("Replayed from {run_id}.")))
}

/// `POST …/reschedule` for a delayed run.
pub(crate) async fn reschedule(
    State(dash): State<Dash>,
    Path((slug, run_id)): Path<(String, String)>,
    session: Session,
    Form(form): Form<ActionForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    let text = form.delay.unwrap_or_default();
    let now = dash.engine().now();
    let until = match trigger_types::parse_duration(&text) {
        Ok(ms) => now + ms as i64,
        Err(_) => html::parse_utc(&text).ok_or_else(|| {
            Error::Invalid(format!(
                "delay: {text:?} is neither a duration (10m) nor a UTC time (2025-01-31T09:30)"
            ))
        })?,
    };
    let run = dash.engine().reschedule(&env.id, &run_id, until).await?;
    let to = format!("/dashboard/{}/runs/{}", env.kind.slug(), urlencode(&run.id));
    Ok(back(&to, &format!("Rescheduled to {} UTC.", html::utc(until))))
}
