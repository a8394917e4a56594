//! [`PostgresTx`]: the engine's [`Tx`] over one PostgreSQL transaction (`READ COMMITTED`).
//!
//! Every statement is prepared once per connection, and each method is one statement where
//! it can be (`ON CONFLICT` upserts, `RETURNING`, data-modifying CTEs): the engine applies
//! thousands of commands per transaction, so round trips are what the hot path costs.
//!
//! What keeps replicas apart: `lock_*` read `FOR UPDATE`; [`Tx::env_running`] reads the
//! environment's counter row `FOR UPDATE`, so the replicas taking slots of one environment
//! take turns and each sees the others' committed counts (every limit check reads it
//! first); [`Tx::claimable_subqueues`] locks the subqueues it returns `SKIP LOCKED`; timers
//! are taken with `DELETE … WHERE key IN (SELECT … FOR UPDATE SKIP LOCKED)`. Counters change
//! only by `± 1` on the latest row version, so they stay exact under concurrency. `acquire`
//! and `release` touch the environment row before the subqueue row, the order the limit
//! checks lock them in.
//!
//! What keeps round trips few: writes nobody reads the answer of are pipelined (sent at once,
//! checked with the next call); runs and batches the transaction locked or wrote are kept
//! and answered from memory (the engine names the runs of a whole batch of commands up
//! front, [`Tx::prefetch_runs`], so they are read in one statement); a claim dequeues and
//! takes slots in one statement each; registry rows are kept across transactions while the
//! schema's registry generation stands still.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use trigger_engine::model::{
    ApiKey, Batch, BlockEdge, Environment, Holder, Organization, Packet, Page, Project, QueueDef, ReadyEntry,
    Run, RunEvent, RunFilter, Snapshot, Subqueue, TaskDef, Timer, TimerKind, Waitpoint, WaitpointFilter,
    WorkerVersion,
};
use trigger_engine::storage::{ErrorKind, RegistryCache, StorageError, StorageResult, Tx};
use trigger_engine::txn::Effect;
use trigger_types::{Millis, RunStatus, WaitpointStatus};

use crate::error::{corrupt, decode, encode};
use crate::notify::payloads;
use crate::pending::{Flush, Pending};
use crate::store::{Param, Session};

/// Page size when [`Page::size`] is 0.
const DEFAULT_PAGE_SIZE: u32 = 25;

/// Slots for several runs ([`holder_columns`]), as `acquire` takes one: the environment
/// rows change before the subqueue rows. Answers how many were taken.
const ACQUIRE_MANY: &str = "WITH h AS (INSERT INTO holders (run_id, env_id, queue, ck)
                        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                        ON CONFLICT (run_id) DO NOTHING RETURNING env_id, queue, ck),
                  e AS (INSERT INTO env_running (env_id, running)
                        SELECT env_id, count(*)::integer FROM h GROUP BY env_id
                        ON CONFLICT (env_id) DO UPDATE SET running = env_running.running + excluded.running
                        RETURNING 1),
                  s AS (INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused)
                        SELECT h.env_id, h.queue, h.ck, 0, count(*)::integer,
                               (SELECT lim FROM queues WHERE env_id = h.env_id AND name = h.queue),
                               coalesce((SELECT paused FROM queues WHERE env_id = h.env_id AND name = h.queue),
                                        false)
                        FROM h WHERE (SELECT count(*) FROM e) > 0
                        GROUP BY h.env_id, h.queue, h.ck
                        ON CONFLICT (env_id, queue, ck) DO UPDATE SET running = subqueues.running + excluded.running)
             SELECT count(*) FROM h";

/// The parameters of [`ACQUIRE_MANY`].
fn holder_columns(holders: &[Holder]) -> Vec<Param> {
    let column = |f: fn(&Holder) -> &String| -> Param {
        Box::new(holders.iter().map(|h| f(h).clone()).collect::<Vec<String>>())
    };
    vec![column(|h| &h.run_id), column(|h| &h.env_id), column(|h| &h.queue), column(|h| &h.concurrency_key)]
}

/// One open transaction on a [`crate::PostgresStore`]'s connection. Dropping it without
/// [`Tx::commit`] rolls it back.
pub struct PostgresTx<'s> {
    session: &'s mut Session,
    /// The store's registry rows (see [`RegistryCache`] for the rules it keeps).
    registry: &'s mut RegistryCache,
    /// This transaction already counted a registry write in `registry_generation`.
    registry_counted: bool,
    /// Runs this transaction read locked or wrote, as a read would find them now, with the
    /// payload when it was read too. Only this transaction can change them until it ends
    /// (rows are locked, and writers take turns), so they are answered from here.
    runs: HashMap<String, (Run, Option<Option<Packet>>)>,
    /// Batches read locked or written, the same way.
    batches: HashMap<String, Batch>,
    /// Environments' running counts read locked, kept current by this transaction's own
    /// `acquire*` and `release*`.
    env_counts: HashMap<String, u32>,
    /// Writes held back, sent as one statement per table (see [`Pending`]).
    pending: Pending,
    /// The subqueues with a resume entry queued, read once per transaction when a slot is
    /// given back, and kept current by this transaction's own enqueues.
    resumes: Option<HashSet<(String, String, String)>>,
    /// `(channel, origin)` when effects are announced with `NOTIFY`.
    notify: Option<(&'s str, &'s str)>,
    /// Still needs a `COMMIT` or `ROLLBACK`.
    open: bool,
    /// Set when a statement failed: PostgreSQL refuses everything after it until a
    /// `ROLLBACK TO SAVEPOINT`, and would turn a `COMMIT` into a silent rollback.
    failed: Option<StorageError>,
}

impl<'s> PostgresTx<'s> {
    pub(crate) fn new(
        session: &'s mut Session,
        registry: &'s mut RegistryCache,
        notify: Option<(&'s str, &'s str)>,
    ) -> Self {
        PostgresTx {
            session,
            registry,
            registry_counted: false,
            runs: HashMap::new(),
            batches: HashMap::new(),
            env_counts: HashMap::new(),
            pending: Pending::default(),
            resumes: None,
            notify,
            open: true,
            failed: None,
        }
    }

    /// Forgets every row kept in memory (a rollback may have undone them).
    fn forget_rows(&mut self) {
        self.registry.clear();
        self.runs.clear();
        self.batches.clear();
        self.env_counts.clear();
        self.pending.clear();
        self.resumes = None;
    }

    /// Sends held-back writes without waiting for their answers.
    fn send(&mut self, flushes: impl IntoIterator<Item = Flush>) -> StorageResult<()> {
        for flush in flushes {
            let r = self.session.defer(flush.sql, flush.params, flush.must_change);
            self.note(r)?;
        }
        Ok(())
    }

    /// Sends the held run updates (before a statement that reads or writes runs by other
    /// than their id).
    fn flush_runs(&mut self) -> StorageResult<()> {
        let inserts = self.pending.take_inserts();
        let updates = self.pending.take_runs();
        self.send(inserts.into_iter().chain(updates))
    }

    /// Sends the held ready entries of runs never queued before (before anything reads
    /// ready entries or subqueues).
    fn flush_entries(&mut self) -> StorageResult<()> {
        let flush = self.pending.take_entries();
        self.send(flush)
    }

    fn flush_batches(&mut self) -> StorageResult<()> {
        let flush = self.pending.take_batches();
        self.send(flush)
    }

    fn flush_batch_items(&mut self) -> StorageResult<()> {
        let flush = self.pending.take_batch_items();
        self.send(flush)
    }

    fn flush_snapshots(&mut self) -> StorageResult<()> {
        let flush = self.pending.take_snapshots();
        self.send(flush)
    }

    fn flush_timers(&mut self) -> StorageResult<()> {
        let flushes = self.pending.take_timers();
        self.send(flushes)
    }

    /// Sends the held releases (before anything reads or takes slots).
    fn flush_releases(&mut self) -> StorageResult<()> {
        let flush = self.pending.take_releases();
        self.send(flush)
    }

    /// Sends everything held (before a savepoint, and at commit).
    fn flush_all(&mut self) -> StorageResult<()> {
        self.flush_releases()?;
        self.flush_runs()?;
        self.flush_entries()?;
        self.flush_batches()?;
        self.flush_batch_items()?;
        self.flush_snapshots()?;
        self.flush_timers()?;
        let flush = self.pending.take_outputs();
        self.send(flush)
    }

    /// Keeps a kept running count current after slots were taken (`+`) or freed.
    fn count_slots(&mut self, env_id: &str, taken: i64) {
        if let Some(n) = self.env_counts.get_mut(env_id) {
            *n = u32::try_from(i64::from(*n) + taken).unwrap_or(0);
        }
    }

    /// [`Self::count_slots`] after `taken` of these holders took slots: kept when they are
    /// all of one environment, forgotten otherwise.
    fn count_slots_of(&mut self, holders: &[Holder], taken: i64) {
        match holders.first() {
            Some(first) if holders.iter().all(|h| h.env_id == first.env_id) => {
                self.count_slots(&first.env_id, taken)
            }
            _ => {
                for h in holders {
                    self.env_counts.remove(&h.env_id);
                }
            }
        }
    }

    /// Locks and reads runs (and the payloads of `with_payload`) in one statement, keeping
    /// them.
    fn read_runs(&mut self, ids: &[&str], with_payload: &[&str]) -> StorageResult<()> {
        self.flush_runs()?;
        let rows = self.query(
            "SELECT r.body, d.payload, d.payload_type FROM runs r
             LEFT JOIN run_data d ON d.run_id = r.id AND r.id = ANY($2)
             WHERE r.id = ANY($1) FOR UPDATE OF r",
            &[&ids, &with_payload],
        )?;
        let with_payload: std::collections::HashSet<&str> = with_payload.iter().copied().collect();
        for row in &rows {
            let run: Run = decode(&get::<String>(row, 0)?)?;
            let payload = if with_payload.contains(run.id.as_str()) {
                Some(packet(get(row, 1)?, get(row, 2)?))
            } else {
                None
            };
            self.runs.entry(run.id.clone()).or_insert((run, payload));
        }
        Ok(())
    }

    /// Before a registry write: forget the kept rows, and count the write in the schema's
    /// generation (once per transaction) so other replicas forget theirs.
    fn registry_write(&mut self) -> StorageResult<()> {
        self.registry.clear();
        if self.registry_counted {
            return Ok(());
        }
        self.registry_counted = true;
        self.defer("UPDATE registry_generation SET gen = gen + 1", Vec::new(), None)
    }

    fn note<T>(&mut self, r: StorageResult<T>) -> StorageResult<T> {
        if let Err(e) = &r {
            if self.failed.is_none() {
                self.failed = Some(e.clone());
            }
        }
        r
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StorageResult<Vec<Row>> {
        let r = self.session.query(sql, params);
        self.note(r)
    }

    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StorageResult<u64> {
        let r = self.session.execute(sql, params);
        self.note(r)
    }

    fn batch(&mut self, sql: &str) -> StorageResult<()> {
        let r = self.session.batch(sql);
        self.note(r)
    }

    /// A write whose answer nobody reads now: sent at once, checked with the next call.
    fn defer(
        &mut self,
        sql: &str,
        params: Vec<Param>,
        must_change: Option<(u64, String)>,
    ) -> StorageResult<()> {
        let r = self.session.defer(sql, params, must_change);
        self.note(r)
    }

    /// The JSON body in column 0 of the first row, decoded.
    fn body<T: DeserializeOwned>(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StorageResult<Option<T>> {
        match self.query(sql, params)?.first() {
            Some(row) => Ok(Some(decode(&get::<String>(row, 0)?)?)),
            None => Ok(None),
        }
    }

    /// The JSON bodies in column 0 of every row, decoded.
    fn bodies<T: DeserializeOwned>(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StorageResult<Vec<T>> {
        self.query(sql, params)?.iter().map(|row| decode(&get::<String>(row, 0)?)).collect()
    }

    /// Runs a list query built by [`Query`]; reverses it when it was read oldest first.
    fn list<T: DeserializeOwned>(&mut self, q: Query) -> StorageResult<Vec<T>> {
        let params: Vec<&(dyn ToSql + Sync)> =
            q.args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let mut out: Vec<T> = self.bodies(&q.sql, &params)?;
        if q.reverse {
            out.reverse();
        }
        Ok(out)
    }

    fn run_params(run: &Run) -> StorageResult<Vec<Param>> {
        Ok(vec![
            Box::new(run.id.clone()),
            Box::new(run.env_id.clone()),
            Box::new(run.task.clone()),
            Box::new(run.status.as_str()),
            Box::new(run.queue.clone()),
            Box::new(run.batch_id.clone()),
            Box::new(run.parent_run_id.clone()),
            Box::new(run.worker_id.clone()),
            Box::new(run.lock_to_version.clone()),
            Box::new(run.is_test),
            Box::new(run.machine.map(|m| m.name())),
            Box::new(run.created_at),
            Box::new(run.idempotency_key.clone()),
            Box::new(run.tags.clone()),
            Box::new(encode(run)?),
        ])
    }

    fn write_waitpoint(&mut self, sql: &str, w: &Waitpoint) -> StorageResult<u64> {
        let body = encode(w)?;
        let (kind, status) = (w.kind.as_str(), w.status.as_str());
        self.exec(
            sql,
            &[
                &w.id,
                &w.env_id,
                &kind,
                &status,
                &w.idempotency_key,
                &w.completed_by_run_id,
                &w.output_is_error,
                &w.created_at,
                &w.tags,
                &body,
            ],
        )
    }

    /// Counts a new ready entry in its subqueue, creating the subqueue with its queue's
    /// limit and paused flag when it does not exist.
    fn subqueue_gained_entry(&mut self, env_id: &str, queue: &str, ck: &str) -> StorageResult<()> {
        self.exec(
            "INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused)
             VALUES ($1, $2, $3, 1, 0,
                     (SELECT lim FROM queues WHERE env_id = $1 AND name = $2),
                     coalesce((SELECT paused FROM queues WHERE env_id = $1 AND name = $2), false))
             ON CONFLICT (env_id, queue, ck) DO UPDATE SET ready_count = subqueues.ready_count + 1",
            &[&env_id, &queue, &ck],
        )?;
        Ok(())
    }

    fn subqueues(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StorageResult<Vec<Subqueue>> {
        self.flush_releases()?;
        self.flush_entries()?;
        self.query(sql, params)?.iter().map(subqueue_row).collect()
    }
}

impl Drop for PostgresTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.forget_rows();
            // Nothing to report to; a connection that fails here is dropped by the session
            // (and the server rolls back with it).
            self.session.forget_deferred();
            let _ = self.session.batch("ROLLBACK");
        }
    }
}

/// Column `idx`, or `Corrupt` when it does not convert.
fn get<'r, T: tokio_postgres::types::FromSql<'r>>(row: &'r Row, idx: usize) -> StorageResult<T> {
    row.try_get(idx).map_err(|e| corrupt(format!("column {idx}: {e}")))
}

fn get_u32(row: &Row, idx: usize) -> StorageResult<u32> {
    let v: i32 = get(row, idx)?;
    u32::try_from(v).map_err(|_| corrupt(format!("column {idx} is negative: {v}")))
}

fn get_opt_u32(row: &Row, idx: usize) -> StorageResult<Option<u32>> {
    let v: Option<i32> = get(row, idx)?;
    v.map(|v| u32::try_from(v).map_err(|_| corrupt(format!("column {idx} is negative: {v}")))).transpose()
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn must_exist(changed: u64, what: &str, id: &str) -> StorageResult<()> {
    if changed == 0 {
        return Err(StorageError::new(ErrorKind::Other, format!("{what} {id} does not exist")));
    }
    Ok(())
}

fn packet(data: Option<String>, data_type: Option<String>) -> Option<Packet> {
    data_type.map(|data_type| Packet { data, data_type })
}

/// Frees the slot of run `$1`: the CTEs of a statement that goes on with a `SELECT` (`h`
/// holds the freed slot). The environment row changes before the subqueue row, the order
/// the limit checks lock them in.
const RELEASE: &str = "WITH h AS (DELETE FROM holders WHERE run_id = $1 RETURNING env_id, queue, ck),
          e AS (UPDATE env_running r SET running = greatest(r.running - 1, 0) FROM h
                WHERE r.env_id = h.env_id RETURNING 1),
          s AS (UPDATE subqueues q SET running = greatest(q.running - 1, 0) FROM h
                WHERE q.env_id = h.env_id AND q.queue = h.queue AND q.ck = h.ck
                  AND (SELECT count(*) FROM e) >= 0)";

/// The columns every subqueue read selects; the head score is the lowest ready score.
const SUBQUEUE_COLUMNS: &str = "s.env_id, s.queue, s.ck, s.ready_count, s.running, s.lim, s.paused,
     (SELECT min(r.score) FROM ready r WHERE r.env_id = s.env_id AND r.queue = s.queue AND r.ck = s.ck) AS head";

fn subqueue_row(r: &Row) -> StorageResult<Subqueue> {
    Ok(Subqueue {
        env_id: get(r, 0)?,
        queue: get(r, 1)?,
        concurrency_key: get(r, 2)?,
        ready_count: get_u32(r, 3)?,
        running: get_u32(r, 4)?,
        limit: get_opt_u32(r, 5)?,
        paused: get(r, 6)?,
        head_score: get(r, 7)?,
    })
}

fn timer_row(r: &Row) -> StorageResult<Timer> {
    let kind: String = get(r, 1)?;
    let kind = TimerKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown timer kind {kind:?}")))?;
    Ok(Timer { key: get(r, 0)?, kind, target: get(r, 2)?, fence: get(r, 3)?, fire_at: get(r, 4)? })
}

/// A list query assembled from optional filters, one bound argument per filter; lists are
/// bound as one array (`= ANY($n)`), so the SQL text, and so the prepared statement,
/// depends only on which filters are present.
struct Query {
    sql: String,
    args: Vec<Param>,
    /// Read oldest first (a `before` cursor): reverse to return newest first.
    reverse: bool,
}

impl Query {
    fn new(select: &str) -> Self {
        Query { sql: format!("{select} WHERE true"), args: Vec::new(), reverse: false }
    }

    /// Appends `AND cond`, where `cond` has one `?` for the argument.
    fn and(&mut self, cond: &str, arg: impl ToSql + Sync + Send + 'static) {
        self.args.push(Box::new(arg));
        self.sql.push_str(" AND ");
        self.sql.push_str(&cond.replace('?', &format!("${}", self.args.len())));
    }

    /// Appends `AND cond` with `items` as a `text[]` argument, unless `items` is empty.
    fn and_any<S: AsRef<str>>(&mut self, cond: &str, items: &[S]) {
        if !items.is_empty() {
            let list: Vec<String> = items.iter().map(|s| s.as_ref().to_string()).collect();
            self.and(cond, list);
        }
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
        let size = if page.size == 0 { DEFAULT_PAGE_SIZE } else { page.size };
        self.args.push(Box::new(i64::from(size)));
        let order = if self.reverse { "ASC" } else { "DESC" };
        self.sql.push_str(&format!(" ORDER BY id {order} LIMIT ${}", self.args.len()));
        self
    }
}

impl Tx for PostgresTx<'_> {
    fn commit(mut self: Box<Self>) -> StorageResult<()> {
        if let Some(e) = self.failed.take() {
            // PostgreSQL would answer COMMIT with a rollback; say so instead.
            self.open = false;
            self.forget_rows();
            self.session.forget_deferred();
            let _ = self.session.batch("ROLLBACK");
            return Err(StorageError::new(e.kind, format!("transaction rolled back after: {}", e.message)));
        }
        if let Err(e) = self.flush_all() {
            self.open = false;
            self.forget_rows();
            self.session.forget_deferred();
            let _ = self.session.batch("ROLLBACK");
            return Err(e);
        }
        self.open = false;
        let committed = self.session.batch("COMMIT");
        if committed.is_err() {
            // Rows kept during the transaction may not be what the database holds.
            self.forget_rows();
        }
        committed
    }

    fn savepoint(&mut self) -> StorageResult<()> {
        // What is held belongs before the savepoint.
        self.flush_all()?;
        self.batch("SAVEPOINT sp")
    }

    fn release_savepoint(&mut self) -> StorageResult<()> {
        self.batch("RELEASE SAVEPOINT sp")
    }

    fn rollback_to_savepoint(&mut self) -> StorageResult<()> {
        // ROLLBACK TO keeps the savepoint; RELEASE pops it. It also ends a failed state,
        // whatever the writes it undoes answered.
        self.forget_rows();
        self.session.forget_deferred();
        self.session.batch("ROLLBACK TO SAVEPOINT sp; RELEASE SAVEPOINT sp")?;
        self.failed = None;
        Ok(())
    }

    fn publish(&mut self, effects: &[Effect]) -> StorageResult<()> {
        let Some((channel, origin)) = self.notify else { return Ok(()) };
        let payloads = payloads(origin, effects);
        if payloads.is_empty() {
            return Ok(());
        }
        // Sent with the COMMIT that follows, in its round trip.
        self.defer(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            vec![Box::new(channel.to_string()), Box::new(payloads)],
            None,
        )
    }

    // Tenancy: organisations, projects and credentials.

    fn insert_organization(&mut self, org: &Organization) -> StorageResult<()> {
        let body = encode(org)?;
        self.exec(
            "INSERT INTO organizations (id, created_at, body) VALUES ($1, $2, $3)",
            &[&org.id, &org.created_at, &body],
        )?;
        Ok(())
    }

    fn list_organizations(&mut self) -> StorageResult<Vec<Organization>> {
        self.bodies("SELECT body FROM organizations ORDER BY created_at, id", &[])
    }

    fn insert_project(&mut self, p: &Project) -> StorageResult<()> {
        let body = encode(p)?;
        self.exec(
            "INSERT INTO projects (id, external_ref, org_id, created_at, body) VALUES ($1, $2, $3, $4, $5)",
            &[&p.id, &p.external_ref, &p.org_id, &p.created_at, &body],
        )?;
        Ok(())
    }

    fn get_project(&mut self, id: &str) -> StorageResult<Option<Project>> {
        self.body("SELECT body FROM projects WHERE id = $1", &[&id])
    }

    fn find_project_by_ref(&mut self, external_ref: &str) -> StorageResult<Option<Project>> {
        self.body("SELECT body FROM projects WHERE external_ref = $1", &[&external_ref])
    }

    fn list_projects(&mut self, org_id: &str) -> StorageResult<Vec<Project>> {
        self.bodies("SELECT body FROM projects WHERE org_id = $1 ORDER BY created_at, id", &[&org_id])
    }

    fn insert_api_key(&mut self, k: &ApiKey) -> StorageResult<()> {
        let body = encode(k)?;
        self.exec(
            "INSERT INTO api_keys (id, env_id, key_hash, created_at, body) VALUES ($1, $2, $3, $4, $5)",
            &[&k.id, &k.env_id, &k.key_hash, &k.created_at, &body],
        )?;
        Ok(())
    }

    fn find_api_key_by_hash(&mut self, key_hash: &str) -> StorageResult<Option<ApiKey>> {
        self.body("SELECT body FROM api_keys WHERE key_hash = $1", &[&key_hash])
    }

    fn get_api_key(&mut self, id: &str) -> StorageResult<Option<ApiKey>> {
        self.body("SELECT body FROM api_keys WHERE id = $1", &[&id])
    }

    fn update_api_key(&mut self, k: &ApiKey) -> StorageResult<()> {
        let body = encode(k)?;
        let n = self.exec(
            "UPDATE api_keys SET env_id = $2, key_hash = $3, created_at = $4, body = $5 WHERE id = $1",
            &[&k.id, &k.env_id, &k.key_hash, &k.created_at, &body],
        )?;
        must_exist(n, "api key", &k.id)
    }

    fn list_api_keys(&mut self, env_id: Option<&str>) -> StorageResult<Vec<ApiKey>> {
        match env_id {
            Some(env_id) => {
                self.bodies("SELECT body FROM api_keys WHERE env_id = $1 ORDER BY created_at, id", &[&env_id])
            }
            None => {
                self.bodies("SELECT body FROM api_keys WHERE env_id IS NULL ORDER BY created_at, id", &[])
            }
        }
    }

    // Environments, worker versions, tasks and queues.

    fn insert_environment(&mut self, env: &Environment) -> StorageResult<()> {
        self.registry_write()?;
        let body = encode(env)?;
        // The counter row exists from the start, so that `env_running` always has a row to
        // lock.
        self.exec(
            "WITH e AS (INSERT INTO environments (id, project_id, created_at, body)
                        VALUES ($1, $2, $3, $4) RETURNING id)
             INSERT INTO env_running (env_id, running) SELECT id, 0 FROM e
             ON CONFLICT (env_id) DO NOTHING",
            &[&env.id, &env.project_id, &env.created_at, &body],
        )?;
        Ok(())
    }

    fn get_environment(&mut self, id: &str) -> StorageResult<Option<Environment>> {
        if let Some(hit) = self.registry.environments.get(id) {
            return Ok(hit.clone());
        }
        let found: Option<Environment> = self.body("SELECT body FROM environments WHERE id = $1", &[&id])?;
        self.registry.environments.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn update_environment(&mut self, env: &Environment) -> StorageResult<()> {
        self.registry_write()?;
        let body = encode(env)?;
        let n = self.exec(
            "UPDATE environments SET project_id = $2, created_at = $3, body = $4 WHERE id = $1",
            &[&env.id, &env.project_id, &env.created_at, &body],
        )?;
        must_exist(n, "environment", &env.id)
    }

    fn list_environments(&mut self, project_id: &str) -> StorageResult<Vec<Environment>> {
        self.bodies(
            "SELECT body FROM environments WHERE project_id = $1 ORDER BY created_at, id",
            &[&project_id],
        )
    }

    fn env_running(&mut self, env_id: &str) -> StorageResult<u32> {
        // FOR UPDATE: the engine checks limits against this count, so replicas taking slots
        // of one environment must take turns; after waiting, the latest count is returned.
        if let Some(n) = self.env_counts.get(env_id) {
            return Ok(*n);
        }
        self.flush_releases()?;
        let rows = self.query("SELECT running FROM env_running WHERE env_id = $1 FOR UPDATE", &[&env_id])?;
        let n = rows.first().map_or(Ok(0), |r| get_u32(r, 0))?;
        self.env_counts.insert(env_id.to_string(), n);
        Ok(n)
    }

    fn insert_worker(&mut self, w: &WorkerVersion) -> StorageResult<()> {
        self.registry_write()?;
        let body = encode(w)?;
        self.exec(
            "INSERT INTO workers (id, env_id, version, created_at, body) VALUES ($1, $2, $3, $4, $5)",
            &[&w.id, &w.env_id, &w.version, &w.created_at, &body],
        )?;
        Ok(())
    }

    fn get_worker(&mut self, id: &str) -> StorageResult<Option<WorkerVersion>> {
        if let Some(hit) = self.registry.workers.get(id) {
            return Ok(hit.clone());
        }
        let found: Option<WorkerVersion> = self.body("SELECT body FROM workers WHERE id = $1", &[&id])?;
        self.registry.workers.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn latest_worker(&mut self, env_id: &str) -> StorageResult<Option<WorkerVersion>> {
        if let Some(hit) = self.registry.latest_worker.get(env_id) {
            return Ok(hit.clone());
        }
        let found: Option<WorkerVersion> = self.body(
            "SELECT body FROM workers WHERE env_id = $1 ORDER BY created_at DESC, seq DESC LIMIT 1",
            &[&env_id],
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
            "SELECT body FROM workers WHERE env_id = $1 AND version = $2
             ORDER BY created_at DESC, seq DESC LIMIT 1",
            &[&env_id, &version],
        )
    }

    fn list_workers(&mut self, env_id: &str, max: u32) -> StorageResult<Vec<WorkerVersion>> {
        let key = (env_id.to_string(), max);
        if let Some(hit) = self.registry.worker_lists.get(&key) {
            return Ok(hit.clone());
        }
        let found: Vec<WorkerVersion> = self.bodies(
            "SELECT body FROM workers WHERE env_id = $1 ORDER BY created_at DESC, seq DESC LIMIT $2",
            &[&env_id, &i64::from(max)],
        )?;
        self.registry.worker_lists.insert(key, found.clone());
        Ok(found)
    }

    fn upsert_task(&mut self, t: &TaskDef) -> StorageResult<()> {
        self.registry_write()?;
        let body = encode(t)?;
        self.exec(
            "INSERT INTO tasks (env_id, worker_id, slug, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (env_id, worker_id, slug) DO UPDATE SET body = excluded.body",
            &[&t.env_id, &t.worker_id, &t.slug, &body],
        )?;
        Ok(())
    }

    fn get_task(&mut self, env_id: &str, worker_id: &str, slug: &str) -> StorageResult<Option<TaskDef>> {
        let key = (env_id.to_string(), worker_id.to_string(), slug.to_string());
        if let Some(hit) = self.registry.tasks.get(&key) {
            return Ok(hit.clone());
        }
        let found: Option<TaskDef> = self.body(
            "SELECT body FROM tasks WHERE env_id = $1 AND worker_id = $2 AND slug = $3",
            &[&env_id, &worker_id, &slug],
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
            "SELECT body FROM tasks WHERE env_id = $1 AND worker_id = $2 ORDER BY slug",
            &[&env_id, &worker_id],
        )?;
        self.registry.task_lists.insert(key, found.clone());
        Ok(found)
    }

    fn upsert_queue(&mut self, q: &QueueDef) -> StorageResult<()> {
        self.registry_write()?;
        let body = encode(q)?;
        let limit = q.concurrency_limit.map(to_i32);
        self.exec(
            "WITH q AS (INSERT INTO queues (env_id, name, lim, paused, body) VALUES ($1, $2, $3, $4, $5)
                        ON CONFLICT (env_id, name) DO UPDATE SET
                            lim = excluded.lim, paused = excluded.paused, body = excluded.body)
             UPDATE subqueues SET lim = $3, paused = $4 WHERE env_id = $1 AND queue = $2",
            &[&q.env_id, &q.name, &limit, &q.paused, &body],
        )?;
        Ok(())
    }

    fn get_queue(&mut self, env_id: &str, name: &str) -> StorageResult<Option<QueueDef>> {
        let key = (env_id.to_string(), name.to_string());
        if let Some(hit) = self.registry.queues.get(&key) {
            return Ok(hit.clone());
        }
        let found: Option<QueueDef> =
            self.body("SELECT body FROM queues WHERE env_id = $1 AND name = $2", &[&env_id, &name])?;
        self.registry.queues.insert(key, found.clone());
        Ok(found)
    }

    fn list_queues(&mut self, env_id: &str) -> StorageResult<Vec<QueueDef>> {
        self.bodies("SELECT body FROM queues WHERE env_id = $1 ORDER BY name", &[&env_id])
    }

    // Runs.

    fn insert_run(&mut self, run: &Run, payload: &Packet) -> StorageResult<()> {
        const SQL: &str = "WITH r AS (
                 INSERT INTO runs (id, env_id, task, status, queue, batch_id, parent_run_id, version,
                                   is_test, machine, created_at, idempotency_key, tags, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7,
                         coalesce((SELECT version FROM workers WHERE id = $8), $9),
                         $10, $11, $12, $13, $14, $15)
                 RETURNING id)
             INSERT INTO run_data (run_id, payload, payload_type) SELECT id, $16, $17 FROM r
             ON CONFLICT (run_id) DO UPDATE SET
                 payload = excluded.payload, payload_type = excluded.payload_type";
        if run.idempotency_key.is_none() {
            // Run ids are fresh and only keys can collide: held, and sent with the others.
            // Reads of the run by id are answered from `runs` meanwhile.
            self.runs.insert(run.id.clone(), (run.clone(), Some(Some(payload.clone()))));
            self.pending.insert_run(run, payload, encode(run)?);
            return Ok(());
        }
        self.runs.remove(&run.id);
        {
            // A held update may free this key (an expired one cleared from an older run).
            self.flush_runs()?;
        }
        let mut params = Self::run_params(run)?;
        params.push(Box::new(payload.data.clone()));
        params.push(Box::new(payload.data_type.clone()));
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        self.exec(SQL, &refs)?;
        Ok(())
    }

    fn lock_run(&mut self, id: &str) -> StorageResult<Option<Run>> {
        if !self.runs.contains_key(id) {
            self.read_runs(&[id], &[])?;
        }
        Ok(self.runs.get(id).map(|(run, _)| run.clone()))
    }

    fn lock_runs(&mut self, ids: &[&str]) -> StorageResult<Vec<Run>> {
        let missing: Vec<&str> = ids.iter().copied().filter(|id| !self.runs.contains_key(*id)).collect();
        if !missing.is_empty() {
            self.read_runs(&missing, &[])?;
        }
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .filter(|id| seen.insert(**id))
            .filter_map(|id| self.runs.get(*id).map(|(run, _)| run.clone()))
            .collect())
    }

    fn lock_run_with_payload(&mut self, id: &str) -> StorageResult<Option<(Run, Option<Packet>)>> {
        match self.runs.get(id) {
            Some((_, Some(_))) => {}
            Some((_, None)) => {
                let payload = self.get_payload(id)?;
                if let Some(entry) = self.runs.get_mut(id) {
                    entry.1 = Some(payload);
                }
            }
            None => self.read_runs(&[id], &[id])?,
        }
        Ok(self.runs.get(id).map(|(run, payload)| (run.clone(), payload.clone().flatten())))
    }

    fn prefetch_runs(&mut self, ids: &[&str], with_payload: &[&str]) -> StorageResult<()> {
        let missing: Vec<&str> = ids.iter().copied().filter(|id| !self.runs.contains_key(*id)).collect();
        if !missing.is_empty() {
            self.read_runs(&missing, with_payload)?;
        }
        // Runs already kept whose payload is wanted too: their payloads in one statement.
        let payloads: Vec<&str> = with_payload
            .iter()
            .copied()
            .filter(|id| self.runs.get(*id).is_some_and(|(_, payload)| payload.is_none()))
            .collect();
        if payloads.is_empty() {
            return Ok(());
        }
        self.flush_runs()?;
        let rows = self.query(
            "SELECT run_id, payload, payload_type FROM run_data WHERE run_id = ANY($1)",
            &[&payloads],
        )?;
        let mut found: HashMap<String, Option<Packet>> = HashMap::new();
        for row in &rows {
            found.insert(get(row, 0)?, packet(get(row, 1)?, get(row, 2)?));
        }
        for id in payloads {
            if let Some(entry) = self.runs.get_mut(id) {
                entry.1 = Some(found.remove(id).flatten());
            }
        }
        Ok(())
    }

    fn get_run(&mut self, id: &str) -> StorageResult<Option<Run>> {
        if let Some((run, _)) = self.runs.get(id) {
            return Ok(Some(run.clone()));
        }
        self.flush_runs()?;
        self.body("SELECT body FROM runs WHERE id = $1", &[&id])
    }

    fn update_run(&mut self, run: &Run) -> StorageResult<()> {
        const SQL: &str = "UPDATE runs SET env_id = $2, task = $3, status = $4, queue = $5, batch_id = $6,
                 parent_run_id = $7, version = coalesce((SELECT version FROM workers WHERE id = $8), $9),
                 is_test = $10, machine = $11, created_at = $12, idempotency_key = $13, tags = $14,
                 body = $15
             WHERE id = $1";
        match self.runs.get_mut(&run.id) {
            Some(entry) => entry.0 = run.clone(),
            None => {
                self.runs.insert(run.id.clone(), (run.clone(), None));
            }
        }
        if run.idempotency_key.is_none() {
            // Without a key no constraint can fail: the engine's most frequent write is held
            // and sent with the others (reads of this run are answered from `runs`).
            let body = encode(run)?;
            return self.pending.run(run, body).map_err(|e| corrupt(format!("run tags: {e}")));
        }
        self.flush_runs()?;
        let params = Self::run_params(run)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let n = self.exec(SQL, &refs)?;
        must_exist(n, "run", &run.id)
    }

    fn get_payload(&mut self, run_id: &str) -> StorageResult<Option<Packet>> {
        if let Some((_, Some(payload))) = self.runs.get(run_id) {
            return Ok(payload.clone());
        }
        self.flush_runs()?;
        let rows = self.query("SELECT payload, payload_type FROM run_data WHERE run_id = $1", &[&run_id])?;
        match rows.first() {
            Some(r) => Ok(packet(get(r, 0)?, get(r, 1)?)),
            None => Ok(None),
        }
    }

    fn set_output(&mut self, run_id: &str, output: &Packet) -> StorageResult<()> {
        self.pending.output(run_id, output);
        Ok(())
    }

    fn get_output(&mut self, run_id: &str) -> StorageResult<Option<Packet>> {
        if let Some(output) = self.pending.output_of(run_id) {
            return Ok(Some(output.clone()));
        }
        self.flush_runs()?;
        let rows = self.query("SELECT output, output_type FROM run_data WHERE run_id = $1", &[&run_id])?;
        match rows.first() {
            Some(r) => Ok(packet(get(r, 0)?, get(r, 1)?)),
            None => Ok(None),
        }
    }

    fn find_run_by_idempotency_key(
        &mut self,
        env_id: &str,
        task: &str,
        key: &str,
    ) -> StorageResult<Option<Run>> {
        self.flush_runs()?;
        self.body(
            "SELECT body FROM runs WHERE env_id = $1 AND task = $2 AND idempotency_key = $3",
            &[&env_id, &task, &key],
        )
    }

    fn list_runs(&mut self, f: &RunFilter, page: &Page) -> StorageResult<Vec<Run>> {
        self.flush_runs()?;
        let mut q = Query::new("SELECT body FROM runs");
        // An empty env id means every environment (the filter's fields are all optional).
        if !f.env_id.is_empty() {
            q.and("env_id = ?", f.env_id.clone());
        }
        let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        q.and_any("status = ANY(?)", &statuses);
        q.and_any("task = ANY(?)", &f.tasks);
        // The tags index holds only runs with tags: the second condition lets it be used.
        q.and_any("tags && ? AND tags <> '{}'", &f.tags);
        q.and_any("queue = ANY(?)", &f.queues);
        q.and_any("version = ANY(?)", &f.versions);
        let machines: Vec<&str> = f.machines.iter().map(|m| m.name()).collect();
        q.and_any("machine = ANY(?)", &machines);
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
        self.flush_runs()?;
        self.bodies(
            "SELECT body FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id",
            &[&parent_run_id],
        )
    }

    fn list_runs_in_status(&mut self, env_id: &str, status: RunStatus, max: u32) -> StorageResult<Vec<Run>> {
        self.flush_runs()?;
        if status == RunStatus::PendingVersion {
            // The one status the engine looks runs up by has an index of its own (migration 5).
            return self.bodies(
                "SELECT body FROM runs WHERE env_id = $1 AND pending_version
                 ORDER BY created_at, id LIMIT $2",
                &[&env_id, &i64::from(max)],
            );
        }
        self.bodies(
            "SELECT body FROM runs WHERE env_id = $1 AND status = $2 ORDER BY created_at, id LIMIT $3",
            &[&env_id, &status.as_str(), &i64::from(max)],
        )
    }

    // Execution snapshots.

    fn insert_snapshot(&mut self, s: &Snapshot) -> StorageResult<()> {
        // Snapshot ids are fresh: held and sent with the others.
        self.pending.snapshot(&s.id, &s.run_id, encode(s)?);
        Ok(())
    }

    fn get_snapshot(&mut self, id: &str) -> StorageResult<Option<Snapshot>> {
        self.flush_snapshots()?;
        self.body("SELECT body FROM snapshots WHERE id = $1", &[&id])
    }

    fn list_snapshots(&mut self, run_id: &str, after_id: Option<&str>) -> StorageResult<Vec<Snapshot>> {
        self.flush_snapshots()?;
        match after_id {
            None => self.bodies("SELECT body FROM snapshots WHERE run_id = $1 ORDER BY id", &[&run_id]),
            Some(after) => self.bodies(
                "SELECT body FROM snapshots WHERE run_id = $1 AND id > $2 ORDER BY id",
                &[&run_id, &after],
            ),
        }
    }

    // Queues and concurrency.

    fn enqueue(&mut self, e: &ReadyEntry) -> StorageResult<()> {
        let body = encode(e)?;
        if e.resume {
            if let Some(found) = &mut self.resumes {
                found.insert((e.env_id.clone(), e.queue.clone(), e.concurrency_key.clone()));
            }
        }
        // The common case in one statement: a new entry, counted in its subqueue.
        const SQL: &str = "WITH ins AS (
                 INSERT INTO ready (run_id, env_id, queue, ck, score, body, resume)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (run_id) DO NOTHING RETURNING run_id)
             INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused)
             SELECT $2, $3, $4, 1, 0,
                    (SELECT lim FROM queues WHERE env_id = $2 AND name = $3),
                    coalesce((SELECT paused FROM queues WHERE env_id = $2 AND name = $3), false)
             FROM ins
             ON CONFLICT (env_id, queue, ck) DO UPDATE SET ready_count = subqueues.ready_count + 1";
        // Held entries first: this run's own may be among them (queued twice).
        self.flush_entries()?;
        let inserted = self
            .exec(SQL, &[&e.run_id, &e.env_id, &e.queue, &e.concurrency_key, &e.score, &body, &e.resume])?;
        if inserted == 1 {
            return Ok(());
        }
        // The run was already queued (rare): replace its entry, which may move it to another
        // subqueue or change its score.
        let rows =
            self.query("SELECT env_id, queue, ck FROM ready WHERE run_id = $1 FOR UPDATE", &[&e.run_id])?;
        let Some(old) = rows.first() else {
            return Err(StorageError::new(ErrorKind::Other, format!("ready entry of {} vanished", e.run_id)));
        };
        let (env_id, queue, ck): (String, String, String) = (get(old, 0)?, get(old, 1)?, get(old, 2)?);
        self.exec(
            "UPDATE ready SET env_id = $2, queue = $3, ck = $4, score = $5, body = $6, resume = $7
             WHERE run_id = $1",
            &[&e.run_id, &e.env_id, &e.queue, &e.concurrency_key, &e.score, &body, &e.resume],
        )?;
        if (env_id.as_str(), queue.as_str(), ck.as_str()) != (&e.env_id, &e.queue, &e.concurrency_key) {
            self.exec(
                "UPDATE subqueues SET ready_count = greatest(ready_count - 1, 0)
                 WHERE env_id = $1 AND queue = $2 AND ck = $3",
                &[&env_id, &queue, &ck],
            )?;
            self.subqueue_gained_entry(&e.env_id, &e.queue, &e.concurrency_key)?;
        }
        Ok(())
    }

    fn enqueue_first(&mut self, e: &ReadyEntry) -> StorageResult<()> {
        // No entry to replace: held, and sent with the others.
        if e.resume {
            if let Some(found) = &mut self.resumes {
                found.insert((e.env_id.clone(), e.queue.clone(), e.concurrency_key.clone()));
            }
        }
        self.pending.entry(e, encode(e)?);
        Ok(())
    }

    fn dequeue_entry(&mut self, run_id: &str) -> StorageResult<Option<ReadyEntry>> {
        self.flush_entries()?;
        self.body(
            "WITH d AS (DELETE FROM ready WHERE run_id = $1 RETURNING env_id, queue, ck, body),
                  u AS (UPDATE subqueues s SET ready_count = greatest(s.ready_count - 1, 0) FROM d
                        WHERE s.env_id = d.env_id AND s.queue = d.queue AND s.ck = d.ck)
             SELECT body FROM d",
            &[&run_id],
        )
    }

    fn dequeue_entries(&mut self, run_ids: &[&str]) -> StorageResult<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        self.flush_entries()?;
        let ids: Vec<String> = run_ids.iter().map(|id| id.to_string()).collect();
        // Nobody reads the answer: sent with the claim's next statement.
        self.defer(
            "WITH d AS (DELETE FROM ready WHERE run_id = ANY($1) RETURNING env_id, queue, ck),
                  c AS (SELECT env_id, queue, ck, count(*)::integer AS n FROM d GROUP BY env_id, queue, ck)
             UPDATE subqueues s SET ready_count = greatest(s.ready_count - c.n, 0) FROM c
             WHERE s.env_id = c.env_id AND s.queue = c.queue AND s.ck = c.ck",
            vec![Box::new(ids)],
            None,
        )
    }

    fn claimable_subqueues(
        &mut self,
        env_id: &str,
        env_limit: u32,
        max: u32,
    ) -> StorageResult<Vec<Subqueue>> {
        self.subqueues(
            &format!(
                "SELECT {SUBQUEUE_COLUMNS} FROM subqueues s
                 WHERE s.env_id = $1 AND s.ready_count > 0 AND NOT s.paused
                   AND s.running < least(coalesce(s.lim, $2::integer), $2::integer)
                 ORDER BY head, s.queue, s.ck LIMIT $3
                 FOR UPDATE OF s SKIP LOCKED"
            ),
            &[&env_id, &to_i32(env_limit), &i64::from(max)],
        )
    }

    fn peek_subqueue(
        &mut self,
        env_id: &str,
        queue: &str,
        ck: &str,
        max: u32,
    ) -> StorageResult<Vec<ReadyEntry>> {
        self.flush_entries()?;
        self.bodies(
            "SELECT body FROM ready WHERE env_id = $1 AND queue = $2 AND ck = $3
             ORDER BY score, run_id LIMIT $4",
            &[&env_id, &queue, &ck, &i64::from(max)],
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
        self.flush_runs()?;
        self.flush_entries()?;
        let rows = self.query(
            "SELECT e.body, r.body, d.payload, d.payload_type FROM ready e JOIN runs r ON r.id = e.run_id
             LEFT JOIN run_data d ON $5 AND d.run_id = r.id
             WHERE e.env_id = $1 AND e.queue = $2 AND e.ck = $3
             ORDER BY e.score, e.run_id LIMIT $4 FOR UPDATE OF r",
            &[&env_id, &queue, &ck, &i64::from(max), &with_payloads],
        )?;
        let (mut entries, mut runs) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for row in &rows {
            entries.push(decode::<ReadyEntry>(&get::<String>(row, 0)?)?);
            let run: Run = decode(&get::<String>(row, 1)?)?;
            let payload = if with_payloads { Some(packet(get(row, 2)?, get(row, 3)?)) } else { None };
            // A run this transaction changed reads the same from the database (its writes went
            // first); keep the copy already held.
            let kept = self.runs.entry(run.id.clone()).or_insert((run, None));
            if kept.1.is_none() {
                kept.1 = payload;
            }
            runs.push(kept.0.clone());
        }
        Ok((entries, runs))
    }

    fn get_subqueue(&mut self, env_id: &str, queue: &str, ck: &str) -> StorageResult<Option<Subqueue>> {
        let sql = format!(
            "SELECT {SUBQUEUE_COLUMNS} FROM subqueues s WHERE s.env_id = $1 AND s.queue = $2 AND s.ck = $3"
        );
        Ok(self.subqueues(&sql, &[&env_id, &queue, &ck])?.into_iter().next())
    }

    fn list_subqueues(&mut self, env_id: &str, queue: &str) -> StorageResult<Vec<Subqueue>> {
        let sql = format!(
            "SELECT {SUBQUEUE_COLUMNS} FROM subqueues s WHERE s.env_id = $1 AND s.queue = $2 ORDER BY s.ck"
        );
        self.subqueues(&sql, &[&env_id, &queue])
    }

    fn acquire(&mut self, h: &Holder) -> StorageResult<bool> {
        // A release held for this run must not come after its new holder.
        self.flush_releases()?;
        // The one-time filter on `e` makes the environment row change before the subqueue
        // row, the order in which the limit checks lock them.
        let n = self.exec(
            "WITH h AS (INSERT INTO holders (run_id, env_id, queue, ck) VALUES ($1, $2, $3, $4)
                        ON CONFLICT (run_id) DO NOTHING RETURNING env_id),
                  e AS (INSERT INTO env_running (env_id, running) SELECT env_id, 1 FROM h
                        ON CONFLICT (env_id) DO UPDATE SET running = env_running.running + 1
                        RETURNING 1)
             INSERT INTO subqueues (env_id, queue, ck, ready_count, running, lim, paused)
             SELECT $2, $3, $4, 0, 1,
                    (SELECT lim FROM queues WHERE env_id = $2 AND name = $3),
                    coalesce((SELECT paused FROM queues WHERE env_id = $2 AND name = $3), false)
             FROM h WHERE (SELECT count(*) FROM e) > 0
             ON CONFLICT (env_id, queue, ck) DO UPDATE SET running = subqueues.running + 1",
            &[&h.run_id, &h.env_id, &h.queue, &h.concurrency_key],
        )?;
        if n == 1 {
            self.count_slots(&h.env_id, 1);
        }
        Ok(n == 1)
    }

    fn acquire_claimed(&mut self, holders: &[Holder]) -> StorageResult<()> {
        if holders.is_empty() {
            return Ok(());
        }
        self.flush_releases()?;
        // Sent with the claim's next statement: runs just taken off the queue hold no slot,
        // so each one takes one.
        self.defer(ACQUIRE_MANY, holder_columns(holders), None)?;
        self.count_slots_of(holders, holders.len() as i64);
        Ok(())
    }

    fn acquire_many(&mut self, holders: &[Holder]) -> StorageResult<u32> {
        if holders.len() < 2 {
            return holders.iter().try_fold(0, |n, h| Ok(n + u32::from(self.acquire(h)?)));
        }
        self.flush_releases()?;
        let params = holder_columns(holders);
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = self.query(ACQUIRE_MANY, &refs)?;
        let n: i64 = rows.first().map_or(Ok(0), |r| get(r, 0))?;
        self.count_slots_of(holders, n);
        Ok(u32::try_from(n).unwrap_or(0))
    }

    fn may_have_resume(&mut self, env_id: &str, queue: &str, ck: &str) -> StorageResult<bool> {
        if self.resumes.is_none() {
            self.flush_entries()?;
            let rows = self.query("SELECT DISTINCT env_id, queue, ck FROM ready WHERE resume", &[])?;
            let mut found = HashSet::new();
            for row in &rows {
                found.insert((get(row, 0)?, get(row, 1)?, get(row, 2)?));
            }
            self.resumes = Some(found);
        }
        // Usually none is queued: no key to build.
        Ok(self.resumes.as_ref().is_some_and(|found| {
            !found.is_empty() && found.contains(&(env_id.to_string(), queue.to_string(), ck.to_string()))
        }))
    }

    fn release_and_peek(
        &mut self,
        run_id: &str,
        env_id: &str,
        queue: &str,
        ck: &str,
    ) -> StorageResult<(bool, Option<ReadyEntry>)> {
        if !self.may_have_resume(env_id, queue, ck)? {
            // Only a resume entry at the head needs the caller: the release waits to be
            // sent with the others. Whether the run held a slot is not known yet.
            self.pending.release(run_id);
            self.env_counts.remove(env_id);
            return Ok((true, None));
        }
        self.flush_releases()?;
        self.flush_entries()?;
        let rows = self.query(
            &format!(
                "{RELEASE}
                 SELECT (SELECT env_id FROM h),
                        (SELECT body FROM ready WHERE env_id = $2 AND queue = $3 AND ck = $4
                         ORDER BY score, run_id LIMIT 1)"
            ),
            &[&run_id, &env_id, &queue, &ck],
        )?;
        let Some(row) = rows.first() else { return Ok((false, None)) };
        let freed: Option<String> = get(row, 0)?;
        if let Some(env) = &freed {
            self.count_slots(env, -1);
        }
        let released = freed.is_some();
        let head: Option<String> = get(row, 1)?;
        match head {
            Some(body) if released => Ok((true, Some(decode(&body)?))),
            _ => Ok((released, None)),
        }
    }

    fn release(&mut self, run_id: &str) -> StorageResult<bool> {
        self.flush_releases()?;
        let rows = self.query(&format!("{RELEASE} SELECT env_id FROM h"), &[&run_id])?;
        match rows.first() {
            Some(row) => {
                let env: String = get(row, 0)?;
                self.count_slots(&env, -1);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn get_holder(&mut self, run_id: &str) -> StorageResult<Option<Holder>> {
        self.flush_releases()?;
        let rows =
            self.query("SELECT run_id, env_id, queue, ck FROM holders WHERE run_id = $1", &[&run_id])?;
        rows.first()
            .map(|r| {
                Ok(Holder {
                    run_id: get(r, 0)?,
                    env_id: get(r, 1)?,
                    queue: get(r, 2)?,
                    concurrency_key: get(r, 3)?,
                })
            })
            .transpose()
    }

    // Timers.

    fn set_timer(&mut self, t: &Timer) -> StorageResult<()> {
        self.pending.timer(&t.key, Some(t.clone()));
        Ok(())
    }

    fn clear_timer(&mut self, key: &str) -> StorageResult<()> {
        self.pending.timer(key, None);
        Ok(())
    }

    fn get_timer(&mut self, key: &str) -> StorageResult<Option<Timer>> {
        self.flush_timers()?;
        let rows =
            self.query("SELECT key, kind, target, fence, fire_at FROM timers WHERE key = $1", &[&key])?;
        rows.first().map(timer_row).transpose()
    }

    fn take_due_timers(&mut self, now: Millis, max: u32) -> StorageResult<Vec<Timer>> {
        self.flush_timers()?;
        // SKIP LOCKED: a timer another replica is taking is left to it.
        let rows = self.query(
            "DELETE FROM timers WHERE key IN (
                 SELECT key FROM timers WHERE fire_at <= $1 ORDER BY fire_at, key LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING key, kind, target, fence, fire_at",
            &[&now, &i64::from(max)],
        )?;
        let mut due = rows.iter().map(timer_row).collect::<StorageResult<Vec<_>>>()?;
        // RETURNING gives no order guarantee.
        due.sort_by(|a, b| (a.fire_at, &a.key).cmp(&(b.fire_at, &b.key)));
        Ok(due)
    }

    fn next_timer_at(&mut self) -> StorageResult<Option<Millis>> {
        self.flush_timers()?;
        let rows = self.query("SELECT min(fire_at) FROM timers", &[])?;
        Ok(rows.first().map(|r| get::<Option<i64>>(r, 0)).transpose()?.flatten())
    }

    // Waitpoints.

    fn insert_waitpoint(&mut self, w: &Waitpoint) -> StorageResult<()> {
        self.write_waitpoint(
            "INSERT INTO waitpoints (id, env_id, kind, status, idempotency_key, completed_by_run_id,
                                     output_is_error, created_at, tags, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            w,
        )?;
        Ok(())
    }

    fn lock_waitpoint(&mut self, id: &str) -> StorageResult<Option<Waitpoint>> {
        self.body("SELECT body FROM waitpoints WHERE id = $1 FOR UPDATE", &[&id])
    }

    fn update_waitpoint(&mut self, w: &Waitpoint) -> StorageResult<()> {
        let n = self.write_waitpoint(
            "UPDATE waitpoints SET env_id = $2, kind = $3, status = $4, idempotency_key = $5,
                 completed_by_run_id = $6, output_is_error = $7, created_at = $8, tags = $9, body = $10
             WHERE id = $1",
            w,
        )?;
        must_exist(n, "waitpoint", &w.id)
    }

    fn find_waitpoint_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Waitpoint>> {
        self.body("SELECT body FROM waitpoints WHERE env_id = $1 AND idempotency_key = $2", &[&env_id, &key])
    }

    fn find_run_waitpoint(&mut self, run_id: &str) -> StorageResult<Option<Waitpoint>> {
        self.body(
            "SELECT body FROM waitpoints WHERE completed_by_run_id = $1 AND kind = 'RUN' ORDER BY id LIMIT 1",
            &[&run_id],
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
        q.and_any("status = ANY(?)", &statuses);
        // A timed-out token is one completed with an error output.
        let completed = WaitpointStatus::Completed.as_str().to_string();
        match f.timed_out {
            Some(true) => q.and("(status = ? AND output_is_error)", completed),
            Some(false) => q.and("NOT (status = ? AND output_is_error)", completed),
            None => {}
        }
        if let Some(key) = &f.idempotency_key {
            q.and("idempotency_key = ?", key.clone());
        }
        q.and_any("tags && ?", &f.tags);
        if let Some(from) = f.created_from {
            q.and("created_at >= ?", from);
        }
        if let Some(to) = f.created_to {
            q.and("created_at <= ?", to);
        }
        self.list(q.page(page))
    }

    fn insert_block(&mut self, edge: &BlockEdge) -> StorageResult<bool> {
        let body = encode(edge)?;
        let index = edge.batch_index.map_or(-1, to_i32);
        let n = self.exec(
            "INSERT INTO blocks (run_id, waitpoint_id, batch_index, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&edge.run_id, &edge.waitpoint_id, &index, &body],
        )?;
        Ok(n == 1)
    }

    fn list_blocks(&mut self, run_id: &str) -> StorageResult<Vec<BlockEdge>> {
        self.bodies("SELECT body FROM blocks WHERE run_id = $1 ORDER BY seq", &[&run_id])
    }

    fn runs_blocked_by(&mut self, waitpoint_id: &str) -> StorageResult<Vec<(String, u32)>> {
        // Each run once, even when it waits on several batch items of the same waitpoint.
        let rows = self.query(
            "SELECT run_id, count(*) FROM blocks WHERE waitpoint_id = $1 GROUP BY run_id ORDER BY min(seq)",
            &[&waitpoint_id],
        )?;
        rows.iter()
            .map(|r| {
                let edges: i64 = get(r, 1)?;
                Ok((get(r, 0)?, edges as u32))
            })
            .collect()
    }

    fn delete_blocks(&mut self, run_id: &str) -> StorageResult<()> {
        self.defer("DELETE FROM blocks WHERE run_id = $1", vec![Box::new(run_id.to_string())], None)
    }

    // Batches.

    fn insert_batch(&mut self, b: &Batch) -> StorageResult<()> {
        let body = encode(b)?;
        self.exec(
            "INSERT INTO batches (id, env_id, idempotency_key, body) VALUES ($1, $2, $3, $4)",
            &[&b.id, &b.env_id, &b.idempotency_key, &body],
        )?;
        Ok(())
    }

    fn lock_batch(&mut self, id: &str) -> StorageResult<Option<Batch>> {
        if let Some(batch) = self.batches.get(id) {
            return Ok(Some(batch.clone()));
        }
        self.flush_batches()?;
        let found: Option<Batch> = self.body("SELECT body FROM batches WHERE id = $1 FOR UPDATE", &[&id])?;
        if let Some(batch) = &found {
            self.batches.insert(batch.id.clone(), batch.clone());
        }
        Ok(found)
    }

    fn update_batch(&mut self, b: &Batch) -> StorageResult<()> {
        self.batches.insert(b.id.clone(), b.clone());
        let body = encode(b)?;
        if b.idempotency_key.is_none() {
            // Nothing can collide: held, the latest state of each batch sent with the others.
            self.pending.batch(b, body);
            return Ok(());
        }
        // A key can collide with another batch's: wait for the answer.
        self.flush_batches()?;
        let n = self.exec(
            "UPDATE batches SET env_id = $2, idempotency_key = $3, body = $4 WHERE id = $1",
            &[&b.id, &b.env_id, &b.idempotency_key, &body],
        )?;
        must_exist(n, "batch", &b.id)
    }

    fn find_batch_by_key(&mut self, env_id: &str, key: &str) -> StorageResult<Option<Batch>> {
        self.flush_batches()?;
        self.body("SELECT body FROM batches WHERE env_id = $1 AND idempotency_key = $2", &[&env_id, &key])
    }

    fn insert_batch_item(&mut self, batch_id: &str, index: u32, run_id: &str) -> StorageResult<bool> {
        self.flush_batch_items()?;
        let n = self.exec(
            "INSERT INTO batch_items (batch_id, idx, run_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&batch_id, &to_i32(index), &run_id],
        )?;
        Ok(n == 1)
    }

    fn record_batch_item(&mut self, batch_id: &str, index: u32, run_id: &str) -> StorageResult<()> {
        self.pending.batch_item(batch_id, to_i32(index), run_id);
        Ok(())
    }

    fn get_batch_item(&mut self, batch_id: &str, index: u32) -> StorageResult<Option<String>> {
        self.flush_batch_items()?;
        let rows = self.query(
            "SELECT run_id FROM batch_items WHERE batch_id = $1 AND idx = $2",
            &[&batch_id, &to_i32(index)],
        )?;
        rows.first().map(|r| get(r, 0)).transpose()
    }

    fn list_batch_items(&mut self, batch_id: &str) -> StorageResult<Vec<(u32, String)>> {
        self.flush_batch_items()?;
        let rows =
            self.query("SELECT idx, run_id FROM batch_items WHERE batch_id = $1 ORDER BY idx", &[&batch_id])?;
        rows.iter().map(|r| Ok((get_u32(r, 0)?, get(r, 1)?))).collect()
    }

    fn list_batches(&mut self, env_id: &str, page: &Page) -> StorageResult<Vec<Batch>> {
        self.flush_batches()?;
        let mut q = Query::new("SELECT body FROM batches");
        q.and("env_id = ?", env_id.to_string());
        self.list(q.page(page))
    }

    // Run events.

    fn insert_events(&mut self, events: &[RunEvent]) -> StorageResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        // The stored body's `seq` is ignored: the column is the truth.
        let runs: Vec<String> = events.iter().map(|e| e.run_id.clone()).collect();
        let bodies = events.iter().map(encode).collect::<StorageResult<Vec<String>>>()?;
        self.defer(
            "INSERT INTO events (run_id, body)
             SELECT r, b FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(r, b, n) ORDER BY n",
            vec![Box::new(runs), Box::new(bodies)],
            None,
        )
    }

    fn list_events(&mut self, run_id: &str, after_seq: i64, max: u32) -> StorageResult<Vec<RunEvent>> {
        let rows = self.query(
            "SELECT seq, body FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&run_id, &after_seq, &i64::from(max)],
        )?;
        rows.iter()
            .map(|r| {
                let mut ev: RunEvent = decode(&get::<String>(r, 1)?)?;
                ev.seq = get(r, 0)?;
                Ok(ev)
            })
            .collect()
    }
}
