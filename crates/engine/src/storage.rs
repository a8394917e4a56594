//! The storage seam: what a backend must provide for the engine to run on it.
//!
//! The engine drives one [`Tx`] at a time from its writer thread and applies many commands
//! inside it (each behind a savepoint), so a backend sees few, large transactions. Methods
//! named `lock_*` read a row the transaction intends to change; a backend shared by several
//! processes (PostgreSQL) must lock it (`FOR UPDATE`) so two replicas never act on one run
//! at once. Counters of the concurrency tables are maintained by the backend inside
//! [`Tx::enqueue`], [`Tx::dequeue_entry`], [`Tx::acquire`] and [`Tx::release`], so that a
//! backend can make them atomic in whatever way suits it.
//!
//! Errors carry a portable [`ErrorKind`]; the engine never looks at SQLSTATE codes.

use std::collections::HashMap;
use std::sync::Arc;

use trigger_types::Millis;

use crate::model::*;
use crate::txn::Effect;

/// What went wrong in storage, in terms the engine can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A unique constraint was violated (idempotency key, batch item index, …).
    UniqueViolation,
    /// The transaction lost a race (serialization failure, deadlock, busy): retry it.
    Conflict,
    /// The database cannot be reached or is shutting down.
    Unavailable,
    /// Stored data could not be decoded.
    Corrupt,
    /// Anything else.
    Other,
}

/// A storage error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error ({kind:?}): {message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StorageError {
    /// A new error of a kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StorageError { kind, message: message.into() }
    }
}

/// Result of a storage call.
pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// Where a store delivers the effects other processes committed (see [`Store::listen`]).
pub type RemoteSink = Arc<dyn Fn(Vec<Effect>) + Send + Sync>;

/// The registry rows (environments, worker versions, tasks, queues) a backend may keep in
/// memory between transactions: they are read on every trigger, claim and attempt start
/// but change only when a worker registers or a queue or environment is changed.
///
/// The rules that keep it right, for a backend that uses it: fill entries only from reads
/// inside its own transactions; empty it on every registry write and on every rollback
/// (whole or to a savepoint), so it never holds what was not committed; and empty it when
/// another process may have changed the registry since (a backend shared by several
/// processes needs a way to tell, see the PostgreSQL store's registry generation).
#[derive(Debug, Default)]
pub struct RegistryCache {
    pub environments: HashMap<String, Option<Environment>>,
    pub workers: HashMap<String, Option<WorkerVersion>>,
    pub latest_worker: HashMap<String, Option<WorkerVersion>>,
    pub worker_lists: HashMap<(String, u32), Vec<WorkerVersion>>,
    pub tasks: HashMap<(String, String, String), Option<TaskDef>>,
    pub task_lists: HashMap<(String, String), Vec<TaskDef>>,
    pub queues: HashMap<(String, String), Option<QueueDef>>,
}

impl RegistryCache {
    /// Forgets every entry.
    pub fn clear(&mut self) {
        *self = RegistryCache::default();
    }
}

/// A database the engine can run on. Owned by the engine's writer thread.
pub trait Store: Send + 'static {
    /// Begins a read-write transaction.
    fn begin(&mut self) -> StorageResult<Box<dyn Tx + '_>>;

    /// Called once by the engine at start: a backend shared by several processes delivers
    /// to `sink` the effects the others publish with [`Tx::publish`] (work available, run
    /// changes), so that their dequeuers and change feeds wake here too. An
    /// [`Effect::WorkAvailable`] with an empty `env_id` wakes every environment (sent after
    /// notifications may have been missed). The backend keeps listening through failures
    /// on its own. Default: nothing to deliver (no other process writes).
    fn listen(&mut self, sink: RemoteSink) {
        let _ = sink;
    }
}

/// One transaction. Dropping it without [`Tx::commit`] rolls it back.
pub trait Tx {
    /// Commits everything written since `begin`.
    fn commit(self: Box<Self>) -> StorageResult<()>;
    /// Marks a point to roll back to (nested calls are not needed).
    fn savepoint(&mut self) -> StorageResult<()>;
    /// Forgets the savepoint, keeping its writes.
    fn release_savepoint(&mut self) -> StorageResult<()>;
    /// Undoes every write since the savepoint and forgets it.
    fn rollback_to_savepoint(&mut self) -> StorageResult<()>;
    /// Announces the transaction's effects to other processes sharing the database, to be
    /// delivered only if it commits. Called right before [`Tx::commit`] when there are
    /// effects. Default: nothing to announce to.
    fn publish(&mut self, effects: &[Effect]) -> StorageResult<()> {
        let _ = effects;
        Ok(())
    }

    // Tenancy: organisations, projects and credentials.

    fn insert_organization(&mut self, org: &Organization) -> StorageResult<()>;
    /// Organisations, oldest first.
    fn list_organizations(&mut self) -> StorageResult<Vec<Organization>>;
    /// `UniqueViolation` when the `external_ref` is taken.
    fn insert_project(&mut self, project: &Project) -> StorageResult<()>;
    fn get_project(&mut self, id: &str) -> StorageResult<Option<Project>>;
    fn find_project_by_ref(&mut self, external_ref: &str) -> StorageResult<Option<Project>>;
    /// Projects of an organisation, oldest first.
    fn list_projects(&mut self, org_id: &str) -> StorageResult<Vec<Project>>;
    /// `UniqueViolation` when the hash is taken.
    fn insert_api_key(&mut self, key: &ApiKey) -> StorageResult<()>;
    fn find_api_key_by_hash(&mut self, key_hash: &str) -> StorageResult<Option<ApiKey>>;
    fn get_api_key(&mut self, id: &str) -> StorageResult<Option<ApiKey>>;
    fn update_api_key(&mut self, key: &ApiKey) -> StorageResult<()>;
    /// Keys of one environment (`Some`) or keys bound to none (`None`: tokens), oldest first,
    /// revoked ones included.
    fn list_api_keys(&mut self, env_id: Option<&str>) -> StorageResult<Vec<ApiKey>>;

    // Environments, worker versions, tasks and queues.

    fn insert_environment(&mut self, env: &Environment) -> StorageResult<()>;
    fn get_environment(&mut self, id: &str) -> StorageResult<Option<Environment>>;
    fn update_environment(&mut self, env: &Environment) -> StorageResult<()>;
    /// Environments of a project, oldest first.
    fn list_environments(&mut self, project_id: &str) -> StorageResult<Vec<Environment>>;
    /// Runs of the environment holding a concurrency slot.
    fn env_running(&mut self, env_id: &str) -> StorageResult<u32>;

    fn insert_worker(&mut self, worker: &WorkerVersion) -> StorageResult<()>;
    fn get_worker(&mut self, id: &str) -> StorageResult<Option<WorkerVersion>>;
    /// The most recently registered worker version of an environment.
    fn latest_worker(&mut self, env_id: &str) -> StorageResult<Option<WorkerVersion>>;
    fn find_worker_by_version(&mut self, env_id: &str, version: &str)
        -> StorageResult<Option<WorkerVersion>>;
    /// Worker versions of an environment, newest first.
    fn list_workers(&mut self, env_id: &str, limit: u32) -> StorageResult<Vec<WorkerVersion>>;

    /// Inserts or replaces the task `(env_id, worker_id, slug)`.
    fn upsert_task(&mut self, task: &TaskDef) -> StorageResult<()>;
    fn get_task(&mut self, env_id: &str, worker_id: &str, slug: &str) -> StorageResult<Option<TaskDef>>;
    /// Tasks of one worker version, by slug.
    fn list_tasks(&mut self, env_id: &str, worker_id: &str) -> StorageResult<Vec<TaskDef>>;

    /// Inserts or replaces the queue `(env_id, name)`, and applies its limit and paused flag
    /// to the queue's subqueues.
    fn upsert_queue(&mut self, queue: &QueueDef) -> StorageResult<()>;
    fn get_queue(&mut self, env_id: &str, name: &str) -> StorageResult<Option<QueueDef>>;
    /// Queues of an environment, by name.
    fn list_queues(&mut self, env_id: &str) -> StorageResult<Vec<QueueDef>>;

    // Runs.

    /// Inserts a run and its payload. `UniqueViolation` when `(env_id, task,
    /// idempotency_key)` is taken.
    fn insert_run(&mut self, run: &Run, payload: &Packet) -> StorageResult<()>;
    /// Reads a run the transaction will change.
    fn lock_run(&mut self, id: &str) -> StorageResult<Option<Run>>;
    /// Reads several runs the transaction will change (a claim), each once, in any order;
    /// ids with no run are left out. A backend may read them in one statement.
    fn lock_runs(&mut self, ids: &[&str]) -> StorageResult<Vec<Run>> {
        let mut runs = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter().filter(|id| seen.insert(**id)) {
            runs.extend(self.lock_run(id)?);
        }
        Ok(runs)
    }
    /// Reads a run the transaction will change together with its payload (`None` when the
    /// run has none stored): an attempt start needs both. A backend may read them in one
    /// statement.
    fn lock_run_with_payload(&mut self, id: &str) -> StorageResult<Option<(Run, Option<Packet>)>> {
        match self.lock_run(id)? {
            Some(run) => Ok(Some((run, self.get_payload(id)?))),
            None => Ok(None),
        }
    }
    /// A hint that the transaction's commands are about to read (and change) these runs,
    /// and the payloads of `with_payload` (attempt starts). A backend whose reads are round
    /// trips may read them all now and answer the later [`Tx::lock_run`] and
    /// [`Tx::lock_run_with_payload`] calls from what it read, locked; such a backend must
    /// keep what it answers equal to what it would read (its own writes included, rollbacks
    /// undone). Default: nothing (reads are cheap).
    fn prefetch_runs(&mut self, ids: &[&str], with_payload: &[&str]) -> StorageResult<()> {
        let _ = (ids, with_payload);
        Ok(())
    }
    /// Reads a run.
    fn get_run(&mut self, id: &str) -> StorageResult<Option<Run>>;
    /// Writes an existing run (not its payload or output). The fields fixed at insert —
    /// `env_id`, `task`, `queue`, `parent_run_id`, `root_run_id`, `batch_id`, `created_at`,
    /// `is_test` — never change, so a backend need not rewrite their columns or indexes.
    fn update_run(&mut self, run: &Run) -> StorageResult<()>;
    fn get_payload(&mut self, run_id: &str) -> StorageResult<Option<Packet>>;
    fn set_output(&mut self, run_id: &str, output: &Packet) -> StorageResult<()>;
    fn get_output(&mut self, run_id: &str) -> StorageResult<Option<Packet>>;
    fn find_run_by_idempotency_key(
        &mut self,
        env_id: &str,
        task: &str,
        key: &str,
    ) -> StorageResult<Option<Run>>;
    /// Runs matching a filter, newest first, one page.
    fn list_runs(&mut self, filter: &RunFilter, page: &Page) -> StorageResult<Vec<Run>>;
    /// Direct children of a run, oldest first.
    fn list_children(&mut self, parent_run_id: &str) -> StorageResult<Vec<Run>>;
    /// Runs of an environment in a status, oldest first (used for `PENDING_VERSION`).
    fn list_runs_in_status(
        &mut self,
        env_id: &str,
        status: trigger_types::RunStatus,
        limit: u32,
    ) -> StorageResult<Vec<Run>>;

    // Execution snapshots.

    fn insert_snapshot(&mut self, snapshot: &Snapshot) -> StorageResult<()>;
    fn get_snapshot(&mut self, id: &str) -> StorageResult<Option<Snapshot>>;
    /// A run's snapshots after `after_id` (all when `None`), oldest first.
    fn list_snapshots(&mut self, run_id: &str, after_id: Option<&str>) -> StorageResult<Vec<Snapshot>>;

    // Queues and concurrency.

    /// Puts a run in its subqueue (creating the subqueue with the queue's limit if needed)
    /// and keeps the subqueue's `ready_count` and `head_score` current. Replaces an existing
    /// entry of the same run.
    fn enqueue(&mut self, entry: &ReadyEntry) -> StorageResult<()>;
    /// [`Tx::enqueue`] for a run that was never queued, so that it has no entry to replace:
    /// a backend may hold the insert back and send it with others. Queuing a run twice
    /// this way is an error, reported by this call or at the latest by the commit.
    fn enqueue_first(&mut self, entry: &ReadyEntry) -> StorageResult<()> {
        self.enqueue(entry)
    }
    /// Takes a run out of its subqueue; `None` when it was not queued.
    fn dequeue_entry(&mut self, run_id: &str) -> StorageResult<Option<ReadyEntry>>;
    /// Takes several runs out of their subqueues (a claim), ignoring those not queued. A
    /// backend may update each subqueue's counts once for all of them.
    fn dequeue_entries(&mut self, run_ids: &[&str]) -> StorageResult<()> {
        for id in run_ids {
            self.dequeue_entry(id)?;
        }
        Ok(())
    }
    /// Subqueues of an environment that have ready runs, are not paused and are below their
    /// limit (`running < min(limit, env_limit)`), lowest `head_score` first. A backend shared
    /// by several processes locks the rows it returns, skipping rows locked by others.
    fn claimable_subqueues(&mut self, env_id: &str, env_limit: u32, max: u32)
        -> StorageResult<Vec<Subqueue>>;
    /// The first `max` ready entries of a subqueue, lowest score first.
    fn peek_subqueue(
        &mut self,
        env_id: &str,
        queue: &str,
        concurrency_key: &str,
        max: u32,
    ) -> StorageResult<Vec<ReadyEntry>>;
    /// [`Tx::peek_subqueue`] and the entries' runs read for change ([`Tx::lock_runs`]): the
    /// first step of a claim. A backend may read both in one statement; an entry whose run
    /// is missing may then be left out. `with_payloads` says the payloads will be read next
    /// (the claim starts the attempts), for a backend that can read them now as
    /// [`Tx::prefetch_runs`] does.
    fn peek_and_lock(
        &mut self,
        env_id: &str,
        queue: &str,
        concurrency_key: &str,
        max: u32,
        with_payloads: bool,
    ) -> StorageResult<(Vec<ReadyEntry>, Vec<Run>)> {
        let _ = with_payloads;
        let entries = self.peek_subqueue(env_id, queue, concurrency_key, max)?;
        let ids: Vec<&str> = entries.iter().map(|e| e.run_id.as_str()).collect();
        let runs = self.lock_runs(&ids)?;
        Ok((entries, runs))
    }
    fn get_subqueue(
        &mut self,
        env_id: &str,
        queue: &str,
        concurrency_key: &str,
    ) -> StorageResult<Option<Subqueue>>;
    /// Subqueues of one queue (one per concurrency key in use), by key.
    fn list_subqueues(&mut self, env_id: &str, queue: &str) -> StorageResult<Vec<Subqueue>>;
    /// Gives a run a concurrency slot: records the holder and increments the subqueue's and
    /// the environment's running counts. Returns false (and changes nothing) when the run
    /// already holds one.
    fn acquire(&mut self, holder: &Holder) -> StorageResult<bool>;
    /// [`Tx::acquire`] for several runs (a claim); returns how many slots were taken. A
    /// backend may update each subqueue's and the environment's counts once.
    fn acquire_many(&mut self, holders: &[Holder]) -> StorageResult<u32> {
        let mut taken = 0;
        for h in holders {
            taken += u32::from(self.acquire(h)?);
        }
        Ok(taken)
    }
    /// [`Tx::acquire_many`] for the runs a claim just took off the queue, which hold no slot
    /// (queued runs never do): nobody needs the count, so a backend may send it without
    /// waiting for the answer.
    fn acquire_claimed(&mut self, holders: &[Holder]) -> StorageResult<()> {
        self.acquire_many(holders).map(drop)
    }
    /// Frees a run's slot and decrements the counts. Returns false when it held none.
    fn release(&mut self, run_id: &str) -> StorageResult<bool>;
    /// [`Tx::release`], and when a slot was freed, the first ready entry of the subqueue
    /// `(env_id, queue, concurrency_key)` (the run's own) if it is a resume entry
    /// ([`ReadyEntry::resume`]): what a completion does next. A backend may do both in one
    /// statement. It may also answer `(true, None)` without looking (and hold the release
    /// back, to send with others) when it knows that no resume entry is queued in that
    /// subqueue; `true` then means only that the run may have held a slot. The default
    /// answers `(false, None)` without a slot, `(true, None)` when
    /// [`Tx::may_have_resume`] says no, else the head, whatever it is.
    fn release_and_peek(
        &mut self,
        run_id: &str,
        env_id: &str,
        queue: &str,
        concurrency_key: &str,
    ) -> StorageResult<(bool, Option<ReadyEntry>)> {
        if !self.release(run_id)? {
            return Ok((false, None));
        }
        if !self.may_have_resume(env_id, queue, concurrency_key)? {
            return Ok((true, None));
        }
        let head = self.peek_subqueue(env_id, queue, concurrency_key, 1)?;
        Ok((true, head.into_iter().next()))
    }
    /// Whether a resume entry may be queued in the subqueue; false lets
    /// [`Tx::release_and_peek`] skip reading its head. The default does not know.
    fn may_have_resume(
        &mut self,
        _env_id: &str,
        _queue: &str,
        _concurrency_key: &str,
    ) -> StorageResult<bool> {
        Ok(true)
    }
    fn get_holder(&mut self, run_id: &str) -> StorageResult<Option<Holder>>;

    // Timers.

    /// Inserts or moves the timer with this key.
    fn set_timer(&mut self, timer: &Timer) -> StorageResult<()>;
    fn clear_timer(&mut self, key: &str) -> StorageResult<()>;
    fn get_timer(&mut self, key: &str) -> StorageResult<Option<Timer>>;
    /// Removes and returns up to `max` timers due at `now`, earliest first. A backend shared
    /// by several processes must hand each timer to exactly one of them.
    fn take_due_timers(&mut self, now: Millis, max: u32) -> StorageResult<Vec<Timer>>;
    /// When the earliest timer fires.
    fn next_timer_at(&mut self) -> StorageResult<Option<Millis>>;

    // Waitpoints.

    /// `UniqueViolation` when `(env_id, idempotency_key)` is taken.
    fn insert_waitpoint(&mut self, waitpoint: &Waitpoint) -> StorageResult<()>;
    fn lock_waitpoint(&mut self, id: &str) -> StorageResult<Option<Waitpoint>>;
    fn update_waitpoint(&mut self, waitpoint: &Waitpoint) -> StorageResult<()>;
    fn find_waitpoint_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Waitpoint>>;
    /// The `RUN` waitpoint a run completes, if one was created.
    fn find_run_waitpoint(&mut self, run_id: &str) -> StorageResult<Option<Waitpoint>>;
    /// Waitpoints matching a filter, newest first, one page (cursor over ids).
    fn list_waitpoints(&mut self, filter: &WaitpointFilter, page: &Page) -> StorageResult<Vec<Waitpoint>>;

    /// Blocks a run on a waitpoint. Returns false when the same edge
    /// `(run, waitpoint, batch_index)` already exists.
    fn insert_block(&mut self, edge: &BlockEdge) -> StorageResult<bool>;
    /// The edges blocking a run, in insertion order.
    fn list_blocks(&mut self, run_id: &str) -> StorageResult<Vec<BlockEdge>>;
    /// The runs blocked by a waitpoint, each once (in order of their first edge), with the
    /// number of edges it has to that waitpoint (several batch items can share one).
    fn runs_blocked_by(&mut self, waitpoint_id: &str) -> StorageResult<Vec<(String, u32)>>;
    fn delete_blocks(&mut self, run_id: &str) -> StorageResult<()>;

    // Batches.

    fn insert_batch(&mut self, batch: &Batch) -> StorageResult<()>;
    fn lock_batch(&mut self, id: &str) -> StorageResult<Option<Batch>>;
    fn update_batch(&mut self, batch: &Batch) -> StorageResult<()>;
    fn find_batch_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Batch>>;
    /// Records item `index` of a batch. Returns false when that index is already recorded.
    fn insert_batch_item(&mut self, batch_id: &str, index: u32, run_id: &str) -> StorageResult<bool>;
    /// [`Tx::insert_batch_item`] for a caller that knows the index is not recorded yet and
    /// needs no answer; a backend may send it without waiting.
    fn record_batch_item(&mut self, batch_id: &str, index: u32, run_id: &str) -> StorageResult<()> {
        self.insert_batch_item(batch_id, index, run_id).map(drop)
    }
    /// The run of item `index` of a batch, if recorded.
    fn get_batch_item(&mut self, batch_id: &str, index: u32) -> StorageResult<Option<String>>;
    /// `(index, run_id)` of a batch's items, by index.
    fn list_batch_items(&mut self, batch_id: &str) -> StorageResult<Vec<(u32, String)>>;
    /// Batches of an environment, newest first.
    fn list_batches(&mut self, env_id: &str, page: &Page) -> StorageResult<Vec<Batch>>;

    // Run events.

    /// Appends events, assigning increasing `seq` values.
    fn insert_events(&mut self, events: &[RunEvent]) -> StorageResult<()>;
    /// A run's events with `seq > after_seq`, in order.
    fn list_events(&mut self, run_id: &str, after_seq: i64, max: u32) -> StorageResult<Vec<RunEvent>>;
}
