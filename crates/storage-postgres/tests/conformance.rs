//! The engine's storage conformance suite, run on a real PostgreSQL.
//!
//! The database comes from `TRIGGER_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test works in schemas of its own and
//! drops them at the end, so tests run in parallel and leave nothing behind. An unreachable
//! database fails the tests: they never skip.

mod support;

use std::time::{Duration, Instant};

use support::{admin, url, Schemas};
use trigger_engine::conformance;
use trigger_engine::model::{Environment, EnvironmentType};
use trigger_engine::storage::{ErrorKind, Store};
use trigger_storage_postgres::{PostgresOptions, PostgresStore, SynchronousCommit};

#[test]
fn conformance_run_all() {
    let schemas = Schemas::new("conf");
    conformance::run_all(|| schemas.fresh_store());
}

/// 16 connections race to claim each ready run. `TRIGGER_RACE_ITERATIONS` overrides the
/// iteration count (default 10,000, as CI runs it).
#[test]
fn claim_race() {
    let iterations =
        std::env::var("TRIGGER_RACE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let schemas = Schemas::new("race");
    let schema = schemas.create();
    let started = Instant::now();
    conformance::claim_race(
        || {
            let options = PostgresOptions {
                schema: Some(schema.clone()),
                synchronous_commit: Some(SynchronousCommit::Off),
                ..PostgresOptions::default()
            };
            PostgresStore::connect(&url(), options).expect("connect")
        },
        16,
        iterations,
    );
    eprintln!("claim race: 16 claimers x {iterations} iterations in {:.1?}", started.elapsed());
}

#[test]
fn concurrent_connects_migrate_once_and_reconnecting_keeps_data() {
    let schemas = Schemas::new("migrate");
    let schema = schemas.name();
    let options = PostgresOptions { schema: Some(schema.clone()), ..PostgresOptions::default() };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| PostgresStore::connect(&url(), options.clone()).expect("connect")))
            .collect();
        for h in handles {
            let mut store = h.join().expect("thread");
            assert_eq!(store.schema(), schema);
            let applied = store.applied_migrations().expect("migrations");
            assert_eq!(applied.len() as i64, PostgresStore::latest_schema_version());
        }
    });
    let env = Environment {
        id: "env_keep".into(),
        project_id: "proj".into(),
        kind: EnvironmentType::Preview,
        concurrency_limit: 4,
        paused: false,
        created_at: 1,
    };
    let applied = {
        let mut store = PostgresStore::connect(&url(), options.clone()).expect("connect");
        let mut tx = store.begin().expect("begin");
        tx.insert_environment(&env).expect("insert");
        tx.commit().expect("commit");
        store.applied_migrations().expect("migrations")
    };
    // Without migrating, an up-to-date schema is accepted as it is.
    let mut store =
        PostgresStore::connect(&url(), PostgresOptions { migrate: false, ..options }).expect("reconnect");
    assert_eq!(store.applied_migrations().expect("migrations"), applied, "nothing re-applied");
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.get_environment("env_keep").expect("get"), Some(env));
}

/// Migration 5: no index of `runs` covers the status, so a run's transitions are heap-only
/// (HOT) updates that write no index entries; only entering or leaving `PENDING_VERSION`
/// changes an indexed value (the flag its index is on).
#[test]
fn a_run_changing_status_writes_no_index_entries() {
    let schemas = Schemas::new("hot");
    let schema = schemas.create();
    let runs = format!("\"{schema}\".runs");
    admin(&format!(
        "INSERT INTO {runs} (id, env_id, task, status, queue, is_test, created_at, tags, body)
         VALUES ('run_hot', 'env_hot', 't', 'QUEUED', 'task/t', false, 1, '{{}}', '{{}}')"
    ));
    let hot_updates = |statuses: &[&str]| {
        let updates: String = statuses
            .iter()
            .map(|s| {
                format!("UPDATE {runs} SET status = '{s}', body = '{{\"s\":\"{s}\"}}' WHERE id = 'run_hot';")
            })
            .collect();
        admin(&format!(
            "BEGIN; {updates}
             SELECT pg_stat_get_xact_tuples_hot_updated('{runs}'::regclass)::text; COMMIT"
        ))
    };
    assert_eq!(hot_updates(&["DEQUEUED", "EXECUTING", "COMPLETED_SUCCESSFULLY"]), vec![Some("3".into())]);
    // Into PENDING_VERSION and out of it: the flag's index gets (and drops) the run.
    assert_eq!(hot_updates(&["PENDING_VERSION"]), vec![Some("0".into())]);
    let waiting = format!("SELECT id FROM {runs} WHERE env_id = 'env_hot' AND pending_version");
    assert_eq!(admin(&waiting), vec![Some("run_hot".into())]);
    assert_eq!(hot_updates(&["QUEUED"]), vec![Some("0".into())]);
    assert!(admin(&waiting).is_empty());
}

#[test]
fn a_missing_schema_without_migrations_is_refused() {
    let schemas = Schemas::new("nomigrate");
    let options =
        PostgresOptions { schema: Some(schemas.name()), migrate: false, ..PostgresOptions::default() };
    let err = PostgresStore::connect(&url(), options).expect_err("an empty schema is not usable");
    assert_eq!(err.kind, ErrorKind::Other, "{err}");
}

#[test]
fn an_unreachable_database_is_unavailable_quickly() {
    let started = Instant::now();
    let options = PostgresOptions { connect_timeout: Duration::from_secs(2), ..PostgresOptions::default() };
    // Nothing listens on port 1.
    let err =
        PostgresStore::connect("postgres://postgres@127.0.0.1:1/postgres", options).expect_err("refused");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "failed fast: {:?}", started.elapsed());
}

/// A connection killed by the server (as when the database restarts) fails the call in
/// flight with `Unavailable`; the next `begin` reconnects and works.
#[test]
fn a_broken_connection_is_replaced_on_the_next_begin() {
    let schemas = Schemas::new("reconnect");
    let mut store = schemas.fresh_store();
    let pid = {
        let mut tx = store.begin().expect("begin");
        tx.insert_environment(&Environment {
            id: "env_1".into(),
            project_id: "proj".into(),
            kind: EnvironmentType::Development,
            concurrency_limit: 1,
            paused: false,
            created_at: 0,
        })
        .expect("insert");
        tx.commit().expect("commit");
        support::backend_pids(&schemas.application_name())
    };
    assert!(!pid.is_empty(), "found the store's backend");
    support::terminate(&pid);
    let first = store.begin().and_then(|mut tx| tx.get_environment("env_1"));
    if let Err(e) = &first {
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    }
    let mut tx = store.begin().expect("reconnected");
    assert!(tx.get_environment("env_1").expect("read").is_some());
    tx.commit().expect("commit");
}

/// Each store keeps the registry rows it read between transactions. A change committed by
/// another store on the same schema (another replica) is seen by the next transaction, and
/// a change rolled back is never seen, not even by the store that made it.
#[test]
fn registry_rows_kept_between_transactions_follow_other_replicas_and_rollbacks() {
    let schemas = Schemas::new("registry");
    let schema = schemas.create();
    let (mut a, mut b) = (schemas.store_in(&schema), schemas.store_in(&schema));
    let mut env = Environment {
        id: "env_r".into(),
        project_id: "proj".into(),
        kind: EnvironmentType::Production,
        concurrency_limit: 10,
        paused: false,
        created_at: 0,
    };
    let limit_seen = |store: &mut PostgresStore| {
        let mut tx = store.begin().expect("begin");
        let env = tx.get_environment("env_r").expect("read");
        tx.commit().expect("commit");
        env.map(|e| e.concurrency_limit)
    };
    // B reads (and keeps) "no such environment", then A creates it.
    assert_eq!(limit_seen(&mut b), None);
    let mut tx = a.begin().expect("begin");
    tx.insert_environment(&env).expect("insert");
    tx.commit().expect("commit");
    assert_eq!(limit_seen(&mut b), Some(10), "B sees A's new environment");
    assert_eq!(limit_seen(&mut b), Some(10), "and keeps it");

    env.concurrency_limit = 3;
    let mut tx = a.begin().expect("begin");
    tx.update_environment(&env).expect("update");
    tx.commit().expect("commit");
    assert_eq!(limit_seen(&mut b), Some(3), "B sees A's change");

    // B changes it, reads its own change inside the transaction, and rolls back.
    let mut tx = b.begin().expect("begin");
    tx.update_environment(&Environment { concurrency_limit: 7, ..env.clone() }).expect("update");
    assert_eq!(tx.get_environment("env_r").expect("read").map(|e| e.concurrency_limit), Some(7));
    drop(tx);
    assert_eq!(limit_seen(&mut b), Some(3), "B forgot its rolled-back change");
    assert_eq!(limit_seen(&mut a), Some(3));

    // The same within a savepoint.
    let mut tx = b.begin().expect("begin");
    tx.savepoint().expect("savepoint");
    tx.update_environment(&Environment { concurrency_limit: 8, ..env.clone() }).expect("update");
    assert_eq!(tx.get_environment("env_r").expect("read").map(|e| e.concurrency_limit), Some(8));
    tx.rollback_to_savepoint().expect("rollback");
    assert_eq!(tx.get_environment("env_r").expect("read").map(|e| e.concurrency_limit), Some(3));
    tx.commit().expect("commit");
    assert_eq!(limit_seen(&mut a), Some(3));
}
