//! Queues, concurrency limits, priority, idempotency, batches and parent/child scheduling,
//! deterministic on a virtual clock.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::*;
use serde_json::json;
use trigger_engine::*;

fn limited(name: &str, limit: u32) -> QueueManifest {
    QueueManifest { name: name.into(), concurrency_limit: Some(limit) }
}

on_every_backend! {
async fn queue_key_and_environment_limits_are_never_exceeded() {
    let h = harness(
        vec![on_queue("job", "q3"), on_queue("keyed", "k1")],
        vec![limited("q3", 3), limited("k1", 1)],
    )
    .await;
    for _ in 0..10 {
        h.trigger("job").await;
    }
    let first = h.dequeue(100).await;
    assert_eq!(first.len(), 3, "the queue's limit of 3 holds");
    assert!(h.dequeue(100).await.is_empty());
    let s = h.start(&first[0]).await;
    h.succeed(&first[0].run.id, &s, json!(null)).await;
    assert_eq!(h.dequeue(100).await.len(), 1, "a finished run frees exactly one slot");

    // Each concurrency key gets its own copy of the limit.
    for key in ["a", "a", "b", "b", "c"] {
        h.trigger_with("keyed", TriggerOptions { concurrency_key: Some(key.into()), ..Default::default() })
            .await;
    }
    let claimed = h.dequeue(100).await;
    let mut keys: Vec<_> = claimed.iter().map(|d| d.run.concurrency_key.clone().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "b", "c"]);
    let subs = h.engine.list_subqueues(&h.env.id, "k1").await.unwrap();
    assert!(subs.iter().all(|s| s.running <= 1));

    // The environment's limit caps everything.
    let env = h.engine.update_environment(&h.env.id, Some(2), None).await.unwrap();
    assert_eq!(env.concurrency_limit, 2);
    let h2 = harness(vec![task("free")], vec![]).await;
    h2.engine.update_environment(&h2.env.id, Some(2), None).await.unwrap();
    for _ in 0..5 {
        h2.trigger("free").await;
    }
    assert_eq!(h2.dequeue(100).await.len(), 2);
    assert_eq!(h2.running().await, 2);
}

async fn runs_start_in_priority_then_fifo_order() {
    let h = harness(vec![on_queue("job", "one")], vec![limited("one", 1)]).await;
    let mut order = Vec::new();
    for (i, priority) in [0i64, 0, 5_000, 0, 20_000].into_iter().enumerate() {
        h.clock.advance(1_000);
        let run =
            h.trigger_with("job", TriggerOptions { priority_ms: priority, ..Default::default() }).await.run;
        order.push((i, run.id));
    }
    let mut started = Vec::new();
    for _ in 0..5 {
        let d = h.dequeue(1).await.pop().unwrap();
        started.push(order.iter().find(|(_, id)| *id == d.run.id).unwrap().0);
        let s = h.start(&d).await;
        h.succeed(&d.run.id, &s, json!(null)).await;
    }
    // Scores: 1000, 2000, 3000-5000, 4000, 5000-20000 → 4, 2, 0, 1, 3.
    assert_eq!(started, vec![4, 2, 0, 1, 3]);
}

async fn paused_queues_keep_their_runs_until_resumed() {
    let h = harness(vec![on_queue("job", "pausable")], vec![limited("pausable", 5)]).await;
    h.trigger("job").await;
    h.engine.set_queue_paused(&h.env.id, "pausable", true).await.unwrap();
    assert!(h.dequeue(10).await.is_empty());
    h.engine.set_queue_paused(&h.env.id, "pausable", false).await.unwrap();
    assert_eq!(h.dequeue(10).await.len(), 1);
}

async fn a_parent_and_its_children_on_one_queue_with_limit_one_complete() {
    let h =
        harness(vec![on_queue("parent", "solo"), on_queue("child", "solo")], vec![limited("solo", 1)]).await;
    let parent = h.trigger("parent").await;
    let snapshot = h.claim_and_start(&parent.id).await;

    let mut last = snapshot;
    for i in 0..3 {
        let child = h
            .trigger_with(
                "child",
                TriggerOptions {
                    parent_run_id: Some(parent.id.clone()),
                    resume_parent_on_completion: true,
                    ..Default::default()
                },
            )
            .await
            .run;
        assert_eq!(
            child.queue_timestamp, parent.queue_timestamp,
            "a waited-for child inherits its parent's place"
        );
        assert_eq!(h.run(&parent.id).await.status, RunStatus::Waiting);
        assert!(!h.engine.holds_slot(&parent.id).await.unwrap(), "a waiting parent gives its slot back");
        let child_snapshot = h.claim_and_start(&child.id).await;
        h.succeed(&child.id, &child_snapshot, json!({"i": i})).await;

        let resumed = h.snapshot(&parent.id).await;
        assert_eq!(resumed.execution_status, ExecutionStatus::Executing, "the parent continues");
        assert_ne!(resumed.id, last);
        assert_eq!(resumed.completed_waitpoints.len(), 1);
        assert_eq!(
            resumed.completed_waitpoints[0].output.as_deref(),
            Some(format!(r#"{{"i":{i}}}"#).as_str())
        );
        assert!(h.engine.holds_slot(&parent.id).await.unwrap());
        last = resumed.id;
    }
    h.succeed(&parent.id, &last, json!("done")).await;
    assert_eq!(h.running().await, 0);
}

async fn a_resuming_parent_waits_for_a_slot_and_goes_ahead_of_newer_work() {
    let h = harness(
        vec![on_queue("parent", "solo"), on_queue("child", "solo"), on_queue("other", "solo")],
        vec![limited("solo", 1)],
    )
    .await;
    let parent = h.trigger("parent").await;
    h.claim_and_start(&parent.id).await;
    let (token, _) = h.engine.create_token(&h.env.id, TokenOptions::default()).await.unwrap();
    h.engine.wait_for_token(&h.env.id, &parent.id, None, &token.id).await.unwrap();

    h.clock.advance(1000);
    let other = h.trigger("other").await;
    let other_snapshot = h.claim_and_start(&other.id).await;
    h.clock.advance(1000);
    let newer = h.trigger("other").await;

    h.engine.complete_token(Some(&h.env.id), &token.id, Packet::json(&json!(1))).await.unwrap();
    assert_eq!(
        h.snapshot(&parent.id).await.execution_status,
        ExecutionStatus::QueuedExecuting,
        "no slot yet"
    );
    h.succeed(&other.id, &other_snapshot, json!(null)).await;
    let resumed = h.snapshot(&parent.id).await;
    assert_eq!(
        resumed.execution_status,
        ExecutionStatus::Executing,
        "the freed slot goes to the resuming parent"
    );
    assert_eq!(resumed.completed_waitpoints[0].id, token.id);
    assert!(h.dequeue(10).await.is_empty(), "the newer run still waits");
    h.succeed(&parent.id, &resumed.id, json!(null)).await;
    assert_eq!(h.dequeue(10).await[0].run.id, newer.id);
}

async fn idempotency_keys_return_the_cached_run_except_when_expired_or_failed() {
    let h = harness(vec![task("once")], vec![]).await;
    let keyed = |ttl: Option<u64>| TriggerOptions {
        idempotency_key: Some("k1".into()),
        idempotency_key_ttl_ms: ttl,
        ..Default::default()
    };
    let first = h.trigger_with("once", keyed(Some(60_000))).await;
    assert!(!first.is_cached);
    let hit = h.trigger_with("once", keyed(Some(60_000))).await;
    assert!(hit.is_cached);
    assert_eq!(hit.run.id, first.run.id);

    h.clock.advance(60_000);
    let after_ttl = h.trigger_with("once", keyed(None)).await;
    assert!(!after_ttl.is_cached, "an expired key starts a new run");
    assert_ne!(after_ttl.run.id, first.run.id);

    // A failed run releases its key; a canceled or completed one does not.
    let s = h.claim_and_start(&after_ttl.run.id).await;
    h.fail(&after_ttl.run.id, &s, "no").await;
    let after_failure = h.trigger_with("once", keyed(None)).await;
    assert!(!after_failure.is_cached);
    h.engine.cancel(&h.env.id, &after_failure.run.id, None).await.unwrap();
    let after_cancel = h.trigger_with("once", keyed(None)).await;
    assert!(after_cancel.is_cached);
    assert_eq!(after_cancel.run.id, after_failure.run.id);

    h.engine.reset_idempotency_key(&h.env.id, "once", "k1").await.unwrap();
    assert!(!h.trigger_with("once", keyed(None)).await.is_cached, "a reset key starts a new run");

    // The batch path follows the same rule.
    let (batch, _) = h
        .engine
        .create_batch(&h.env.id, CreateBatch { expected_count: 2, ..Default::default() })
        .await
        .unwrap();
    let items = vec![
        BatchItem { index: 0, request: request_with("once", keyed(None)) },
        BatchItem {
            index: 1,
            request: request_with(
                "once",
                TriggerOptions { idempotency_key: Some("k2".into()), ..Default::default() },
            ),
        },
    ];
    let added = h.engine.add_batch_items(&h.env.id, &batch.id, items.clone()).await.unwrap();
    assert_eq!((added.accepted, added.deduplicated), (2, 0));
    assert!(added.batch.sealed);
    let (_, runs) = h.engine.get_batch(&h.env.id, &batch.id).await.unwrap();
    let latest = h.trigger_with("once", keyed(None)).await;
    assert_eq!(runs[0].1, latest.run.id, "batch item 0 got the cached run");
    let again = h.engine.add_batch_items(&h.env.id, &batch.id, items).await.unwrap();
    assert_eq!((again.accepted, again.deduplicated), (0, 2), "items are deduplicated by index");
}

async fn batch_trigger_and_wait_resumes_the_parent_with_every_result_by_index() {
    let h = harness(vec![task("parent"), task("child")], vec![]).await;
    let parent = h.trigger("parent").await;
    h.claim_and_start(&parent.id).await;
    let (batch, _) = h
        .engine
        .create_batch(
            &h.env.id,
            CreateBatch {
                expected_count: 3,
                parent_run_id: Some(parent.id.clone()),
                resume_parent_on_completion: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(h.run(&parent.id).await.status, RunStatus::Waiting);
    let items: Vec<BatchItem> = (0..3)
        .map(|i| BatchItem {
            index: i,
            request: TriggerRequest {
                task: "child".into(),
                payload: Packet::json(&json!({"i": i})),
                options: TriggerOptions::default(),
            },
        })
        .collect();
    // Items may arrive in any order and in several requests.
    h.engine.add_batch_items(&h.env.id, &batch.id, vec![items[2].clone()]).await.unwrap();
    let added = h.engine.add_batch_items(&h.env.id, &batch.id, items[..2].to_vec()).await.unwrap();
    assert!(added.batch.sealed);
    assert_eq!(added.batch.status, BatchStatus::Completed);

    let claimed = h.dequeue(10).await;
    assert_eq!(claimed.len(), 3);
    for d in &claimed {
        assert_eq!(d.run.parent_run_id.as_deref(), Some(parent.id.as_str()));
        assert_eq!(d.run.depth, 1);
        let s = h.start(d).await;
        assert_eq!(h.snapshot(&parent.id).await.execution_status, ExecutionStatus::ExecutingWithWaitpoints);
        h.succeed(&d.run.id, &s, json!({"index": d.run.batch_index})).await;
    }
    let resumed = h.snapshot(&parent.id).await;
    assert_eq!(resumed.execution_status, ExecutionStatus::Executing);
    let by_index: HashMap<u32, String> = resumed
        .completed_waitpoints
        .iter()
        .filter(|w| w.kind == WaitpointType::Run)
        .map(|w| (w.index.unwrap(), w.output.clone().unwrap()))
        .collect();
    assert_eq!(by_index.len(), 3);
    for i in 0..3u32 {
        assert_eq!(by_index[&i], format!(r#"{{"index":{i}}}"#));
    }
    let (batch, _) = h.engine.get_batch(&h.env.id, &batch.id).await.unwrap();
    assert_eq!(batch.completed_count, 3);
    let too_many =
        h.engine.create_batch(&h.env.id, CreateBatch { expected_count: 1001, ..Default::default() }).await;
    assert!(matches!(too_many, Err(Error::Invalid(_))));
}

async fn a_batch_parent_continues_only_when_its_last_child_finishes_even_with_shared_keys() {
    let h = harness(vec![task("parent"), task("child")], vec![]).await;
    let parent = h.trigger("parent").await;
    h.claim_and_start(&parent.id).await;
    let (batch, _) = h
        .engine
        .create_batch(
            &h.env.id,
            CreateBatch {
                expected_count: 4,
                parent_run_id: Some(parent.id.clone()),
                resume_parent_on_completion: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Items 1 and 2 share an idempotency key: one run, two edges from the parent to its
    // waitpoint.
    let item = |index: u32, key: Option<&str>| BatchItem {
        index,
        request: TriggerRequest {
            task: "child".into(),
            payload: Packet::json(&json!({ "i": index })),
            options: TriggerOptions { idempotency_key: key.map(Into::into), ..Default::default() },
        },
    };
    let items = vec![item(0, None), item(1, Some("shared")), item(2, Some("shared")), item(3, None)];
    let added = h.engine.add_batch_items(&h.env.id, &batch.id, items).await.unwrap();
    assert!(added.batch.sealed);
    let claimed = h.dequeue(10).await;
    assert_eq!(claimed.len(), 3, "three distinct runs");
    for (n, d) in claimed.iter().enumerate() {
        let s = h.start(d).await;
        assert_eq!(
            h.snapshot(&parent.id).await.execution_status,
            ExecutionStatus::ExecutingWithWaitpoints,
            "the parent still waits before child {n} finishes"
        );
        h.succeed(&d.run.id, &s, json!({ "run": d.run.id })).await;
    }
    let resumed = h.snapshot(&parent.id).await;
    assert_eq!(resumed.execution_status, ExecutionStatus::Executing, "continued after the last child");
    let mut indexes: Vec<u32> = resumed
        .completed_waitpoints
        .iter()
        .filter(|w| w.kind == WaitpointType::Run)
        .map(|w| w.index.unwrap())
        .collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2, 3], "every item's result, the shared run's twice");
    let (batch, _) = h.engine.get_batch(&h.env.id, &batch.id).await.unwrap();
    assert!(batch.completed_count >= batch.run_count, "the batch counts as done: {batch:?}");
}

async fn machines_are_claimed_only_when_they_fit_the_workers_capacity() {
    let big = TaskManifest { machine: Some(MachinePreset::Large1x), ..task("big") };
    let h = harness(vec![big, task("small")], vec![]).await;
    let big_run = h.trigger("big").await;
    h.trigger("small").await;
    let request = DequeueRequest { cpu: Some(2.0), memory: Some(4.0), ..DequeueRequest::new("w", 10) };
    let claimed = h.engine.dequeue(&h.env.id, request).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].machine, MachinePreset::Small1x);
    let request = DequeueRequest { cpu: Some(8.0), memory: Some(16.0), ..DequeueRequest::new("w", 10) };
    let claimed = h.engine.dequeue(&h.env.id, request).await.unwrap();
    assert_eq!(claimed[0].run.id, big_run.id);
    assert_eq!(claimed[0].machine.cpu(), 4.0);
}

async fn runs_wait_in_pending_version_until_their_queue_is_registered() {
    let h = harness(vec![task("t")], vec![]).await;
    let run = h
        .trigger_with("t", TriggerOptions { queue: Some("later-queue".into()), ..Default::default() })
        .await
        .run;
    assert_eq!(run.status, RunStatus::PendingVersion);
    assert!(h.dequeue(10).await.is_empty());
    h.engine
        .register_worker(
            &h.env.id,
            WorkerManifest {
                content_hash: "v2".into(),
                tasks: vec![task("t")],
                queues: vec![limited("later-queue", 1)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(h.run(&run.id).await.status, RunStatus::Queued);
    assert_eq!(h.dequeue(10).await.len(), 1);
}

async fn one_claim_per_run_under_concurrent_dequeues() {
    let h = harness(vec![task("t")], vec![]).await;
    for _ in 0..200 {
        let run = h.trigger("t").await;
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let engine = h.engine.clone();
                let env = h.env.id.clone();
                tokio::spawn(async move {
                    engine.dequeue(&env, DequeueRequest::new(format!("w{i}"), 1)).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for call in calls {
            winners += call.await.unwrap().len();
        }
        assert_eq!(winners, 1, "exactly one claimer wins {}", run.id);
        h.engine.cancel(&h.env.id, &run.id, None).await.unwrap();
        h.advance(Config::default().heartbeat.pending_cancel).await;
    }
    assert_eq!(h.running().await, 0);
}
}
