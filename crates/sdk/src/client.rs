//! The backend used for calls made outside a task: set with [`configure`], or by the first
//! [`Worker`](crate::Worker) built when none is set.

use std::sync::RwLock;

use crate::backend::{Backend, SharedBackend};
use crate::error::{Error, Result};

static DEFAULT: RwLock<Option<SharedBackend>> = RwLock::new(None);

/// Sets the backend that `tasks::trigger`, `runs::*`, … use outside a task.
pub fn configure(backend: impl Backend) {
    *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(backend));
}

pub(crate) fn configure_if_unset(backend: SharedBackend) {
    let mut guard = DEFAULT.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(backend);
    }
}

pub(crate) fn default_backend() -> Result<SharedBackend> {
    DEFAULT.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Error::NoBackend)
}
