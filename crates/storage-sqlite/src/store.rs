//! Opening a database: connection settings, embedded migrations and `begin`.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use trigger_engine::storage::{ErrorKind, StorageError, StorageResult, Store, Tx};

use crate::checkpoint::{self, Checkpointer};
use crate::error::DbResult;
use crate::tx::SqliteTx;

/// Schema migrations, applied in order and recorded in `schema_migrations`. Append only: a
/// released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_ready_resume.sql")),
    (3, include_str!("../migrations/0003_runs_status_unindexed.sql")),
    (4, include_str!("../migrations/0004_run_tags_from_the_store.sql")),
];

/// How long a statement waits for another connection's write lock before failing with
/// [`ErrorKind::Conflict`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. Large enough for every fixed statement of
/// [`SqliteTx`] plus the shapes of the dynamic list queries, so the hot path never re-parses.
const STATEMENT_CACHE: usize = 256;

/// SQLite's `synchronous` setting for a file database (WAL journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable except for the last transactions before a power loss (never corrupts). The
    /// default.
    #[default]
    Normal,
    /// Every commit survives a power loss.
    Full,
    /// No fsync at all: for tests and throwaway databases.
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Off => "OFF",
        }
    }
}

/// Options of [`SqliteStore::open_with`].
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
}

/// A SQLite database the engine can run on: one connection.
///
/// Several stores (in one process or several) may open the same file; their transactions
/// serialize on SQLite's write lock, since [`Store::begin`] takes it up front.
pub struct SqliteStore {
    /// Checkpoints a file database's WAL from a thread of its own. Declared before `conn`
    /// so that it is dropped (its connection closed) first.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    /// Registry rows read in earlier transactions. A SQLite file is served by one engine
    /// process (see `docs/architecture.md`), so only this store's own writes change them.
    registry: trigger_engine::storage::RegistryCache,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.conn.path()).finish()
    }
}

/// A connection is only ever used by one thread at a time (the engine's writer thread owns
/// the store), so SQLite's own per-call mutexes are pure overhead.
fn open_flags() -> rusqlite::OpenFlags {
    use rusqlite::OpenFlags;
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

impl SqliteStore {
    /// Opens (creating if needed) a database file with the default options.
    pub fn open(path: impl AsRef<Path>) -> StorageResult<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) a database file.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> StorageResult<Self> {
        // Some of what opening does can meet another opener's lock without SQLite calling the
        // busy handler (switching to WAL, or recovering the WAL index, while another
        // connection does): every step is safe to repeat, so the whole of it is retried for
        // as long as a busy statement would wait.
        let started = Instant::now();
        loop {
            match Self::try_open(path.as_ref(), &options) {
                Err(e) if e.kind == ErrorKind::Conflict && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                opened => return opened,
            }
        }
    }

    fn try_open(path: &Path, options: &SqliteOptions) -> StorageResult<Self> {
        let conn = Connection::open_with_flags(path, open_flags()).map_err(unavailable)?;
        // The busy handler first: switching to WAL and migrating wait for other openers.
        conn.busy_handler(Some(wait_for_lock)).db()?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).db()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::new(
                ErrorKind::Unavailable,
                format!("cannot switch {} to WAL (journal_mode is {mode})", path.display()),
            ));
        }
        conn.execute_batch(&format!("PRAGMA synchronous = {}", options.synchronous.pragma())).db()?;
        let mut store = Self::setup(conn)?;
        if let Some(path) = checkpoint::file_path(&store.conn) {
            store.checkpointer = Checkpointer::start(&store.conn, &path, open_flags());
        }
        Ok(store)
    }

    /// A private in-memory database, gone when the store is dropped.
    pub fn memory() -> StorageResult<Self> {
        let conn = Connection::open_in_memory_with_flags(open_flags()).map_err(unavailable)?;
        Self::setup(conn)
    }

    fn setup(conn: Connection) -> StorageResult<Self> {
        Self::prepare_schema(&conn)?;
        Ok(SqliteStore { checkpointer: None, conn, registry: Default::default() })
    }

    /// Connection settings shared by file and memory databases, then the migrations.
    pub(crate) fn prepare_schema(conn: &Connection) -> StorageResult<()> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // 16 MiB of page cache instead of 2: runs, ready entries and their indexes stay hot.
        conn.execute_batch("PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;").db()?;
        migrate(conn)
    }

    /// The migrations recorded in this database: `(version, applied_at)` with `applied_at` in
    /// milliseconds since the epoch, oldest first.
    pub fn applied_migrations(&self) -> StorageResult<Vec<(i64, i64)>> {
        let mut stmt =
            self.conn.prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version").db()?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    /// The schema version this build creates.
    pub fn latest_schema_version() -> i64 {
        MIGRATIONS.last().map_or(0, |m| m.0)
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> StorageResult<Box<dyn Tx + '_>> {
        // IMMEDIATE takes the write lock now, so concurrent writers queue here (through the
        // busy handler) instead of failing at their first write or at commit.
        self.conn.prepare_cached("BEGIN IMMEDIATE").db()?.execute([]).db()?;
        Ok(Box::new(SqliteTx::new(&self.conn, &mut self.registry, self.checkpointer.as_ref())))
    }
}

/// An open failure means the database cannot be reached, whatever SQLite calls it.
fn unavailable(e: rusqlite::Error) -> StorageError {
    StorageError::new(ErrorKind::Unavailable, e.to_string())
}

/// Applies the migrations this database lacks, inside one `BEGIN IMMEDIATE` transaction so
/// that stores opening the same file at once migrate it exactly once.
fn migrate(conn: &Connection) -> StorageResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE").db()?;
    let applied = apply_migrations(conn);
    match applied {
        Ok(()) => conn.execute_batch("COMMIT").db(),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn apply_migrations(conn: &Connection) -> StorageResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .db()?;
    let current: Option<i64> = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| r.get(0))
        .optional()
        .db()?
        .flatten();
    let latest = SqliteStore::latest_schema_version();
    if let Some(v) = current.filter(|v| *v > latest) {
        return Err(StorageError::new(
            ErrorKind::Other,
            format!("database schema version {v} is newer than this build's ({latest})"),
        ));
    }
    for (version, sql) in MIGRATIONS {
        let done: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| {
                r.get(0)
            })
            .db()?;
        if done {
            continue;
        }
        conn.execute_batch(sql).db()?;
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_millis()],
        )
        .db()?;
    }
    Ok(())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

thread_local! {
    /// When the current wait for a lock began (the busy handler is a plain `fn`).
    static WAIT_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Busy handler: retries for up to [`BUSY_TIMEOUT`], sleeping 20 µs, 40 µs, … up to 1 ms.
///
/// SQLite's own `busy_timeout` handler sleeps 1, 2, 5, 10, 15, 20, 25… ms between tries,
/// while a transaction here holds the write lock for tens of microseconds: waiting writers
/// oversleep and the lock sits idle. In the 16-connection claim race (debug build, 2 cores)
/// this handler took 4.5–5.7 s where `busy_timeout` took 11–12 s. `count` is 0 on the first
/// retry of each wait, which starts the clock.
fn wait_for_lock(count: i32) -> bool {
    let now = Instant::now();
    let start = WAIT_START.with(|s| {
        let start = match s.get() {
            Some(start) if count > 0 => start,
            _ => now,
        };
        s.set(Some(start));
        start
    });
    if now.duration_since(start) >= BUSY_TIMEOUT {
        return false;
    }
    let micros = (10u64 << count.clamp(1, 7)).min(1000);
    std::thread::sleep(Duration::from_micros(micros));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_a_newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        SqliteStore::prepare_schema(&conn).unwrap();
        SqliteStore::prepare_schema(&conn).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
            [SqliteStore::latest_schema_version() + 1],
        )
        .unwrap();
        let err = SqliteStore::prepare_schema(&conn).unwrap_err();
        assert!(err.message.contains("newer"), "{err}");
        assert!(conn.is_autocommit(), "the failed migration left no transaction open");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, expected);
    }
}
