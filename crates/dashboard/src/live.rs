//! Live updates: Server-Sent Events fed by the engine's change feed.
//!
//! Each stream filters [`trigger_engine::Engine::subscribe`] to its scope (an environment's
//! runs list, one run, or an environment's counts), gathers the changes of a short window
//! so a burst costs one read per run, re-reads what changed and pushes rendered HTML the
//! page script swaps in. A stream that falls behind the feed tells the page to re-fetch.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use trigger_engine::RunChange;

use crate::auth::Session;
use crate::error::Error;
use crate::pages::runs::{self, RunView, RunsQuery};
use crate::Dash;

/// At most this many runs are re-read per window; past it the page re-fetches its table.
const MAX_ROWS_PER_WINDOW: usize = 100;
/// Least time between two re-fetches a burst asks for.
const RELOAD_PAUSE: Duration = Duration::from_secs(1);

fn sse(mut rx: mpsc::Receiver<Event>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Resolves when the server begins shutting down (never without a signal). The guard
/// `wait_for` returns is dropped inside, so the stream tasks stay `Send`.
async fn stopping(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Waits for the first change accepted by `keep`, then gathers more for `window`.
/// `None` when the feed closed or the client left; `Some(None)` when the stream lagged.
async fn next_batch(
    feed: &mut broadcast::Receiver<RunChange>,
    tx: &mpsc::Sender<Event>,
    shutdown: &mut Option<watch::Receiver<bool>>,
    window: Duration,
    keep: &mut impl FnMut(&RunChange) -> bool,
) -> Option<Option<Vec<RunChange>>> {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = tx.closed() => return None,
            _ = stopping(shutdown) => return None,
            change = feed.recv() => match change {
                Ok(c) => if keep(&c) { batch.push(c); break },
                Err(RecvError::Lagged(_)) => return Some(None),
                Err(RecvError::Closed) => return None,
            },
        }
    }
    let deadline = tokio::time::Instant::now() + window;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Some(Some(batch)),
            change = feed.recv() => match change {
                Ok(c) => if keep(&c) { batch.push(c) },
                Err(RecvError::Lagged(_)) => return Some(None),
                Err(RecvError::Closed) => return Some(Some(batch)),
            },
        }
    }
}

/// `GET /dashboard/{env}/live/runs?<filters>`: rows of the runs list as they change.
pub(crate) async fn runs(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    _session: Session,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, Error> {
    let (env, _) = dash.environment(&slug).await?;
    let query = RunsQuery::parse(raw.as_deref());
    let filter = query.filter(&env.id)?;
    let mut feed = dash.engine().subscribe();
    let (tx, rx) = mpsc::channel(64);
    let engine = dash.engine().clone();
    let slug = env.kind.slug();
    let mut shutdown = dash.options().shutdown.clone();
    tokio::spawn(async move {
        let mut versions = runs::versions(&engine, &env.id).await.unwrap_or_default();
        if tx.send(Event::default().event("ready").data("runs")).await.is_err() {
            return;
        }
        let env_id = env.id.clone();
        let mut keep = |c: &RunChange| c.env_id == env_id;
        while let Some(batch) =
            next_batch(&mut feed, &tx, &mut shutdown, Duration::from_millis(120), &mut keep).await
        {
            let Some(batch) = batch else {
                if tx.send(Event::default().event("reload").data("lagged")).await.is_err() {
                    return;
                }
                tokio::time::sleep(RELOAD_PAUSE).await;
                feed = feed.resubscribe();
                continue;
            };
            let mut seen = HashSet::new();
            let ids: Vec<String> =
                batch.into_iter().map(|c| c.run_id).filter(|id| seen.insert(id.clone())).collect();
            if ids.len() > MAX_ROWS_PER_WINDOW {
                if tx.send(Event::default().event("reload").data("burst")).await.is_err() {
                    return;
                }
                // Under a sustained burst the page re-fetches at most once a second; the
                // changes in between are covered by the next re-fetch.
                tokio::time::sleep(RELOAD_PAUSE).await;
                feed = feed.resubscribe();
                continue;
            }
            for id in ids {
                let Ok(details) = engine.get_run(&env.id, &id).await else { continue };
                let run = details.run;
                if run.worker_id.as_ref().is_some_and(|w| !versions.contains_key(w)) {
                    versions = runs::versions(&engine, &env.id).await.unwrap_or(versions);
                }
                let version = runs::version_of(&run, &versions).map(str::to_string);
                let data = json!({
                    "id": run.id,
                    "matches": runs::matches(&filter, &run, version.as_deref()),
                    "html": runs::row(slug, &run, &versions, engine.now()),
                });
                if tx.send(Event::default().event("row").data(data.to_string())).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(sse(rx))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunLiveQuery {
    #[serde(default)]
    after_seq: i64,
}

/// `GET /dashboard/{env}/live/runs/{run}`: the run page's changing parts, and new logs.
pub(crate) async fn run(
    State(dash): State<Dash>,
    Path((slug, run_id)): Path<(String, String)>,
    session: Session,
    Query(q): Query<RunLiveQuery>,
) -> Result<impl IntoResponse, Error> {
    let (env, _) = dash.environment(&slug).await?;
    // Subscribe before the first read, so no change falls between them.
    let mut feed = dash.engine().subscribe();
    let first = RunView::load(dash.engine(), &env.id, &run_id, q.after_seq).await?;
    let (tx, rx) = mpsc::channel(16);
    let engine = dash.engine().clone();
    let slug = env.kind.slug();
    let mut shutdown = dash.options().shutdown.clone();
    tokio::spawn(async move {
        let mut after_seq = q.after_seq;
        let mut view = first;
        loop {
            let mut set = HashMap::new();
            for (k, v) in view.fragments(slug, &session.csrf) {
                set.insert(k, v);
            }
            let logs = RunView::event_items(&view.events, view.details.run.created_at);
            after_seq = view.events.iter().map(|e| e.seq).max().unwrap_or(after_seq).max(after_seq);
            let data = json!({
                "set": set,
                "append": { "run-logs": logs },
                "lastSeq": after_seq,
                "status": view.details.run.status.as_str(),
                "final": view.details.run.status.is_final(),
            });
            if tx.send(Event::default().event("run").data(data.to_string())).await.is_err() {
                return;
            }
            // Changes of the run itself and of its children (their status shows in the tree).
            let mut watched: HashSet<String> = view.children.iter().map(|c| c.id.clone()).collect();
            watched.insert(view.details.run.id.clone());
            let mut keep = |c: &RunChange| watched.contains(&c.run_id);
            if next_batch(&mut feed, &tx, &mut shutdown, Duration::from_millis(100), &mut keep)
                .await
                .is_none()
            {
                return;
            }
            view = match RunView::load(&engine, &env.id, &run_id, after_seq).await {
                Ok(v) => v,
                Err(_) => return,
            };
        }
    });
    Ok(sse(rx))
}

/// `GET /dashboard/{env}/live/env`: a nudge whenever the environment's runs change, for
/// pages of counts (queues, batches, tokens) to re-fetch their live region.
pub(crate) async fn env(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    _session: Session,
) -> Result<impl IntoResponse, Error> {
    let (env, _) = dash.environment(&slug).await?;
    let mut feed = dash.engine().subscribe();
    let (tx, rx) = mpsc::channel(4);
    let mut shutdown = dash.options().shutdown.clone();
    tokio::spawn(async move {
        if tx.send(Event::default().event("ready").data("env")).await.is_err() {
            return;
        }
        let env_id = env.id.clone();
        let mut keep = |c: &RunChange| c.env_id == env_id;
        while next_batch(&mut feed, &tx, &mut shutdown, Duration::from_millis(400), &mut keep).await.is_some()
        {
            if tx.send(Event::default().event("refresh").data("env")).await.is_err() {
                return;
            }
        }
    });
    Ok(sse(rx))
}
