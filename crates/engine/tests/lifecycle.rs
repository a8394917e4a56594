//! Deterministic lifecycle tests on a virtual clock: retries, leases, TTL, delays, waits,
//! tokens, cancel, stale calls.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use trigger_engine::*;

on_every_backend! {
async fn a_run_goes_from_queued_to_completed_through_its_snapshots() {
    let h = harness(vec![task("hello")], vec![]).await;
    let run = h.trigger("hello").await;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.queue, "task/hello");

    let claimed = h.dequeue(10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run.status, RunStatus::Dequeued);
    assert_eq!(claimed[0].snapshot.execution_status, ExecutionStatus::PendingExecuting);
    assert!(h.dequeue(10).await.is_empty(), "a claimed run is not handed out twice");

    let started = h.engine.start_attempt(&h.env.id, &run.id, &claimed[0].snapshot.id).await.unwrap();
    assert_eq!(started.run.attempt_number, 1);
    assert_eq!(started.payload.data.as_deref(), Some(r#"{"n":1}"#));
    assert_eq!(h.running().await, 1);

    let done = h.succeed(&run.id, &started.snapshot.id, json!({"ok": true})).await;
    assert_eq!(done.status, AttemptStatus::RunFinished);
    assert_eq!(done.run.status, RunStatus::Completed);
    assert_eq!(h.running().await, 0, "the slot is released");

    let details = h.engine.get_run(&h.env.id, &run.id).await.unwrap();
    assert_eq!(details.output.unwrap().data.as_deref(), Some(r#"{"ok":true}"#));
    let log: Vec<ExecutionStatus> = h
        .engine
        .snapshots_since(&h.env.id, &run.id, None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.execution_status)
        .collect();
    assert_eq!(
        log,
        vec![
            ExecutionStatus::Queued,
            ExecutionStatus::PendingExecuting,
            ExecutionStatus::Executing,
            ExecutionStatus::Finished
        ]
    );
}

async fn a_claim_that_starts_attempts_answers_with_each_started_attempt() {
    let h = harness(vec![task("hello"), task("other")], vec![]).await;
    let a = h.trigger("hello").await;
    let b = h.trigger("other").await;
    let request = DequeueRequest { start_attempts: true, ..DequeueRequest::new("worker-a", 10) };
    let claimed = h.engine.dequeue(&h.env.id, request).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for d in &claimed {
        let started = d.started.as_ref().expect("started with the claim");
        assert_eq!(started.run.id, d.run.id);
        assert_eq!((started.run.status, started.run.attempt_number), (RunStatus::Executing, 1));
        assert_eq!(started.snapshot.execution_status, ExecutionStatus::Executing);
        assert_eq!(started.payload.data.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(started.task.as_ref().map(|t| t.slug.as_str()), Some(started.run.task.as_str()));
        assert_eq!(d.snapshot, started.snapshot, "the claim answers with the run's latest snapshot");
        // Nothing could see the run between claim and start: its log goes from QUEUED
        // straight to EXECUTING.
        let log = h.engine.snapshots_since(&h.env.id, &d.run.id, None).await.unwrap();
        let statuses: Vec<ExecutionStatus> = log.iter().map(|s| s.execution_status).collect();
        assert_eq!(statuses, [ExecutionStatus::Queued, ExecutionStatus::Executing]);
    }
    assert_eq!(h.running().await, 2);
    // The attempt is the one that runs: completing it finishes the run, and starting it
    // again is refused.
    let started = claimed[0].started.clone().unwrap();
    let again = h.engine.start_attempt(&h.env.id, &started.run.id, &claimed[0].snapshot.id).await;
    assert!(again.is_err(), "an attempt that runs is not started twice");
    let done = h.succeed(&started.run.id, &started.snapshot.id, json!({"ok": true})).await;
    assert_eq!(done.run.status, RunStatus::Completed);
    assert!([a.id.as_str(), b.id.as_str()].contains(&started.run.id.as_str()));
    // Without asking, nothing is started.
    let c = h.trigger("hello").await;
    let claimed = h.dequeue(10).await;
    assert_eq!((claimed.len(), claimed[0].run.id.as_str()), (1, c.id.as_str()));
    assert!(claimed[0].started.is_none());
}

async fn failed_attempts_retry_after_exact_backoff_delays_then_fail() {
    let h = harness(vec![retrying("flaky", 3)], vec![]).await;
    let run = h.trigger("flaky").await;

    let mut expected_delays = vec![1000, 2000].into_iter();
    for attempt in 1..=3u32 {
        let snapshot = h.claim_and_start(&run.id).await;
        assert_eq!(h.run(&run.id).await.attempt_number, attempt);
        let outcome = h.fail(&run.id, &snapshot, "boom").await;
        if attempt < 3 {
            let delay = expected_delays.next().unwrap();
            assert_eq!(outcome.status, AttemptStatus::RetryQueued);
            assert_eq!(outcome.retry_at, Some(h.engine.now() + delay));
            assert_eq!(h.running().await, 0, "a run waiting to retry holds no slot");
            h.advance(delay - 1).await;
            assert!(h.dequeue(10).await.is_empty(), "not retried before its delay");
            h.advance(1).await;
        } else {
            assert_eq!(outcome.status, AttemptStatus::RunFinished);
            assert_eq!(outcome.run.status, RunStatus::Failed);
            assert_eq!(outcome.run.error.as_ref().unwrap().message(), "boom");
        }
    }
    assert!(h.dequeue(10).await.is_empty());
    assert_eq!(h.run(&run.id).await.attempt_number, 3, "maxAttempts counts every attempt");
}

async fn the_worker_can_skip_retrying_or_choose_the_delay() {
    let h = harness(vec![retrying("flaky", 5)], vec![]).await;
    let run = h.trigger("flaky").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let at = h.engine.now() + 7_000;
    let outcome = h
        .engine
        .complete_attempt(
            &h.env.id,
            &run.id,
            &snapshot,
            Completion::Failure {
                error: TaskRunError::string("later"),
                retry: Some(RetryProposal { at, delay_ms: 7000 }),
                skipped_retrying: false,
                usage_ms: 5,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome.retry_at, Some(at));

    h.advance(7000).await;
    let snapshot = h.claim_and_start(&run.id).await;
    let fatal = Completion::Failure {
        error: TaskRunError::Custom { raw: r#"{"code":"FATAL_ERROR"}"#.into() },
        retry: None,
        skipped_retrying: true,
        usage_ms: 0,
    };
    let outcome = h.engine.complete_attempt(&h.env.id, &run.id, &snapshot, fatal, None).await.unwrap();
    assert_eq!(outcome.run.status, RunStatus::Failed);
    assert_eq!(outcome.run.attempt_number, 2);
}

async fn max_duration_ends_the_run_timed_out_without_retry() {
    let h = harness(vec![retrying("slow", 5)], vec![]).await;
    let run = h.trigger("slow").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let error = TaskRunError::internal(InternalErrorCode::MaxDurationExceeded, "ran too long");
    let outcome = h
        .engine
        .complete_attempt(&h.env.id, &run.id, &snapshot, Completion::failure(error), None)
        .await
        .unwrap();
    assert_eq!(outcome.run.status, RunStatus::TimedOut);
    assert_eq!(outcome.status, AttemptStatus::RunFinished);
}

async fn a_short_retry_stays_on_the_worker_and_keeps_its_slot() {
    let config = Config { retry_immediately_threshold_ms: 5_000, ..config() };
    let h = harness_with(config, vec![retrying("flaky", 3)], vec![]).await;
    let run = h.trigger("flaky").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let outcome = h.fail(&run.id, &snapshot, "once").await;
    assert_eq!(outcome.status, AttemptStatus::RetryImmediately);
    assert_eq!(outcome.snapshot.execution_status, ExecutionStatus::PendingExecuting);
    assert!(h.engine.holds_slot(&run.id).await.unwrap());
    h.clock.advance(1000);
    let started = h.engine.start_attempt(&h.env.id, &run.id, &outcome.snapshot.id).await.unwrap();
    assert_eq!(started.run.attempt_number, 2);
}

async fn a_silent_worker_is_detected_at_the_lease_timeout_and_never_before() {
    let h = harness(vec![retrying("work", 2)], vec![]).await;
    let run = h.trigger("work").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let lease = Config::default().heartbeat.executing;

    h.advance(lease - 1).await;
    assert_eq!(h.snapshot(&run.id).await.id, snapshot, "no stall before the lease runs out");
    h.engine.heartbeat(&h.env.id, &run.id, &snapshot).await.unwrap();
    h.advance(lease - 1).await;
    assert_eq!(h.run(&run.id).await.status, RunStatus::Executing, "a heartbeat extends the lease");

    h.advance(1).await;
    let stalled = h.run(&run.id).await;
    assert_eq!(stalled.status, RunStatus::Queued, "the stalled attempt failed and the run is retried");
    assert_eq!(stalled.error.unwrap().code(), Some(InternalErrorCode::TaskRunStalledExecuting));
    assert_eq!(h.running().await, 0);

    // The old worker's late calls change nothing.
    let late = h.engine.heartbeat(&h.env.id, &run.id, &snapshot).await;
    assert!(matches!(late, Err(Error::StaleSnapshot { .. })));
    let late = h
        .engine
        .complete_attempt(&h.env.id, &run.id, &snapshot, Completion::success(Packet::default()), None)
        .await;
    assert!(matches!(late, Err(Error::StaleSnapshot { .. })));

    h.advance(Config::default().stall_retry_delay_ms as i64).await;
    let snapshot = h.claim_and_start(&run.id).await;
    h.advance(lease).await;
    let run = h.run(&run.id).await;
    assert_eq!(run.status, RunStatus::Failed, "the last attempt's stall fails the run");
    assert_eq!(run.attempt_number, 2);
    assert!(h.snapshot(&run.id).await.id != snapshot);
}

async fn a_claimed_run_whose_worker_vanishes_before_starting_goes_back_to_the_queue() {
    let h = harness(vec![task("work")], vec![]).await;
    let run = h.trigger("work").await;
    assert_eq!(h.dequeue(1).await.len(), 1);
    h.advance(Config::default().heartbeat.pending_executing).await;
    let back = h.run(&run.id).await;
    assert_eq!(back.status, RunStatus::Queued);
    assert_eq!(back.dequeue_count, 1);
    assert_eq!(h.running().await, 0);
    assert_eq!(h.dequeue(1).await.len(), 1, "it can be claimed again");
}

async fn a_run_not_dequeued_within_its_ttl_expires_and_its_waiting_parent_sees_the_error() {
    let h = harness(vec![task("parent"), task("child")], vec![]).await;
    let parent = h.trigger("parent").await;
    let parent_snapshot = h.claim_and_start(&parent.id).await;
    let _ = parent_snapshot;
    let child = h
        .trigger_with(
            "child",
            TriggerOptions {
                ttl_ms: Some(10_000),
                parent_run_id: Some(parent.id.clone()),
                resume_parent_on_completion: true,
                ..Default::default()
            },
        )
        .await
        .run;
    assert_eq!(h.snapshot(&parent.id).await.execution_status, ExecutionStatus::ExecutingWithWaitpoints);

    h.advance(9_999).await;
    assert_eq!(h.run(&child.id).await.status, RunStatus::Queued);
    h.advance(1).await;
    let expired = h.run(&child.id).await;
    assert_eq!(expired.status, RunStatus::Expired);
    assert!(expired.expired_at.is_some());
    assert_eq!(expired.error.unwrap().message(), "Run expired because the TTL (10s) was reached");

    let resumed = h.snapshot(&parent.id).await;
    assert_eq!(resumed.execution_status, ExecutionStatus::Executing);
    assert_eq!(resumed.completed_waitpoints.len(), 1);
    let wp = &resumed.completed_waitpoints[0];
    assert!(wp.output_is_error);
    assert_eq!(wp.completed_by_run_id.as_deref(), Some(child.id.as_str()));
}

async fn delayed_runs_wait_for_their_time_and_can_be_rescheduled_while_delayed() {
    let h = harness(vec![task("later")], vec![]).await;
    let run = h
        .trigger_with(
            "later",
            TriggerOptions { delay_until: Some(T0 + 60_000), ttl_ms: Some(1_000), ..Default::default() },
        )
        .await
        .run;
    assert_eq!(run.status, RunStatus::Delayed);
    assert!(h.dequeue(10).await.is_empty());

    let moved = h.engine.reschedule(&h.env.id, &run.id, T0 + 120_000).await.unwrap();
    assert_eq!(moved.delay_until, Some(T0 + 120_000));
    h.advance(60_000).await;
    assert_eq!(h.run(&run.id).await.status, RunStatus::Delayed, "the old time no longer fires");
    h.advance(60_000).await;
    assert_eq!(h.run(&run.id).await.status, RunStatus::Queued, "no TTL ran while it was delayed");
    assert_eq!(h.dequeue(10).await.len(), 1);
    let err = h.engine.reschedule(&h.env.id, &run.id, T0 + 999_000).await.unwrap_err();
    assert!(matches!(err, Error::InvalidState(_)), "only a delayed run can be rescheduled");
}

async fn duration_waits_block_and_resume_exactly_once_and_are_idempotent() {
    let h = harness(vec![task("sleeper")], vec![]).await;
    let run = h.trigger("sleeper").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let wp = h
        .engine
        .wait_for_duration(&h.env.id, &run.id, &snapshot, T0 + 30_000, Some("nap".into()), None)
        .await
        .unwrap();
    let waiting = h.run(&run.id).await;
    assert_eq!(waiting.status, RunStatus::Waiting);
    assert_eq!(h.running().await, 0, "a waiting run gives its slot back");

    h.advance(29_999).await;
    assert_eq!(h.snapshot(&run.id).await.execution_status, ExecutionStatus::ExecutingWithWaitpoints);
    h.advance(1).await;
    let resumed = h.snapshot(&run.id).await;
    assert_eq!(resumed.execution_status, ExecutionStatus::Executing);
    assert_eq!(resumed.completed_waitpoints.len(), 1);
    assert_eq!(resumed.completed_waitpoints[0].id, wp.id);
    assert_eq!(h.running().await, 1);
    h.advance(60_000).await;
    assert_eq!(h.snapshot(&run.id).await.id, resumed.id, "a waitpoint resumes a run once");

    // The same idempotency key returns the completed waitpoint: the run continues at once.
    let again = h
        .engine
        .wait_for_duration(&h.env.id, &run.id, &resumed.id, T0 + 999_000, Some("nap".into()), None)
        .await
        .unwrap();
    assert_eq!(again.id, wp.id);
    let after = h.snapshot(&run.id).await;
    assert_eq!(after.execution_status, ExecutionStatus::Executing);
    assert_eq!(after.completed_waitpoints[0].id, wp.id);
}

async fn a_retried_attempt_reuses_its_keyed_wait_until_the_key_expires() {
    let h = harness(vec![retrying("napper", 3)], vec![]).await;
    let run = h.trigger("napper").await;
    let snapshot = h.claim_and_start(&run.id).await;
    let key = Some("nap-once".to_string());
    let ttl = Some(120_000);
    let wp = h.engine.wait_for_duration(&h.env.id, &run.id, &snapshot, T0 + 30_000, key.clone(), ttl).await.unwrap();
    assert_eq!(wp.idempotency_key_expires_at, Some(T0 + 120_000));
    h.advance(30_000).await;
    let resumed = h.snapshot(&run.id).await;
    assert_eq!(resumed.execution_status, ExecutionStatus::Executing);

    // The attempt fails after its wait; the retry reaches the same wait again.
    let outcome = h
        .engine
        .complete_attempt(
            &h.env.id,
            &run.id,
            &resumed.id,
            Completion::Failure {
                error: TaskRunError::string("after the nap"),
                retry: Some(RetryProposal { at: T0 + 31_000, delay_ms: 1000 }),
                skipped_retrying: false,
                usage_ms: 1,
            },
            None,
        )
        .await
        .unwrap();
    assert_ne!(outcome.status, AttemptStatus::RunFinished);
    h.advance(1000).await;
    let snapshot = match outcome.status {
        AttemptStatus::RetryImmediately => {
            h.engine.start_attempt(&h.env.id, &run.id, &outcome.snapshot.id).await.unwrap().snapshot.id
        }
        _ => h.claim_and_start(&run.id).await,
    };
    assert_eq!(h.run(&run.id).await.attempt_number, 2);
    let again =
        h.engine.wait_for_duration(&h.env.id, &run.id, &snapshot, T0 + 91_000, key.clone(), ttl).await.unwrap();
    assert_eq!(again.id, wp.id, "the key returns the first attempt's waitpoint");
    let after = h.snapshot(&run.id).await;
    assert_eq!(after.execution_status, ExecutionStatus::Executing, "already complete: no new wait");
    assert_eq!(after.completed_waitpoints.len(), 1);
    assert_eq!(after.completed_waitpoints[0].id, wp.id);

    // Once the key's TTL has passed, the same key makes a new wait that blocks.
    h.advance(120_000 - 31_000).await;
    let fresh = h
        .engine
        .wait_for_duration(&h.env.id, &run.id, &after.id, h.engine.now() + 10_000, key.clone(), None)
        .await
        .unwrap();
    assert_ne!(fresh.id, wp.id);
    assert_eq!(h.snapshot(&run.id).await.execution_status, ExecutionStatus::ExecutingWithWaitpoints);
    h.advance(10_000).await;
    assert_eq!(h.snapshot(&run.id).await.execution_status, ExecutionStatus::Executing);

    // Token keys expire the same way.
    let opts = |ttl| TokenOptions {
        idempotency_key: Some("approve-ttl".into()),
        idempotency_key_ttl_ms: ttl,
        ..Default::default()
    };
    let (first, cached) = h.engine.create_token(&h.env.id, opts(Some(5_000))).await.unwrap();
    assert!(!cached);
    let (same, cached) = h.engine.create_token(&h.env.id, opts(Some(5_000))).await.unwrap();
    assert!(cached);
    assert_eq!(same.id, first.id);
    h.advance(5_000).await;
    let (next, cached) = h.engine.create_token(&h.env.id, opts(None)).await.unwrap();
    assert!(!cached, "an expired key makes a new token");
    assert_ne!(next.id, first.id);
}

async fn tokens_complete_by_hand_or_time_out_with_the_timeout_error() {
    let h = harness(vec![task("approver")], vec![]).await;
    let run = h.trigger("approver").await;
    let snapshot = h.claim_and_start(&run.id).await;

    let (token, cached) = h
        .engine
        .create_token(&h.env.id, TokenOptions { timeout_at: Some(T0 + 5_000), ..Default::default() })
        .await
        .unwrap();
    assert!(!cached);
    h.engine.wait_for_token(&h.env.id, &run.id, Some(snapshot.clone()), &token.id).await.unwrap();
    h.advance(5_000).await;
    let resumed = h.snapshot(&run.id).await;
    let wp = &resumed.completed_waitpoints[0];
    assert!(wp.output_is_error);
    let output: serde_json::Value = serde_json::from_str(wp.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["code"], "TRIGGER_WAITPOINT_TIMEOUT");
    assert_eq!(output["message"], format!("Waitpoint timed out at {}", iso8601(T0 + 5_000)));

    let (token, _) = h
        .engine
        .create_token(
            &h.env.id,
            TokenOptions { idempotency_key: Some("approve-1".into()), ..Default::default() },
        )
        .await
        .unwrap();
    let (same, cached) = h
        .engine
        .create_token(
            &h.env.id,
            TokenOptions { idempotency_key: Some("approve-1".into()), ..Default::default() },
        )
        .await
        .unwrap();
    assert!(cached);
    assert_eq!(same.id, token.id);
    h.engine.wait_for_token(&h.env.id, &run.id, Some(resumed.id.clone()), &token.id).await.unwrap();
    h.engine
        .complete_token(Some(&h.env.id), &token.id, Packet::json(&json!({"approved": true})))
        .await
        .unwrap();
    let resumed = h.snapshot(&run.id).await;
    assert_eq!(resumed.completed_waitpoints[0].output.as_deref(), Some(r#"{"approved":true}"#));
    assert!(!resumed.completed_waitpoints[0].output_is_error);
    // Completing twice changes nothing.
    h.engine
        .complete_token(Some(&h.env.id), &token.id, Packet::json(&json!({"approved": false})))
        .await
        .unwrap();
    assert_eq!(h.snapshot(&run.id).await.id, resumed.id);
}

async fn cancelling_a_parent_cancels_its_unfinished_children_recursively() {
    let h = harness(vec![task("root"), task("mid"), task("leaf")], vec![]).await;
    let root = h.trigger("root").await;
    let root_snapshot = h.claim_and_start(&root.id).await;
    let _ = root_snapshot;
    let wait = |parent: &str| TriggerOptions {
        parent_run_id: Some(parent.to_string()),
        resume_parent_on_completion: true,
        ..Default::default()
    };
    let done = h
        .trigger_with("leaf", TriggerOptions { parent_run_id: Some(root.id.clone()), ..Default::default() })
        .await
        .run;
    let s = h.claim_and_start(&done.id).await;
    h.succeed(&done.id, &s, json!(1)).await;
    let mid = h.trigger_with("mid", wait(&root.id)).await.run;
    h.claim_and_start(&mid.id).await;
    let leaf = h.trigger_with("leaf", wait(&mid.id)).await.run;
    let sibling = h
        .trigger_with("leaf", TriggerOptions { parent_run_id: Some(root.id.clone()), ..Default::default() })
        .await
        .run;

    let canceled = h.engine.cancel(&h.env.id, &root.id, None).await.unwrap();
    assert_eq!(
        canceled.execution_status,
        ExecutionStatus::PendingCancel,
        "an executing run is asked to stop"
    );
    assert_eq!(h.snapshot(&mid.id).await.execution_status, ExecutionStatus::PendingCancel);
    assert_eq!(h.run(&leaf.id).await.status, RunStatus::Canceled, "a queued child is canceled at once");
    assert_eq!(h.run(&sibling.id).await.status, RunStatus::Canceled);
    assert_eq!(h.run(&done.id).await.status, RunStatus::Completed, "a finished child is left alone");

    // The worker confirms; the lease finalizes a worker that never does.
    let root_snapshot = h.snapshot(&root.id).await.id;
    let outcome = h
        .engine
        .complete_attempt(
            &h.env.id,
            &root.id,
            &root_snapshot,
            Completion::failure(TaskRunError::internal(InternalErrorCode::TaskRunCancelled, "aborted")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome.run.status, RunStatus::Canceled);
    h.advance(Config::default().heartbeat.pending_cancel).await;
    assert_eq!(h.run(&mid.id).await.status, RunStatus::Canceled);
    assert_eq!(h.running().await, 0);
    assert!(h.dequeue(10).await.is_empty());
    let again = h.engine.cancel(&h.env.id, &root.id, None).await.unwrap();
    assert_eq!(again.status, RunStatus::Canceled, "cancelling a finished run is a no-op");
}

async fn stale_calls_are_rejected_and_change_nothing() {
    let h = harness(vec![task("t")], vec![]).await;
    let run = h.trigger("t").await;
    let claimed = h.dequeue(1).await;
    let started = h.engine.start_attempt(&h.env.id, &run.id, &claimed[0].snapshot.id).await.unwrap();
    let again = h.engine.start_attempt(&h.env.id, &run.id, &claimed[0].snapshot.id).await;
    assert!(matches!(again, Err(Error::StaleSnapshot { .. })), "an attempt starts once");
    h.succeed(&run.id, &started.snapshot.id, json!(1)).await;
    let twice = h
        .engine
        .complete_attempt(
            &h.env.id,
            &run.id,
            &started.snapshot.id,
            Completion::success(Packet::default()),
            None,
        )
        .await;
    assert!(matches!(twice, Err(Error::StaleSnapshot { .. })), "a run completes once");
    assert_eq!(
        h.engine.get_run(&h.env.id, &run.id).await.unwrap().output.unwrap().data.as_deref(),
        Some("1")
    );

    let other = h.engine.create_environment("proj_test", EnvironmentType::Staging, None).await.unwrap();
    assert!(
        matches!(h.engine.get_run(&other.id, &run.id).await, Err(Error::NotFound(_))),
        "environments are separate"
    );
    assert!(
        matches!(h.engine.trigger(&other.id, request("t")).await, Err(Error::NotFound(_))),
        "no task there"
    );
}

async fn bad_trigger_input_is_refused_with_the_field_named_and_nothing_written() {
    let h = harness(vec![task("t")], vec![]).await;
    let tags: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let cases = vec![
        (TriggerOptions { tags, ..Default::default() }, "tags"),
        (TriggerOptions { metadata: Some("x".repeat(300 * 1024)), ..Default::default() }, "metadata"),
        (TriggerOptions { metadata: Some("{not json".into()), ..Default::default() }, "metadata"),
        (TriggerOptions { max_attempts: Some(0), ..Default::default() }, "maxAttempts"),
        (TriggerOptions { idempotency_key: Some("k".repeat(3000)), ..Default::default() }, "idempotencyKey"),
    ];
    for (options, field) in cases {
        let err = h.engine.trigger(&h.env.id, request_with("t", options)).await.unwrap_err();
        assert!(err.to_string().starts_with(field), "{err} names {field}");
    }
    let big = TriggerRequest {
        payload: Packet { data: Some("x".repeat(3 * 1024 * 1024 + 1)), data_type: "text/plain".into() },
        ..request("t")
    };
    assert!(matches!(h.engine.trigger(&h.env.id, big).await, Err(Error::TooLarge(_))));
    assert!(matches!(h.engine.trigger(&h.env.id, request("nope")).await, Err(Error::NotFound(_))));
    let runs = h
        .engine
        .list_runs(RunFilter { env_id: h.env.id.clone(), ..Default::default() }, Page::default())
        .await
        .unwrap();
    assert!(runs.is_empty());
}

async fn metadata_operations_apply_in_order_to_the_run_its_parent_and_root() {
    let h = harness(vec![task("parent"), task("child")], vec![]).await;
    let parent = h
        .trigger_with(
            "parent",
            TriggerOptions { metadata: Some(r#"{"source":"api"}"#.into()), ..Default::default() },
        )
        .await
        .run;
    h.claim_and_start(&parent.id).await;
    let child = h
        .trigger_with(
            "child",
            TriggerOptions { parent_run_id: Some(parent.id.clone()), ..Default::default() },
        )
        .await
        .run;
    let update: MetadataUpdate = serde_json::from_value(json!({
        "operations": [
            {"type": "set", "key": "progress", "value": 0.5},
            {"type": "append", "key": "processed", "value": 1},
            {"type": "increment", "key": "count", "value": 1}
        ],
        "parentOperations": [{"type": "increment", "key": "children", "value": 1}],
        "rootOperations": [{"type": "append", "key": "log", "value": "child ran"}]
    }))
    .unwrap();
    let own = h.engine.update_metadata(&h.env.id, &child.id, update).await.unwrap();
    assert_eq!(own, json!({"progress": 0.5, "processed": [1], "count": 1}));
    let parent_meta: serde_json::Value =
        serde_json::from_str(h.run(&parent.id).await.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(parent_meta, json!({"source": "api", "children": 1, "log": ["child ran"]}));

    let too_big = MetadataUpdate {
        operations: vec![MetadataOp::Set { key: "blob".into(), value: json!("x".repeat(300 * 1024)) }],
        ..Default::default()
    };
    assert!(matches!(h.engine.update_metadata(&h.env.id, &child.id, too_big).await, Err(Error::TooLarge(_))));
    assert_eq!(
        h.run(&child.id).await.metadata.as_deref().map(|m| m.len() < 1000),
        Some(true),
        "a refused update changes nothing"
    );
}

async fn replay_creates_a_new_run_from_the_old_payload_and_options() {
    let h =
        harness(vec![task("t")], vec![QueueManifest { name: "named".into(), concurrency_limit: Some(2) }])
            .await;
    let original = h
        .trigger_with(
            "t",
            TriggerOptions {
                queue: Some("named".into()),
                tags: vec!["a".into()],
                concurrency_key: Some("ck".into()),
                idempotency_key: Some("only-once".into()),
                max_attempts: Some(4),
                ..Default::default()
            },
        )
        .await
        .run;
    let replayed = h.engine.replay(&h.env.id, &original.id, ReplayOverrides::default()).await.unwrap();
    assert!(!replayed.is_cached);
    let run = replayed.run;
    assert_ne!(run.id, original.id);
    assert_eq!(run.replayed_from.as_deref(), Some(original.id.as_str()));
    assert_eq!((run.queue.as_str(), run.concurrency_key.as_deref()), ("named", Some("ck")));
    assert_eq!(run.tags, vec!["a".to_string()]);
    assert_eq!(run.max_attempts, Some(4));
    assert_eq!(run.idempotency_key, None, "a replay is not deduplicated");
    let payload = h.engine.get_run(&h.env.id, &run.id).await.unwrap().payload;
    assert_eq!(payload.data.as_deref(), Some(r#"{"n":1}"#));

    let edited = ReplayOverrides { payload: Some(Packet::json(&json!({"n": 2}))), ..Default::default() };
    let run = h.engine.replay(&h.env.id, &original.id, edited).await.unwrap().run;
    let payload = h.engine.get_run(&h.env.id, &run.id).await.unwrap().payload;
    assert_eq!(payload.data.as_deref(), Some(r#"{"n":2}"#));
}

async fn run_events_are_stored_in_order_and_scoped_to_the_environment() {
    let h = harness(vec![task("t")], vec![]).await;
    let run = h.trigger("t").await;
    let event = |message: &str, level: &str, t: i64| RunEvent {
        seq: 0,
        run_id: String::new(),
        kind: "log".into(),
        level: level.into(),
        message: message.into(),
        attributes: json!({"itemId": 1}),
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        start_time_ns: t,
        duration_ns: 0,
        attempt_number: Some(1),
    };
    h.engine
        .record_events(
            &h.env.id,
            &run.id,
            vec![event("Task started", "info", 1), event("Item processed", "info", 2)],
        )
        .await
        .unwrap();
    h.engine.record_events(&h.env.id, &run.id, vec![event("Task failed", "error", 3)]).await.unwrap();
    let events = h.engine.list_events(&h.env.id, &run.id, 0, 100).await.unwrap();
    let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, vec!["Task started", "Item processed", "Task failed"]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.run_id == run.id));
    let after = h.engine.list_events(&h.env.id, &run.id, events[0].seq, 100).await.unwrap();
    assert_eq!(after.len(), 2);
    let other = h.engine.create_environment("proj_test", EnvironmentType::Staging, None).await.unwrap();
    assert!(matches!(h.engine.list_events(&other.id, &run.id, 0, 10).await, Err(Error::NotFound(_))));
}
}
