//! Run, snapshot, waitpoint and batch statuses, with their wire names.

use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| format!("unknown {}: {s}", stringify!($name)))
            }
        }
    };
}

wire_enum! {
    /// A run's status as the API exposes it (`x-trigger-api-version: 2025-07-16`).
    RunStatus {
        PendingVersion = "PENDING_VERSION",
        Delayed = "DELAYED",
        Queued = "QUEUED",
        Dequeued = "DEQUEUED",
        Executing = "EXECUTING",
        Waiting = "WAITING",
        Completed = "COMPLETED",
        Canceled = "CANCELED",
        Failed = "FAILED",
        Crashed = "CRASHED",
        SystemFailure = "SYSTEM_FAILURE",
        Expired = "EXPIRED",
        TimedOut = "TIMED_OUT",
    }
}

impl RunStatus {
    /// A final status never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Canceled
                | RunStatus::Failed
                | RunStatus::Crashed
                | RunStatus::SystemFailure
                | RunStatus::Expired
                | RunStatus::TimedOut
        )
    }

    /// Final and not successful.
    pub fn is_failure(self) -> bool {
        self.is_final() && self != RunStatus::Completed
    }

    /// The API's `isQueued`.
    pub fn is_queued(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Delayed | RunStatus::PendingVersion)
    }

    /// The API's `isExecuting`.
    pub fn is_executing(self) -> bool {
        matches!(self, RunStatus::Executing | RunStatus::Dequeued)
    }

    /// The API's `isCompleted`. Like Trigger.dev, this excludes `EXPIRED` and `TIMED_OUT`
    /// (see `docs/api.md`); use [`RunStatus::is_final`] for "will never change".
    pub fn is_completed_api(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Canceled
                | RunStatus::Failed
                | RunStatus::Crashed
                | RunStatus::SystemFailure
        )
    }

    /// An idempotency key pointing at a run in this status starts a new run instead of
    /// returning the cached one (Trigger.dev v4, PR #2376).
    pub fn releases_idempotency_key(self) -> bool {
        matches!(
            self,
            RunStatus::Failed
                | RunStatus::Crashed
                | RunStatus::SystemFailure
                | RunStatus::TimedOut
                | RunStatus::Expired
        )
    }
}

wire_enum! {
    /// The engine's execution status: what an execution snapshot says the run is doing.
    ExecutionStatus {
        RunCreated = "RUN_CREATED",
        PendingVersion = "PENDING_VERSION",
        Delayed = "DELAYED",
        Queued = "QUEUED",
        QueuedExecuting = "QUEUED_EXECUTING",
        PendingExecuting = "PENDING_EXECUTING",
        Executing = "EXECUTING",
        ExecutingWithWaitpoints = "EXECUTING_WITH_WAITPOINTS",
        Suspended = "SUSPENDED",
        PendingCancel = "PENDING_CANCEL",
        Finished = "FINISHED",
    }
}

impl ExecutionStatus {
    /// A worker process is attached to the run in this status.
    pub fn has_worker(self) -> bool {
        matches!(
            self,
            ExecutionStatus::PendingExecuting
                | ExecutionStatus::Executing
                | ExecutionStatus::ExecutingWithWaitpoints
                | ExecutionStatus::QueuedExecuting
                | ExecutionStatus::PendingCancel
        )
    }
}

wire_enum! {
    /// What a waitpoint waits for.
    WaitpointType {
        Run = "RUN",
        DateTime = "DATETIME",
        Manual = "MANUAL",
        Batch = "BATCH",
    }
}

wire_enum! {
    /// Whether a waitpoint has completed.
    WaitpointStatus {
        Pending = "PENDING",
        Completed = "COMPLETED",
    }
}

wire_enum! {
    /// A batch's processing status.
    BatchStatus {
        Pending = "PENDING",
        Processing = "PROCESSING",
        Completed = "COMPLETED",
        PartialFailed = "PARTIAL_FAILED",
        Aborted = "ABORTED",
    }
}

wire_enum! {
    /// What completing an attempt led to.
    AttemptStatus {
        RunFinished = "RUN_FINISHED",
        RunPendingCancel = "RUN_PENDING_CANCEL",
        RetryQueued = "RETRY_QUEUED",
        RetryImmediately = "RETRY_IMMEDIATELY",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(*s));
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(
            ExecutionStatus::parse("EXECUTING_WITH_WAITPOINTS"),
            Some(ExecutionStatus::ExecutingWithWaitpoints)
        );
        assert_eq!(RunStatus::parse("nope"), None);
        assert!(!RunStatus::Expired.is_completed_api() && RunStatus::Expired.is_final());
        assert!(RunStatus::Failed.releases_idempotency_key());
        assert!(!RunStatus::Canceled.releases_idempotency_key());
    }
}
