//! `TaskRunError`: how an attempt failed, and what that means for retries and final status.

use serde::{Deserialize, Serialize};

use crate::status::RunStatus;

/// The error of a failed attempt, a union discriminated by `type` (Trigger.dev's
/// `TaskRunError`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TaskRunError {
    /// A thrown `Error` (or a Rust error with a name).
    #[serde(rename = "BUILT_IN_ERROR")]
    BuiltIn {
        name: String,
        message: String,
        #[serde(rename = "stackTrace", default)]
        stack_trace: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        causes: Option<serde_json::Value>,
    },
    /// A thrown string.
    #[serde(rename = "STRING_ERROR")]
    String { raw: String },
    /// A thrown non-error value, as JSON.
    #[serde(rename = "CUSTOM_ERROR")]
    Custom { raw: String },
    /// An error raised by the system rather than the task.
    #[serde(rename = "INTERNAL_ERROR")]
    Internal {
        code: InternalErrorCode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(rename = "stackTrace", default, skip_serializing_if = "Option::is_none")]
        stack_trace: Option<String>,
    },
}

impl TaskRunError {
    /// An internal error with a code and message.
    pub fn internal(code: InternalErrorCode, message: impl Into<String>) -> Self {
        TaskRunError::Internal { code, message: Some(message.into()), stack_trace: None }
    }

    /// A string error.
    pub fn string(raw: impl Into<String>) -> Self {
        TaskRunError::String { raw: raw.into() }
    }

    /// The internal code, if any.
    pub fn code(&self) -> Option<InternalErrorCode> {
        match self {
            TaskRunError::Internal { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A human-readable message.
    pub fn message(&self) -> String {
        match self {
            TaskRunError::BuiltIn { message, .. } => message.clone(),
            TaskRunError::String { raw } | TaskRunError::Custom { raw } => raw.clone(),
            TaskRunError::Internal { code, message, .. } => {
                message.clone().unwrap_or_else(|| code.as_str().to_string())
            }
        }
    }

    /// Whether the engine may retry after this error (`shouldRetryError`). User errors are
    /// retriable; many internal ones are not.
    pub fn is_retriable(&self) -> bool {
        match self {
            TaskRunError::Internal { code, .. } => code.is_retriable(),
            _ => true,
        }
    }

    /// The final run status when this error ends the run (`errors.ts`).
    pub fn final_status(&self) -> RunStatus {
        use InternalErrorCode::*;
        match self.code() {
            None => RunStatus::Failed,
            Some(MaxDurationExceeded) => RunStatus::TimedOut,
            Some(TaskRunCancelled) => RunStatus::Canceled,
            Some(
                TaskRunStalledExecuting
                | TaskRunStalledExecutingWithWaitpoints
                | TaskInputError
                | TaskOutputError
                | TaskMiddlewareError
                | TaskRunUncaughtException
                | RecursiveWaitDeadlock
                | TaskExecutionFailed
                | TaskDidConcurrentWait
                | TaskRunHeartbeatTimeout
                | TaskRunDequeuedMaxRetries
                | PayloadTooLarge
                | BatchItemCouldNotTrigger,
            ) => RunStatus::Failed,
            Some(
                TaskProcessOomKilled
                | TaskProcessMaybeOomKilled
                | TaskProcessSigsegv
                | DiskSpaceExceeded
                | OutdatedSdkVersion
                | HandleErrorError
                | TaskRunCrashed
                | TaskProcessExitedWithNonZeroCode,
            ) => RunStatus::Crashed,
            Some(_) => RunStatus::SystemFailure,
        }
    }
}

macro_rules! codes {
    ($($variant:ident = $wire:literal),+ $(,)?) => {
        /// `INTERNAL_ERROR` codes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum InternalErrorCode {
            $(#[serde(rename = $wire)] $variant,)+
            /// A code this version does not know; kept so a newer worker's error still parses.
            #[serde(other)]
            Unknown,
        }

        impl InternalErrorCode {
            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $(InternalErrorCode::$variant => $wire,)+ InternalErrorCode::Unknown => "UNSPECIFIED_ERROR" }
            }
        }
    };
}

codes! {
    CouldNotFindExecutor = "COULD_NOT_FIND_EXECUTOR",
    CouldNotFindTask = "COULD_NOT_FIND_TASK",
    CouldNotImportTask = "COULD_NOT_IMPORT_TASK",
    ConfiguredIncorrectly = "CONFIGURED_INCORRECTLY",
    TaskAlreadyRunning = "TASK_ALREADY_RUNNING",
    TaskExecutionFailed = "TASK_EXECUTION_FAILED",
    TaskExecutionAborted = "TASK_EXECUTION_ABORTED",
    TaskProcessExitedWithNonZeroCode = "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE",
    TaskProcessSigkillTimeout = "TASK_PROCESS_SIGKILL_TIMEOUT",
    TaskProcessSigsegv = "TASK_PROCESS_SIGSEGV",
    TaskProcessSigterm = "TASK_PROCESS_SIGTERM",
    TaskProcessOomKilled = "TASK_PROCESS_OOM_KILLED",
    TaskProcessMaybeOomKilled = "TASK_PROCESS_MAYBE_OOM_KILLED",
    TaskRunCancelled = "TASK_RUN_CANCELLED",
    TaskInputError = "TASK_INPUT_ERROR",
    TaskOutputError = "TASK_OUTPUT_ERROR",
    TaskMiddlewareError = "TASK_MIDDLEWARE_ERROR",
    HandleErrorError = "HANDLE_ERROR_ERROR",
    GracefulExitTimeout = "GRACEFUL_EXIT_TIMEOUT",
    TaskRunHeartbeatTimeout = "TASK_RUN_HEARTBEAT_TIMEOUT",
    TaskRunCrashed = "TASK_RUN_CRASHED",
    TaskRunUncaughtException = "TASK_RUN_UNCAUGHT_EXCEPTION",
    MaxDurationExceeded = "MAX_DURATION_EXCEEDED",
    DiskSpaceExceeded = "DISK_SPACE_EXCEEDED",
    PodEvicted = "POD_EVICTED",
    PodUnknownError = "POD_UNKNOWN_ERROR",
    TaskHasNoExecutionSnapshot = "TASK_HAS_N0_EXECUTION_SNAPSHOT",
    TaskDequeuedInvalidState = "TASK_DEQUEUED_INVALID_STATE",
    TaskDequeuedQueueNotFound = "TASK_DEQUEUED_QUEUE_NOT_FOUND",
    TaskRunDequeuedMaxRetries = "TASK_RUN_DEQUEUED_MAX_RETRIES",
    TaskRunStalledExecuting = "TASK_RUN_STALLED_EXECUTING",
    TaskRunStalledExecutingWithWaitpoints = "TASK_RUN_STALLED_EXECUTING_WITH_WAITPOINTS",
    OutdatedSdkVersion = "OUTDATED_SDK_VERSION",
    TaskDidConcurrentWait = "TASK_DID_CONCURRENT_WAIT",
    RecursiveWaitDeadlock = "RECURSIVE_WAIT_DEADLOCK",
    BatchItemCouldNotTrigger = "BATCH_ITEM_COULD_NOT_TRIGGER",
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    UnspecifiedError = "UNSPECIFIED_ERROR",
}

impl InternalErrorCode {
    /// `shouldRetryError`: executor/import/config errors, OOM, cancel, max duration, disk,
    /// outdated SDK, heartbeat timeout, concurrent wait, deadlock, dequeue-state errors, batch
    /// item and payload errors are never retried.
    pub fn is_retriable(self) -> bool {
        use InternalErrorCode::*;
        !matches!(
            self,
            CouldNotFindExecutor
                | CouldNotFindTask
                | CouldNotImportTask
                | ConfiguredIncorrectly
                | TaskAlreadyRunning
                | TaskProcessOomKilled
                | TaskProcessMaybeOomKilled
                | TaskProcessSigkillTimeout
                | TaskRunCancelled
                | MaxDurationExceeded
                | DiskSpaceExceeded
                | OutdatedSdkVersion
                | TaskRunHeartbeatTimeout
                | TaskDidConcurrentWait
                | RecursiveWaitDeadlock
                | TaskHasNoExecutionSnapshot
                | TaskDequeuedInvalidState
                | TaskDequeuedQueueNotFound
                | TaskRunDequeuedMaxRetries
                | BatchItemCouldNotTrigger
                | PayloadTooLarge
                | UnspecifiedError
                | Unknown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_as_trigger_dev_union_and_map_to_statuses() {
        let e = TaskRunError::internal(InternalErrorCode::MaxDurationExceeded, "too long");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "INTERNAL_ERROR");
        assert_eq!(v["code"], "MAX_DURATION_EXCEEDED");
        assert_eq!(e.final_status(), RunStatus::TimedOut);
        assert!(!e.is_retriable());

        let built_in: TaskRunError = serde_json::from_value(serde_json::json!({
            "type": "BUILT_IN_ERROR", "name": "Error", "message": "boom", "stackTrace": "at x"
        }))
        .unwrap();
        assert!(built_in.is_retriable());
        assert_eq!(built_in.final_status(), RunStatus::Failed);
        assert_eq!(built_in.message(), "boom");

        let unknown: TaskRunError = serde_json::from_value(serde_json::json!({
            "type": "INTERNAL_ERROR", "code": "SOMETHING_NEW"
        }))
        .unwrap();
        assert_eq!(unknown.code(), Some(InternalErrorCode::Unknown));
        assert!(TaskRunError::internal(InternalErrorCode::TaskRunStalledExecuting, "").is_retriable());
        assert_eq!(
            TaskRunError::internal(InternalErrorCode::TaskRunCancelled, "").final_status(),
            RunStatus::Canceled
        );
        assert_eq!(
            TaskRunError::internal(InternalErrorCode::TaskProcessOomKilled, "").final_status(),
            RunStatus::Crashed
        );
    }
}
