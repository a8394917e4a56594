//! [`SqliteTx`]: the engine's [`Tx`] over one SQLite transaction.
//!
//! Every statement goes through `prepare_cached`, and each method runs as few statements as
//! it can: the engine applies thousands of commands per transaction from one thread, so
//! statement count is what the hot path costs.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use rusqlite::types::{Type, Value, ValueRef};
use rusqlite::{params, params_from_iter, CachedStatement, Connection, Params, Row};
use serde::de::DeserializeOwned;
use trigger_engine::model::{
    ApiKey, Batch, BlockEdge, Environment, Holder, Organization, Packet, Page, Project, QueueDef, ReadyEntry,
    Run, RunEvent, RunFilter, Snapshot, Subqueue, TaskDef, Timer, TimerKind, Waitpoint, WaitpointFilter,
    WorkerVersion,
};
use trigger_engine::storage::{ErrorKind, RegistryCache, StorageError, StorageResult, Tx};
use trigger_types::{Millis, RunStatus, WaitpointStatus};

use crate::checkpoint::Checkpointer;
use crate::counts::{HeldCounts, SubqueueKey};
use crate::error::{decode, encode, from_sqlite, kind_of, DbResult};

/// Page size when [`Page::size`] is 0.
const DEFAULT_PAGE_SIZE: u32 = 25;

/// One open transaction on a [`crate::SqliteStore`]'s connection. Dropping it without
/// [`Tx::commit`] rolls it back.
pub struct SqliteTx<'c> {
    conn: &'c Connection,
    /// Told of each commit (file databases).
    checkpointer: Option<&'c Checkpointer>,
    registry: &'c mut RegistryCache,
    /// Still needs a `COMMIT` or `ROLLBACK`.
    open: bool,
    /// Set when SQLite rolled the whole transaction back on an error (I/O, disk full, …).
    /// Every later call fails with that error's kind: run on, its statements would each
    /// commit on their own, outside any transaction.
    aborted: Cell<Option<ErrorKind>>,
    /// The indexed columns of each run this transaction read or wrote, as they are in the
    /// database now: `update_run` sets only the ones that change (each indexed column in a
    /// SET list costs an index rewrite). Forgotten on a rollback to a savepoint.
    run_columns: RefCell<HashMap<String, RunColumns>>,
    /// Queue counter changes not written yet (see [`HeldCounts`]).
    counts: RefCell<HeldCounts>,
    /// The subqueues with a resume entry queued, read once per transaction when a slot is
    /// given back, and kept current by this transaction's own enqueues.
    resumes: Option<HashSet<SubqueueKey>>,
    /// Payloads read with a claim's runs ([`Tx::peek_and_lock`]), each handed out once by
    /// `get_payload` (payloads never change after insert).
    payloads: HashMap<String, Option<Packet>>,
}

/// A run's values of the columns `update_run` may change, other than the body.
#[derive(Debug, Clone, PartialEq)]
struct RunColumns {
    status: RunStatus,
    /// What the `version` column is computed from.
    worker_id: Option<String>,
    lock_to_version: Option<String>,
    machine: Option<&'static str>,
    idempotency_key: Option<String>,
    tags: Vec<String>,
}

impl RunColumns {
    fn of(run: &Run) -> Self {
        RunColumns {
            status: run.status,
            worker_id: run.worker_id.clone(),
            lock_to_version: run.lock_to_version.clone(),
            machine: run.machine.map(|m| m.name()),
            idempotency_key: run.idempotency_key.clone(),
            tags: run.tags.clone(),
        }
    }
}

impl<'c> SqliteTx<'c> {
    /// Wraps a connection on which `BEGIN` has just run.
    pub(crate) fn new(
        conn: &'c Connection,
        registry: &'c mut RegistryCache,
        checkpointer: Option<&'c Checkpointer>,
    ) -> Self {
        SqliteTx {
            conn,
            checkpointer,
            registry,
            open: true,
            aborted: Cell::new(None),
            run_columns: RefCell::default(),
            counts: RefCell::default(),
            resumes: None,
            payloads: HashMap::new(),
        }
    }

    fn prepare(&self, sql: &str) -> StorageResult<CachedStatement<'c>> {
        if let Some(kind) = self.aborted.get() {
            return Err(StorageError::new(
                kind,
                "the transaction was rolled back by SQLite after an earlier error",
            ));
        }
        self.check(self.conn.prepare_cached(sql))
    }

    /// Converts a statement's error, noticing when it ended the transaction.
    fn check<T>(&self, r: rusqlite::Result<T>) -> StorageResult<T> {
        r.map_err(|e| {
            if self.conn.is_autocommit() {
                self.aborted.set(Some(kind_of(&e)));
            }
            from_sqlite(e)
        })
    }

    fn exec(&self, sql: &str, p: impl Params) -> StorageResult<usize> {
        let mut stmt = self.prepare(sql)?;
        self.check(stmt.execute(p))
    }

    /// The JSON body in column 0 of the first row, decoded.
    fn body<T: DeserializeOwned>(&self, sql: &str, p: impl Params) -> StorageResult<Option<T>> {
        let mut stmt = self.prepare(sql)?;
        let mut rows = self.check(stmt.query(p))?;
        match self.check(rows.next())? {
            Some(row) => Ok(Some(decode(text(row, 0)?)?)),
            None => Ok(None),
        }
    }

    /// The JSON bodies in column 0 of every row, decoded.
    fn bodies<T: DeserializeOwned>(&self, sql: &str, p: impl Params) -> StorageResult<Vec<T>> {
        let mut stmt = self.prepare(sql)?;
        let mut rows = self.check(stmt.query(p))?;
        let mut out = Vec::new();
        while let Some(row) = self.check(rows.next())? {
            out.push(decode(text(row, 0)?)?);
        }
        Ok(out)
    }

    /// The first row, mapped.
    fn row<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StorageResult<Option<T>> {
        let mut stmt = self.prepare(sql)?;
        let mut rows = self.check(stmt.query(p))?;
        match self.check(rows.next())? {
            Some(row) => Ok(Some(f(row).db()?)),
            None => Ok(None),
        }
    }

    /// Every row, mapped.
    fn rows<T>(
        &self,
        sql: &str,
        p: impl Params,
        mut f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StorageResult<Vec<T>> {
        let mut stmt = self.prepare(sql)?;
        let mut rows = self.check(stmt.query(p))?;
        let mut out = Vec::new();
        while let Some(row) = self.check(rows.next())? {
            out.push(f(row).db()?);
        }
        Ok(out)
    }

    /// Runs a list query built by [`Query`]; reverses it when it was read oldest first.
    fn list<T: DeserializeOwned>(&self, q: Query) -> StorageResult<Vec<T>> {
        let mut out: Vec<T> = self.bodies(&q.sql, params_from_iter(q.args))?;
        if q.reverse {
            out.reverse();
        }
        Ok(out)
    }

    /// Writes the held counter changes: one statement per subqueue (its head recomputed
    /// from its entries) and per environment.
    fn flush_counts(&self) -> StorageResult<()> {
        if self.counts.borrow().is_empty() {
            return Ok(());
        }
        let (subqueues, envs) = {
            let mut counts = self.counts.borrow_mut();
            (counts.take_subqueues(), counts.take_envs())
        };
        for ((env_id, queue, ck), (ready, running)) in subqueues {
            if (ready, running) == (0, 0) {
                // Only the head may have moved; an absent subqueue stays absent (all zero).
                self.exec(
                    "UPDATE subqueues SET head_score = (SELECT min(score) FROM ready
                                                        WHERE env_id = ?1 AND queue = ?2 AND ck = ?3)
                     WHERE env_id = ?1 AND queue = ?2 AND ck = ?3",
                    params![env_id, queue, ck],
                )?;
                continue;
            }
            // A new subqueue takes its queue's limit and paused flag; a subqueue whose counts
            // reach zero is deleted by the `subqueues_drop_idle` trigger.
            self.exec(
                "INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused, head_score)
                 VALUES (?1, ?2, ?3, max(?4, 0), max(?5, 0),
                         (SELECT lim FROM queues WHERE env_id = ?1 AND name = ?2),
                         coalesce((SELECT paused FROM queues WHERE env_id = ?1 AND name = ?2), 0),
                         (SELECT min(score) FROM ready WHERE env_id = ?1 AND queue = ?2 AND ck = ?3))
                 ON CONFLICT (env_id, queue, ck) DO UPDATE SET
                     ready_count = max(ready_count + ?4, 0),
                     running = max(running + ?5, 0),
                     head_score = excluded.head_score",
                params![env_id, queue, ck, ready, running],
            )?;
        }
        for (env_id, n) in envs {
            self.exec(
                "INSERT INTO env_running (env_id, running) VALUES (?1, max(?2, 0))
                 ON CONFLICT (env_id) DO UPDATE SET running = max(running + ?2, 0)",
                params![env_id, n],
            )?;
        }
        Ok(())
    }

    /// Notes a resume entry queued by this transaction.
    fn queued(&mut self, e: &ReadyEntry) {
        if e.resume {
            if let Some(found) = self.resumes.as_mut() {
                found.insert((e.env_id.clone(), e.queue.clone(), e.concurrency_key.clone()));
            }
        }
    }

    /// Forgets what the transaction held or knew (rolled back).
    fn forget_held(&mut self) {
        self.registry.clear();
        self.run_columns.get_mut().clear();
        self.counts.get_mut().clear();
        self.resumes = None;
        self.payloads.clear();
    }

    /// Writes a run's row; `tags` is its tags encoded.
    fn write_run(&self, sql: &str, run: &Run, tags: &str) -> StorageResult<usize> {
        let body = encode(run)?;
        self.exec(
            sql,
            params![
                run.id,
                run.env_id,
                run.task,
                run.status.as_str(),
                run.queue,
                run.batch_id,
                run.parent_run_id,
                run.worker_id,
                run.lock_to_version,
                run.is_test,
                run.machine.map(|m| m.name()),
                run.created_at,
                run.idempotency_key,
                tags,
                body,
            ],
        )
    }

    fn write_waitpoint(&self, sql: &str, w: &Waitpoint) -> StorageResult<usize> {
        let tags = encode(&w.tags)?;
        let body = encode(w)?;
        self.exec(
            sql,
            params![
                w.id,
                w.env_id,
                w.kind.as_str(),
                w.status.as_str(),
                w.idempotency_key,
                w.completed_by_run_id,
                w.output_is_error,
                w.created_at,
                tags,
                body,
            ],
        )
    }
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.forget_held();
            // Nothing to report to: a failed rollback (the transaction may already have been
            // rolled back by SQLite after an I/O error) leaves no transaction open either way.
            let _ = self.exec("ROLLBACK", []);
        }
    }
}

/// Column `idx` as UTF-8 JSON text.
fn text<'r>(row: &'r Row<'_>, idx: usize) -> StorageResult<&'r [u8]> {
    match row.get_ref(idx).db()? {
        ValueRef::Text(b) | ValueRef::Blob(b) => Ok(b),
        other => Err(StorageError::new(
            ErrorKind::Corrupt,
            format!("row body is {}, not JSON text", other.data_type()),
        )),
    }
}

fn must_exist(changed: usize, what: &str, id: &str) -> StorageResult<()> {
    if changed == 0 {
        return Err(StorageError::new(ErrorKind::Other, format!("{what} {id} does not exist")));
    }
    Ok(())
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

fn packet(data: Option<String>, data_type: Option<String>) -> Option<Packet> {
    data_type.map(|data_type| Packet { data, data_type })
}

fn subqueue_row(r: &Row<'_>) -> rusqlite::Result<Subqueue> {
    Ok(Subqueue {
        env_id: r.get(0)?,
        queue: r.get(1)?,
        concurrency_key: r.get(2)?,
        ready_count: r.get(3)?,
        running: r.get(4)?,
        limit: r.get(5)?,
        paused: r.get(6)?,
        head_score: r.get(7)?,
    })
}

fn timer_row(r: &Row<'_>) -> rusqlite::Result<Timer> {
    let kind: String = r.get(1)?;
    let kind = TimerKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            Type::Text,
            format!("unknown timer kind {kind:?}").into(),
        )
    })?;
    Ok(Timer { key: r.get(0)?, kind, target: r.get(2)?, fence: r.get(3)?, fire_at: r.get(4)? })
}

/// A list query assembled from optional filters, with one bound argument per filter. Lists
/// are bound as one JSON array (`IN (SELECT value FROM json_each(?))`), so the SQL text, and
/// so the cached statement, depends only on which filters are present.
struct Query {
    sql: String,
    args: Vec<Value>,
    /// Read oldest first (a `before` cursor): reverse to return newest first.
    reverse: bool,
}

impl Query {
    fn new(select: &str) -> Self {
        Query { sql: format!("{select} WHERE 1"), args: Vec::new(), reverse: false }
    }

    /// Appends `AND cond`, where `cond` has one `?`.
    fn and(&mut self, cond: &str, arg: impl Into<Value>) {
        self.sql.push_str(" AND ");
        self.sql.push_str(cond);
        self.args.push(arg.into());
    }

    /// Appends `AND cond` with a JSON array of `items` for its `?`, unless `items` is empty.
    fn and_any<S: AsRef<str>>(&mut self, cond: &str, items: &[S]) -> StorageResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let list: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
        self.and(cond, encode(&list)?);
        Ok(())
    }

    /// Adds the cursor conditions, the newest-first order and the page size.
    fn page(mut self, page: &Page) -> Self {
        if let Some(after) = &page.after {
            self.and("id < ?", after.clone());
        }
        if let Some(before) = &page.before {
            self.and("id > ?", before.clone());
            // The page just newer than `before` is its oldest ids: read them ascending.
            self.reverse = true;
        }
        self.sql.push_str(if self.reverse {
            " ORDER BY id ASC LIMIT ?"
        } else {
            " ORDER BY id DESC LIMIT ?"
        });
        let size = if page.size == 0 { DEFAULT_PAGE_SIZE } else { page.size };
        self.args.push(Value::Integer(limit(size)));
        self
    }
}

impl Tx for SqliteTx<'_> {
    fn commit(mut self: Box<Self>) -> StorageResult<()> {
        // On failure `open` stays set, so dropping `self` rolls back.
        self.flush_counts()?;
        self.exec("COMMIT", [])?;
        self.open = false;
        if let Some(checkpointer) = self.checkpointer {
            checkpointer.committed(self.conn);
        }
        Ok(())
    }

    fn savepoint(&mut self) -> StorageResult<()> {
        // What is held belongs before the savepoint.
        self.flush_counts()?;
        self.exec("SAVEPOINT sp", [])?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> StorageResult<()> {
        self.exec("RELEASE sp", [])?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> StorageResult<()> {
        // ROLLBACK TO keeps the savepoint on the stack; RELEASE pops it.
        self.forget_held();
        self.exec("ROLLBACK TO sp", [])?;
        self.exec("RELEASE sp", [])?;
        Ok(())
    }

    // Tenancy: organisations, projects and credentials.

    fn insert_organization(&mut self, org: &Organization) -> StorageResult<()> {
        self.exec(
            "INSERT INTO organizations (id, created_at, body) VALUES (?1, ?2, ?3)",
            params![org.id, org.created_at, encode(org)?],
        )?;
        Ok(())
    }

    fn list_organizations(&mut self) -> StorageResult<Vec<Organization>> {
        self.bodies("SELECT body FROM organizations ORDER BY created_at, id", [])
    }

    fn insert_project(&mut self, p: &Project) -> StorageResult<()> {
        self.exec(
            "INSERT INTO projects (id, external_ref, org_id, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.id, p.external_ref, p.org_id, p.created_at, encode(p)?],
        )?;
        Ok(())
    }

    fn get_project(&mut self, id: &str) -> StorageResult<Option<Project>> {
        self.body("SELECT body FROM projects WHERE id = ?1", [id])
    }

    fn find_project_by_ref(&mut self, external_ref: &str) -> StorageResult<Option<Project>> {
        self.body("SELECT body FROM projects WHERE external_ref = ?1", [external_ref])
    }

    fn list_projects(&mut self, org_id: &str) -> StorageResult<Vec<Project>> {
        self.bodies("SELECT body FROM projects WHERE org_id = ?1 ORDER BY created_at, id", [org_id])
    }

    fn insert_api_key(&mut self, k: &ApiKey) -> StorageResult<()> {
        self.exec(
            "INSERT INTO api_keys (id, env_id, key_hash, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![k.id, k.env_id, k.key_hash, k.created_at, encode(k)?],
        )?;
        Ok(())
    }

    fn find_api_key_by_hash(&mut self, key_hash: &str) -> StorageResult<Option<ApiKey>> {
        self.body("SELECT body FROM api_keys WHERE key_hash = ?1", [key_hash])
    }

    fn get_api_key(&mut self, id: &str) -> StorageResult<Option<ApiKey>> {
        self.body("SELECT body FROM api_keys WHERE id = ?1", [id])
    }

    fn update_api_key(&mut self, k: &ApiKey) -> StorageResult<()> {
        let n = self.exec(
            "UPDATE api_keys SET env_id = ?2, key_hash = ?3, created_at = ?4, body = ?5 WHERE id = ?1",
            params![k.id, k.env_id, k.key_hash, k.created_at, encode(k)?],
        )?;
        must_exist(n, "api key", &k.id)
    }

    fn list_api_keys(&mut self, env_id: Option<&str>) -> StorageResult<Vec<ApiKey>> {
        match env_id {
            Some(env_id) => {
                self.bodies("SELECT body FROM api_keys WHERE env_id = ?1 ORDER BY created_at, id", [env_id])
            }
            None => self.bodies("SELECT body FROM api_keys WHERE env_id IS NULL ORDER BY created_at, id", []),
        }
    }

    // Environments, worker versions, tasks and queues.

    fn insert_environment(&mut self, env: &Environment) -> StorageResult<()> {
        self.registry.clear();
        self.exec(
            "INSERT INTO environments (id, project_id, created_at, body) VALUES (?1, ?2, ?3, ?4)",
            params![env.id, env.project_id, env.created_at, encode(env)?],
        )?;
        Ok(())
    }

    fn get_environment(&mut self, id: &str) -> StorageResult<Option<Environment>> {
        if let Some(hit) = self.registry.environments.get(id) {
            return Ok(hit.clone());
        }
        let found: Option<Environment> = self.body("SELECT body FROM environments WHERE id = ?1", [id])?;
        self.registry.environments.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn update_environment(&mut self, env: &Environment) -> StorageResult<()> {
        self.registry.clear();
        let n = self.exec(
            "UPDATE environments SET project_id = ?2, created_at = ?3, body = ?4 WHERE id = ?1",
            params![env.id, env.project_id, env.created_at, encode(env)?],
        )?;
        must_exist(n, "environment", &env.id)
    }

    fn list_environments(&mut self, project_id: &str) -> StorageResult<Vec<Environment>> {
        self.bodies(
            "SELECT body FROM environments WHERE project_id = ?1 ORDER BY created_at, id",
            [project_id],
        )
    }

    fn env_running(&mut self, env_id: &str) -> StorageResult<u32> {
        self.flush_counts()?;
        let n = self.row("SELECT running FROM env_running WHERE env_id = ?1", [env_id], |r| r.get(0))?;
        Ok(n.unwrap_or(0))
    }

    fn insert_worker(&mut self, w: &WorkerVersion) -> StorageResult<()> {
        self.registry.clear();
        self.exec(
            "INSERT INTO workers (id, env_id, version, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![w.id, w.env_id, w.version, w.created_at, encode(w)?],
        )?;
        Ok(())
    }

    fn get_worker(&mut self, id: &str) -> StorageResult<Option<WorkerVersion>> {
        if let Some(hit) = self.registry.workers.get(id) {
            return Ok(hit.clone());
        }
        let found: Option<WorkerVersion> = self.body("SELECT body FROM workers WHERE id = ?1", [id])?;
        self.registry.workers.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn latest_worker(&mut self, env_id: &str) -> StorageResult<Option<WorkerVersion>> {
        if let Some(hit) = self.registry.latest_worker.get(env_id) {
            return Ok(hit.clone());
        }
        let found: Option<WorkerVersion> = self.body(
            "SELECT body FROM workers WHERE env_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [env_id],
        )?;
        self.registry.latest_worker.insert(env_id.to_string(), found.clone());
        Ok(found)
    }

    fn find_worker_by_version(
        &mut self,
        env_id: &str,
        version: &str,
    ) -> StorageResult<Option<WorkerVersion>> {
        self.body(
            "SELECT body FROM workers WHERE env_id = ?1 AND version = ?2
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [env_id, version],
        )
    }

    fn list_workers(&mut self, env_id: &str, max: u32) -> StorageResult<Vec<WorkerVersion>> {
        let key = (env_id.to_string(), max);
        if let Some(hit) = self.registry.worker_lists.get(&key) {
            return Ok(hit.clone());
        }
        let found: Vec<WorkerVersion> = self.bodies(
            "SELECT body FROM workers WHERE env_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            params![env_id, limit(max)],
        )?;
        self.registry.worker_lists.insert(key, found.clone());
        Ok(found)
    }

    fn upsert_task(&mut self, t: &TaskDef) -> StorageResult<()> {
        self.registry.clear();
        self.exec(
            "INSERT INTO tasks (env_id, worker_id, slug, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (env_id, worker_id, slug) DO UPDATE SET body = excluded.body",
            params![t.env_id, t.worker_id, t.slug, encode(t)?],
        )?;
        Ok(())
    }

    fn get_task(&mut self, env_id: &str, worker_id: &str, slug: &str) -> StorageResult<Option<TaskDef>> {
        let key = (env_id.to_string(), worker_id.to_string(), slug.to_string());
        if let Some(hit) = self.registry.tasks.get(&key) {
            return Ok(hit.clone());
        }
        let found: Option<TaskDef> = self.body(
            "SELECT body FROM tasks WHERE env_id = ?1 AND worker_id = ?2 AND slug = ?3",
            [env_id, worker_id, slug],
        )?;
        self.registry.tasks.insert(key, found.clone());
        Ok(found)
    }

    fn list_tasks(&mut self, env_id: &str, worker_id: &str) -> StorageResult<Vec<TaskDef>> {
        let key = (env_id.to_string(), worker_id.to_string());
        if let Some(hit) = self.registry.task_lists.get(&key) {
            return Ok(hit.clone());
        }
        let found: Vec<TaskDef> = self.bodies(
            "SELECT body FROM tasks WHERE env_id = ?1 AND worker_id = ?2 ORDER BY slug",
            [env_id, worker_id],
        )?;
        self.registry.task_lists.insert(key, found.clone());
        Ok(found)
    }

    fn upsert_queue(&mut self, q: &QueueDef) -> StorageResult<()> {
        self.registry.clear();
        self.exec(
            "INSERT INTO queues (env_id, name, lim, paused, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (env_id, name) DO UPDATE SET
                 lim = excluded.lim, paused = excluded.paused, body = excluded.body",
            params![q.env_id, q.name, q.concurrency_limit, q.paused, encode(q)?],
        )?;
        self.flush_counts()?;
        self.exec(
            "UPDATE subqueues SET lim = ?3, paused = ?4 WHERE env_id = ?1 AND queue = ?2",
            params![q.env_id, q.name, q.concurrency_limit, q.paused],
        )?;
        Ok(())
    }

    fn get_queue(&mut self, env_id: &str, name: &str) -> StorageResult<Option<QueueDef>> {
        let key = (env_id.to_string(), name.to_string());
        if let Some(hit) = self.registry.queues.get(&key) {
            return Ok(hit.clone());
        }
        let found: Option<QueueDef> =
            self.body("SELECT body FROM queues WHERE env_id = ?1 AND name = ?2", [env_id, name])?;
        self.registry.queues.insert(key, found.clone());
        Ok(found)
    }

    fn list_queues(&mut self, env_id: &str) -> StorageResult<Vec<QueueDef>> {
        self.bodies("SELECT body FROM queues WHERE env_id = ?1 ORDER BY name", [env_id])
    }

    // Runs.

    fn insert_run(&mut self, run: &Run, payload: &Packet) -> StorageResult<()> {
        let tags = encode(&run.tags)?;
        self.write_run(
            "INSERT INTO runs (id, env_id, task, status, queue, batch_id, parent_run_id, version,
                               is_test, machine, created_at, idempotency_key, tags, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                     coalesce((SELECT version FROM workers WHERE id = ?8), ?9),
                     ?10, ?11, ?12, ?13, ?14, ?15)",
            run,
            &tags,
        )?;
        if !run.tags.is_empty() {
            // Migration 4: the store, not a trigger, copies a new run's tags.
            self.exec(
                "INSERT OR IGNORE INTO run_tags (run_id, tag) SELECT ?1, value FROM json_each(?2)",
                params![run.id, tags],
            )?;
        }
        self.exec(
            "INSERT INTO run_data (run_id, payload, payload_type) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id) DO UPDATE SET
                 payload = excluded.payload, payload_type = excluded.payload_type",
            params![run.id, payload.data, payload.data_type],
        )?;
        self.run_columns.borrow_mut().insert(run.id.clone(), RunColumns::of(run));
        Ok(())
    }

    fn lock_run(&mut self, id: &str) -> StorageResult<Option<Run>> {
        // `BEGIN IMMEDIATE` already holds the database's write lock: nothing more to lock.
        self.get_run(id)
    }

    fn get_run(&mut self, id: &str) -> StorageResult<Option<Run>> {
        let run: Option<Run> = self.body("SELECT body FROM runs WHERE id = ?1", [id])?;
        if let Some(run) = &run {
            self.run_columns.borrow_mut().insert(run.id.clone(), RunColumns::of(run));
        }
        Ok(run)
    }

    fn lock_run_with_payload(&mut self, id: &str) -> StorageResult<Option<(Run, Option<Packet>)>> {
        let row = self.row(
            "SELECT r.body, d.payload, d.payload_type
             FROM runs r LEFT JOIN run_data d ON d.run_id = r.id WHERE r.id = ?1",
            [id],
            |r| Ok((r.get_ref(0)?.as_bytes()?.to_vec(), packet(r.get(1)?, r.get(2)?))),
        )?;
        let Some((body, payload)) = row else { return Ok(None) };
        let run: Run = decode(&body)?;
        self.run_columns.borrow_mut().insert(run.id.clone(), RunColumns::of(&run));
        Ok(Some((run, payload)))
    }

    fn update_run(&mut self, run: &Run) -> StorageResult<()> {
        // Only the columns a run's life changes (env, task, queue, batch, parent, creation
        // time and the test flag are fixed at insert), and of those only the ones that differ
        // from what this transaction knows is in the row: the status on most transitions,
        // the version and machine at dequeue, the key and tags rarely.
        let new = RunColumns::of(run);
        let known = self.run_columns.borrow_mut().insert(run.id.clone(), new.clone());
        let changed =
            |same: fn(&RunColumns, &RunColumns) -> bool| known.as_ref().is_none_or(|k| !same(k, &new));
        let mut sql = String::from("UPDATE runs SET body = ?2");
        if changed(|a, b| a.status == b.status) {
            sql.push_str(", status = ?3");
        }
        if changed(|a, b| a.worker_id == b.worker_id && a.lock_to_version == b.lock_to_version) {
            sql.push_str(", version = coalesce((SELECT version FROM workers WHERE id = ?4), ?5)");
        }
        if changed(|a, b| a.machine == b.machine) {
            sql.push_str(", machine = ?6");
        }
        if changed(|a, b| a.idempotency_key == b.idempotency_key) {
            sql.push_str(", idempotency_key = ?7");
        }
        let tags = if changed(|a, b| a.tags == b.tags) {
            sql.push_str(", tags = ?8");
            Some(encode(&run.tags)?)
        } else {
            None
        };
        sql.push_str(" WHERE id = ?1");
        // Each variant numbers its parameters alike; bind those up to the highest it uses.
        let mut stmt = self.prepare(&sql)?;
        let body = encode(run)?;
        let values: [&dyn rusqlite::ToSql; 8] = [
            &run.id,
            &body,
            &run.status.as_str(),
            &run.worker_id,
            &run.lock_to_version,
            &new.machine,
            &run.idempotency_key,
            &tags,
        ];
        for (i, value) in values.into_iter().enumerate().take(stmt.parameter_count()) {
            self.check(stmt.raw_bind_parameter(i + 1, value))?;
        }
        let n = self.check(stmt.raw_execute())?;
        must_exist(n, "run", &run.id)
    }

    fn get_payload(&mut self, run_id: &str) -> StorageResult<Option<Packet>> {
        if let Some(read) = self.payloads.remove(run_id) {
            return Ok(read);
        }
        let row =
            self.row("SELECT payload, payload_type FROM run_data WHERE run_id = ?1", [run_id], |r| {
                Ok(packet(r.get(0)?, r.get(1)?))
            })?;
        Ok(row.flatten())
    }

    fn set_output(&mut self, run_id: &str, output: &Packet) -> StorageResult<()> {
        self.exec(
            "INSERT INTO run_data (run_id, output, output_type) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id) DO UPDATE SET
                 output = excluded.output, output_type = excluded.output_type",
            params![run_id, output.data, output.data_type],
        )?;
        Ok(())
    }

    fn get_output(&mut self, run_id: &str) -> StorageResult<Option<Packet>> {
        let row = self.row("SELECT output, output_type FROM run_data WHERE run_id = ?1", [run_id], |r| {
            Ok(packet(r.get(0)?, r.get(1)?))
        })?;
        Ok(row.flatten())
    }

    fn find_run_by_idempotency_key(
        &mut self,
        env_id: &str,
        task: &str,
        key: &str,
    ) -> StorageResult<Option<Run>> {
        self.body(
            "SELECT body FROM runs WHERE env_id = ?1 AND task = ?2 AND idempotency_key = ?3",
            [env_id, task, key],
        )
    }

    fn list_runs(&mut self, f: &RunFilter, page: &Page) -> StorageResult<Vec<Run>> {
        let mut q = Query::new("SELECT body FROM runs");
        // An empty env id means every environment (the filter's fields are all optional).
        if !f.env_id.is_empty() {
            q.and("env_id = ?", f.env_id.clone());
        }
        let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        q.and_any("status IN (SELECT value FROM json_each(?))", &statuses)?;
        q.and_any("task IN (SELECT value FROM json_each(?))", &f.tasks)?;
        q.and_any(
            "id IN (SELECT run_id FROM run_tags WHERE tag IN (SELECT value FROM json_each(?)))",
            &f.tags,
        )?;
        q.and_any("queue IN (SELECT value FROM json_each(?))", &f.queues)?;
        q.and_any("version IN (SELECT value FROM json_each(?))", &f.versions)?;
        let machines: Vec<&str> = f.machines.iter().map(|m| m.name()).collect();
        q.and_any("machine IN (SELECT value FROM json_each(?))", &machines)?;
        if let Some(batch_id) = &f.batch_id {
            q.and("batch_id = ?", batch_id.clone());
        }
        if let Some(parent) = &f.parent_run_id {
            q.and("parent_run_id = ?", parent.clone());
        }
        if let Some(is_test) = f.is_test {
            q.and("is_test = ?", is_test);
        }
        if let Some(from) = f.created_from {
            q.and("created_at >= ?", from);
        }
        if let Some(to) = f.created_to {
            q.and("created_at <= ?", to);
        }
        if let Some(key) = &f.idempotency_key {
            q.and("idempotency_key = ?", key.clone());
        }
        self.list(q.page(page))
    }

    fn list_children(&mut self, parent_run_id: &str) -> StorageResult<Vec<Run>> {
        self.bodies("SELECT body FROM runs WHERE parent_run_id = ?1 ORDER BY created_at, id", [parent_run_id])
    }

    fn list_runs_in_status(&mut self, env_id: &str, status: RunStatus, max: u32) -> StorageResult<Vec<Run>> {
        if status == RunStatus::PendingVersion {
            // The partial index of migration 3 serves only a query that names the status.
            return self.bodies(
                "SELECT body FROM runs WHERE env_id = ?1 AND status = 'PENDING_VERSION'
                 ORDER BY created_at, id LIMIT ?2",
                params![env_id, limit(max)],
            );
        }
        self.bodies(
            "SELECT body FROM runs WHERE env_id = ?1 AND status = ?2 ORDER BY created_at, id LIMIT ?3",
            params![env_id, status.as_str(), limit(max)],
        )
    }

    // Execution snapshots.

    fn insert_snapshot(&mut self, s: &Snapshot) -> StorageResult<()> {
        self.exec(
            "INSERT INTO snapshots (id, run_id, body) VALUES (?1, ?2, ?3)",
            params![s.id, s.run_id, encode(s)?],
        )?;
        Ok(())
    }

    fn get_snapshot(&mut self, id: &str) -> StorageResult<Option<Snapshot>> {
        self.body("SELECT body FROM snapshots WHERE id = ?1", [id])
    }

    fn list_snapshots(&mut self, run_id: &str, after_id: Option<&str>) -> StorageResult<Vec<Snapshot>> {
        match after_id {
            None => self.bodies("SELECT body FROM snapshots WHERE run_id = ?1 ORDER BY id", [run_id]),
            Some(after) => self.bodies(
                "SELECT body FROM snapshots WHERE run_id = ?1 AND id > ?2 ORDER BY id",
                [run_id, after],
            ),
        }
    }

    // Queues and concurrency.

    fn enqueue(&mut self, e: &ReadyEntry) -> StorageResult<()> {
        let body = encode(e)?;
        self.queued(e);
        let inserted = self.exec(
            "INSERT INTO ready (run_id, env_id, queue, ck, score, body, resume)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (run_id) DO NOTHING",
            params![e.run_id, e.env_id, e.queue, e.concurrency_key, e.score, body, e.resume],
        )?;
        if inserted == 1 {
            self.counts.get_mut().entries(&e.env_id, &e.queue, &e.concurrency_key, 1);
            return Ok(());
        }
        // The run was already queued (rare): replace its entry, which may move it to another
        // subqueue or change its score.
        let old = self.row("SELECT env_id, queue, ck FROM ready WHERE run_id = ?1", [&e.run_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let Some((env_id, queue, ck)) = old else {
            return Err(StorageError::new(ErrorKind::Other, format!("ready entry of {} vanished", e.run_id)));
        };
        self.exec(
            "UPDATE ready SET env_id = ?2, queue = ?3, ck = ?4, score = ?5, body = ?6, resume = ?7
             WHERE run_id = ?1",
            params![e.run_id, e.env_id, e.queue, e.concurrency_key, e.score, body, e.resume],
        )?;
        let counts = self.counts.get_mut();
        if (env_id.as_str(), queue.as_str(), ck.as_str()) == (&e.env_id, &e.queue, &e.concurrency_key) {
            counts.touch(&env_id, &queue, &ck);
        } else {
            counts.entries(&env_id, &queue, &ck, -1);
            counts.entries(&e.env_id, &e.queue, &e.concurrency_key, 1);
        }
        Ok(())
    }

    fn enqueue_first(&mut self, e: &ReadyEntry) -> StorageResult<()> {
        self.queued(e);
        // No entry to replace: a second one for the run fails on the key.
        self.exec(
            "INSERT INTO ready (run_id, env_id, queue, ck, score, body, resume)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.run_id, e.env_id, e.queue, e.concurrency_key, e.score, encode(e)?, e.resume],
        )?;
        self.counts.get_mut().entries(&e.env_id, &e.queue, &e.concurrency_key, 1);
        Ok(())
    }

    fn dequeue_entry(&mut self, run_id: &str) -> StorageResult<Option<ReadyEntry>> {
        let entry: Option<ReadyEntry> =
            self.body("DELETE FROM ready WHERE run_id = ?1 RETURNING body", [run_id])?;
        if let Some(e) = &entry {
            self.counts.get_mut().entries(&e.env_id, &e.queue, &e.concurrency_key, -1);
        }
        Ok(entry)
    }

    fn dequeue_entries(&mut self, run_ids: &[&str]) -> StorageResult<()> {
        for id in run_ids {
            let removed =
                self.row("DELETE FROM ready WHERE run_id = ?1 RETURNING env_id, queue, ck", [id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })?;
            if let Some((env_id, queue, ck)) = removed {
                self.counts.get_mut().entries(&env_id, &queue, &ck, -1);
            }
        }
        Ok(())
    }

    fn claimable_subqueues(
        &mut self,
        env_id: &str,
        env_limit: u32,
        max: u32,
    ) -> StorageResult<Vec<Subqueue>> {
        self.flush_counts()?;
        self.rows(
            "SELECT env_id, queue, ck, ready_count, running, lim, paused, head_score FROM subqueues
             WHERE env_id = ?1 AND head_score IS NOT NULL AND ready_count > 0 AND paused = 0
               AND running < min(coalesce(lim, ?2), ?2)
             ORDER BY head_score, queue, ck LIMIT ?3",
            params![env_id, i64::from(env_limit), limit(max)],
            subqueue_row,
        )
    }

    fn peek_subqueue(
        &mut self,
        env_id: &str,
        queue: &str,
        ck: &str,
        max: u32,
    ) -> StorageResult<Vec<ReadyEntry>> {
        self.bodies(
            "SELECT body FROM ready WHERE env_id = ?1 AND queue = ?2 AND ck = ?3
             ORDER BY score, run_id LIMIT ?4",
            params![env_id, queue, ck, limit(max)],
        )
    }

    fn peek_and_lock(
        &mut self,
        env_id: &str,
        queue: &str,
        ck: &str,
        max: u32,
        with_payloads: bool,
    ) -> StorageResult<(Vec<ReadyEntry>, Vec<Run>)> {
        // One statement for the entries, their runs and (for a claim that starts attempts)
        // the payloads, instead of one per run for each. An entry without a run is left out.
        let sql = if with_payloads {
            "SELECT q.body, r.body, d.payload, d.payload_type
             FROM ready q JOIN runs r ON r.id = q.run_id LEFT JOIN run_data d ON d.run_id = q.run_id
             WHERE q.env_id = ?1 AND q.queue = ?2 AND q.ck = ?3
             ORDER BY q.score, q.run_id LIMIT ?4"
        } else {
            "SELECT q.body, r.body FROM ready q JOIN runs r ON r.id = q.run_id
             WHERE q.env_id = ?1 AND q.queue = ?2 AND q.ck = ?3
             ORDER BY q.score, q.run_id LIMIT ?4"
        };
        let mut stmt = self.prepare(sql)?;
        let mut rows = self.check(stmt.query(params![env_id, queue, ck, limit(max)]))?;
        let (mut entries, mut runs) = (Vec::new(), Vec::new());
        let mut columns = self.run_columns.borrow_mut();
        while let Some(row) = self.check(rows.next())? {
            let entry: ReadyEntry = decode(text(row, 0)?)?;
            let run: Run = decode(text(row, 1)?)?;
            if with_payloads {
                let payload = packet(row.get(2).db()?, row.get(3).db()?);
                self.payloads.insert(run.id.clone(), payload);
            }
            columns.insert(run.id.clone(), RunColumns::of(&run));
            entries.push(entry);
            runs.push(run);
        }
        Ok((entries, runs))
    }

    fn get_subqueue(&mut self, env_id: &str, queue: &str, ck: &str) -> StorageResult<Option<Subqueue>> {
        self.flush_counts()?;
        self.row(
            "SELECT env_id, queue, ck, ready_count, running, lim, paused, head_score FROM subqueues
             WHERE env_id = ?1 AND queue = ?2 AND ck = ?3",
            [env_id, queue, ck],
            subqueue_row,
        )
    }

    fn list_subqueues(&mut self, env_id: &str, queue: &str) -> StorageResult<Vec<Subqueue>> {
        self.flush_counts()?;
        self.rows(
            "SELECT env_id, queue, ck, ready_count, running, lim, paused, head_score FROM subqueues
             WHERE env_id = ?1 AND queue = ?2 ORDER BY ck",
            [env_id, queue],
            subqueue_row,
        )
    }

    fn acquire(&mut self, h: &Holder) -> StorageResult<bool> {
        let inserted = self.exec(
            "INSERT INTO holders (run_id, env_id, queue, ck) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_id) DO NOTHING",
            params![h.run_id, h.env_id, h.queue, h.concurrency_key],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        self.counts.get_mut().slots(&h.env_id, &h.queue, &h.concurrency_key, 1);
        Ok(true)
    }

    fn acquire_many(&mut self, holders: &[Holder]) -> StorageResult<u32> {
        let mut taken = 0;
        for h in holders {
            taken += u32::from(self.acquire(h)?);
        }
        Ok(taken)
    }

    fn release(&mut self, run_id: &str) -> StorageResult<bool> {
        let holder =
            self.row("DELETE FROM holders WHERE run_id = ?1 RETURNING env_id, queue, ck", [run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
        let Some((env_id, queue, ck)) = holder else {
            return Ok(false);
        };
        self.counts.get_mut().slots(&env_id, &queue, &ck, -1);
        Ok(true)
    }

    fn may_have_resume(&mut self, env_id: &str, queue: &str, ck: &str) -> StorageResult<bool> {
        if self.resumes.is_none() {
            let rows = self.rows("SELECT DISTINCT env_id, queue, ck FROM ready WHERE resume", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            self.resumes = Some(rows.into_iter().collect());
        }
        // Usually none is queued: no key to build.
        Ok(self.resumes.as_ref().is_some_and(|found| {
            !found.is_empty() && found.contains(&(env_id.to_string(), queue.to_string(), ck.to_string()))
        }))
    }

    fn get_holder(&mut self, run_id: &str) -> StorageResult<Option<Holder>> {
        self.row("SELECT run_id, env_id, queue, ck FROM holders WHERE run_id = ?1", [run_id], |r| {
            Ok(Holder { run_id: r.get(0)?, env_id: r.get(1)?, queue: r.get(2)?, concurrency_key: r.get(3)? })
        })
    }

    // Timers.

    fn set_timer(&mut self, t: &Timer) -> StorageResult<()> {
        self.exec(
            "INSERT INTO timers (key, kind, target, fence, fire_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, target = excluded.target,
                 fence = excluded.fence, fire_at = excluded.fire_at",
            params![t.key, t.kind.as_str(), t.target, t.fence, t.fire_at],
        )?;
        Ok(())
    }

    fn clear_timer(&mut self, key: &str) -> StorageResult<()> {
        self.exec("DELETE FROM timers WHERE key = ?1", [key])?;
        Ok(())
    }

    fn get_timer(&mut self, key: &str) -> StorageResult<Option<Timer>> {
        self.row("SELECT key, kind, target, fence, fire_at FROM timers WHERE key = ?1", [key], timer_row)
    }

    fn take_due_timers(&mut self, now: Millis, max: u32) -> StorageResult<Vec<Timer>> {
        let mut due = self.rows(
            "DELETE FROM timers WHERE key IN (SELECT key FROM timers WHERE fire_at <= ?1
                                              ORDER BY fire_at, key LIMIT ?2)
             RETURNING key, kind, target, fence, fire_at",
            params![now, limit(max)],
            timer_row,
        )?;
        // RETURNING gives no order guarantee.
        due.sort_by(|a, b| (a.fire_at, &a.key).cmp(&(b.fire_at, &b.key)));
        Ok(due)
    }

    fn next_timer_at(&mut self) -> StorageResult<Option<Millis>> {
        let at = self.row("SELECT min(fire_at) FROM timers", [], |r| r.get::<_, Option<Millis>>(0))?;
        Ok(at.flatten())
    }

    // Waitpoints.

    fn insert_waitpoint(&mut self, w: &Waitpoint) -> StorageResult<()> {
        self.write_waitpoint(
            "INSERT INTO waitpoints (id, env_id, kind, status, idempotency_key, completed_by_run_id,
                                     output_is_error, created_at, tags, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            w,
        )?;
        Ok(())
    }

    fn lock_waitpoint(&mut self, id: &str) -> StorageResult<Option<Waitpoint>> {
        self.body("SELECT body FROM waitpoints WHERE id = ?1", [id])
    }

    fn update_waitpoint(&mut self, w: &Waitpoint) -> StorageResult<()> {
        let n = self.write_waitpoint(
            "UPDATE waitpoints SET env_id = ?2, kind = ?3, status = ?4, idempotency_key = ?5,
                 completed_by_run_id = ?6, output_is_error = ?7, created_at = ?8, tags = ?9, body = ?10
             WHERE id = ?1",
            w,
        )?;
        must_exist(n, "waitpoint", &w.id)
    }

    fn find_waitpoint_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Waitpoint>> {
        self.body("SELECT body FROM waitpoints WHERE env_id = ?1 AND idempotency_key = ?2", [env_id, key])
    }

    fn find_run_waitpoint(&mut self, run_id: &str) -> StorageResult<Option<Waitpoint>> {
        self.body(
            "SELECT body FROM waitpoints WHERE completed_by_run_id = ?1 AND kind = 'RUN'
             ORDER BY id LIMIT 1",
            [run_id],
        )
    }

    fn list_waitpoints(&mut self, f: &WaitpointFilter, page: &Page) -> StorageResult<Vec<Waitpoint>> {
        let mut q = Query::new("SELECT body FROM waitpoints");
        if !f.env_id.is_empty() {
            q.and("env_id = ?", f.env_id.clone());
        }
        if let Some(kind) = f.kind {
            q.and("kind = ?", kind.as_str().to_string());
        }
        let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        q.and_any("status IN (SELECT value FROM json_each(?))", &statuses)?;
        // A timed-out token is one completed with an error output.
        let completed = WaitpointStatus::Completed.as_str().to_string();
        match f.timed_out {
            Some(true) => q.and("(status = ? AND output_is_error = 1)", completed),
            Some(false) => q.and("NOT (status = ? AND output_is_error = 1)", completed),
            None => {}
        }
        if let Some(key) = &f.idempotency_key {
            q.and("idempotency_key = ?", key.clone());
        }
        q.and_any(
            "EXISTS (SELECT 1 FROM json_each(waitpoints.tags) AS t
                     WHERE t.value IN (SELECT value FROM json_each(?)))",
            &f.tags,
        )?;
        if let Some(from) = f.created_from {
            q.and("created_at >= ?", from);
        }
        if let Some(to) = f.created_to {
            q.and("created_at <= ?", to);
        }
        self.list(q.page(page))
    }

    fn insert_block(&mut self, edge: &BlockEdge) -> StorageResult<bool> {
        let n = self.exec(
            "INSERT INTO blocks (run_id, waitpoint_id, batch_index, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![edge.run_id, edge.waitpoint_id, edge.batch_index.map_or(-1, i64::from), encode(edge)?],
        )?;
        Ok(n == 1)
    }

    fn list_blocks(&mut self, run_id: &str) -> StorageResult<Vec<BlockEdge>> {
        self.bodies("SELECT body FROM blocks WHERE run_id = ?1 ORDER BY seq", [run_id])
    }

    fn runs_blocked_by(&mut self, waitpoint_id: &str) -> StorageResult<Vec<(String, u32)>> {
        // Each run once, even when it waits on several batch items of the same waitpoint.
        self.rows(
            "SELECT run_id, count(*) FROM blocks WHERE waitpoint_id = ?1 GROUP BY run_id ORDER BY min(seq)",
            [waitpoint_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn delete_blocks(&mut self, run_id: &str) -> StorageResult<()> {
        self.exec("DELETE FROM blocks WHERE run_id = ?1", [run_id])?;
        Ok(())
    }

    // Batches.

    fn insert_batch(&mut self, b: &Batch) -> StorageResult<()> {
        self.exec(
            "INSERT INTO batches (id, env_id, idempotency_key, body) VALUES (?1, ?2, ?3, ?4)",
            params![b.id, b.env_id, b.idempotency_key, encode(b)?],
        )?;
        Ok(())
    }

    fn lock_batch(&mut self, id: &str) -> StorageResult<Option<Batch>> {
        self.body("SELECT body FROM batches WHERE id = ?1", [id])
    }

    fn update_batch(&mut self, b: &Batch) -> StorageResult<()> {
        let n = self.exec(
            "UPDATE batches SET env_id = ?2, idempotency_key = ?3, body = ?4 WHERE id = ?1",
            params![b.id, b.env_id, b.idempotency_key, encode(b)?],
        )?;
        must_exist(n, "batch", &b.id)
    }

    fn find_batch_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Batch>> {
        self.body("SELECT body FROM batches WHERE env_id = ?1 AND idempotency_key = ?2", [env_id, key])
    }

    fn insert_batch_item(&mut self, batch_id: &str, index: u32, run_id: &str) -> StorageResult<bool> {
        let n = self.exec(
            "INSERT INTO batch_items (batch_id, idx, run_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![batch_id, index, run_id],
        )?;
        Ok(n == 1)
    }

    fn get_batch_item(&mut self, batch_id: &str, index: u32) -> StorageResult<Option<String>> {
        self.row(
            "SELECT run_id FROM batch_items WHERE batch_id = ?1 AND idx = ?2",
            params![batch_id, index],
            |r| r.get(0),
        )
    }

    fn list_batch_items(&mut self, batch_id: &str) -> StorageResult<Vec<(u32, String)>> {
        self.rows("SELECT idx, run_id FROM batch_items WHERE batch_id = ?1 ORDER BY idx", [batch_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    fn list_batches(&mut self, env_id: &str, page: &Page) -> StorageResult<Vec<Batch>> {
        let mut q = Query::new("SELECT body FROM batches");
        q.and("env_id = ?", env_id.to_string());
        self.list(q.page(page))
    }

    // Run events.

    fn insert_events(&mut self, events: &[RunEvent]) -> StorageResult<()> {
        for ev in events {
            // The stored body's `seq` is ignored: the column is the truth.
            self.exec("INSERT INTO events (run_id, body) VALUES (?1, ?2)", params![ev.run_id, encode(ev)?])?;
        }
        Ok(())
    }

    fn list_events(&mut self, run_id: &str, after_seq: i64, max: u32) -> StorageResult<Vec<RunEvent>> {
        let mut stmt = self
            .prepare("SELECT seq, body FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
        let mut rows = self.check(stmt.query(params![run_id, after_seq, limit(max)]))?;
        let mut out = Vec::new();
        while let Some(row) = self.check(rows.next())? {
            let mut ev: RunEvent = decode(text(row, 1)?)?;
            ev.seq = row.get(0).db()?;
            out.push(ev);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;
    use trigger_engine::model::EnvironmentType;

    fn env(id: &str) -> Environment {
        Environment {
            id: id.into(),
            project_id: "proj".into(),
            kind: EnvironmentType::Development,
            concurrency_limit: 1,
            paused: false,
            created_at: 0,
        }
    }

    #[test]
    fn undecodable_rows_are_corrupt() {
        let conn = Connection::open_in_memory().unwrap();
        SqliteStore::prepare_schema(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO environments (id, project_id, created_at, body) VALUES ('env_bad', 'p', 0, '{oops');
             INSERT INTO environments (id, project_id, created_at, body) VALUES ('env_int', 'p', 0, 42);
             INSERT INTO timers (key, kind, target, fence, fire_at) VALUES ('t', 'no_such_kind', 'x', '', 1);
             INSERT INTO env_running (env_id, running) VALUES ('env_neg', -1);
             BEGIN;",
        )
        .unwrap();
        let mut registry = RegistryCache::default();
        let mut tx = SqliteTx::new(&conn, &mut registry, None);
        assert_eq!(tx.get_environment("env_bad").unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(tx.get_environment("env_int").unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(tx.get_timer("t").unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(tx.take_due_timers(10, 10).unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(tx.env_running("env_neg").unwrap_err().kind, ErrorKind::Corrupt);
    }

    #[test]
    fn updating_a_missing_row_is_an_error() {
        let mut store = SqliteStore::memory().unwrap();
        let mut tx = trigger_engine::storage::Store::begin(&mut store).unwrap();
        let err = tx.update_environment(&env("env_none")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Other);
        assert!(err.message.contains("env_none"), "{err}");
    }

    #[test]
    fn a_transaction_sqlite_rolled_back_refuses_further_statements() {
        let conn = Connection::open_in_memory().unwrap();
        SqliteStore::prepare_schema(&conn).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let mut registry = RegistryCache::default();
        let mut tx = SqliteTx::new(&conn, &mut registry, None);
        tx.insert_environment(&env("env_1")).unwrap();
        // A statement that makes SQLite roll back the whole transaction, as it does itself
        // after an I/O error or a full disk.
        let first = tx
            .exec(
                "INSERT OR ROLLBACK INTO environments (id, project_id, created_at, body)
                 VALUES ('env_1', 'p', 0, '{}')",
                [],
            )
            .unwrap_err();
        let later = tx.insert_environment(&env("env_2")).unwrap_err();
        assert_eq!(later.kind, first.kind);
        assert!(later.message.contains("rolled back"), "{later}");
        assert!(Box::new(tx).commit().is_err(), "commit of a rolled-back transaction fails");
        assert!(conn.is_autocommit());
        let n: i64 = conn.query_row("SELECT count(*) FROM environments", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "nothing ran outside the transaction");
    }
}
