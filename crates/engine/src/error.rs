//! Engine errors, each mapping to one HTTP status in the server.

use crate::storage::{ErrorKind, StorageError};

/// Why an engine call did not happen. None of these leave anything written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The run, batch, waitpoint, task or environment does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Input is well-formed but not acceptable, naming the field (422).
    #[error("{0}")]
    Invalid(String),
    /// A value is over its size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The call names a snapshot that is no longer the run's latest: something else
    /// happened to the run since the caller last looked (409).
    #[error("stale snapshot: the call names {given}, but the run's latest snapshot is {latest} ({status})")]
    StaleSnapshot { given: String, latest: String, status: String },
    /// The run is not in a state that allows this call (409 or 422 in the server).
    #[error("{0}")]
    InvalidState(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Shutdown,
}

impl Error {
    /// True when retrying the same call may succeed (lost race, database unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Storage(StorageError { kind: ErrorKind::Conflict | ErrorKind::Unavailable, .. })
        )
    }
}

/// Result of an engine call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn not_found(what: &str, id: &str) -> Error {
    Error::NotFound(format!("{what} not found: {id}"))
}
