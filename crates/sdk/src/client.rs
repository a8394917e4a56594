//! The backend used for calls made outside a task. In order: the one set with
//! [`configure`]; else, when `TRIGGER_SECRET_KEY` is set, an [`Http`] backend from
//! `TRIGGER_API_URL`, `TRIGGER_SECRET_KEY` and `TRIGGER_PROJECT_REF`; else the backend of
//! the first [`Worker`](crate::Worker) built in this process.

use std::sync::RwLock;

use crate::backend::{Backend, Http, SharedBackend};
use crate::error::{Error, Result};

static DEFAULT: RwLock<Option<SharedBackend>> = RwLock::new(None);

/// Sets the backend that `tasks::trigger`, `runs::*`, … use outside a task.
pub fn configure(backend: impl Backend) {
    *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(backend));
}

pub(crate) fn configure_if_unset(backend: SharedBackend) {
    let mut guard = DEFAULT.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() && std::env::var_os("TRIGGER_SECRET_KEY").is_none() {
        *guard = Some(backend);
    }
}

pub(crate) fn default_backend() -> Result<SharedBackend> {
    if let Some(backend) = DEFAULT.read().unwrap_or_else(|e| e.into_inner()).clone() {
        return Ok(backend);
    }
    if std::env::var_os("TRIGGER_SECRET_KEY").is_some() {
        let backend: SharedBackend = std::sync::Arc::new(Http::from_env()?);
        let mut guard = DEFAULT.write().unwrap_or_else(|e| e.into_inner());
        return Ok(guard.get_or_insert(backend).clone());
    }
    Err(Error::NoBackend)
}
