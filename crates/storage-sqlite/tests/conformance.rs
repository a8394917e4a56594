//! The engine's storage conformance suite, run on SQLite.

use std::path::PathBuf;
use std::time::Instant;

use trigger_engine::conformance;
use trigger_engine::model::{Environment, EnvironmentType};
use trigger_engine::storage::Store;
use trigger_storage_sqlite::{SqliteOptions, SqliteStore, Synchronous};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "trigger-sqlite-{name}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn conformance_in_memory() {
    conformance::run_all(|| SqliteStore::memory().expect("memory store"));
}

#[test]
fn conformance_on_file() {
    let dir = TempDir::new("conformance");
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        SqliteStore::open(dir.file(&format!("db-{n}.sqlite"))).expect("file store")
    });
}

#[test]
fn conformance_on_file_with_full_sync() {
    let dir = TempDir::new("conformance-full");
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let options = SqliteOptions { synchronous: Synchronous::Full };
        SqliteStore::open_with(dir.file(&format!("db-{n}.sqlite")), options).expect("file store")
    });
}

/// 16 connections race to claim each ready run. `TRIGGER_RACE_ITERATIONS` overrides the
/// iteration count (default 10,000, as CI runs it).
#[test]
fn claim_race_on_file() {
    let iterations =
        std::env::var("TRIGGER_RACE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = TempDir::new("race");
    let path = dir.file("race.sqlite");
    let started = Instant::now();
    conformance::claim_race(
        || {
            SqliteStore::open_with(&path, SqliteOptions { synchronous: Synchronous::Off })
                .expect("file store")
        },
        16,
        iterations,
    );
    eprintln!("claim race: 16 claimers x {iterations} iterations in {:.1?}", started.elapsed());
}

#[test]
fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = TempDir::new("reopen");
    let path = dir.file("reopen.sqlite");
    let env = Environment {
        id: "env_keep".into(),
        project_id: "proj".into(),
        kind: EnvironmentType::Preview,
        concurrency_limit: 4,
        paused: false,
        created_at: 1,
    };
    let applied = {
        let mut store = SqliteStore::open(&path).expect("open");
        let mut tx = store.begin().expect("begin");
        tx.insert_environment(&env).expect("insert");
        tx.commit().expect("commit");
        store.applied_migrations().expect("migrations")
    };
    assert_eq!(applied.len() as i64, SqliteStore::latest_schema_version());
    assert_eq!(applied.last().map(|m| m.0), Some(SqliteStore::latest_schema_version()));

    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.applied_migrations().expect("migrations"), applied, "nothing re-applied");
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.get_environment("env_keep").expect("get"), Some(env));
}

/// Migration 3: a run's status changes at every transition and no index covers it, except
/// the partial one of the runs waiting for a version, which the engine looks up by status.
#[test]
fn only_runs_waiting_for_a_version_are_indexed_by_status() {
    let dir = TempDir::new("status-index");
    let path = dir.file("status.sqlite");
    drop(SqliteStore::open(&path).expect("open"));
    let conn = rusqlite::Connection::open(&path).expect("open directly");
    let indexes: Vec<(String, String)> = conn
        .prepare(
            "SELECT il.name, ii.name FROM pragma_index_list('runs') il, pragma_index_info(il.name) ii
             WHERE ii.name = 'status' OR il.partial",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let status_indexed: Vec<&str> =
        indexes.iter().filter(|(_, col)| col == "status").map(|(i, _)| i.as_str()).collect();
    assert!(status_indexed.is_empty(), "indexes of runs on status: {status_indexed:?}");
    let sql: String = conn
        .query_row("SELECT sql FROM sqlite_master WHERE name = 'runs_pending_version'", [], |r| r.get(0))
        .expect("the pending-version index");
    assert!(sql.ends_with("WHERE status = 'PENDING_VERSION'"), "{sql}");
}

#[test]
fn concurrent_opens_migrate_once() {
    let dir = TempDir::new("open-race");
    let path = dir.file("open.sqlite");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| SqliteStore::open(&path).expect("open"))).collect();
        for h in handles {
            let store = h.join().expect("thread");
            assert_eq!(
                store.applied_migrations().expect("migrations").len() as i64,
                SqliteStore::latest_schema_version()
            );
        }
    });
}

#[test]
fn stores_on_one_file_see_each_others_commits() {
    let dir = TempDir::new("shared");
    let path = dir.file("shared.sqlite");
    let mut a = SqliteStore::open(&path).expect("open a");
    let mut b = SqliteStore::open(&path).expect("open b");
    let env = Environment {
        id: "env_shared".into(),
        project_id: "proj".into(),
        kind: EnvironmentType::Development,
        concurrency_limit: 1,
        paused: true,
        created_at: 2,
    };
    let mut tx = a.begin().expect("begin a");
    tx.insert_environment(&env).expect("insert");
    tx.commit().expect("commit");
    let mut tx = b.begin().expect("begin b");
    assert_eq!(tx.get_environment("env_shared").expect("get"), Some(env));
}

#[test]
fn opening_in_a_missing_directory_is_unavailable() {
    let dir = TempDir::new("missing");
    let err = SqliteStore::open(dir.file("no/such/dir/db.sqlite")).expect_err("must fail");
    assert_eq!(err.kind, trigger_engine::storage::ErrorKind::Unavailable);
}

#[test]
fn commits_are_checkpointed_off_the_writer_and_a_closed_store_leaves_no_wal() {
    let dir = TempDir::new("checkpoint");
    let path = dir.file("ckpt.sqlite");
    let wal = dir.file("ckpt.sqlite-wal");
    let mut store = SqliteStore::open(&path).expect("open");
    let before = std::fs::metadata(&path).expect("db file").len();
    // A few hundred pages: short of SQLite's own automatic checkpoint (1,000 pages), which
    // the store turns off for its connection anyway.
    let mut tx = store.begin().expect("begin");
    for i in 0..3000 {
        let env = Environment {
            id: format!("env_{i:05}_{}", "x".repeat(40)),
            project_id: "proj".into(),
            kind: EnvironmentType::Development,
            concurrency_limit: 1,
            paused: false,
            created_at: i,
        };
        tx.insert_environment(&env).expect("insert");
    }
    tx.commit().expect("commit");
    assert!(std::fs::metadata(&wal).expect("wal").len() > 0, "the commit went to the WAL");
    // The checkpoint thread copies the commit into the database file without another write.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).expect("db file").len() <= before {
        assert!(Instant::now() < deadline, "the WAL was not checkpointed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Its connection closes first, so the store's own, the last one, removes the WAL.
    drop(store);
    assert!(!wal.exists(), "a closed store leaves no WAL behind");
    let mut store = SqliteStore::open(&path).expect("reopen");
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.list_environments("proj").expect("list").len(), 3000);
}
