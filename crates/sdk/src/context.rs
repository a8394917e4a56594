//! `ctx`: what a run knows about itself (Trigger.dev's `TaskRunContext`), and the
//! cancellation signal.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use trigger_engine::{MachinePreset, Millis, StartedAttempt};

/// The context of a run's attempt, handed to `run` and every hook.
#[derive(Debug, Clone)]
pub struct Context {
    /// The run.
    pub run: RunContext,
    /// The current attempt.
    pub attempt: AttemptContext,
    /// The task.
    pub task: TaskContext,
    /// The queue the run is on.
    pub queue: QueueContext,
    /// The environment.
    pub environment: EnvironmentContext,
    /// The project.
    pub project: ProjectContext,
    /// The machine preset the run asked for.
    pub machine: MachineContext,
    /// The batch the run belongs to.
    pub batch: Option<BatchContext>,
    /// Fires when the run is canceled or exceeds its `max_duration` (`signal` in the TS SDK).
    pub signal: CancellationToken,
}

/// `ctx.run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunContext {
    /// `run_…`
    pub id: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether it is a test run.
    pub is_test: bool,
    /// Whether it replays another run.
    pub is_replay: bool,
    /// When it was created (ms since the epoch).
    pub created_at: Millis,
    /// When it started (ms since the epoch).
    pub started_at: Option<Millis>,
    /// The idempotency key it was triggered with.
    pub idempotency_key: Option<String>,
    /// Most attempts the run may make.
    pub max_attempts: Option<u32>,
    /// The worker version the run executes on.
    pub version: Option<String>,
    /// Compute-time limit of one attempt, in seconds.
    pub max_duration: Option<u32>,
    /// Priority in ms.
    pub priority: i64,
    /// The run that triggered this one.
    pub parent_task_run_id: Option<String>,
    /// The first run of the tree this run belongs to.
    pub root_task_run_id: Option<String>,
}

/// `ctx.attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptContext {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it started (ms since the epoch).
    pub started_at: Millis,
}

/// `ctx.task`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskContext {
    /// The id.
    pub id: String,
    /// The source file in the manifest.
    pub file_path: String,
}

/// `ctx.queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueContext {
    /// The id.
    pub id: String,
    /// The name.
    pub name: String,
}

/// `ctx.environment`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentContext {
    /// The id.
    pub id: String,
    /// `dev`, `stg`, `prod` or `preview`.
    pub slug: String,
    /// `DEVELOPMENT`, …
    pub kind: String,
}

/// `ctx.project`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectContext {
    /// The id.
    pub id: String,
}

/// `ctx.machine`.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineContext {
    /// The name.
    pub name: MachinePreset,
    /// vCPUs.
    pub cpu: f64,
    /// Memory in GB.
    pub memory: f64,
    /// Indicative cost per millisecond, in cents.
    pub cents_per_ms: f64,
}

/// `ctx.batch`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchContext {
    /// The id.
    pub id: String,
}

impl Context {
    pub(crate) fn from_attempt(started: &StartedAttempt, signal: CancellationToken) -> Self {
        let run = &started.run;
        let machine = run.machine.unwrap_or_default();
        Context {
            run: RunContext {
                id: run.id.clone(),
                tags: run.tags.clone(),
                is_test: run.is_test,
                is_replay: run.replayed_from.is_some(),
                created_at: run.created_at,
                started_at: run.started_at,
                idempotency_key: run.idempotency_key.clone(),
                max_attempts: run.max_attempts,
                version: started.worker.as_ref().map(|w| w.version.clone()),
                max_duration: run.max_duration_secs,
                priority: run.priority_ms,
                parent_task_run_id: run.parent_run_id.clone(),
                root_task_run_id: run.root_run_id.clone(),
            },
            attempt: AttemptContext { number: run.attempt_number, started_at: started.snapshot.created_at },
            task: TaskContext {
                id: run.task.clone(),
                file_path: started.task.as_ref().map(|t| t.file_path.clone()).unwrap_or_default(),
            },
            queue: QueueContext {
                id: started.queue.as_ref().map(|q| q.id.clone()).unwrap_or_default(),
                name: run.queue.clone(),
            },
            environment: EnvironmentContext {
                id: started.environment.id.clone(),
                slug: started.environment.kind.slug().to_string(),
                kind: started.environment.kind.as_str().to_string(),
            },
            project: ProjectContext { id: started.environment.project_id.clone() },
            machine: MachineContext {
                name: machine,
                cpu: machine.cpu(),
                memory: machine.memory(),
                cents_per_ms: machine.cents_per_ms(),
            },
            batch: run.batch_id.clone().map(|id| BatchContext { id }),
            signal,
        }
    }
}

/// Why a [`CancellationToken`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The run was canceled.
    Canceled,
    /// The attempt used up its `max_duration` of compute time.
    MaxDuration,
    /// The worker is shutting down and its drain timeout passed.
    Shutdown,
}

/// A signal that fires once, when the run is canceled, exceeds its `max_duration`, or is
/// handed back at shutdown. Cheap to clone; clones share the signal.
#[derive(Debug, Clone, Default)]
pub struct CancellationToken {
    inner: Arc<TokenInner>,
}

#[derive(Debug, Default)]
struct TokenInner {
    reason: AtomicU8,
    notify: Notify,
}

impl CancellationToken {
    /// A token that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the token (the first reason wins).
    pub fn cancel(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::Canceled => 1,
            CancelReason::MaxDuration => 2,
            CancelReason::Shutdown => 3,
        };
        if self.inner.reason.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            self.inner.notify.notify_waiters();
        }
    }

    /// Whether both are clones of one token.
    pub(crate) fn same(&self, other: &CancellationToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the token fired.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Why the token fired.
    pub fn reason(&self) -> Option<CancelReason> {
        match self.inner.reason.load(Ordering::SeqCst) {
            1 => Some(CancelReason::Canceled),
            2 => Some(CancelReason::MaxDuration),
            3 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }

    /// Completes when the token fires.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_fires_once_with_the_first_reason() {
        let token = CancellationToken::new();
        let waiter = tokio::spawn({
            let token = token.clone();
            async move { token.cancelled().await }
        });
        assert!(!token.is_cancelled());
        token.cancel(CancelReason::MaxDuration);
        token.cancel(CancelReason::Canceled);
        waiter.await.unwrap();
        assert_eq!(token.reason(), Some(CancelReason::MaxDuration));
    }
}
