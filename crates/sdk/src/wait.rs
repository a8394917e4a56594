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
    // The snapshot as the change feed told it, when it did: no need to read it again. Only
    // a snapshot newer than the one before the wait is taken from it (ids sort by creation;
    // a late change from before the wait, say of an earlier attempt, is read again).
    let mut heard: Option<(String, ExecutionStatus)> = None;
    let outcome = loop {
        let (snapshot_id, status) = match heard.take() {
            Some((id, status)) if id.as_str() > before.as_str() => (id, status),
            _ => {
                let (_, snapshot) = scope.backend.latest_snapshot(&run_id).await?;
                (snapshot.id, snapshot.execution_status)
            }
        };
        if status.has_worker() {
            scope.set_snapshot_id(&snapshot_id);
        }
        match status {
            ExecutionStatus::Executing if snapshot_id != before => break Ok(()),
            ExecutionStatus::PendingCancel | ExecutionStatus::Finished => break Err(Error::Cancelled),
            _ => {}
        }
        if scope.backend.subscribe().is_some() {
            tokio::select! {
                changed = changes.changed() => match changed {
                    Ok(()) => heard = changes.borrow_and_update().snapshot.clone(),
                    Err(_) => break Err(Error::Cancelled),
                },
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
    let mut completed: Vec<CompletedWaitpoint> = snapshots
        .into_iter()
        .flat_map(|s| s.completed_waitpoints)
        .filter(|wp| seen.insert(wp.id.clone()))
        .collect();
    scope.lease.resume().await;
    // A TS child's output of 128 KB or more was offloaded: fetch it.
    for wp in completed.iter_mut().filter(|wp| wp.output_type == "application/store") {
        let packet = Packet { data: wp.output.take(), data_type: wp.output_type.clone() };
        let packet = scope.backend.import_packet(packet).await?;
        wp.output = packet.data;
        wp.output_type = packet.data_type;
    }
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

/// `wait.for`: blocks the run for a duration. Await it as it is, or set options first:
///
/// ```no_run
/// # async fn f() -> trigger_sdk::Result<()> {
/// use std::time::Duration;
/// use trigger_sdk::{idempotency_keys, wait};
/// wait::for_duration(Duration::from_secs(3600)).await?;
/// // A retried attempt that reaches this wait again does not wait again.
/// wait::for_duration(Duration::from_secs(3600))
///     .idempotency_key(idempotency_keys::create("cool-down"))
///     .idempotency_key_ttl(Duration::from_secs(24 * 3600))
///     .await?;
/// # Ok(()) }
/// ```
pub fn for_duration(duration: Duration) -> DurationWait {
    DurationWait { at: At::After(duration), options: WaitOptions::default() }
}

/// `wait.until`: blocks the run until a time. A time already past continues at once, or
/// fails with [`Error::DateInThePast`] after
/// [`throw_if_in_the_past`](DurationWait::throw_if_in_the_past).
pub fn until(at: SystemTime) -> DurationWait {
    DurationWait { at: At::Time(at), options: WaitOptions::default() }
}

#[derive(Debug, Clone, Copy)]
enum At {
    After(Duration),
    Time(SystemTime),
}

#[derive(Debug, Clone, Default)]
struct WaitOptions {
    idempotency_key: Option<String>,
    idempotency_key_ttl: Option<Duration>,
    throw_if_in_the_past: bool,
}

/// A wait for a duration or until a time, from [`for_duration`] or [`until`]; `.await` it.
#[derive(Debug, Clone)]
#[must_use = "a wait does nothing until it is awaited"]
pub struct DurationWait {
    at: At,
    options: WaitOptions,
}

impl DurationWait {
    /// Reuses the wait made earlier with the same key (`idempotencyKey`): a retried attempt
    /// that reaches this wait again continues at once if the first wait is over, or waits
    /// for what is left of it. The key is sent as it is, so a plain string is shared by
    /// every run of the environment (as in v4); [`crate::idempotency_keys::create`] scopes
    /// it to the run.
    pub fn idempotency_key(mut self, key: impl std::fmt::Display) -> Self {
        self.options.idempotency_key = Some(key.to_string());
        self
    }

    /// How long the key is remembered (`idempotencyKeyTTL`, default 30 days; sent in whole
    /// seconds, at least one). After that the same key makes a new wait.
    pub fn idempotency_key_ttl(mut self, ttl: Duration) -> Self {
        self.options.idempotency_key_ttl = Some(ttl);
        self
    }

    /// For [`until`]: a time already past fails with [`Error::DateInThePast`] instead of
    /// continuing at once (`throwIfInThePast`).
    pub fn throw_if_in_the_past(mut self) -> Self {
        self.options.throw_if_in_the_past = true;
        self
    }

    async fn wait(self) -> Result<()> {
        let what = match self.at {
            At::After(_) => "wait::for_duration",
            At::Time(_) => "wait::until",
        };
        let scope = current(what)?;
        let now = scope.backend.now();
        let until = match self.at {
            At::After(d) => now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
            At::Time(at) => millis(at),
        };
        if self.options.throw_if_in_the_past && until < now {
            return Err(Error::DateInThePast);
        }
        let at = UNIX_EPOCH + Duration::from_millis(until.max(0) as u64);
        let snapshot = scope.snapshot_id();
        let run_id = scope.ctx.run.id.clone();
        let backend = scope.backend.clone();
        let WaitOptions { idempotency_key, idempotency_key_ttl, .. } = self.options;
        // The wire carries the TTL in whole seconds.
        let ttl_ms = idempotency_key_ttl.map(|d| d.as_secs().max(1) * 1000);
        block_and_wait(&scope, |_| WaitInfo::Duration { until: at }, async move {
            backend.wait_for_duration(&run_id, &snapshot, until, idempotency_key, ttl_ms).await
        })
        .await?;
        Ok(())
    }
}

impl std::future::IntoFuture for DurationWait {
    type Output = Result<()>;
    type IntoFuture = crate::backend::BoxFuture<'static, Result<()>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

/// Options of a new token.
#[derive(Debug, Clone, Default)]
pub struct CreateTokenOptions {
    /// The token times out after this long (never when `None`).
    pub timeout: Option<Duration>,
    /// Returns the existing token for a key already used (`idempotencyKey`), sent as it is:
    /// pass `idempotency_keys::create(..).to_string()` for a key scoped to the run.
    pub idempotency_key: Option<String>,
    /// How long the key is remembered (default 30 days; whole seconds on the wire). After
    /// that the same key makes a new token.
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
