//! Connecting: options, the session (one connection driven by a runtime the store owns, with
//! its prepared statements), embedded migrations and `begin`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, SimpleQueryMessage, Statement};
use trigger_engine::storage::{ErrorKind, RegistryCache, RemoteSink, StorageError, StorageResult, Store, Tx};

use crate::error::{breaks_connection, from_pg};
use crate::notify::{channel_name, Listener};
use crate::tx::PostgresTx;

/// Schema migrations, applied in order and recorded in `schema_migrations`. Append only: a
/// released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_registry_generation.sql")),
    (3, include_str!("../migrations/0003_ready_resume.sql")),
    (4, include_str!("../migrations/0004_runs_partial_indexes.sql")),
    (5, include_str!("../migrations/0005_runs_hot_updates.sql")),
];

/// PostgreSQL's `synchronous_commit` for the store's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynchronousCommit {
    On,
    RemoteApply,
    RemoteWrite,
    Local,
    /// Commits return before the WAL is flushed: a crash of the database server may lose
    /// the last transactions (never corrupts). For tests and throwaway databases.
    Off,
}

impl SynchronousCommit {
    fn as_str(self) -> &'static str {
        match self {
            SynchronousCommit::On => "on",
            SynchronousCommit::RemoteApply => "remote_apply",
            SynchronousCommit::RemoteWrite => "remote_write",
            SynchronousCommit::Local => "local",
            SynchronousCommit::Off => "off",
        }
    }
}

/// Options of [`PostgresStore::connect`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding the tables (`SET search_path`), created by the migration when
    /// missing; `None` uses the server's search path. Several deployments can share one
    /// database with a schema each.
    pub schema: Option<String>,
    /// Apply the embedded migrations on connect (safe from many replicas at once). When
    /// false the schema must already be at this build's version.
    pub migrate: bool,
    /// `None` keeps the server's setting.
    pub synchronous_commit: Option<SynchronousCommit>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`; the client also gives up on a call that takes this
    /// plus [`CLIENT_GRACE`] (a database that stopped answering), dropping the connection.
    pub statement_timeout: Duration,
    /// Tell other replicas about work and run changes with `NOTIFY`, and listen for theirs.
    pub notify: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: None,
            migrate: true,
            synchronous_commit: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            notify: true,
        }
    }
}

/// How much longer than `statement_timeout` the client waits for an answer.
pub const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (the fixed statements plus the shapes of the list
/// queries fit easily; past this the cache is cleared).
const STATEMENT_CACHE: usize = 512;

/// A bound statement argument that can travel with a deferred write.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

type Reply = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

/// A write already sent whose answer is read with the next call that waits for one.
struct Deferred {
    reply: Reply,
    /// `(n, error)`: the error when it changed fewer than `n` rows.
    must_change: Option<(u64, String)>,
}

/// One connection and the runtime that drives it. Statements are prepared once per
/// connection; a connection that breaks is dropped and replaced on the next `begin`.
///
/// Writes whose result the engine does not read ([`Session::defer`]) are sent at once and
/// answered together with the next call that waits: requests keep their order on the
/// connection, so the server applies them in call order, and a run of writes costs one round
/// trip instead of one each. A failed deferred write is reported by that next call (at the
/// latest by the commit), which PostgreSQL would refuse anyway.
pub(crate) struct Session {
    rt: Option<Runtime>,
    config: tokio_postgres::Config,
    setup: String,
    client: Option<Arc<Client>>,
    statements: HashMap<String, Statement>,
    timeout: Duration,
    deferred: Vec<Deferred>,
}

impl Session {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the session")
    }

    /// The connection, or `Unavailable` while there is none.
    fn client(&self) -> StorageResult<Arc<Client>> {
        self.client
            .clone()
            .ok_or_else(|| StorageError::new(ErrorKind::Unavailable, "not connected to PostgreSQL"))
    }

    /// Waits for `f` and for every deferred write (sent before it), in one round trip. A
    /// deferred write's failure is reported first: it is the one that happened first.
    fn call<T>(&mut self, f: impl Future<Output = Result<T, tokio_postgres::Error>>) -> StorageResult<T> {
        if self.deferred.is_empty() {
            let outcome = run(self.rt(), self.timeout, f);
            return self.settle(outcome);
        }
        let (replies, checks): (Vec<Reply>, Vec<Option<(u64, String)>>) =
            std::mem::take(&mut self.deferred).into_iter().map(|d| (d.reply, d.must_change)).unzip();
        let timeout = self.timeout;
        let outcome = self.rt().block_on(async {
            tokio::time::timeout(timeout, async { tokio::join!(futures_util::future::join_all(replies), f) })
                .await
                .ok()
        });
        let Some((earlier, result)) = outcome else {
            return self.settle::<T>(None);
        };
        for (reply, must_change) in earlier.into_iter().zip(checks) {
            match reply {
                Err(e) => return self.settle::<T>(Some(Err(e))),
                Ok(changed) => {
                    if let Some((_, error)) = must_change.filter(|(n, _)| changed < *n) {
                        return Err(StorageError::new(ErrorKind::Other, error));
                    }
                }
            }
        }
        self.settle(Some(result))
    }

    /// Sends a write without waiting for its answer (see [`Session`]). `must_change` is
    /// `(n, error)`: the error to report when it changes fewer than `n` rows.
    pub(crate) fn defer(
        &mut self,
        sql: &str,
        params: Vec<Param>,
        must_change: Option<(u64, String)>,
    ) -> StorageResult<()> {
        let stmt = self.statement(sql)?;
        let client = self.client()?;
        let mut reply: Reply = Box::pin(async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            client.execute(&stmt, &refs).await
        });
        // The first poll queues the request on the connection, fixing its place in line.
        if let Poll::Ready(done) =
            reply.as_mut().poll(&mut Context::from_waker(futures_util::task::noop_waker_ref()))
        {
            reply = Box::pin(async move { done });
        }
        self.deferred.push(Deferred { reply, must_change });
        Ok(())
    }

    /// Converts the outcome of a call run by [`run`], dropping the connection when the call
    /// timed out or the error means it is gone.
    fn settle<T>(&mut self, outcome: Option<Result<T, tokio_postgres::Error>>) -> StorageResult<T> {
        match outcome {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                if breaks_connection(&e) {
                    self.disconnect();
                }
                Err(from_pg(e))
            }
            None => {
                self.disconnect();
                Err(StorageError::new(
                    ErrorKind::Unavailable,
                    format!("PostgreSQL did not answer within {:?}", self.timeout),
                ))
            }
        }
    }

    /// Stops waiting for the deferred writes (about to be rolled back anyway); their answers
    /// are discarded by the connection.
    pub(crate) fn forget_deferred(&mut self) {
        self.deferred.clear();
    }

    pub(crate) fn disconnect(&mut self) {
        self.client = None;
        self.statements.clear();
        self.deferred.clear();
    }

    fn connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// (Re)connects when there is no usable connection.
    fn ensure_connected(&mut self) -> StorageResult<()> {
        if self.connected() {
            return Ok(());
        }
        self.disconnect();
        let config = self.config.clone();
        let connect = self.rt().block_on(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        self.client = Some(Arc::new(connect.map_err(from_pg)?));
        let setup = self.setup.clone();
        self.batch(&setup)
    }

    fn statement(&mut self, sql: &str) -> StorageResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client()?;
        let stmt = self.call(client.prepare(sql))?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StorageResult<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let client = self.client()?;
        self.call(client.query(&stmt, params))
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StorageResult<u64> {
        let stmt = self.statement(sql)?;
        let client = self.client()?;
        self.call(client.execute(&stmt, params))
    }

    /// Opens a writer transaction: `BEGIN`, the deployment's writer lock, and the registry
    /// generation the lock lets it see, in one round trip.
    pub(crate) fn begin_writer(&mut self, lock_key: i64) -> StorageResult<i64> {
        let client = self.client()?;
        let sql =
            format!("BEGIN; SELECT pg_advisory_xact_lock({lock_key}); SELECT gen FROM registry_generation");
        let gen = self.call(client.simple_query(&sql)).and_then(|messages| {
            let gen = messages.iter().rev().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<i64>().ok()),
                _ => None,
            });
            gen.ok_or_else(|| StorageError::new(ErrorKind::Corrupt, "registry_generation has no row"))
        });
        if gen.is_err() && self.connected() {
            // Leave no transaction open (or aborted) on the connection for the next begin.
            let _ = self.batch("ROLLBACK");
        }
        gen
    }

    /// Statements without parameters over the simple protocol, in one round trip.
    pub(crate) fn batch(&mut self, sql: &str) -> StorageResult<()> {
        let client = self.client()?;
        self.call(client.batch_execute(sql))
    }
}

/// Drives `f` to completion on `rt`; `None` when it took longer than `timeout`.
fn run<T>(
    rt: &Runtime,
    timeout: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Option<Result<T, tokio_postgres::Error>> {
    rt.block_on(async { tokio::time::timeout(timeout, f).await.ok() })
}

impl Drop for Session {
    fn drop(&mut self) {
        self.client = None;
        // Dropping a runtime inside another one's context panics; this does not.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL database the engine can run on: one connection (reconnected when it breaks)
/// and, once the engine listens, one more on a background thread for `LISTEN`.
pub struct PostgresStore {
    session: Session,
    schema: String,
    channel: String,
    options: PostgresOptions,
    listener: Option<Listener>,
    origin: Arc<str>,
    /// Registry rows read in earlier transactions, valid while the schema's registry
    /// generation is `registry_gen` (see `migrations/0002_registry_generation.sql`).
    registry: RegistryCache,
    registry_gen: Option<i64>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db?…`), prepares the session and,
    /// unless disabled, migrates the schema. May be called from inside a Tokio runtime.
    pub fn connect(url: &str, options: PostgresOptions) -> StorageResult<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("invalid database URL: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        // A peer that vanished (no RST) is noticed by keepalives when idle and by the TCP
        // user timeout when a request goes unacknowledged, well before the client timeout.
        config.keepalives_idle(Duration::from_secs(30));
        config.tcp_user_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("trigger.rs");
        }
        outside_runtime(move || Self::connect_now(config, options))
    }

    fn connect_now(config: tokio_postgres::Config, options: PostgresOptions) -> StorageResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("cannot start a runtime: {e}")))?;
        let mut setup = format!("SET statement_timeout = {}; ", options.statement_timeout.as_millis().max(1));
        // The store's statements are prepared once and bound thousands of times; PostgreSQL
        // would otherwise plan most of them again at every bind (a custom plan for the
        // parameter values: about 0.1 ms each for the multi-row ones, measured with
        // `log_min_duration_statement = 0`). Their plans do not depend on the values: every
        // one reads or writes by key, or by an index on the columns it filters.
        //
        // A generic plan is made once, from the statistics of that moment, and kept until
        // they change. Made on a new schema's empty tables, it scans them whole (for an empty
        // table that is cheapest), and went on doing so as they grew until autovacuum
        // analyzed them: the batch read of a few runs took 1.7 ms at 4,000 runs. Scans of a
        // whole table are made the planner's last resort, so that its plans use the indexes
        // whatever the tables held when they were made. That penalty puts the cost of the
        // scans that remain (of one-row tables) past `jit_above_cost`, and compiling them took
        // 5 ms each: none of the store's statements gains from JIT, so it is off.
        setup.push_str("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off; ");
        if let Some(schema) = &options.schema {
            setup.push_str(&format!("SET search_path TO {}; ", quote_ident(schema)));
        }
        if let Some(sync) = options.synchronous_commit {
            setup.push_str(&format!("SET synchronous_commit = {}; ", sync.as_str()));
        }
        let mut session = Session {
            rt: Some(rt),
            config,
            // Applied by `ensure_connected` on every new connection; the schema is created by
            // the migration, so the first setup must not depend on it.
            setup,
            client: None,
            statements: HashMap::new(),
            timeout: options.statement_timeout + CLIENT_GRACE,
            deferred: Vec::new(),
        };
        session.ensure_connected()?;
        if options.migrate {
            migrate(&mut session, options.schema.as_deref())?;
        }
        let schema: String = session
            .query("SELECT current_schema()", &[])?
            .first()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .ok_or_else(|| {
                StorageError::new(ErrorKind::Other, "no schema: the search path names none that exists")
            })?;
        let version = current_version(&mut session)?;
        if version != Self::latest_schema_version() {
            return Err(StorageError::new(
                ErrorKind::Other,
                format!(
                    "schema {schema} is at version {version}, this build needs {}",
                    Self::latest_schema_version()
                ),
            ));
        }
        Ok(PostgresStore {
            session,
            channel: channel_name(&schema),
            schema,
            options,
            listener: None,
            origin: origin_id().into(),
            registry: RegistryCache::default(),
            registry_gen: None,
        })
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The migrations recorded in this schema: `(version, applied_at)`, oldest first, with
    /// `applied_at` in milliseconds since the epoch.
    pub fn applied_migrations(&mut self) -> StorageResult<Vec<(i64, i64)>> {
        let rows = self.session.query(
            "SELECT version, (extract(epoch FROM applied_at) * 1000)::bigint
             FROM schema_migrations ORDER BY version",
            &[],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The schema version this build creates.
    pub fn latest_schema_version() -> i64 {
        MIGRATIONS.last().map_or(0, |m| m.0)
    }

    /// Drops a schema and everything in it (for tests and teardown). May be called from
    /// inside a Tokio runtime.
    pub fn drop_schema(url: &str, schema: &str) -> StorageResult<()> {
        let options = PostgresOptions { migrate: false, notify: false, ..PostgresOptions::default() };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("invalid database URL: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
        outside_runtime(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StorageError::new(ErrorKind::Other, e.to_string()))?;
            let mut session = Session {
                rt: Some(rt),
                config,
                setup: String::new(),
                client: None,
                statements: HashMap::new(),
                timeout: options.statement_timeout + CLIENT_GRACE,
                deferred: Vec::new(),
            };
            session.ensure_connected()?;
            session.batch(&sql)
        })
    }
}

impl Store for PostgresStore {
    fn begin(&mut self) -> StorageResult<Box<dyn Tx + '_>> {
        self.session.ensure_connected()?;
        // One writer transaction at a time per deployment (schema): the engine applies many
        // commands per transaction, touching runs, subqueues and counters in whatever order
        // its commands come, so two replicas' batches would otherwise deadlock each other.
        // Replicas still share the work — they take turns, each with a full batch.
        // The registry generation is read once the lock is held, so it counts every registry
        // write committed before: a change means another replica wrote, and the rows kept
        // from earlier transactions may be stale.
        let gen = self.session.begin_writer(writer_lock_key(&self.channel))?;
        if self.registry_gen != Some(gen) {
            self.registry.clear();
            self.registry_gen = Some(gen);
        }
        let channel = self.options.notify.then(|| (self.channel.as_str(), &*self.origin));
        Ok(Box::new(PostgresTx::new(&mut self.session, &mut self.registry, channel)))
    }

    fn listen(&mut self, sink: RemoteSink) {
        if !self.options.notify || self.listener.is_some() {
            return;
        }
        self.listener = Some(Listener::spawn(
            self.session.config.clone(),
            self.channel.clone(),
            self.origin.clone(),
            sink,
        ));
    }
}

/// Runs `f` on a plain thread when called from inside a Tokio runtime, where the store's own
/// runtime could not block.
fn outside_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// `"name"` with inner quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Identifies this store in its notifications, so its own come back ignored.
fn origin_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}-{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn current_version(session: &mut Session) -> StorageResult<i64> {
    let rows = session.query("SELECT coalesce(max(version), 0)::bigint FROM schema_migrations", &[]);
    match rows {
        Ok(rows) => Ok(rows.first().map_or(0, |r| r.get(0))),
        // No migrations table: an empty schema.
        Err(e) if e.message.contains("42P01") => Ok(0),
        Err(e) => Err(e),
    }
}

/// Applies the migrations this schema lacks, in one transaction holding an advisory lock
/// (keyed by the schema), so replicas connecting at once migrate it exactly once.
fn migrate(session: &mut Session, schema: Option<&str>) -> StorageResult<()> {
    session.batch("BEGIN")?;
    let applied = apply_migrations(session, schema);
    match applied {
        Ok(()) => session.batch("COMMIT"),
        Err(e) => {
            let _ = session.batch("ROLLBACK");
            Err(e)
        }
    }
}

fn apply_migrations(session: &mut Session, schema: Option<&str>) -> StorageResult<()> {
    let key = format!("trigger.rs migrate {}", schema.unwrap_or(""));
    session.query("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
    if let Some(schema) = schema {
        session.batch(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)))?;
    }
    session.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     bigint PRIMARY KEY,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let current = current_version(session)?;
    let latest = PostgresStore::latest_schema_version();
    if current > latest {
        return Err(StorageError::new(
            ErrorKind::Other,
            format!("database schema version {current} is newer than this build's ({latest})"),
        ));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        session.batch(sql)?;
        session.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])?;
    }
    Ok(())
}

/// The advisory lock key of a deployment's writer transactions (FNV-1a of its channel
/// name, which is derived from the schema).
fn writer_lock_key(channel: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in channel.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
