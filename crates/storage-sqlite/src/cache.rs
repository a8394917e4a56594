//! A cache of the registry (environments, worker versions, tasks, queues) for one store.
//!
//! These rows are read on every trigger, claim and attempt start but change only when a
//! worker registers or a queue or environment is changed, which all go through this store.
//! Any such write, and any rollback, empties the cache; entries are only ever filled from
//! reads inside this store's own transactions. A SQLite file is owned by one engine
//! process (see `docs/architecture.md`), so no other writer can make an entry stale.

use std::collections::HashMap;

use trigger_engine::model::{Environment, QueueDef, TaskDef, WorkerVersion};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub environments: HashMap<String, Option<Environment>>,
    pub workers: HashMap<String, Option<WorkerVersion>>,
    pub latest_worker: HashMap<String, Option<WorkerVersion>>,
    pub worker_lists: HashMap<(String, u32), Vec<WorkerVersion>>,
    pub tasks: HashMap<(String, String, String), Option<TaskDef>>,
    pub task_lists: HashMap<(String, String), Vec<TaskDef>>,
    pub queues: HashMap<(String, String), Option<QueueDef>>,
}

impl Registry {
    pub fn clear(&mut self) {
        *self = Registry::default();
    }
}
