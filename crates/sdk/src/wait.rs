//! Waits (`wait.*`): block the current run on a waitpoint (a time, a token, a child run or
//! a batch) until the engine continues it.
//!
//! While a run waits it gives back its concurrency slot in the engine and its capacity on
//! the worker, and its time does not count towards `max_duration`. Only one wait may be in
//! flight per run ([`Error::ConcurrentWait`]). Every wait goes through the engine, short
//! ones included (the TS SDK sleeps in-process for 5 s or less; here a wait costs no
//! checkpoint, so there is no reason to).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use trigger_engine::{CompletedWaitpoint, ExecutionStatus, Millis, Packet, TaskRunError, TokenOptions};

use crate::backend::SharedBackend;
use crate::error::{Error, Result};
use crate::scope::{self, RunScope};

/// What a run waits on, as `on_wait` / `on_resume` see it.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitInfo {
    /// A point in time.
    Duration {
        /// When the wait ends.
        until: SystemTime,
    },
    /// A waitpoint token.
    Token {
        /// The token (`waitpoint_…`).
        id: String,
    },
    /// A child run.
    Task {
        /// The child run.
        run_id: String,
    },
    /// A batch of child runs.
    Batch {
        /// The batch.
        batch_id: String,
        /// How many runs the batch has.
        run_count: u32,
    },
}

/// Blocks the current run with `block`, then waits until the engine continues it. Returns
/// `block`'s value and the waitpoints that completed.
pub(crate) async fn block_and_wait<T, F>(
    scope: &RunScope,
    info: impl Fn(&T) -> WaitInfo,
    block: F,
) -> Result<(T, Vec<CompletedWaitpoint>)>
where
    F: std::future::Future<Output = Result<T>>,
{
    let _one_wait = scope.waiting.try_lock().map_err(|_| Error::ConcurrentWait)?;
    let before = scope.snapshot_id();
    let mut changes = scope.changes.clone();
    changes.borrow_and_update();
    scope.lease.suspend();
    let value = match block.await {
        Ok(v) => v,
        Err(e) => {
            scope.lease.resume().await;
            return Err(e);
        }
    };
    let info = info(&value);
    let hook = scope.wait_hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(hook) = &hook {
        hook(info.clone(), false).await;
    }
    let run_id = scope.ctx.run.id.clone();
    let outcome = loop {
        let (_, snapshot) = scope.backend.latest_snapshot(&run_id).await?;
        if snapshot.execution_status.has_worker() {
            scope.set_snapshot_id(&snapshot.id);
        }
        match snapshot.execution_status {
            ExecutionStatus::Executing if snapshot.id != before => break Ok(()),
            ExecutionStatus::PendingCancel | ExecutionStatus::Finished => break Err(Error::Cancelled),
            _ => {}
        }
        if scope.backend.subscribe().is_some() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break Err(Error::Cancelled) },
                _ = scope.ctx.signal.cancelled() => break Err(Error::Cancelled),
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = scope.ctx.signal.cancelled() => break Err(Error::Cancelled),
            }
        }
    };
    outcome?;
    let snapshots = scope.backend.snapshots_since(&run_id, Some(&before)).await?;
    let mut seen = HashSet::new();
    let completed: Vec<CompletedWaitpoint> = snapshots
        .into_iter()
        .flat_map(|s| s.completed_waitpoints)
        .filter(|wp| seen.insert(wp.id.clone()))
        .collect();
    scope.lease.resume().await;
    if let Some(hook) = &hook {
        hook(info, true).await;
    }
    Ok((value, completed))
}

fn current(what: &'static str) -> Result<std::sync::Arc<RunScope>> {
    scope::current().ok_or(Error::NotInTask(what))
}

fn millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// `wait.for`: blocks the run for a duration.
pub async fn for_duration(duration: Duration) -> Result<()> {
    until(SystemTime::now() + duration).await
}

/// `wait.until`: blocks the run until a time (a past time continues at once).
pub async fn until(at: SystemTime) -> Result<()> {
    let scope = current("wait::until")?;
    let until = millis(at);
    let snapshot = scope.snapshot_id();
    let run_id = scope.ctx.run.id.clone();
    let backend = scope.backend.clone();
    block_and_wait(&scope, |_| WaitInfo::Duration { until: at }, async move {
        backend.wait_for_duration(&run_id, &snapshot, until, None).await
    })
    .await?;
    Ok(())
}

/// Options of a new token.
#[derive(Debug, Clone, Default)]
pub struct CreateTokenOptions {
    /// The token times out after this long (never when `None`).
    pub timeout: Option<Duration>,
    /// Returns the existing token for a key already used.
    pub idempotency_key: Option<String>,
    /// How long the key is remembered.
    pub idempotency_key_ttl: Option<Duration>,
    /// Tags.
    pub tags: Vec<String>,
}

/// A waitpoint token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// `waitpoint_…`
    pub id: String,
    /// True when an idempotency key returned an existing token.
    pub is_cached: bool,
}

fn backend_for_client() -> Result<SharedBackend> {
    match scope::current() {
        Some(s) => Ok(s.backend.clone()),
        None => crate::client::default_backend(),
    }
}

/// `wait.createToken`: a token that a run can wait on and anyone can complete.
pub async fn create_token(options: CreateTokenOptions) -> Result<Token> {
    let backend = backend_for_client()?;
    let now = backend.now();
    let (wp, is_cached) = backend
        .create_token(TokenOptions {
            timeout_at: options.timeout.map(|d| now + d.as_millis() as Millis),
            idempotency_key: options.idempotency_key,
            idempotency_key_ttl_ms: options.idempotency_key_ttl.map(|d| d.as_millis() as u64),
            tags: options.tags,
        })
        .await?;
    Ok(Token { id: wp.id, is_cached })
}

/// `wait.completeToken`: completes a token with data.
pub async fn complete_token(token_id: &str, data: impl Serialize) -> Result<()> {
    let backend = backend_for_client()?;
    let value = serde_json::to_value(data)?;
    backend.complete_token(token_id, Packet::json(&value)).await?;
    Ok(())
}

/// The outcome of waiting on a token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenResult<T> {
    /// Completed with data.
    Ok(T),
    /// Timed out.
    TimedOut {
        /// The token.
        token_id: String,
    },
}

impl<T> TokenResult<T> {
    /// Whether the token was completed.
    pub fn ok(&self) -> bool {
        matches!(self, TokenResult::Ok(_))
    }

    /// The data, or [`Error::WaitpointTimeout`].
    pub fn unwrap(self) -> Result<T> {
        match self {
            TokenResult::Ok(v) => Ok(v),
            TokenResult::TimedOut { token_id } => Err(Error::WaitpointTimeout(token_id)),
        }
    }
}

/// `wait.forToken`: blocks the run until the token is completed or times out.
pub async fn for_token<T: DeserializeOwned>(token_id: &str) -> Result<TokenResult<T>> {
    let scope = current("wait::for_token")?;
    let snapshot = scope.snapshot_id();
    let run_id = scope.ctx.run.id.clone();
    let backend = scope.backend.clone();
    let id = token_id.to_string();
    let (_, completed) = block_and_wait(&scope, |_| WaitInfo::Token { id: id.clone() }, async {
        backend.wait_for_token(&run_id, &snapshot, token_id).await
    })
    .await?;
    let wp = completed
        .into_iter()
        .find(|wp| wp.id == token_id)
        .ok_or_else(|| Error::Protocol(format!("run continued without token {token_id}")))?;
    if wp.output_is_error {
        return Ok(TokenResult::TimedOut { token_id: token_id.to_string() });
    }
    Ok(TokenResult::Ok(decode(wp.output.as_deref(), &wp.output_type)?))
}

/// A waitpoint's output (a child's output or a token's data) as `T`, whichever SDK wrote it.
pub(crate) fn decode<T: DeserializeOwned>(text: Option<&str>, data_type: &str) -> Result<T> {
    let value = crate::packet::to_json(text, data_type).map_err(Error::Serde)?;
    Ok(serde_json::from_value(value)?)
}

pub(crate) fn decode_error(text: Option<&str>) -> TaskRunError {
    text.and_then(|t| serde_json::from_str::<TaskRunError>(t).ok())
        .unwrap_or_else(|| TaskRunError::string(text.unwrap_or("unknown error")))
}
