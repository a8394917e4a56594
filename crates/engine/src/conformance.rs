//! The storage conformance suite: what every [`Store`] backend must do, as executable checks.
//!
//! A backend runs [`run_all`] against fresh stores of its own (and [`claim_race`] against
//! stores sharing one database) from its tests. Every check goes through the [`Store`] and
//! [`Tx`] traits only, so the same suite applies to SQLite and PostgreSQL unchanged. Failures
//! `panic!` with the failing call's location.
//!
//! The suite never creates parent rows it does not need (runs of environments it never
//! inserted, snapshots of no run, …): a backend must not enforce foreign keys between these
//! tables, which the engine does not rely on either.
//!
//! Two points the trait leaves to backends are accepted either way: a subqueue with nothing
//! queued and nothing running may be deleted (reads as `None`) or kept with zero counts; and
//! statements that are expected to fail run behind a savepoint, since PostgreSQL aborts the
//! whole transaction on an error otherwise.
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     trigger_engine::conformance::run_all(|| MyStore::connect_fresh());
//! }
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use serde_json::json;
use trigger_types::{
    BatchStatus, ExecutionStatus, InternalErrorCode, MachinePreset, Millis, RetryOptions, RunStatus,
    TaskRunError, WaitpointStatus, WaitpointType,
};

use crate::model::*;
use crate::storage::{ErrorKind, StorageResult, Store, Tx};

/// Runs every area of the suite, each on a fresh store from `make`.
pub fn run_all<S: Store>(mut make: impl FnMut() -> S) {
    tenancy(make());
    environments_workers_tasks_queues(make());
    runs(make());
    list_runs(make());
    snapshots(make());
    transactions(make());
    queues_and_concurrency(make());
    claims_in_bulk(make());
    claim_reads(make());
    claimable_subqueues(make());
    timers(make());
    waitpoints_and_blocks(make());
    list_waitpoints(make());
    batches(make());
    events(make());
}

// ---------------------------------------------------------------------------------------
// Helpers and fixtures.

/// Unwraps a storage result, panicking at the caller's line.
#[track_caller]
fn ok<T>(r: StorageResult<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("storage call failed: {e}"),
    }
}

/// Runs `f` behind a savepoint and asserts it fails with `UniqueViolation`; the transaction
/// stays usable.
#[track_caller]
fn expect_unique<T: std::fmt::Debug>(
    tx: &mut (dyn Tx + '_),
    f: impl FnOnce(&mut (dyn Tx + '_)) -> StorageResult<T>,
) {
    ok(tx.savepoint());
    match f(tx) {
        Err(e) => assert_eq!(e.kind, ErrorKind::UniqueViolation, "wrong error kind: {e}"),
        Ok(v) => panic!("expected a UniqueViolation, got Ok({v:?})"),
    }
    ok(tx.rollback_to_savepoint());
}

/// `(ready_count, running)` of a subqueue; an absent subqueue counts as empty.
#[track_caller]
fn counts(tx: &mut (dyn Tx + '_), env_id: &str, queue: &str, ck: &str) -> (u32, u32) {
    match ok(tx.get_subqueue(env_id, queue, ck)) {
        Some(sq) => {
            assert_eq!(
                (sq.env_id.as_str(), sq.queue.as_str(), sq.concurrency_key.as_str()),
                (env_id, queue, ck)
            );
            assert_eq!(sq.head_score.is_some(), sq.ready_count > 0, "head_score iff ready: {sq:?}");
            (sq.ready_count, sq.running)
        }
        None => (0, 0),
    }
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| id(r).to_string()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn environment(id: &str, project_id: &str, created_at: Millis) -> Environment {
    Environment {
        id: id.into(),
        project_id: project_id.into(),
        kind: EnvironmentType::Staging,
        concurrency_limit: 25,
        paused: false,
        created_at,
    }
}

fn worker(id: &str, env_id: &str, version: &str, created_at: Millis) -> WorkerVersion {
    WorkerVersion {
        id: id.into(),
        env_id: env_id.into(),
        version: version.into(),
        content_hash: format!("hash-{id}"),
        sdk_version: Some("4.0.0".into()),
        cli_version: Some("4.0.1".into()),
        created_at,
    }
}

fn task(env_id: &str, worker_id: &str, slug: &str) -> TaskDef {
    TaskDef {
        env_id: env_id.into(),
        worker_id: worker_id.into(),
        slug: slug.into(),
        file_path: format!("src/trigger/{slug}.ts"),
        export_name: Some(slug.replace('-', "_")),
        description: Some(format!("The {slug} task")),
        queue: format!("task/{slug}"),
        retry: Some(RetryOptions {
            max_attempts: 5,
            factor: 1.8,
            min_timeout_in_ms: 250,
            max_timeout_in_ms: 10_000,
            randomize: false,
        }),
        machine: Some(MachinePreset::Large1x),
        max_duration_secs: Some(600),
        ttl_ms: Some(3_600_000),
        payload_schema: Some(json!({"type": "object", "properties": {"n": {"type": "number"}}})),
        created_at: 42,
    }
}

fn queue_def(env_id: &str, name: &str, limit: Option<u32>) -> QueueDef {
    QueueDef {
        id: format!("queue_{}", name.replace('/', "_")),
        env_id: env_id.into(),
        name: name.into(),
        concurrency_limit: limit,
        paused: false,
        named: !name.starts_with("task/"),
        created_at: 7,
        updated_at: 8,
    }
}

/// A run with every optional field filled.
fn sample_run(id: &str, env_id: &str, task: &str, created_at: Millis) -> Run {
    Run {
        id: id.into(),
        env_id: env_id.into(),
        task: task.into(),
        status: RunStatus::Queued,
        snapshot_id: format!("snapshot_of_{id}"),
        execution_status: ExecutionStatus::Queued,
        queue: format!("task/{task}"),
        concurrency_key: Some("ck-1".into()),
        priority_ms: 250,
        queue_timestamp: created_at + 5,
        tags: strings(&["tag-a", "tag-b"]),
        metadata: Some(r#"{"progress":0.5}"#.into()),
        metadata_type: "application/json".into(),
        machine: Some(MachinePreset::Medium2x),
        max_attempts: Some(4),
        max_duration_secs: Some(300),
        ttl_ms: Some(60_000),
        delay_until: Some(created_at + 1_000),
        idempotency_key: Some(format!("idem-{id}")),
        idempotency_key_expires_at: Some(created_at + 86_400_000),
        idempotency_key_options: Some(json!({"scope": "global", "key": ["a", 1, 0.1]})),
        parent_run_id: Some("run_parent".into()),
        root_run_id: Some("run_root".into()),
        depth: 2,
        batch_id: Some("batch_sample".into()),
        batch_index: Some(3),
        resume_parent_on_completion: true,
        trigger_function: TriggerFunction::BatchTriggerAndWait,
        is_test: false,
        replayed_from: Some("run_original".into()),
        lock_to_version: Some("20250101.1".into()),
        worker_id: Some("worker_sample".into()),
        worker_instance: Some("instance-1".into()),
        retry: Some(RetryOptions {
            max_attempts: 4,
            factor: 1.8,
            min_timeout_in_ms: 500,
            max_timeout_in_ms: 30_000,
            randomize: true,
        }),
        attempt_number: 2,
        dequeue_count: 1,
        error: Some(TaskRunError::BuiltIn {
            name: "Error".into(),
            message: "boom".into(),
            stack_trace: "at task (src/x.ts:1:1)".into(),
            causes: Some(json!([{"message": "inner"}])),
        }),
        usage_ms: 1_234,
        trace_id: Some("trace-1".into()),
        span_id: Some("span-1".into()),
        created_at,
        updated_at: created_at + 10,
        queued_at: Some(created_at + 1),
        started_at: Some(created_at + 2),
        completed_at: Some(created_at + 3),
        expired_at: Some(created_at + 4),
        pending_blockers: Some(2),
        has_waitpoint: true,
    }
}

fn payload(n: i64) -> Packet {
    Packet::json(&json!({ "n": n, "text": "héllo \"quoted\" \n" }))
}

fn sample_snapshot(id: &str, run_id: &str) -> Snapshot {
    Snapshot {
        id: id.into(),
        run_id: run_id.into(),
        execution_status: ExecutionStatus::ExecutingWithWaitpoints,
        run_status: RunStatus::Waiting,
        description: format!("snapshot {id}"),
        attempt_number: 1,
        worker_instance: Some("instance-1".into()),
        batch_id: Some("batch_1".into()),
        completed_waitpoints: vec![CompletedWaitpoint {
            id: "waitpoint_1".into(),
            kind: WaitpointType::Batch,
            completed_at: 99,
            index: Some(4),
            idempotency_key: Some("wk".into()),
            completed_by_run_id: Some("run_child".into()),
            completed_by_batch_id: Some("batch_1".into()),
            completed_after: Some(98),
            output: Some(r#"{"ok":true}"#.into()),
            output_type: "application/json".into(),
            output_is_error: true,
        }],
        created_at: 100,
    }
}

/// A waitpoint with every optional field filled.
fn sample_waitpoint(id: &str, env_id: &str, created_at: Millis) -> Waitpoint {
    Waitpoint {
        id: id.into(),
        env_id: env_id.into(),
        kind: WaitpointType::Manual,
        status: WaitpointStatus::Pending,
        idempotency_key: Some(format!("idem-{id}")),
        idempotency_key_expires_at: Some(created_at + 1_000),
        user_provided_key: true,
        completed_by_run_id: Some("run_other".into()),
        completed_by_batch_id: Some("batch_other".into()),
        completed_after: Some(created_at + 500),
        timeout_at: Some(created_at + 60_000),
        output: Some(r#"{"approved":true}"#.into()),
        output_type: "application/json".into(),
        output_is_error: false,
        tags: strings(&["t1", "t2"]),
        callback_secret: Some("s3cret".into()),
        created_at,
        completed_at: Some(created_at + 2),
    }
}

/// A batch with every optional field filled.
fn sample_batch(id: &str, env_id: &str) -> Batch {
    Batch {
        id: id.into(),
        env_id: env_id.into(),
        status: BatchStatus::Processing,
        expected_count: 3,
        run_count: 2,
        completed_count: 1,
        failed_count: 1,
        sealed: false,
        idempotency_key: Some(format!("idem-{id}")),
        idempotency_key_expires_at: Some(5_000),
        parent_run_id: Some("run_parent".into()),
        resume_parent_on_completion: true,
        waitpoint_id: Some("waitpoint_batch".into()),
        errors: vec![BatchError {
            index: 2,
            task: "t".into(),
            error: "no such task".into(),
            code: Some("TASK_NOT_FOUND".into()),
        }],
        created_at: 10,
        updated_at: 11,
        completed_at: Some(12),
    }
}

fn entry(run_id: &str, env_id: &str, queue: &str, ck: &str, score: i64) -> ReadyEntry {
    ReadyEntry {
        run_id: run_id.into(),
        env_id: env_id.into(),
        queue: queue.into(),
        concurrency_key: ck.into(),
        score,
        task: "task-q".into(),
        machine: MachinePreset::Small2x,
        resume: score % 2 == 0,
    }
}

fn holder(run_id: &str, env_id: &str, queue: &str, ck: &str) -> Holder {
    Holder { run_id: run_id.into(), env_id: env_id.into(), queue: queue.into(), concurrency_key: ck.into() }
}

fn timer(key: &str, kind: TimerKind, fire_at: Millis) -> Timer {
    Timer {
        key: key.into(),
        kind,
        target: format!("target-of-{key}"),
        fence: format!("fence-{fire_at}"),
        fire_at,
    }
}

fn event(run_id: &str, message: &str) -> RunEvent {
    RunEvent {
        seq: 999,
        run_id: run_id.into(),
        kind: "log".into(),
        level: "info".into(),
        message: message.into(),
        attributes: json!({"a": 1, "nested": {"b": [true, null, "x"]}, "f": 0.30000000000000004}),
        trace_id: Some("trace".into()),
        span_id: Some("span".into()),
        parent_span_id: Some("parent".into()),
        start_time_ns: 1_700_000_000_000_000_123,
        duration_ns: 5_000,
        attempt_number: Some(1),
    }
}

// ---------------------------------------------------------------------------------------
// Areas.

/// Organisations, projects and API keys.
pub fn tenancy<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    let org = |id: &str, created_at: Millis| Organization {
        id: id.into(),
        slug: format!("slug-{id}"),
        title: format!("Org {id}"),
        created_at,
    };
    let (o1, o2) = (org("org_1", 10), org("org_2", 20));
    ok(tx.insert_organization(&o2));
    ok(tx.insert_organization(&o1));
    assert_eq!(ok(tx.list_organizations()), vec![o1.clone(), o2.clone()], "oldest first");

    let project = |id: &str, org_id: &str, created_at: Millis| Project {
        id: id.into(),
        external_ref: format!("proj_{id}"),
        org_id: org_id.into(),
        slug: format!("slug-{id}"),
        name: format!("Project {id}"),
        created_at,
    };
    let (p1, p2, p3) = (project("p1", "org_1", 1), project("p2", "org_1", 2), project("p3", "org_2", 0));
    for p in [&p2, &p3, &p1] {
        ok(tx.insert_project(p));
    }
    assert_eq!(ok(tx.get_project("p1")), Some(p1.clone()));
    assert_eq!(ok(tx.get_project("p_missing")), None);
    assert_eq!(ok(tx.find_project_by_ref("proj_p2")), Some(p2.clone()));
    assert_eq!(ok(tx.find_project_by_ref("proj_missing")), None);
    assert_eq!(ok(tx.list_projects("org_1")), vec![p1.clone(), p2.clone()], "oldest first");
    assert_eq!(ok(tx.list_projects("org_2")), vec![p3]);
    assert!(ok(tx.list_projects("org_none")).is_empty());
    let dup = Project { id: "p4".into(), ..p1.clone() };
    expect_unique(&mut *tx, |tx| tx.insert_project(&dup));
    assert_eq!(ok(tx.get_project("p4")), None);

    let key = |id: &str, kind: ApiKeyKind, env_id: Option<&str>, created_at: Millis| ApiKey {
        id: id.into(),
        kind,
        env_id: env_id.map(Into::into),
        key_hash: format!("hash-{id}"),
        display_prefix: "tr_dev_ab".into(),
        name: format!("key {id}"),
        created_at,
        revoked_at: Some(created_at + 100),
    };
    let k1 = ApiKey { revoked_at: None, ..key("k1", ApiKeyKind::Secret, Some("env_1"), 1) };
    let k2 = key("k2", ApiKeyKind::Secret, Some("env_1"), 2);
    let k3 = key("k3", ApiKeyKind::PersonalAccessToken, None, 3);
    let k4 = key("k4", ApiKeyKind::Dashboard, None, 0);
    let k5 = key("k5", ApiKeyKind::Secret, Some("env_2"), 0);
    for k in [&k2, &k3, &k1, &k4, &k5] {
        ok(tx.insert_api_key(k));
    }
    assert_eq!(ok(tx.get_api_key("k1")), Some(k1.clone()));
    assert_eq!(ok(tx.get_api_key("k_missing")), None);
    assert_eq!(ok(tx.find_api_key_by_hash("hash-k3")), Some(k3.clone()));
    assert_eq!(ok(tx.find_api_key_by_hash("hash-missing")), None);
    let dup = ApiKey { id: "k6".into(), ..k2.clone() };
    expect_unique(&mut *tx, |tx| tx.insert_api_key(&dup));
    let k1b = ApiKey { revoked_at: Some(50), name: "renamed".into(), ..k1.clone() };
    ok(tx.update_api_key(&k1b));
    assert_eq!(ok(tx.get_api_key("k1")), Some(k1b.clone()));
    assert_eq!(ok(tx.find_api_key_by_hash("hash-k1")), Some(k1b.clone()));
    assert_eq!(ok(tx.list_api_keys(Some("env_1"))), vec![k1b, k2], "oldest first, revoked included");
    assert_eq!(ok(tx.list_api_keys(None)), vec![k4, k3], "keys bound to no environment");
    assert!(ok(tx.list_api_keys(Some("env_none"))).is_empty());
    ok(tx.commit());

    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.list_organizations()), vec![o1, o2], "committed");
    assert_eq!(ok(tx.find_project_by_ref("proj_p1")), Some(p1));
    ok(tx.commit());
}

/// Environments, worker versions, tasks and queue definitions.
pub fn environments_workers_tasks_queues<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    let env_a = environment("env_a", "proj_1", 100);
    let env_b = environment("env_b", "proj_1", 200);
    let env_c = environment("env_c", "proj_2", 50);
    for e in [&env_b, &env_a, &env_c] {
        ok(tx.insert_environment(e));
    }
    assert_eq!(ok(tx.get_environment("env_a")), Some(env_a.clone()));
    assert_eq!(ok(tx.get_environment("env_missing")), None);
    assert_eq!(ok(tx.list_environments("proj_1")), vec![env_a.clone(), env_b.clone()], "oldest first");
    assert_eq!(ok(tx.list_environments("proj_2")), vec![env_c.clone()]);
    assert!(ok(tx.list_environments("proj_none")).is_empty());
    let env_a2 = Environment {
        kind: EnvironmentType::Production,
        concurrency_limit: 3,
        paused: true,
        ..env_a.clone()
    };
    ok(tx.update_environment(&env_a2));
    assert_eq!(ok(tx.get_environment("env_a")), Some(env_a2.clone()));
    assert_eq!(ok(tx.env_running("env_a")), 0);
    assert_eq!(ok(tx.env_running("env_missing")), 0);

    // Worker versions.
    let w1 = worker("worker_1", "env_a", "20250101.1", 1_000);
    let w2 = worker("worker_2", "env_a", "20250101.2", 2_000);
    let w3 = worker("worker_3", "env_b", "20250101.1", 3_000);
    for w in [&w1, &w2, &w3] {
        ok(tx.insert_worker(w));
    }
    assert_eq!(ok(tx.get_worker("worker_1")), Some(w1.clone()));
    assert_eq!(ok(tx.get_worker("worker_missing")), None);
    assert_eq!(ok(tx.latest_worker("env_a")), Some(w2.clone()));
    assert_eq!(ok(tx.latest_worker("env_b")), Some(w3.clone()));
    assert_eq!(ok(tx.latest_worker("env_c")), None);
    assert_eq!(ok(tx.find_worker_by_version("env_a", "20250101.1")), Some(w1.clone()));
    assert_eq!(ok(tx.find_worker_by_version("env_b", "20250101.1")), Some(w3.clone()));
    assert_eq!(ok(tx.find_worker_by_version("env_b", "20250101.2")), None);
    assert_eq!(ok(tx.list_workers("env_a", 10)), vec![w2.clone(), w1.clone()], "newest first");
    assert_eq!(ok(tx.list_workers("env_a", 1)), vec![w2.clone()]);
    assert!(ok(tx.list_workers("env_c", 10)).is_empty());

    // Tasks.
    let t_b = task("env_a", "worker_1", "b-task");
    let t_a = task("env_a", "worker_1", "a-task");
    let t_other = task("env_a", "worker_2", "a-task");
    for t in [&t_b, &t_a, &t_other] {
        ok(tx.upsert_task(t));
    }
    assert_eq!(ok(tx.get_task("env_a", "worker_1", "a-task")), Some(t_a.clone()));
    assert_eq!(ok(tx.get_task("env_a", "worker_2", "a-task")), Some(t_other.clone()));
    assert_eq!(ok(tx.get_task("env_a", "worker_1", "c-task")), None);
    assert_eq!(ok(tx.list_tasks("env_a", "worker_1")), vec![t_a.clone(), t_b.clone()], "by slug");
    let t_a2 = TaskDef {
        description: None,
        machine: Some(MachinePreset::Micro),
        retry: None,
        payload_schema: None,
        ..t_a.clone()
    };
    ok(tx.upsert_task(&t_a2));
    assert_eq!(ok(tx.get_task("env_a", "worker_1", "a-task")), Some(t_a2.clone()));
    assert_eq!(ok(tx.list_tasks("env_a", "worker_1")), vec![t_a2, t_b]);

    // Queue definitions.
    let q_b = queue_def("env_a", "task/b-task", Some(5));
    let q_a = queue_def("env_a", "alpha", None);
    ok(tx.upsert_queue(&q_b));
    ok(tx.upsert_queue(&q_a));
    ok(tx.upsert_queue(&queue_def("env_b", "alpha", Some(1))));
    assert_eq!(ok(tx.get_queue("env_a", "task/b-task")), Some(q_b.clone()));
    assert_eq!(ok(tx.get_queue("env_a", "missing")), None);
    assert_eq!(ok(tx.list_queues("env_a")), vec![q_a.clone(), q_b.clone()], "by name");
    let q_a2 = QueueDef { concurrency_limit: Some(9), paused: true, updated_at: 99, ..q_a };
    ok(tx.upsert_queue(&q_a2));
    assert_eq!(ok(tx.get_queue("env_a", "alpha")), Some(q_a2.clone()));
    assert_eq!(ok(tx.list_queues("env_a")), vec![q_a2, q_b]);
    ok(tx.commit());

    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.get_environment("env_a")), Some(env_a2), "committed");
}

/// Runs: round trip, payload and output, idempotency keys, children, status lists.
pub fn runs<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    ok(tx.insert_environment(&environment("env_r", "proj", 1)));
    ok(tx.insert_worker(&worker("worker_r", "env_r", "20250202.1", 1)));

    let r1 = Run { idempotency_key: Some("k1".into()), ..sample_run("run_001", "env_r", "task-a", 1_000) };
    let p1 = payload(1);
    ok(tx.insert_run(&r1, &p1));
    assert_eq!(ok(tx.get_run("run_001")), Some(r1.clone()));
    assert_eq!(ok(tx.lock_run("run_001")), Some(r1.clone()));
    assert_eq!(ok(tx.get_run("run_missing")), None);
    assert_eq!(ok(tx.lock_run("run_missing")), None);
    assert_eq!(ok(tx.get_payload("run_001")), Some(p1.clone()));
    assert_eq!(ok(tx.get_payload("run_missing")), None);
    assert_eq!(ok(tx.get_output("run_001")), None, "no output before set_output");

    let out1 = Packet { data: Some("\"done\"".into()), data_type: "application/json".into() };
    ok(tx.set_output("run_001", &out1));
    assert_eq!(ok(tx.get_output("run_001")), Some(out1));
    let out2 = Packet { data: None, data_type: "application/store".into() };
    ok(tx.set_output("run_001", &out2));
    assert_eq!(ok(tx.get_output("run_001")), Some(out2.clone()), "set_output replaces");
    assert_eq!(ok(tx.get_payload("run_001")), Some(p1.clone()), "payload untouched by output");

    // update_run writes every field and leaves payload and output alone.
    let r1b = Run {
        status: RunStatus::Executing,
        execution_status: ExecutionStatus::Executing,
        snapshot_id: "snapshot_2".into(),
        tags: strings(&["tag-c"]),
        worker_id: Some("worker_r".into()),
        error: Some(TaskRunError::Internal {
            code: InternalErrorCode::TaskRunHeartbeatTimeout,
            message: Some("lost".into()),
            stack_trace: Some("trace".into()),
        }),
        machine: None,
        metadata: None,
        attempt_number: 3,
        updated_at: 5_000,
        ..r1.clone()
    };
    ok(tx.update_run(&r1b));
    assert_eq!(ok(tx.get_run("run_001")), Some(r1b.clone()));
    assert_eq!(ok(tx.get_payload("run_001")), Some(p1.clone()));
    assert_eq!(ok(tx.get_output("run_001")), Some(out2));

    // A payload without data round-trips too.
    let empty = Packet { data: None, data_type: "application/json".into() };
    let r_empty = sample_run("run_002", "env_r", "task-a", 1_100);
    ok(tx.insert_run(&r_empty, &empty));
    assert_eq!(ok(tx.get_payload("run_002")), Some(empty));

    // Idempotency keys are unique per (env, task); NULL keys never collide.
    let dup = Run { idempotency_key: Some("k1".into()), ..sample_run("run_003", "env_r", "task-a", 1_200) };
    expect_unique(&mut *tx, |tx| tx.insert_run(&dup, &payload(3)));
    assert_eq!(ok(tx.get_run("run_003")), None, "failed insert left nothing");
    assert_eq!(ok(tx.get_payload("run_003")), None);
    assert_eq!(ok(tx.get_run("run_001")), Some(r1b.clone()), "earlier writes survive the failure");
    let other_task =
        Run { idempotency_key: Some("k1".into()), ..sample_run("run_004", "env_r", "task-b", 1_300) };
    ok(tx.insert_run(&other_task, &payload(4)));
    let other_env =
        Run { idempotency_key: Some("k1".into()), ..sample_run("run_005", "env_r2", "task-a", 1_400) };
    ok(tx.insert_run(&other_env, &payload(5)));
    for id in ["run_006", "run_007"] {
        ok(tx.insert_run(
            &Run { idempotency_key: None, ..sample_run(id, "env_r", "task-a", 1_500) },
            &payload(6),
        ));
    }
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r", "task-a", "k1")), Some(r1b.clone()));
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r", "task-b", "k1")), Some(other_task.clone()));
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r2", "task-a", "k1")), Some(other_env));
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r", "task-a", "nope")), None);
    // Clearing a key frees it; update_run into a taken key is a unique violation too.
    let run_006 = ok(tx.get_run("run_006")).expect("run_006");
    let taken = Run { idempotency_key: Some("k1".into()), ..run_006 };
    expect_unique(&mut *tx, |tx| tx.update_run(&taken));
    let r1c = Run { idempotency_key: None, ..r1b };
    ok(tx.update_run(&r1c));
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r", "task-a", "k1")), None);
    let reuse = Run { idempotency_key: Some("k1".into()), ..sample_run("run_008", "env_r", "task-a", 1_600) };
    ok(tx.insert_run(&reuse, &payload(8)));
    assert_eq!(ok(tx.find_run_by_idempotency_key("env_r", "task-a", "k1")), Some(reuse));

    // Children, oldest first.
    let c2 = Run { parent_run_id: Some("run_p".into()), ..sample_run("run_102", "env_r", "child", 2_000) };
    let c1 = Run { parent_run_id: Some("run_p".into()), ..sample_run("run_101", "env_r", "child", 1_000) };
    let c3 = Run { parent_run_id: Some("run_q".into()), ..sample_run("run_103", "env_r", "child", 500) };
    for c in [&c2, &c1, &c3] {
        ok(tx.insert_run(c, &payload(0)));
    }
    assert_eq!(ok(tx.list_children("run_p")), vec![c1, c2]);
    assert!(ok(tx.list_children("run_none")).is_empty());

    // Runs in a status, oldest first.
    let pv2 = Run { status: RunStatus::PendingVersion, ..sample_run("run_202", "env_pv", "t", 10) };
    let pv1 = Run { status: RunStatus::PendingVersion, ..sample_run("run_201", "env_pv", "t", 5) };
    let pv3 = Run { status: RunStatus::PendingVersion, ..sample_run("run_203", "env_other", "t", 1) };
    let q = Run { status: RunStatus::Queued, ..sample_run("run_204", "env_pv", "t", 1) };
    for r in [&pv2, &pv1, &pv3, &q] {
        ok(tx.insert_run(r, &payload(0)));
    }
    assert_eq!(ok(tx.list_runs_in_status("env_pv", RunStatus::PendingVersion, 10)), vec![pv1.clone(), pv2]);
    assert_eq!(ok(tx.list_runs_in_status("env_pv", RunStatus::PendingVersion, 1)), vec![pv1]);
    assert_eq!(ok(tx.list_runs_in_status("env_pv", RunStatus::Queued, 10)), vec![q]);
    assert!(ok(tx.list_runs_in_status("env_pv", RunStatus::Failed, 10)).is_empty());
    ok(tx.commit());

    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.get_run("run_001")), Some(r1c), "committed");
    assert_eq!(ok(tx.get_payload("run_001")), Some(p1));
}

/// `list_runs`: every filter, their combination, and both cursors.
pub fn list_runs<S: Store>(mut store: S) {
    const ENV: &str = "env_l";
    let mut tx = ok(store.begin());
    ok(tx.insert_environment(&environment(ENV, "proj", 1)));
    ok(tx.insert_worker(&worker("worker_v1", ENV, "v1", 1)));
    ok(tx.insert_worker(&worker("worker_v2", ENV, "v2", 2)));

    let statuses = [RunStatus::Queued, RunStatus::Executing, RunStatus::Completed, RunStatus::Failed];
    let mut runs: Vec<Run> = (1..=12u32)
        .map(|n| {
            let task = if n % 3 == 0 {
                "task-c"
            } else if n % 2 == 0 {
                "task-b"
            } else {
                "task-a"
            };
            let mut r = sample_run(&format!("run_{n:02}"), ENV, task, 1_000 * i64::from(n));
            r.status = statuses[n as usize % 4];
            r.tags = match n % 4 {
                0 => vec![],
                1 => strings(&["t1"]),
                2 => strings(&["t2"]),
                _ => strings(&["t1", "t3"]),
            };
            r.queue = if n <= 6 { "q-low".into() } else { "q-high".into() };
            r.worker_id = match n % 3 {
                0 => Some("worker_v1".into()),
                1 => Some("worker_v2".into()),
                _ => None,
            };
            // Runs never dequeued match the version they are locked to.
            r.lock_to_version = (r.worker_id.is_none() && n % 4 == 2).then(|| "v2".into());
            r.machine = match n % 3 {
                0 => Some(MachinePreset::Micro),
                1 => Some(MachinePreset::Large1x),
                _ => None,
            };
            r.batch_id = (n % 5 == 0).then(|| "batch_5".into());
            r.parent_run_id = (n > 8).then(|| "run_01".into());
            r.is_test = n % 4 == 1;
            r.idempotency_key = Some(format!("key-{n}"));
            r
        })
        .collect();
    // Insert in shuffled order: listing order must come from ids, not insertion.
    for i in [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6] {
        ok(tx.insert_run(&runs[i], &payload(i as i64)));
    }
    let elsewhere = sample_run("run_99", "env_elsewhere", "task-a", 500);
    ok(tx.insert_run(&elsewhere, &payload(99)));

    // Updates keep the tag and version filters current.
    runs[0].tags = strings(&["t2", "t4"]);
    ok(tx.update_run(&runs[0]));
    runs[10].worker_id = Some("worker_v1".into());
    ok(tx.update_run(&runs[10]));

    let version_of = |r: &Run| -> Option<&'static str> {
        match r.worker_id.as_deref() {
            Some("worker_v1") => Some("v1"),
            Some("worker_v2") => Some("v2"),
            _ => r.lock_to_version.as_deref().map(|v| if v == "v1" { "v1" } else { "v2" }),
        }
    };
    let all = Page { size: 100, ..Page::default() };
    let base = RunFilter { env_id: ENV.into(), ..RunFilter::default() };
    let check = |tx: &mut (dyn Tx + '_), what: &str, filter: RunFilter, pred: &dyn Fn(&Run) -> bool| {
        let mut expected: Vec<String> = runs.iter().filter(|r| pred(r)).map(|r| r.id.clone()).collect();
        expected.reverse();
        let got = ok(tx.list_runs(&filter, &all));
        assert_eq!(ids(&got, |r| &r.id), expected, "list_runs filtered by {what}");
    };

    check(&mut *tx, "env only", base.clone(), &|_| true);
    check(
        &mut *tx,
        "statuses",
        RunFilter { statuses: vec![RunStatus::Queued, RunStatus::Failed], ..base.clone() },
        &|r| matches!(r.status, RunStatus::Queued | RunStatus::Failed),
    );
    check(&mut *tx, "tasks", RunFilter { tasks: strings(&["task-a", "task-c"]), ..base.clone() }, &|r| {
        r.task != "task-b"
    });
    check(&mut *tx, "tags (any of)", RunFilter { tags: strings(&["t1", "t4"]), ..base.clone() }, &|r| {
        r.tags.iter().any(|t| t == "t1" || t == "t4")
    });
    for tag in ["t1", "t3", "t4"] {
        check(&mut *tx, tag, RunFilter { tags: strings(&[tag]), ..base.clone() }, &|r| {
            r.tags.iter().any(|t| t == tag)
        });
    }
    check(&mut *tx, "queues", RunFilter { queues: strings(&["q-high"]), ..base.clone() }, &|r| {
        r.queue == "q-high"
    });
    check(&mut *tx, "versions v1", RunFilter { versions: strings(&["v1"]), ..base.clone() }, &|r| {
        version_of(r) == Some("v1")
    });
    check(&mut *tx, "versions v2", RunFilter { versions: strings(&["v2"]), ..base.clone() }, &|r| {
        version_of(r) == Some("v2")
    });
    check(
        &mut *tx,
        "machines",
        RunFilter { machines: vec![MachinePreset::Micro, MachinePreset::Large2x], ..base.clone() },
        &|r| r.machine == Some(MachinePreset::Micro),
    );
    check(&mut *tx, "batch", RunFilter { batch_id: Some("batch_5".into()), ..base.clone() }, &|r| {
        r.batch_id.as_deref() == Some("batch_5")
    });
    check(&mut *tx, "parent", RunFilter { parent_run_id: Some("run_01".into()), ..base.clone() }, &|r| {
        r.parent_run_id.as_deref() == Some("run_01")
    });
    check(&mut *tx, "is_test", RunFilter { is_test: Some(true), ..base.clone() }, &|r| r.is_test);
    check(&mut *tx, "not is_test", RunFilter { is_test: Some(false), ..base.clone() }, &|r| !r.is_test);
    check(
        &mut *tx,
        "created range (inclusive)",
        RunFilter { created_from: Some(3_000), created_to: Some(5_000), ..base.clone() },
        &|r| (3_000..=5_000).contains(&r.created_at),
    );
    check(
        &mut *tx,
        "idempotency key",
        RunFilter { idempotency_key: Some("key-7".into()), ..base.clone() },
        &|r| r.id == "run_07",
    );
    check(
        &mut *tx,
        "statuses AND tasks AND queue",
        RunFilter {
            statuses: vec![RunStatus::Executing, RunStatus::Queued],
            tasks: strings(&["task-a", "task-b"]),
            queues: strings(&["q-low"]),
            ..base.clone()
        },
        &|r| {
            matches!(r.status, RunStatus::Executing | RunStatus::Queued)
                && r.task != "task-c"
                && r.queue == "q-low"
        },
    );
    check(&mut *tx, "no match", RunFilter { tasks: strings(&["nope"]), ..base.clone() }, &|_| false);

    // Full rows come back, not just ids.
    let got = ok(tx.list_runs(&RunFilter { idempotency_key: Some("key-1".into()), ..base.clone() }, &all));
    assert_eq!(got, vec![runs[0].clone()]);

    // Cursors: newest first; `after` goes older, `before` goes newer (still newest first).
    let page = |after: Option<&str>, before: Option<&str>, size: u32| Page {
        after: after.map(Into::into),
        before: before.map(Into::into),
        size,
    };
    let list = |tx: &mut (dyn Tx + '_), p: Page| ids(&ok(tx.list_runs(&base, &p)), |r| &r.id);
    let want = |ns: &[u32]| ns.iter().map(|n| format!("run_{n:02}")).collect::<Vec<_>>();
    assert_eq!(list(&mut *tx, page(None, None, 5)), want(&[12, 11, 10, 9, 8]));
    assert_eq!(list(&mut *tx, page(Some("run_08"), None, 5)), want(&[7, 6, 5, 4, 3]));
    assert_eq!(list(&mut *tx, page(Some("run_03"), None, 5)), want(&[2, 1]));
    assert_eq!(list(&mut *tx, page(Some("run_01"), None, 5)), want(&[]));
    assert_eq!(list(&mut *tx, page(None, Some("run_03"), 5)), want(&[8, 7, 6, 5, 4]));
    assert_eq!(list(&mut *tx, page(None, Some("run_10"), 5)), want(&[12, 11]));
    assert_eq!(list(&mut *tx, page(None, Some("run_12"), 5)), want(&[]));
    assert_eq!(list(&mut *tx, page(None, None, 0)).len(), 12, "size 0 means the default (25)");
    // Cursors combine with filters.
    let tagged = RunFilter { tags: strings(&["t1", "t2"]), ..base.clone() };
    let all_tagged = ids(&ok(tx.list_runs(&tagged, &all)), |r| &r.id);
    let first = ids(&ok(tx.list_runs(&tagged, &page(None, None, 2))), |r| &r.id);
    assert_eq!(first, all_tagged[..2].to_vec());
    let second = ids(&ok(tx.list_runs(&tagged, &page(Some(&first[1]), None, 2))), |r| &r.id);
    assert_eq!(second, all_tagged[2..4].to_vec());
    let back = ids(&ok(tx.list_runs(&tagged, &page(None, Some(&second[0]), 2))), |r| &r.id);
    assert_eq!(back, first);

    // The default page size is 25.
    for n in 0..30 {
        let r = Run { idempotency_key: None, ..sample_run(&format!("run_p{n:02}"), "env_page", "t", n) };
        ok(tx.insert_run(&r, &payload(n)));
    }
    let env_page = RunFilter { env_id: "env_page".into(), ..RunFilter::default() };
    let got = ok(tx.list_runs(&env_page, &Page::default()));
    assert_eq!(got.len(), 25);
    assert_eq!(got[0].id, "run_p29");
    ok(tx.commit());
}

/// Execution snapshots.
pub fn snapshots<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    let s1 = sample_snapshot("snapshot_01", "run_s");
    let s2 = Snapshot {
        completed_waitpoints: vec![],
        worker_instance: None,
        ..sample_snapshot("snapshot_02", "run_s")
    };
    let s3 = sample_snapshot("snapshot_03", "run_s");
    let other = sample_snapshot("snapshot_00", "run_t");
    for s in [&s2, &other, &s1, &s3] {
        ok(tx.insert_snapshot(s));
    }
    assert_eq!(ok(tx.get_snapshot("snapshot_02")), Some(s2.clone()));
    assert_eq!(ok(tx.get_snapshot("snapshot_missing")), None);
    assert_eq!(ok(tx.list_snapshots("run_s", None)), vec![s1.clone(), s2.clone(), s3.clone()]);
    assert_eq!(ok(tx.list_snapshots("run_s", Some("snapshot_01"))), vec![s2, s3.clone()]);
    assert_eq!(ok(tx.list_snapshots("run_s", Some("snapshot_02"))), vec![s3]);
    assert!(ok(tx.list_snapshots("run_s", Some("snapshot_03"))).is_empty());
    assert_eq!(ok(tx.list_snapshots("run_t", None)), vec![other]);
    assert!(ok(tx.list_snapshots("run_none", None)).is_empty());
    ok(tx.commit());
}

/// Commit, rollback on drop, and savepoints.
pub fn transactions<S: Store>(mut store: S) {
    let e = |id: &str| environment(id, "proj_tx", 1);
    {
        let mut tx = ok(store.begin());
        ok(tx.insert_environment(&e("env_1")));
        ok(tx.commit());
    }
    {
        let mut tx = ok(store.begin());
        assert_eq!(ok(tx.get_environment("env_1")), Some(e("env_1")), "commit persists");
        ok(tx.insert_environment(&e("env_2")));
        ok(tx.enqueue(&entry("run_dropped", "env_1", "q", "", 1)));
        assert!(ok(tx.get_environment("env_2")).is_some(), "a transaction sees its own writes");
        // Dropped without commit.
    }
    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.get_environment("env_2")), None, "dropping a transaction rolls it back");
    assert_eq!(counts(&mut *tx, "env_1", "q", ""), (0, 0));
    assert!(ok(tx.dequeue_entry("run_dropped")).is_none());

    // A released savepoint keeps its writes.
    ok(tx.savepoint());
    ok(tx.insert_environment(&e("env_3")));
    ok(tx.release_savepoint());
    // A rolled-back savepoint undoes inserts, updates and counters, and nothing before it.
    ok(tx.enqueue(&entry("run_kept", "env_1", "q", "", 5)));
    ok(tx.savepoint());
    ok(tx.insert_environment(&e("env_4")));
    ok(tx.update_environment(&Environment { paused: true, ..e("env_1") }));
    ok(tx.enqueue(&entry("run_undone", "env_1", "q", "", 1)));
    ok(tx.acquire(&holder("run_undone", "env_1", "q", "")));
    ok(tx.set_timer(&timer("timer_undone", TimerKind::Retry, 5)));
    assert_eq!(counts(&mut *tx, "env_1", "q", ""), (2, 1));
    ok(tx.rollback_to_savepoint());
    assert!(ok(tx.get_environment("env_3")).is_some(), "writes before the savepoint survive");
    assert_eq!(ok(tx.get_environment("env_4")), None);
    assert_eq!(ok(tx.get_environment("env_1")), Some(e("env_1")), "update undone");
    assert_eq!(counts(&mut *tx, "env_1", "q", ""), (1, 0));
    assert_eq!(ok(tx.get_subqueue("env_1", "q", "")).and_then(|s| s.head_score), Some(5));
    assert_eq!(ok(tx.env_running("env_1")), 0);
    assert_eq!(ok(tx.get_holder("run_undone")), None);
    assert_eq!(ok(tx.get_timer("timer_undone")), None);
    assert_eq!(ok(tx.next_timer_at()), None);
    // Savepoints can be taken again after a rollback and after a release.
    ok(tx.savepoint());
    ok(tx.insert_environment(&e("env_5")));
    ok(tx.rollback_to_savepoint());
    ok(tx.savepoint());
    ok(tx.insert_environment(&e("env_6")));
    ok(tx.release_savepoint());
    ok(tx.commit());

    let mut tx = ok(store.begin());
    for (id, present) in [
        ("env_1", true),
        ("env_2", false),
        ("env_3", true),
        ("env_4", false),
        ("env_5", false),
        ("env_6", true),
    ] {
        assert_eq!(ok(tx.get_environment(id)).is_some(), present, "{id} after commit");
    }
    assert_eq!(ok(tx.peek_subqueue("env_1", "q", "", 10)), vec![entry("run_kept", "env_1", "q", "", 5)]);
    ok(tx.commit());
}

/// Ready entries, subqueue counters and concurrency holders.
pub fn queues_and_concurrency<S: Store>(mut store: S) {
    const ENV: &str = "env_q";
    const QA: &str = "task/a";
    let mut tx = ok(store.begin());
    ok(tx.insert_environment(&environment(ENV, "proj", 1)));
    ok(tx.upsert_queue(&queue_def(ENV, QA, Some(2))));

    // A new subqueue takes its queue's limit.
    let e1 = entry("run_1", ENV, QA, "", 100);
    ok(tx.enqueue(&e1));
    let sq = ok(tx.get_subqueue(ENV, QA, ""));
    assert_eq!(
        sq,
        Some(Subqueue {
            env_id: ENV.into(),
            queue: QA.into(),
            concurrency_key: "".into(),
            ready_count: 1,
            running: 0,
            limit: Some(2),
            paused: false,
            head_score: Some(100),
        })
    );
    // Enqueueing the same run again counts once.
    ok(tx.enqueue(&e1));
    assert_eq!(counts(&mut *tx, ENV, QA, ""), (1, 0));
    // head_score follows the minimum.
    let e2 = entry("run_2", ENV, QA, "", 50);
    let e3 = entry("run_3", ENV, QA, "", 70);
    ok(tx.enqueue(&e2));
    ok(tx.enqueue(&e3));
    let sq = ok(tx.get_subqueue(ENV, QA, "")).expect("subqueue");
    assert_eq!((sq.ready_count, sq.head_score), (3, Some(50)));
    assert_eq!(ok(tx.peek_subqueue(ENV, QA, "", 10)), vec![e2.clone(), e3.clone(), e1.clone()]);
    assert_eq!(ok(tx.peek_subqueue(ENV, QA, "", 2)), vec![e2.clone(), e3.clone()]);
    assert!(ok(tx.peek_subqueue(ENV, QA, "other", 10)).is_empty());
    // Re-enqueueing replaces the entry: a new score moves it and the head.
    let e1b = ReadyEntry { score: 10, resume: true, ..e1.clone() };
    ok(tx.enqueue(&e1b));
    let sq = ok(tx.get_subqueue(ENV, QA, "")).expect("subqueue");
    assert_eq!((sq.ready_count, sq.head_score), (3, Some(10)));
    assert_eq!(ok(tx.peek_subqueue(ENV, QA, "", 1)), vec![e1b.clone()]);
    let e1c = ReadyEntry { score: 60, ..e1b.clone() };
    ok(tx.enqueue(&e1c));
    let sq = ok(tx.get_subqueue(ENV, QA, "")).expect("subqueue");
    assert_eq!((sq.ready_count, sq.head_score), (3, Some(50)), "head recomputed when the head moves back");

    // dequeue_entry returns the entry once and recomputes the head.
    assert_eq!(ok(tx.dequeue_entry("run_2")), Some(e2.clone()));
    assert_eq!(ok(tx.dequeue_entry("run_2")), None);
    assert_eq!(ok(tx.dequeue_entry("run_missing")), None);
    let sq = ok(tx.get_subqueue(ENV, QA, "")).expect("subqueue");
    assert_eq!((sq.ready_count, sq.head_score), (2, Some(60)));
    assert_eq!(ok(tx.dequeue_entry("run_1")), Some(e1c));
    let sq = ok(tx.get_subqueue(ENV, QA, "")).expect("subqueue");
    assert_eq!((sq.ready_count, sq.head_score), (1, Some(70)));

    // acquire: once per run, counting in the subqueue and the environment.
    let h2 = holder("run_2", ENV, QA, "");
    assert!(ok(tx.acquire(&h2)));
    assert!(!ok(tx.acquire(&h2)), "a run holds at most one slot");
    assert_eq!(counts(&mut *tx, ENV, QA, ""), (1, 1));
    assert_eq!(ok(tx.env_running(ENV)), 1);
    assert_eq!(ok(tx.get_holder("run_2")), Some(h2.clone()));
    assert_eq!(ok(tx.get_holder("run_missing")), None);
    // acquire on a subqueue that never had an entry creates it, with the queue's settings.
    let h4 = holder("run_4", ENV, "task/b", "user-1");
    assert!(ok(tx.acquire(&h4)));
    let sq = ok(tx.get_subqueue(ENV, "task/b", "user-1")).expect("created by acquire");
    assert_eq!((sq.ready_count, sq.running, sq.limit, sq.paused, sq.head_score), (0, 1, None, false, None));
    assert_eq!(ok(tx.env_running(ENV)), 2);
    assert_eq!(ok(tx.env_running("env_other")), 0);

    // release: once, never below zero.
    assert!(ok(tx.release("run_2")));
    assert!(!ok(tx.release("run_2")));
    assert!(!ok(tx.release("run_missing")));
    assert_eq!(ok(tx.get_holder("run_2")), None);
    assert_eq!(counts(&mut *tx, ENV, QA, ""), (1, 0));
    assert_eq!(ok(tx.env_running(ENV)), 1);
    assert!(ok(tx.release("run_4")));
    assert!(!ok(tx.release("run_4")));
    assert_eq!(counts(&mut *tx, ENV, "task/b", "user-1"), (0, 0));
    assert_eq!(ok(tx.env_running(ENV)), 0);
    // The slot can be taken again after release.
    assert!(ok(tx.acquire(&h2)));
    assert!(ok(tx.release("run_2")));
    assert_eq!(ok(tx.env_running(ENV)), 0);

    // Re-enqueueing into another concurrency key moves the entry between subqueues.
    ok(tx.enqueue(&entry("run_5", ENV, QA, "x", 5)));
    assert_eq!(counts(&mut *tx, ENV, QA, "x"), (1, 0));
    let moved = entry("run_5", ENV, QA, "y", 6);
    ok(tx.enqueue(&moved));
    assert_eq!(counts(&mut *tx, ENV, QA, "x"), (0, 0));
    assert_eq!(counts(&mut *tx, ENV, QA, "y"), (1, 0));
    assert!(ok(tx.peek_subqueue(ENV, QA, "x", 10)).is_empty());
    assert_eq!(ok(tx.peek_subqueue(ENV, QA, "y", 10)), vec![moved]);

    // list_subqueues: one per key in use, by key (idle ones, if kept, are empty).
    let listed = ok(tx.list_subqueues(ENV, QA));
    let busy: Vec<&str> = listed
        .iter()
        .filter(|s| s.ready_count > 0 || s.running > 0)
        .map(|s| s.concurrency_key.as_str())
        .collect();
    assert_eq!(busy, vec!["", "y"]);
    let keys: Vec<&str> = listed.iter().map(|s| s.concurrency_key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "by key");
    assert!(listed.iter().all(|s| s.queue == QA && s.env_id == ENV));

    // upsert_queue applies its limit and paused flag to existing subqueues.
    ok(tx.upsert_queue(&QueueDef { concurrency_limit: Some(1), paused: true, ..queue_def(ENV, QA, None) }));
    for ck in ["", "y"] {
        let sq = ok(tx.get_subqueue(ENV, QA, ck)).expect("subqueue");
        assert_eq!((sq.limit, sq.paused), (Some(1), true), "subqueue {ck:?}");
    }
    // …and new subqueues take it too.
    ok(tx.enqueue(&entry("run_6", ENV, QA, "z", 1)));
    let sq = ok(tx.get_subqueue(ENV, QA, "z")).expect("subqueue");
    assert_eq!((sq.limit, sq.paused), (Some(1), true));
    ok(tx.upsert_queue(&queue_def(ENV, QA, None)));
    let sq = ok(tx.get_subqueue(ENV, QA, "z")).expect("subqueue");
    assert_eq!((sq.limit, sq.paused), (None, false));
    ok(tx.commit());

    // Counters persist.
    let mut tx = ok(store.begin());
    assert_eq!(counts(&mut *tx, ENV, QA, ""), (1, 0));
    assert_eq!(counts(&mut *tx, ENV, QA, "z"), (1, 0));
    // Draining everything leaves all counts at zero.
    for run in ["run_3", "run_5", "run_6"] {
        assert!(ok(tx.dequeue_entry(run)).is_some(), "{run}");
    }
    for ck in ["", "x", "y", "z"] {
        assert_eq!(counts(&mut *tx, ENV, QA, ck), (0, 0), "{ck:?}");
    }
    assert!(ok(tx.list_subqueues(ENV, QA)).iter().all(|s| s.ready_count == 0 && s.running == 0));
    ok(tx.commit());
}

/// `dequeue_entries`, `acquire_many` and `acquire_claimed`: a claim of several runs counts
/// like one call per run, across subqueues, ignoring runs not queued and slots already held.
pub fn claims_in_bulk<S: Store>(mut store: S) {
    const ENV: &str = "env_bulk";
    let mut tx = ok(store.begin());
    ok(tx.insert_environment(&environment(ENV, "proj", 1)));
    ok(tx.upsert_queue(&queue_def(ENV, "qa", Some(10))));
    for (i, ck) in ["a", "a", "a", "b", "b"].iter().enumerate() {
        ok(tx.enqueue(&entry(&format!("run_{i}"), ENV, "qa", ck, 10 + i as i64)));
    }
    ok(tx.dequeue_entries(&["run_0", "run_1", "run_3", "run_missing", "run_1"]));
    let a = ok(tx.get_subqueue(ENV, "qa", "a")).expect("subqueue a");
    assert_eq!((a.ready_count, a.head_score), (1, Some(12)), "head recomputed");
    let b = ok(tx.get_subqueue(ENV, "qa", "b")).expect("subqueue b");
    assert_eq!((b.ready_count, b.head_score), (1, Some(14)));
    assert_eq!(ids(&ok(tx.peek_subqueue(ENV, "qa", "a", 10)), |e| &e.run_id), strings(&["run_2"]));
    ok(tx.dequeue_entries(&[]));

    let holders =
        [holder("run_0", ENV, "qa", "a"), holder("run_1", ENV, "qa", "a"), holder("run_3", ENV, "qa", "b")];
    assert_eq!(ok(tx.acquire_many(&holders)), 3);
    assert_eq!(counts(&mut *tx, ENV, "qa", "a"), (1, 2));
    assert_eq!(counts(&mut *tx, ENV, "qa", "b"), (1, 1));
    assert_eq!(ok(tx.env_running(ENV)), 3);
    // A slot already held is not taken twice; a new subqueue gets its queue's limit.
    let again = [holder("run_0", ENV, "qa", "a"), holder("run_9", ENV, "qa", "new")];
    assert_eq!(ok(tx.acquire_many(&again)), 1);
    let fresh = ok(tx.get_subqueue(ENV, "qa", "new")).expect("created by acquire_many");
    assert_eq!((fresh.running, fresh.limit, fresh.head_score), (1, Some(10), None));
    assert_eq!(ok(tx.env_running(ENV)), 4);
    assert_eq!(ok(tx.acquire_many(&[])), 0);
    // A claim's runs take their slots the same way, whether or not the answer is awaited;
    // the transaction's next reads see them.
    ok(tx.dequeue_entries(&["run_2"]));
    ok(tx.acquire_claimed(&[holder("run_2", ENV, "qa", "a"), holder("run_4", ENV, "qa", "b")]));
    assert_eq!(counts(&mut *tx, ENV, "qa", "a"), (0, 3));
    assert_eq!(counts(&mut *tx, ENV, "qa", "b"), (1, 2));
    assert_eq!(ok(tx.env_running(ENV)), 6);
    assert!(ok(tx.get_holder("run_4")).is_some());
    ok(tx.acquire_claimed(&[]));
    for run in ["run_0", "run_1", "run_2", "run_3", "run_4", "run_9"] {
        assert!(ok(tx.release(run)), "{run}");
    }
    assert_eq!(ok(tx.env_running(ENV)), 0);
    ok(tx.commit());
}

/// The reads of a claim and an attempt: a subqueue's head with its runs, several runs at
/// once, a run with its payload, prefetched runs answering later reads (and seeing the
/// transaction's own writes), and a released slot with its subqueue's next entry.
pub fn claim_reads<S: Store>(mut store: S) {
    const ENV: &str = "env_reads";
    let mut tx = ok(store.begin());
    ok(tx.insert_environment(&environment(ENV, "proj", 1)));
    for (i, score) in [(0, 30), (1, 10), (2, 20)] {
        let id = format!("run_r{i}");
        ok(tx.insert_run(&sample_run(&id, ENV, "task-a", i), &payload(i)));
        ok(tx.enqueue(&entry(&id, ENV, "q", "", score)));
    }
    let (entries, runs) = ok(tx.peek_and_lock(ENV, "q", "", 2, false));
    assert_eq!(ids(&entries, |e| &e.run_id), strings(&["run_r1", "run_r2"]), "lowest scores first");
    let mut read = ids(&runs, |r| &r.id);
    read.sort();
    assert_eq!(read, strings(&["run_r1", "run_r2"]), "each entry's run");

    let (entries, _) = ok(tx.peek_and_lock(ENV, "q", "", 1, true));
    assert_eq!(ids(&entries, |e| &e.run_id), strings(&["run_r1"]));
    assert_eq!(ok(tx.get_payload("run_r1")), Some(payload(1)), "the payload, read or not with the claim");

    let mut read = ids(&ok(tx.lock_runs(&["run_r2", "run_missing", "run_r0", "run_r2"])), |r| &r.id);
    read.sort();
    assert_eq!(read, strings(&["run_r0", "run_r2"]), "missing ids left out, each run once");
    assert_eq!(
        ok(tx.lock_run_with_payload("run_r1")).map(|(r, p)| (r.id, p)),
        Some(("run_r1".into(), Some(payload(1))))
    );
    assert_eq!(ok(tx.lock_run_with_payload("run_missing")), None);
    ok(tx.commit());

    // Prefetched runs answer later reads, including the transaction's own changes.
    let mut tx = ok(store.begin());
    ok(tx.prefetch_runs(&["run_r0", "run_r1", "run_missing"], &["run_r0"]));
    let mut run = ok(tx.lock_run("run_r0")).expect("run_r0");
    run.status = RunStatus::Executing;
    run.attempt_number = 2;
    ok(tx.update_run(&run));
    let (again, with) = ok(tx.lock_run_with_payload("run_r0")).expect("run_r0");
    assert_eq!((again.status, again.attempt_number, with), (RunStatus::Executing, 2, Some(payload(0))));
    assert_eq!(ok(tx.lock_run_with_payload("run_r1")).map(|(_, p)| p), Some(Some(payload(1))));
    assert_eq!(ok(tx.get_run("run_r0")).map(|r| r.attempt_number), Some(2));
    assert_eq!(ok(tx.lock_run("run_missing")), None);
    // A run read without its payload, then named for its payload too.
    assert!(ok(tx.lock_run("run_r2")).is_some());
    ok(tx.prefetch_runs(&["run_r2"], &["run_r2"]));
    assert_eq!(ok(tx.lock_run_with_payload("run_r2")).map(|(_, p)| p), Some(Some(payload(2))));
    // Undone by a rollback to a savepoint: later reads see the row as it was before.
    ok(tx.savepoint());
    run.attempt_number = 3;
    ok(tx.update_run(&run));
    ok(tx.rollback_to_savepoint());
    assert_eq!(ok(tx.lock_run("run_r0")).map(|r| r.attempt_number), Some(2));
    ok(tx.commit());
    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.get_run("run_r0")).map(|r| r.attempt_number), Some(2), "committed");

    // A run's first entry reads like any other, and a second first entry fails.
    ok(tx.enqueue_first(&entry("run_r9", ENV, "q3", "", 9)));
    assert_eq!(counts(tx.as_mut(), ENV, "q3", ""), (1, 0));
    assert_eq!(ids(&ok(tx.peek_subqueue(ENV, "q3", "", 5)), |e| &e.run_id), strings(&["run_r9"]));
    expect_unique(tx.as_mut(), |tx| {
        tx.enqueue_first(&entry("run_r9", ENV, "q3", "", 9))?;
        tx.peek_subqueue(ENV, "q3", "", 5)
    });
    assert_eq!(counts(tx.as_mut(), ENV, "q3", ""), (1, 0), "the failed one counted nothing");
    ok(tx.dequeue_entries(&["run_r9"]));
    // Releasing a slot answers with the subqueue's head when it is a resume entry (run_r2's
    // is: an even score); no slot, no answer.
    ok(tx.dequeue_entries(&["run_r1"]));
    assert!(ok(tx.acquire(&holder("run_r1", ENV, "q", ""))));
    assert_eq!(ok(tx.env_running(ENV)), 1);
    let (freed, head) = ok(tx.release_and_peek("run_r1", ENV, "q", ""));
    assert!(freed);
    assert_eq!(head.map(|e| (e.run_id, e.resume)), Some(("run_r2".to_string(), true)));
    assert_eq!(ok(tx.env_running(ENV)), 0, "the count follows the release");
    let (_, head) = ok(tx.release_and_peek("run_r1", ENV, "q", ""));
    assert!(head.is_none(), "no slot, no answer");
    assert_eq!(ok(tx.env_running(ENV)), 0, "a second release counts nothing");
    assert!(ok(tx.acquire(&holder("run_r2", ENV, "q", ""))));
    assert_eq!(ok(tx.env_running(ENV)), 1, "and the acquire");
    assert!(ok(tx.release("run_r2")));
    assert_eq!(ok(tx.env_running(ENV)), 0);
    // A resume entry this transaction queues where there was none is reported.
    ok(tx.enqueue(&ReadyEntry { resume: true, ..entry("run_r5", ENV, "q2", "", 1) }));
    assert!(ok(tx.acquire(&holder("run_r4", ENV, "q2", ""))));
    let (freed, head) = ok(tx.release_and_peek("run_r4", ENV, "q2", ""));
    assert!(freed);
    assert_eq!(head.map(|e| (e.run_id, e.resume)), Some(("run_r5".to_string(), true)));
    // Fresh work at the head may go unreported (the store need not look), and the slot is
    // given back by commit whether or not the store held the release back.
    ok(tx.enqueue(&entry("run_r8", ENV, "other", "", 7)));
    assert!(ok(tx.acquire(&holder("run_r6", ENV, "other", ""))));
    let (freed, head) = ok(tx.release_and_peek("run_r6", ENV, "other", ""));
    assert!(freed);
    assert!(head.is_none_or(|e| e.run_id == "run_r8"), "fresh work, or nothing");
    ok(tx.commit());
    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.env_running(ENV)), 0);
    assert_eq!(ok(tx.get_holder("run_r6")), None);
    let other = ok(tx.get_subqueue(ENV, "other", "")).expect("run_r8 is queued there");
    assert_eq!((other.ready_count, other.running), (1, 0));
    // And a resume entry committed earlier is reported by a later transaction.
    assert!(ok(tx.acquire(&holder("run_r7", ENV, "q2", ""))));
    let (_, head) = ok(tx.release_and_peek("run_r7", ENV, "q2", ""));
    assert_eq!(head.map(|e| e.run_id), Some("run_r5".to_string()));
    ok(tx.commit());
}

/// `claimable_subqueues`: limits, paused queues, the environment limit and ordering.
pub fn claimable_subqueues<S: Store>(mut store: S) {
    const ENV: &str = "env_c";
    let mut tx = ok(store.begin());
    ok(tx.upsert_queue(&queue_def(ENV, "qa", Some(1))));
    ok(tx.upsert_queue(&queue_def(ENV, "qb", None)));
    ok(tx.upsert_queue(&QueueDef { paused: true, ..queue_def(ENV, "qc", Some(5)) }));
    ok(tx.upsert_queue(&queue_def(ENV, "qd", Some(5))));
    // qa: at its limit of 1.
    ok(tx.enqueue(&entry("run_a1", ENV, "qa", "", 30)));
    ok(tx.enqueue(&entry("run_a2", ENV, "qa", "", 31)));
    assert!(ok(tx.acquire(&holder("run_a0", ENV, "qa", ""))));
    // qb: no limit.
    ok(tx.enqueue(&entry("run_b1", ENV, "qb", "", 20)));
    // qc: paused.
    ok(tx.enqueue(&entry("run_c1", ENV, "qc", "", 10)));
    // qd: limit 5, nothing running.
    ok(tx.enqueue(&entry("run_d1", ENV, "qd", "", 40)));
    // qe: no queue definition, one concurrency key.
    ok(tx.enqueue(&entry("run_e1", ENV, "qe", "k1", 5)));
    // qf: running only, nothing ready.
    assert!(ok(tx.acquire(&holder("run_f0", ENV, "qf", ""))));
    // Another environment's subqueue never shows.
    ok(tx.enqueue(&entry("run_x1", "env_other", "qb", "", 1)));

    let claimable = |tx: &mut (dyn Tx + '_), env_limit: u32, max: u32| -> Vec<String> {
        ok(tx.claimable_subqueues(ENV, env_limit, max))
            .iter()
            .map(|s| {
                assert_eq!(s.env_id, ENV);
                assert!(s.ready_count > 0 && !s.paused, "{s:?}");
                format!("{}/{}", s.queue, s.concurrency_key)
            })
            .collect()
    };
    assert_eq!(claimable(&mut *tx, 10, 10), strings(&["qe/k1", "qb/", "qd/"]), "by head score");
    assert_eq!(claimable(&mut *tx, 10, 2), strings(&["qe/k1", "qb/"]));
    assert!(claimable(&mut *tx, 0, 10).is_empty(), "an environment limit of 0 allows nothing");
    // The full rows are returned.
    let rows = ok(tx.claimable_subqueues(ENV, 10, 1));
    assert_eq!(
        rows,
        vec![Subqueue {
            env_id: ENV.into(),
            queue: "qe".into(),
            concurrency_key: "k1".into(),
            ready_count: 1,
            running: 0,
            limit: None,
            paused: false,
            head_score: Some(5),
        }]
    );

    // The environment limit caps every subqueue: `running < min(limit, env_limit)`.
    assert!(ok(tx.acquire(&holder("run_d8", ENV, "qd", ""))));
    assert!(ok(tx.acquire(&holder("run_d9", ENV, "qd", ""))));
    assert_eq!(claimable(&mut *tx, 2, 10), strings(&["qe/k1", "qb/"]));
    assert_eq!(claimable(&mut *tx, 3, 10), strings(&["qe/k1", "qb/", "qd/"]));
    // Raising qa's limit makes it claimable; unpausing qc too.
    ok(tx.upsert_queue(&queue_def(ENV, "qa", Some(2))));
    ok(tx.upsert_queue(&queue_def(ENV, "qc", Some(5))));
    assert_eq!(claimable(&mut *tx, 10, 10), strings(&["qe/k1", "qc/", "qb/", "qa/", "qd/"]));
    // Pausing a queue takes it out.
    ok(tx.upsert_queue(&QueueDef { paused: true, ..queue_def(ENV, "qb", None) }));
    assert_eq!(claimable(&mut *tx, 10, 10), strings(&["qe/k1", "qc/", "qa/", "qd/"]));
    // An emptied subqueue is not claimable; the head follows dequeues.
    assert!(ok(tx.dequeue_entry("run_e1")).is_some());
    assert!(ok(tx.dequeue_entry("run_a1")).is_some());
    let rows = ok(tx.claimable_subqueues(ENV, 10, 10));
    let heads: Vec<(String, Option<i64>)> = rows.iter().map(|s| (s.queue.clone(), s.head_score)).collect();
    assert_eq!(
        heads,
        vec![("qc".to_string(), Some(10)), ("qa".to_string(), Some(31)), ("qd".to_string(), Some(40))]
    );
    ok(tx.commit());
}

/// Durable timers.
pub fn timers<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.next_timer_at()), None);
    assert!(ok(tx.take_due_timers(i64::MAX, 10)).is_empty());
    let t1 = timer("heartbeat:run_1", TimerKind::Heartbeat, 100);
    let t2 = timer("expire:run_2", TimerKind::Expire, 200);
    let t3 = timer("retry:run_3", TimerKind::Retry, 300);
    for t in [&t3, &t1, &t2] {
        ok(tx.set_timer(t));
    }
    assert_eq!(ok(tx.get_timer("heartbeat:run_1")), Some(t1.clone()));
    assert_eq!(ok(tx.get_timer("missing")), None);
    assert_eq!(ok(tx.next_timer_at()), Some(100));
    // Setting a key again moves the timer (and replaces its fields).
    let t1b = Timer { fire_at: 250, fence: "snapshot_9".into(), target: "run_1b".into(), ..t1.clone() };
    ok(tx.set_timer(&t1b));
    assert_eq!(ok(tx.get_timer("heartbeat:run_1")), Some(t1b.clone()));
    assert_eq!(ok(tx.next_timer_at()), Some(200));
    ok(tx.clear_timer("retry:run_3"));
    ok(tx.clear_timer("missing"));
    assert_eq!(ok(tx.get_timer("retry:run_3")), None);

    assert!(ok(tx.take_due_timers(199, 10)).is_empty(), "nothing due yet");
    assert_eq!(ok(tx.take_due_timers(250, 10)), vec![t2.clone(), t1b.clone()], "due ones, earliest first");
    assert!(ok(tx.take_due_timers(250, 10)).is_empty(), "each timer is taken once");
    assert_eq!(ok(tx.get_timer("expire:run_2")), None);
    assert_eq!(ok(tx.next_timer_at()), None);

    // `max` limits the batch, earliest first; the rest stay.
    let batch: Vec<Timer> =
        (0..5).map(|i| timer(&format!("k{i}"), TimerKind::EnqueueDelayed, 1_000 - i * 10)).collect();
    for t in &batch {
        ok(tx.set_timer(t));
    }
    ok(tx.set_timer(&timer("later", TimerKind::TokenTimeout, 5_000)));
    assert_eq!(ok(tx.take_due_timers(1_000, 2)), vec![batch[4].clone(), batch[3].clone()]);
    assert_eq!(ok(tx.next_timer_at()), Some(980));
    assert_eq!(ok(tx.take_due_timers(1_000, 10)), vec![batch[2].clone(), batch[1].clone(), batch[0].clone()]);
    assert_eq!(ok(tx.next_timer_at()), Some(5_000));
    ok(tx.commit());

    // Every kind round-trips, and taken timers stay taken after commit.
    let mut tx = ok(store.begin());
    assert!(ok(tx.take_due_timers(1_000, 10)).is_empty());
    let kinds = [
        TimerKind::Heartbeat,
        TimerKind::EnqueueDelayed,
        TimerKind::Expire,
        TimerKind::Retry,
        TimerKind::CompleteDateTime,
        TimerKind::TokenTimeout,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let t = Timer { fence: String::new(), ..timer(&format!("kind-{i}"), kind, 10_000 + i as i64) };
        ok(tx.set_timer(&t));
        assert_eq!(ok(tx.get_timer(&t.key)), Some(t));
    }
    ok(tx.commit());
}

/// Waitpoints and the edges that block runs on them.
pub fn waitpoints_and_blocks<S: Store>(mut store: S) {
    const ENV: &str = "env_w";
    let mut tx = ok(store.begin());
    let w1 =
        Waitpoint { idempotency_key: Some("tok-1".into()), ..sample_waitpoint("waitpoint_01", ENV, 100) };
    ok(tx.insert_waitpoint(&w1));
    assert_eq!(ok(tx.lock_waitpoint("waitpoint_01")), Some(w1.clone()));
    assert_eq!(ok(tx.lock_waitpoint("waitpoint_missing")), None);
    // Keys are unique per environment; NULL keys never collide.
    let dup =
        Waitpoint { idempotency_key: Some("tok-1".into()), ..sample_waitpoint("waitpoint_02", ENV, 101) };
    expect_unique(&mut *tx, |tx| tx.insert_waitpoint(&dup));
    assert_eq!(ok(tx.lock_waitpoint("waitpoint_02")), None);
    let elsewhere =
        Waitpoint { idempotency_key: Some("tok-1".into()), ..sample_waitpoint("waitpoint_03", "env_x", 102) };
    ok(tx.insert_waitpoint(&elsewhere));
    for id in ["waitpoint_04", "waitpoint_05"] {
        ok(tx.insert_waitpoint(&Waitpoint { idempotency_key: None, ..sample_waitpoint(id, ENV, 103) }));
    }
    assert_eq!(ok(tx.find_waitpoint_by_key(ENV, "tok-1")), Some(w1.clone()));
    assert_eq!(ok(tx.find_waitpoint_by_key("env_x", "tok-1")), Some(elsewhere));
    assert_eq!(ok(tx.find_waitpoint_by_key(ENV, "nope")), None);

    // update_waitpoint writes every field, keys included.
    let w1b = Waitpoint {
        status: WaitpointStatus::Completed,
        output: Some("\"late\"".into()),
        output_is_error: true,
        completed_at: Some(999),
        idempotency_key: Some("tok-1b".into()),
        tags: strings(&["t9"]),
        ..w1.clone()
    };
    ok(tx.update_waitpoint(&w1b));
    assert_eq!(ok(tx.lock_waitpoint("waitpoint_01")), Some(w1b.clone()));
    assert_eq!(ok(tx.find_waitpoint_by_key(ENV, "tok-1")), None);
    assert_eq!(ok(tx.find_waitpoint_by_key(ENV, "tok-1b")), Some(w1b));
    let w4 = ok(tx.lock_waitpoint("waitpoint_04")).expect("waitpoint_04");
    let taken = Waitpoint { idempotency_key: Some("tok-1b".into()), ..w4 };
    expect_unique(&mut *tx, |tx| tx.update_waitpoint(&taken));

    // The RUN waitpoint of a run.
    let wr = Waitpoint {
        kind: WaitpointType::Run,
        completed_by_run_id: Some("run_child".into()),
        idempotency_key: None,
        ..sample_waitpoint("waitpoint_10", ENV, 110)
    };
    ok(tx.insert_waitpoint(&wr));
    assert_eq!(ok(tx.find_run_waitpoint("run_child")), Some(wr));
    assert_eq!(ok(tx.find_run_waitpoint("run_other")), None, "only RUN waitpoints count");
    assert_eq!(ok(tx.find_run_waitpoint("run_none")), None);

    // Block edges.
    let edge = |run: &str, wp: &str, batch: Option<(&str, u32)>, at: Millis| BlockEdge {
        run_id: run.into(),
        waitpoint_id: wp.into(),
        batch_id: batch.map(|b| b.0.into()),
        batch_index: batch.map(|b| b.1),
        created_at: at,
    };
    let b1 = edge("run_1", "waitpoint_a", None, 1);
    let b2 = edge("run_1", "waitpoint_b", Some(("batch_1", 1)), 2);
    let b3 = edge("run_1", "waitpoint_b", Some(("batch_1", 0)), 3);
    let b4 = edge("run_2", "waitpoint_b", None, 4);
    for b in [&b1, &b2, &b3, &b4] {
        assert!(ok(tx.insert_block(b)), "{b:?}");
    }
    assert!(!ok(tx.insert_block(&b1)), "same edge twice");
    assert!(!ok(tx.insert_block(&edge("run_1", "waitpoint_a", None, 99))), "same edge, other time");
    assert!(!ok(tx.insert_block(&b2)));
    assert_eq!(ok(tx.list_blocks("run_1")), vec![b1.clone(), b2, b3], "insertion order");
    assert!(ok(tx.list_blocks("run_none")).is_empty());
    let mut blocked = ok(tx.runs_blocked_by("waitpoint_b"));
    blocked.sort();
    assert_eq!(blocked, vec![("run_1".into(), 2), ("run_2".into(), 1)], "each run once, with its edges");
    assert_eq!(ok(tx.runs_blocked_by("waitpoint_a")), vec![("run_1".to_string(), 1)]);
    assert!(ok(tx.runs_blocked_by("waitpoint_none")).is_empty());
    ok(tx.delete_blocks("run_1"));
    assert!(ok(tx.list_blocks("run_1")).is_empty());
    assert_eq!(ok(tx.runs_blocked_by("waitpoint_b")), vec![("run_2".to_string(), 1)]);
    assert!(ok(tx.runs_blocked_by("waitpoint_a")).is_empty());
    assert!(ok(tx.insert_block(&b1)), "a deleted edge can be added again");
    ok(tx.delete_blocks("run_none"));
    ok(tx.commit());

    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.list_blocks("run_1")), vec![b1]);
    assert_eq!(ok(tx.list_blocks("run_2")), vec![b4]);
    ok(tx.commit());
}

/// `list_waitpoints`: filters and cursors.
pub fn list_waitpoints<S: Store>(mut store: S) {
    const ENV: &str = "env_lw";
    let mut tx = ok(store.begin());
    let mut all: Vec<Waitpoint> = (1..=8i64)
        .map(|n| {
            let mut w = sample_waitpoint(&format!("waitpoint_{n:02}"), ENV, 100 * n);
            w.kind = if n % 4 == 0 { WaitpointType::DateTime } else { WaitpointType::Manual };
            w.status = if n % 2 == 0 { WaitpointStatus::Completed } else { WaitpointStatus::Pending };
            // Completed with an error output: a token that timed out.
            w.output_is_error = n == 2 || n == 6 || n == 7;
            w.tags = match n % 3 {
                0 => vec![],
                1 => strings(&["red"]),
                _ => strings(&["blue", "green"]),
            };
            w
        })
        .collect();
    for w in all.iter().rev() {
        ok(tx.insert_waitpoint(w));
    }
    ok(tx.insert_waitpoint(&sample_waitpoint("waitpoint_99", "env_elsewhere", 1)));
    all.reverse(); // newest first

    let page = Page { size: 100, ..Page::default() };
    let base = WaitpointFilter { env_id: ENV.into(), ..WaitpointFilter::default() };
    let check =
        |tx: &mut (dyn Tx + '_), what: &str, f: WaitpointFilter, pred: &dyn Fn(&Waitpoint) -> bool| {
            let got = ok(tx.list_waitpoints(&f, &page));
            let expected: Vec<Waitpoint> = all.iter().filter(|w| pred(w)).cloned().collect();
            assert_eq!(ids(&got, |w| &w.id), ids(&expected, |w| &w.id), "list_waitpoints by {what}");
            assert_eq!(got, expected);
        };
    check(&mut *tx, "env", base.clone(), &|_| true);
    check(&mut *tx, "kind", WaitpointFilter { kind: Some(WaitpointType::Manual), ..base.clone() }, &|w| {
        w.kind == WaitpointType::Manual
    });
    check(
        &mut *tx,
        "statuses",
        WaitpointFilter { statuses: vec![WaitpointStatus::Completed], ..base.clone() },
        &|w| w.status == WaitpointStatus::Completed,
    );
    let timed_out = |w: &Waitpoint| w.status == WaitpointStatus::Completed && w.output_is_error;
    check(&mut *tx, "timed out", WaitpointFilter { timed_out: Some(true), ..base.clone() }, &timed_out);
    check(&mut *tx, "not timed out", WaitpointFilter { timed_out: Some(false), ..base.clone() }, &|w| {
        !timed_out(w)
    });
    check(
        &mut *tx,
        "idempotency key",
        WaitpointFilter { idempotency_key: Some("idem-waitpoint_03".into()), ..base.clone() },
        &|w| w.id == "waitpoint_03",
    );
    check(
        &mut *tx,
        "tags (any of)",
        WaitpointFilter { tags: strings(&["red", "green"]), ..base.clone() },
        &|w| !w.tags.is_empty(),
    );
    check(&mut *tx, "one tag", WaitpointFilter { tags: strings(&["blue"]), ..base.clone() }, &|w| {
        w.tags.iter().any(|t| t == "blue")
    });
    check(
        &mut *tx,
        "created range (inclusive)",
        WaitpointFilter { created_from: Some(200), created_to: Some(400), ..base.clone() },
        &|w| (200..=400).contains(&w.created_at),
    );
    check(
        &mut *tx,
        "kind AND statuses AND tags",
        WaitpointFilter {
            kind: Some(WaitpointType::Manual),
            statuses: vec![WaitpointStatus::Pending],
            tags: strings(&["red"]),
            ..base.clone()
        },
        &|w| w.kind == WaitpointType::Manual && w.status == WaitpointStatus::Pending && w.tags == ["red"],
    );

    let list = |tx: &mut (dyn Tx + '_), after: Option<&str>, before: Option<&str>, size: u32| {
        let p = Page { after: after.map(Into::into), before: before.map(Into::into), size };
        ids(&ok(tx.list_waitpoints(&base, &p)), |w| &w.id)
    };
    let want = |ns: &[u32]| ns.iter().map(|n| format!("waitpoint_{n:02}")).collect::<Vec<_>>();
    assert_eq!(list(&mut *tx, None, None, 3), want(&[8, 7, 6]));
    assert_eq!(list(&mut *tx, Some("waitpoint_06"), None, 3), want(&[5, 4, 3]));
    assert_eq!(list(&mut *tx, None, Some("waitpoint_03"), 3), want(&[6, 5, 4]));
    assert_eq!(list(&mut *tx, None, Some("waitpoint_07"), 3), want(&[8]));
    assert_eq!(list(&mut *tx, None, None, 0).len(), 8);
    ok(tx.commit());
}

/// Batches and their items.
pub fn batches<S: Store>(mut store: S) {
    const ENV: &str = "env_b";
    let mut tx = ok(store.begin());
    let b1 = Batch { idempotency_key: Some("bk1".into()), ..sample_batch("batch_01", ENV) };
    let b2 = Batch { idempotency_key: None, ..sample_batch("batch_02", ENV) };
    let b3 = Batch { idempotency_key: None, ..sample_batch("batch_03", ENV) };
    for b in [&b2, &b1, &b3] {
        ok(tx.insert_batch(b));
    }
    assert_eq!(ok(tx.lock_batch("batch_01")), Some(b1.clone()));
    assert_eq!(ok(tx.lock_batch("batch_missing")), None);
    let dup = Batch { idempotency_key: Some("bk1".into()), ..sample_batch("batch_04", ENV) };
    expect_unique(&mut *tx, |tx| tx.insert_batch(&dup));
    assert_eq!(ok(tx.lock_batch("batch_04")), None);
    let elsewhere = Batch { idempotency_key: Some("bk1".into()), ..sample_batch("batch_05", "env_x") };
    ok(tx.insert_batch(&elsewhere));
    assert_eq!(ok(tx.find_batch_by_key(ENV, "bk1")), Some(b1.clone()));
    assert_eq!(ok(tx.find_batch_by_key("env_x", "bk1")), Some(elsewhere));
    assert_eq!(ok(tx.find_batch_by_key(ENV, "nope")), None);

    let b1b = Batch {
        status: BatchStatus::PartialFailed,
        sealed: true,
        run_count: 3,
        completed_count: 3,
        errors: vec![],
        completed_at: None,
        waitpoint_id: None,
        ..b1.clone()
    };
    ok(tx.update_batch(&b1b));
    assert_eq!(ok(tx.lock_batch("batch_01")), Some(b1b.clone()));

    // Items: one run per index.
    assert!(ok(tx.insert_batch_item("batch_01", 1, "run_b1")));
    assert!(ok(tx.insert_batch_item("batch_01", 0, "run_b0")));
    assert!(!ok(tx.insert_batch_item("batch_01", 1, "run_other")), "index already recorded");
    assert!(ok(tx.insert_batch_item("batch_02", 1, "run_c1")), "indexes are per batch");
    assert_eq!(ok(tx.get_batch_item("batch_01", 1)), Some("run_b1".to_string()));
    assert_eq!(ok(tx.get_batch_item("batch_01", 5)), None);
    assert_eq!(ok(tx.get_batch_item("batch_missing", 0)), None);
    assert_eq!(
        ok(tx.list_batch_items("batch_01")),
        vec![(0, "run_b0".to_string()), (1, "run_b1".to_string())]
    );
    assert!(ok(tx.list_batch_items("batch_03")).is_empty());

    // Newest first, with cursors.
    let list = |tx: &mut (dyn Tx + '_), after: Option<&str>, before: Option<&str>, size: u32| {
        let p = Page { after: after.map(Into::into), before: before.map(Into::into), size };
        ids(&ok(tx.list_batches(ENV, &p)), |b| &b.id)
    };
    assert_eq!(list(&mut *tx, None, None, 0), strings(&["batch_03", "batch_02", "batch_01"]));
    assert_eq!(list(&mut *tx, None, None, 2), strings(&["batch_03", "batch_02"]));
    assert_eq!(list(&mut *tx, Some("batch_02"), None, 2), strings(&["batch_01"]));
    assert_eq!(list(&mut *tx, None, Some("batch_01"), 1), strings(&["batch_02"]));
    assert_eq!(ok(tx.list_batches(ENV, &Page { size: 1, ..Page::default() })), vec![b3]);
    assert!(ok(tx.list_batches("env_none", &Page::default())).is_empty());
    ok(tx.commit());

    let mut tx = ok(store.begin());
    assert_eq!(ok(tx.lock_batch("batch_01")), Some(b1b));
    assert_eq!(ok(tx.list_batch_items("batch_01")).len(), 2);
    ok(tx.commit());
}

/// Run events: append order and increasing sequence numbers.
pub fn events<S: Store>(mut store: S) {
    let mut tx = ok(store.begin());
    ok(tx.insert_events(&[]));
    let first = [event("run_e1", "one"), event("run_e2", "other run"), event("run_e1", "two")];
    ok(tx.insert_events(&first));
    let got = ok(tx.list_events("run_e1", 0, 100));
    assert_eq!(got.len(), 2);
    assert!(got[0].seq > 0 && got[0].seq < got[1].seq, "increasing seq: {} {}", got[0].seq, got[1].seq);
    assert_eq!(got[0], RunEvent { seq: got[0].seq, ..first[0].clone() });
    assert_eq!(got[1], RunEvent { seq: got[1].seq, ..first[2].clone() });
    assert_eq!(ok(tx.list_events("run_e1", got[0].seq, 100)), vec![got[1].clone()]);
    assert!(ok(tx.list_events("run_e1", got[1].seq, 100)).is_empty());
    assert_eq!(ok(tx.list_events("run_e1", 0, 1)), vec![got[0].clone()]);
    let other = ok(tx.list_events("run_e2", 0, 100));
    assert_eq!(other.len(), 1);
    assert!(other[0].seq > got[0].seq && other[0].seq < got[1].seq, "seq follows insertion across runs");
    assert!(ok(tx.list_events("run_none", 0, 100)).is_empty());
    ok(tx.commit());

    let mut tx = ok(store.begin());
    let more: Vec<RunEvent> = (0..5).map(|i| event("run_e1", &format!("more {i}"))).collect();
    ok(tx.insert_events(&more));
    let all = ok(tx.list_events("run_e1", 0, 100));
    let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, vec!["one", "two", "more 0", "more 1", "more 2", "more 3", "more 4"]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let tail = ok(tx.list_events("run_e1", all[1].seq, 2));
    assert_eq!(tail, all[2..4].to_vec());
    ok(tx.commit());
}

// ---------------------------------------------------------------------------------------
// Concurrency.

/// Races `claimers` stores (each its own connection to one database) to claim one ready run,
/// `iterations` times: every iteration enqueues a run, then each claimer runs
/// `dequeue_entry` + `acquire` in a transaction of its own. Exactly one must win each time,
/// and the counters must return to zero once the winner releases.
pub fn claim_race<S: Store + Send>(make: impl Fn() -> S + Sync, claimers: usize, iterations: usize) {
    const ENV: &str = "env_race";
    const QUEUE: &str = "task/race";
    assert!(claimers > 0, "at least one claimer");
    let mut main = make();
    {
        let mut tx = ok(main.begin());
        ok(tx.insert_environment(&environment(ENV, "proj_race", 0)));
        ok(tx.upsert_queue(&queue_def(ENV, QUEUE, None)));
        ok(tx.commit());
    }
    // Open every connection before racing, so a failing `make` cannot strand a barrier.
    let stores: Vec<S> = (0..claimers).map(|_| make()).collect();
    let run_id = |i: usize| format!("run_race_{i:010}");
    let start = Barrier::new(claimers + 1);
    let end = Barrier::new(claimers + 1);
    let stop = AtomicBool::new(false);
    let winners = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());

    let failure = std::thread::scope(|scope| {
        for (c, mut store) in stores.into_iter().enumerate() {
            let (start, end, stop, winners, failures) = (&start, &end, &stop, &winners, &failures);
            scope.spawn(move || {
                for i in 0..iterations {
                    start.wait();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match claim_once(&mut store, &run_id(i), ENV, QUEUE) {
                        Ok(true) => {
                            winners.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(false) => {}
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("claimer {c}, iteration {i}: {e}")),
                    }
                    end.wait();
                }
            });
        }

        for i in 0..iterations {
            if let Err(e) = race_setup(&mut main, &run_id(i), ENV, QUEUE) {
                stop.store(true, Ordering::SeqCst);
                start.wait();
                return Some(format!("iteration {i}: setup failed: {e}"));
            }
            start.wait();
            end.wait();
            let won = winners.swap(0, Ordering::SeqCst);
            let errors = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
            let verdict = if !errors.is_empty() {
                Err(errors.join("; "))
            } else if won != 1 {
                Err(format!("{won} claimers won run {}", run_id(i)))
            } else {
                race_verify(&mut main, &run_id(i), ENV, QUEUE)
            };
            if let Err(e) = verdict {
                if i + 1 < iterations {
                    // Claimers wait at the next start: let them out.
                    stop.store(true, Ordering::SeqCst);
                    start.wait();
                }
                return Some(format!("iteration {i}: {e}"));
            }
        }
        None
    });
    if let Some(f) = failure {
        panic!("claim race failed: {f}");
    }
}

fn claim_once<S: Store>(store: &mut S, run_id: &str, env_id: &str, queue: &str) -> Result<bool, String> {
    let mut tx = store.begin().map_err(|e| e.to_string())?;
    let won = match tx.dequeue_entry(run_id).map_err(|e| e.to_string())? {
        Some(e) if e.run_id != run_id => return Err(format!("dequeued {} for {run_id}", e.run_id)),
        Some(_) => {
            if !tx.acquire(&holder(run_id, env_id, queue, "")).map_err(|e| e.to_string())? {
                return Err(format!("acquire refused freshly dequeued {run_id}"));
            }
            true
        }
        None => false,
    };
    tx.commit().map_err(|e| e.to_string())?;
    Ok(won)
}

fn race_setup<S: Store>(store: &mut S, run_id: &str, env_id: &str, queue: &str) -> StorageResult<()> {
    let mut tx = store.begin()?;
    let run = Run {
        queue: queue.into(),
        concurrency_key: None,
        idempotency_key: None,
        parent_run_id: None,
        batch_id: None,
        worker_id: None,
        ..sample_run(run_id, env_id, "race", 0)
    };
    tx.insert_run(&run, &Packet::default())?;
    tx.enqueue(&entry(run_id, env_id, queue, "", 0))?;
    tx.commit()
}

fn race_verify<S: Store>(store: &mut S, run_id: &str, env_id: &str, queue: &str) -> Result<(), String> {
    let err = |e: crate::storage::StorageError| e.to_string();
    let mut tx = store.begin().map_err(err)?;
    let counts = |tx: &mut (dyn Tx + '_)| -> Result<(u32, u32, u32), String> {
        let sq = tx.get_subqueue(env_id, queue, "").map_err(err)?;
        let (ready, running) = sq.map_or((0, 0), |s| (s.ready_count, s.running));
        Ok((ready, running, tx.env_running(env_id).map_err(err)?))
    };
    let held = counts(&mut *tx)?;
    if held != (0, 1, 1) {
        return Err(format!("while held: (ready, running, env running) = {held:?}, want (0, 1, 1)"));
    }
    if !tx.release(run_id).map_err(err)? {
        return Err(format!("release of {run_id} found no holder"));
    }
    let after = counts(&mut *tx)?;
    if after != (0, 0, 0) {
        return Err(format!("after release: (ready, running, env running) = {after:?}, want zeros"));
    }
    if tx.get_holder(run_id).map_err(err)?.is_some() {
        return Err(format!("{run_id} still has a holder"));
    }
    tx.commit().map_err(err)
}
