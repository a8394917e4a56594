//! Locals: values scoped to one run's attempt, typically set by middleware and read in
//! `run` (Trigger.dev's `locals`).
//!
//! ```
//! use trigger_sdk::locals::{self, LocalKey};
//!
//! #[derive(Clone)]
//! struct ApiClient;
//! static API_CLIENT: LocalKey<ApiClient> = locals::create("apiClient");
//!
//! // Outside a run there is nothing to read.
//! assert!(locals::get(&API_CLIENT).is_none());
//! ```
//!
//! Values live in the run's scope, which a task sees on the Tokio task that runs it (and in
//! futures it awaits). A task spawned with `tokio::spawn` from `run` does not see them.

use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::scope;

/// A typed key for a run-local value. Keys are compared by id, so ids must be unique.
#[derive(Debug)]
pub struct LocalKey<T> {
    id: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> LocalKey<T> {
    /// The key's id.
    pub const fn id(&self) -> &'static str {
        self.id
    }
}

/// Creates a key (`locals.create<T>(id)`); usable in a `static`.
pub const fn create<T>(id: &'static str) -> LocalKey<T> {
    LocalKey { id, _type: PhantomData }
}

/// The value of the current run, if set (a clone: store an `Arc` for shared state).
pub fn get<T: Clone + Send + Sync + 'static>(key: &LocalKey<T>) -> Option<T> {
    let scope = scope::current()?;
    let locals = scope.locals.lock().unwrap_or_else(|e| e.into_inner());
    locals.get(key.id).and_then(|v| v.downcast_ref::<T>()).cloned()
}

/// The value of the current run, or an error naming the key (`locals.getOrThrow`).
pub fn get_or_throw<T: Clone + Send + Sync + 'static>(key: &LocalKey<T>) -> Result<T> {
    get(key).ok_or_else(|| Error::Protocol(format!("local {:?} is not set in this run", key.id)))
}

/// Sets the value for the current run and returns it. Outside a run it is dropped.
pub fn set<T: Clone + Send + Sync + 'static>(key: &LocalKey<T>, value: T) -> T {
    if let Some(scope) = scope::current() {
        scope.locals.lock().unwrap_or_else(|e| e.into_inner()).insert(key.id, Box::new(value.clone()));
    }
    value
}
