//! Managing runs (`runs.*`) from backend code, through the configured backend.

use std::time::Duration;

use trigger_engine::{Page, ReplayOverrides, Run, RunDetails, RunFilter};

use crate::backend::SharedBackend;
use crate::client::default_backend;
use crate::error::{Error, Result};

fn backend() -> Result<SharedBackend> {
    match crate::scope::current() {
        Some(s) => Ok(s.backend.clone()),
        None => default_backend(),
    }
}

/// `runs.retrieve`: a run with its payload and output. Both come back as
/// `application/json` packets whichever SDK wrote them: SuperJSON from the TypeScript SDK is
/// decoded to plain JSON (see [`trigger_types::superjson`]) and text becomes a JSON string.
pub async fn retrieve(run_id: &str) -> Result<RunDetails> {
    backend()?.get_run(run_id).await.map(plain)
}

fn plain(mut details: RunDetails) -> RunDetails {
    details.payload = crate::packet::normalize(details.payload);
    details.output = details.output.map(crate::packet::normalize);
    details
}

/// `runs.list`: runs matching a filter, newest first (`filter.env_id` is filled in).
pub async fn list(filter: RunFilter, page: Page) -> Result<Vec<Run>> {
    backend()?.list_runs(filter, page).await
}

/// `runs.cancel`.
pub async fn cancel(run_id: &str) -> Result<Run> {
    backend()?.cancel(run_id).await
}

/// `runs.replay`: a new run with the old one's payload and options; returns its id.
pub async fn replay(run_id: &str) -> Result<String> {
    Ok(backend()?.replay(run_id, ReplayOverrides::default()).await?.run.id)
}

/// `runs.reschedule`: moves a delayed run to start after `delay` from now.
pub async fn reschedule(run_id: &str, delay: Duration) -> Result<Run> {
    let backend = backend()?;
    let at = backend.now() + delay.as_millis() as i64;
    backend.reschedule(run_id, at).await
}

/// `runs.poll`: waits until the run reaches a final status (`EXPIRED` and `TIMED_OUT`
/// included, unlike the TS SDK's `isCompleted`) and returns it as [`retrieve`] does. With a
/// change feed (embedded) it waits for pushes; otherwise it re-reads every `interval`.
pub async fn poll(run_id: &str, interval: Duration) -> Result<RunDetails> {
    let backend = backend()?;
    let mut changes = backend.subscribe();
    loop {
        let details = backend.get_run(run_id).await?;
        if details.run.status.is_final() {
            return Ok(plain(details));
        }
        match &mut changes {
            Some(rx) => loop {
                match tokio::time::timeout(interval.max(Duration::from_secs(5)), rx.recv()).await {
                    Ok(Ok(change)) if change.run_id == run_id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return Err(Error::Protocol("the engine stopped".into()))
                    }
                }
            },
            None => tokio::time::sleep(interval).await,
        }
    }
}
