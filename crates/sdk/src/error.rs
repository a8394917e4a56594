//! Errors: [`Error`] for SDK calls, [`TaskError`] for a failed task attempt.

use std::fmt;

use trigger_types::{InternalErrorCode, TaskRunError};

/// Why an SDK call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The engine (or server) refused or failed the call.
    #[error(transparent)]
    Engine(#[from] trigger_engine::Error),
    /// A value could not be serialized or deserialized.
    #[error("serialization: {0}")]
    Serde(String),
    /// The call is only possible inside a running task (`triggerAndWait`, `wait::*`).
    #[error("{0} can only be called inside a task run")]
    NotInTask(&'static str),
    /// No backend is configured for calls made outside a task; see [`crate::configure`].
    #[error("no backend configured: call trigger_sdk::configure(..), set TRIGGER_SECRET_KEY, or build a Worker first")]
    NoBackend,
    /// The run was canceled (or hit its `max_duration`) while waiting.
    #[error("the run was canceled while waiting")]
    Cancelled,
    /// A second wait started while one was in flight (`TASK_DID_CONCURRENT_WAIT`).
    #[error("a run can only wait on one thing at a time (TASK_DID_CONCURRENT_WAIT)")]
    ConcurrentWait,
    /// `unwrap()` on a child run that failed (`SubtaskUnwrapError`).
    #[error("child run {run_id} of task {task} failed: {}", error.message())]
    Subtask {
        /// The child's task id.
        task: String,
        /// The child run.
        run_id: String,
        /// How it failed.
        error: Box<TaskRunError>,
    },
    /// `wait::until(..).throw_if_in_the_past()` was given a time already past.
    #[error("Date is in the past")]
    DateInThePast,
    /// A waitpoint token timed out.
    #[error("waitpoint {0} timed out")]
    WaitpointTimeout(String),
    /// The engine answered something this SDK did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serde(e.to_string())
    }
}

/// Result of an SDK call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a task attempt failed: the [`TaskRunError`] reported to the engine, an optional
/// `code` that `catch_error` can match on, and whether retrying is skipped outright.
///
/// Any `std::error::Error` converts into it, so `?` works inside `run`. Like
/// `anyhow::Error`, it does not implement `std::error::Error` itself.
#[derive(Clone, PartialEq)]
pub struct TaskError(Box<Inner>);

#[derive(Clone, PartialEq)]
struct Inner {
    error: TaskRunError,
    code: Option<String>,
    skip_retrying: bool,
}

fn make(error: TaskRunError, code: Option<String>, skip_retrying: bool) -> TaskError {
    TaskError(Box::new(Inner { error, code, skip_retrying }))
}

impl TaskError {
    /// A plain error (`BUILT_IN_ERROR` named `Error`).
    pub fn new(message: impl Into<String>) -> Self {
        make(
            TaskRunError::BuiltIn {
                name: "Error".into(),
                message: message.into(),
                stack_trace: String::new(),
                causes: None,
            },
            None,
            false,
        )
    }

    /// An error with a code, like a JavaScript error with `.code` set. The code is also the
    /// error's `name` on the wire, so a parent sees it on a failed child.
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        make(
            TaskRunError::BuiltIn {
                name: code.clone(),
                message: message.into(),
                stack_trace: String::new(),
                causes: None,
            },
            Some(code),
            false,
        )
    }

    /// `AbortTaskRunError`: fails the run without retrying.
    pub fn abort(message: impl Into<String>) -> Self {
        TaskError::new(message).skip_retrying()
    }

    /// An `INTERNAL_ERROR` with a code.
    pub fn internal(code: InternalErrorCode, message: impl Into<String>) -> Self {
        make(TaskRunError::internal(code, message), Some(code.as_str().to_string()), !code.is_retriable())
    }

    /// Wraps an error as the engine reported it (a failed child, say).
    pub fn from_run_error(error: TaskRunError) -> Self {
        let code = match &error {
            TaskRunError::Internal { code, .. } => Some(code.as_str().to_string()),
            TaskRunError::BuiltIn { name, .. } if name != "Error" => Some(name.clone()),
            _ => None,
        };
        let skip_retrying = !error.is_retriable();
        make(error, code, skip_retrying)
    }

    /// Marks the error as not worth retrying.
    pub fn skip_retrying(mut self) -> Self {
        self.0.skip_retrying = true;
        self
    }

    /// The code, if any (`"FATAL_ERROR"`, or an internal code such as `"TASK_INPUT_ERROR"`).
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The message.
    pub fn message(&self) -> String {
        self.0.error.message()
    }

    /// Whether retrying is skipped whatever the policy says.
    pub fn is_skip_retrying(&self) -> bool {
        self.0.skip_retrying
    }

    /// The error as reported to the engine.
    pub fn run_error(&self) -> &TaskRunError {
        &self.0.error
    }

    /// Takes the error as reported to the engine.
    pub fn into_run_error(self) -> TaskRunError {
        self.0.error
    }

    pub(crate) fn panic(message: String) -> Self {
        make(
            TaskRunError::BuiltIn {
                name: "Panic".into(),
                message: format!("the task panicked: {message}"),
                stack_trace: String::new(),
                causes: None,
            },
            Some("PANIC".into()),
            false,
        )
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        let name = std::any::type_name::<E>().rsplit("::").next().unwrap_or("Error").to_string();
        let mut causes = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            causes.push(serde_json::json!({ "message": s.to_string() }));
            source = s.source();
        }
        let skip_retrying = matches!(
            (&e as &dyn std::any::Any).downcast_ref::<Error>(),
            Some(Error::Cancelled | Error::ConcurrentWait)
        );
        let causes = (!causes.is_empty()).then_some(serde_json::Value::Array(causes));
        make(
            TaskRunError::BuiltIn { name, message: e.to_string(), stack_trace: String::new(), causes },
            None,
            skip_retrying,
        )
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.error, &self.0.code) {
            (TaskRunError::BuiltIn { name, message, .. }, _) => write!(f, "{name}: {message}"),
            (e, Some(code)) => write!(f, "{code}: {}", e.message()),
            (e, None) => f.write_str(&e.message()),
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("error", &self.0.error)
            .field("code", &self.0.code)
            .field("skip_retrying", &self.0.skip_retrying)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_conversions() {
        let fatal = TaskError::with_code("FATAL_ERROR", "bad input");
        assert_eq!(fatal.code(), Some("FATAL_ERROR"));
        assert_eq!(fatal.to_string(), "FATAL_ERROR: bad input");
        let back = TaskError::from_run_error(fatal.clone().into_run_error());
        assert_eq!(back.code(), Some("FATAL_ERROR"));
        assert!(!back.is_skip_retrying());

        let io: TaskError = std::io::Error::other("disk").into();
        assert_eq!(io.code(), None);
        assert_eq!(io.message(), "disk");

        let input = TaskError::internal(InternalErrorCode::TaskInputError, "bad payload");
        assert!(!input.is_skip_retrying(), "TASK_INPUT_ERROR is retriable by code; the worker skips it");
        let max = TaskError::internal(InternalErrorCode::MaxDurationExceeded, "slow");
        assert!(max.is_skip_retrying());
        let cancelled: TaskError = Error::Cancelled.into();
        assert!(cancelled.is_skip_retrying());
    }
}
