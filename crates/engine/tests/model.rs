//! A model-based property test: random interleavings of triggers, claims, heartbeats,
//! completions, failures, cancels, clock jumps and worker loss, checked against the
//! invariants a reference model of the run lifecycle guarantees.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use trigger_engine::*;

#[derive(Debug, Clone)]
enum Op {
    Trigger {
        keyed: Option<u8>,
        delay: bool,
    },
    Dequeue(u8),
    Start(u8),
    Heartbeat(u8),
    Succeed(u8),
    Fail(u8),
    Cancel(u8),
    Advance(u32),
    /// The worker process dies: it forgets every run it held.
    LoseWorker,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u8..3), any::<bool>()).prop_map(|(keyed, delay)| Op::Trigger { keyed, delay }),
        3 => (1u8..4).prop_map(Op::Dequeue),
        3 => any::<u8>().prop_map(Op::Start),
        1 => any::<u8>().prop_map(Op::Heartbeat),
        2 => any::<u8>().prop_map(Op::Succeed),
        2 => any::<u8>().prop_map(Op::Fail),
        1 => any::<u8>().prop_map(Op::Cancel),
        2 => prop_oneof![Just(500u32), Just(5_000), Just(61_000), Just(301_000)].prop_map(Op::Advance),
        1 => Just(Op::LoseWorker),
    ]
}

/// What the reference model knows about a run.
#[derive(Debug, Default)]
struct Known {
    /// The snapshot the worker believes is current (None: the worker does not hold it).
    held: Option<String>,
    final_status: Option<RunStatus>,
    max_attempt: u32,
}

const LIMIT: u32 = 2;

async fn check_invariants(h: &Harness, runs: &mut [(String, Known)]) {
    assert!(h.running().await <= LIMIT, "the queue limit holds");
    for (id, known) in runs.iter_mut() {
        let run = h.run(id).await;
        assert!(run.attempt_number >= known.max_attempt, "attempts only increase");
        known.max_attempt = run.attempt_number;
        if let Some(status) = known.final_status {
            assert_eq!(run.status, status, "a final run never changes");
        } else if run.status.is_final() {
            known.final_status = Some(run.status);
        }
        let finished = h
            .engine
            .snapshots_since(&h.env.id, id, None)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.execution_status == ExecutionStatus::Finished)
            .count();
        assert!(finished <= 1, "a run finishes once");
        assert_eq!(finished == 1, run.status.is_final());
        if run.status.is_final() {
            assert!(!h.engine.holds_slot(id).await.unwrap(), "a finished run holds no slot");
        }
    }
}

fn allowed(result: Result<impl Sized>) {
    match result {
        Ok(_) | Err(Error::StaleSnapshot { .. } | Error::InvalidState(_)) => {}
        Err(e) => panic!("unexpected engine error: {e}"),
    }
}

async fn run_case(ops: Vec<Op>) {
    let h = harness(
        vec![TaskManifest { queue_name: Some("q".into()), ..retrying("t", 3) }],
        vec![QueueManifest { name: "q".into(), concurrency_limit: Some(LIMIT) }],
    )
    .await;
    let mut runs: Vec<(String, Known)> = Vec::new();
    let pick = |runs: &Vec<(String, Known)>, i: u8| (!runs.is_empty()).then(|| i as usize % runs.len());

    for op in ops {
        match op {
            Op::Trigger { keyed, delay } => {
                let options = TriggerOptions {
                    idempotency_key: keyed.map(|k| format!("key-{k}")),
                    delay_until: delay.then(|| h.engine.now() + 3_000),
                    ..Default::default()
                };
                let t = h.trigger_with("t", options).await;
                if !runs.iter().any(|(id, _)| *id == t.run.id) {
                    runs.push((t.run.id, Known::default()));
                }
            }
            Op::Dequeue(n) => {
                for d in h.dequeue(n as u32).await {
                    let known = &mut runs.iter_mut().find(|(id, _)| *id == d.run.id).unwrap().1;
                    assert!(known.final_status.is_none(), "a finished run is never claimed");
                    known.held = Some(d.snapshot.id);
                }
            }
            Op::Start(i) => {
                if let Some(i) = pick(&runs, i) {
                    if let Some(snapshot) = runs[i].1.held.clone() {
                        match h.engine.start_attempt(&h.env.id, &runs[i].0, &snapshot).await {
                            Ok(started) => runs[i].1.held = Some(started.snapshot.id),
                            other => allowed(other),
                        }
                    }
                }
            }
            Op::Heartbeat(i) => {
                if let Some(i) = pick(&runs, i) {
                    if let Some(snapshot) = runs[i].1.held.clone() {
                        allowed(h.engine.heartbeat(&h.env.id, &runs[i].0, &snapshot).await);
                    }
                }
            }
            Op::Succeed(i) | Op::Fail(i) => {
                if let Some(i) = pick(&runs, i) {
                    if let Some(snapshot) = runs[i].1.held.clone() {
                        let completion = if matches!(op, Op::Succeed(_)) {
                            Completion::success(Packet::json(&json!(i)))
                        } else {
                            Completion::failure(TaskRunError::string("boom"))
                        };
                        match h
                            .engine
                            .complete_attempt(&h.env.id, &runs[i].0, &snapshot, completion, None)
                            .await
                        {
                            Ok(outcome) => {
                                runs[i].1.held = match outcome.status {
                                    AttemptStatus::RetryImmediately => Some(outcome.snapshot.id),
                                    _ => None,
                                }
                            }
                            other => allowed(other),
                        }
                    }
                }
            }
            Op::Cancel(i) => {
                if let Some(i) = pick(&runs, i) {
                    allowed(h.engine.cancel(&h.env.id, &runs[i].0, None).await);
                }
            }
            Op::Advance(ms) => {
                h.advance(ms as i64).await;
            }
            Op::LoseWorker => {
                for (_, known) in runs.iter_mut() {
                    known.held = None;
                }
            }
        }
        check_invariants(&h, &mut runs).await;
    }

    // Faults stop: a healthy worker drains everything, and every run terminates.
    for (_, known) in runs.iter_mut() {
        known.held = None;
    }
    for _ in 0..60 {
        if runs.iter().all(|(_, k)| k.final_status.is_some()) {
            break;
        }
        for d in h.dequeue(10).await {
            let snapshot = h.start(&d).await;
            h.succeed(&d.run.id, &snapshot, json!("drained")).await;
        }
        h.advance(61_000).await;
        check_invariants(&h, &mut runs).await;
    }
    for (id, known) in &runs {
        assert!(known.final_status.is_some(), "run {id} terminated: {:?}", h.run(id).await);
    }
    assert_eq!(h.running().await, 0, "concurrency counters return to zero");
    let subs = h.engine.list_subqueues(&h.env.id, "q").await.unwrap();
    assert!(subs.iter().all(|s| s.running == 0 && s.ready_count == 0), "{subs:?}");
    h.engine.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_keeps_its_invariants_under_any_interleaving(ops in proptest::collection::vec(op(), 1..40)) {
        Backend::Sqlite.select();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run_case(ops));
    }

    #[test]
    fn the_engine_keeps_its_invariants_under_any_interleaving_on_postgres(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        Backend::Postgres.select();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run_case(ops));
    }
}
