//! Queues: declared once, shared by tasks, registered with the worker.

use std::borrow::Cow;

/// A queue (`queue({ name, concurrencyLimit })`). Declare it once, usually as a `static`,
/// and pass it to every task that shares it.
///
/// ```
/// use trigger_sdk::{queue, Queue};
/// static PROCESS_QUEUE: Queue = queue("process-queue").concurrency_limit(3);
/// assert_eq!(PROCESS_QUEUE.name(), "process-queue");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: Cow<'static, str>,
    concurrency_limit: Option<u32>,
}

/// Declares a queue with no limit of its own (the environment's limit applies).
pub const fn queue(name: &'static str) -> Queue {
    Queue { name: Cow::Borrowed(name), concurrency_limit: None }
}

impl Queue {
    /// A queue with a name built at runtime.
    pub fn named(name: impl Into<String>) -> Queue {
        Queue { name: Cow::Owned(name.into()), concurrency_limit: None }
    }

    /// At most this many runs of the queue execute at once (per concurrency key).
    pub const fn concurrency_limit(mut self, limit: u32) -> Queue {
        self.concurrency_limit = Some(limit);
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's limit.
    pub fn limit(&self) -> Option<u32> {
        self.concurrency_limit
    }
}
