//! Shared vocabulary of trigger.rs: identifiers, run and snapshot statuses, the
//! `TaskRunError` union, retry and machine options, duration strings and idempotency keys.
//!
//! Field and variant names follow Trigger.dev v4's wire format, so these types serialize to
//! exactly what the official SDK expects.
//!
//! ```
//! use trigger_types::{ids, RetryOptions, RunStatus};
//!
//! let id = ids::generate(ids::RUN);
//! assert!(id.starts_with("run_"));
//! let retry = RetryOptions { randomize: false, ..RetryOptions::default() };
//! assert_eq!(retry.delay_for_attempt(1, 0.0), Some(1000));
//! assert_eq!(retry.delay_for_attempt(2, 0.0), Some(2000));
//! assert!(RunStatus::Completed.is_final());
//! ```

pub mod duration;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod machine;
pub mod retry;
pub mod status;
pub mod superjson;

pub use duration::{parse_duration, parse_idempotency_ttl, DurationError};
pub use error::{InternalErrorCode, TaskRunError};
pub use machine::MachinePreset;
pub use retry::RetryOptions;
pub use status::{AttemptStatus, BatchStatus, ExecutionStatus, RunStatus, WaitpointStatus, WaitpointType};

/// Milliseconds since the Unix epoch: the one time representation inside the engine.
pub type Millis = i64;
