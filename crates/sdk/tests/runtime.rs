//! Worker runtime behaviour: max duration, panics, cancellation, waits, tokens, batches,
//! and a parent waiting on children in its own limit-1 queue.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trigger_engine::{InternalErrorCode, Packet, RunStatus, TriggerOptions as EngineOptions, TriggerRequest};
use trigger_sdk::backend::Backend;
use trigger_sdk::hooks::CancelArgs;
use trigger_sdk::{queue, task, wait, IntoTask, Queue, TaskError, TriggerOptions, WorkerOptions};

use common::{output, Harness};

async fn trigger(h: &Harness, task: &str, payload: Value) -> String {
    let req = TriggerRequest {
        task: task.into(),
        payload: Packet::json(&payload),
        options: EngineOptions::default(),
    };
    h.backend.trigger(req).await.unwrap().run.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_duration_ends_a_busy_run_but_not_a_waiting_one() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = cleaned.clone();
    let busy = task::<Value, Value>("busy")
        .max_duration(Duration::from_secs(5))
        .cleanup(move |_: trigger_sdk::hooks::StartArgs<Value>| {
            let c = c.clone();
            async move { c.store(true, Ordering::SeqCst) }
        })
        .run(|_, ctx| async move {
            loop {
                // Compute that yields now and then, as async code does.
                std::thread::sleep(Duration::from_millis(20));
                tokio::task::yield_now().await;
                if ctx.signal.is_cancelled() {
                    return Err(TaskError::new("saw the signal"));
                }
            }
        });
    let sleepy = task::<Value, Value>("sleepy").max_duration(Duration::from_secs(5)).run(|_, _| async move {
        wait::for_duration(Duration::from_millis(5500)).await?;
        Ok::<_, TaskError>(json!("rested"))
    });
    let h = Harness::start(vec![busy.into_task(), sleepy.into_task()], common::options()).await;
    let started = Instant::now();
    let busy_id = trigger(&h, "busy", json!({})).await;
    let sleepy_id = trigger(&h, "sleepy", json!({})).await;

    let done = h.wait_final(&busy_id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::TimedOut);
    assert_eq!(done.run.error.as_ref().and_then(|e| e.code()), Some(InternalErrorCode::MaxDurationExceeded));
    assert_eq!(done.run.attempt_number, 1);
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(!cleaned.load(Ordering::SeqCst), "cleanup does not run after maxDuration");

    let done = h.wait_final(&sleepy_id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(output(&done), json!("rested"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_fails_the_attempt_and_the_worker_goes_on() {
    let boom = task::<Value, Value>("boom").run(|payload, _| async move {
        if payload["panic"] == json!(true) {
            panic!("kaboom");
        }
        Ok::<_, TaskError>(json!("fine"))
    });
    let h = Harness::start(vec![boom.into_task()], common::options()).await;
    let bad = trigger(&h, "boom", json!({ "panic": true })).await;
    let done = h.wait_final(&bad, Duration::from_secs(10)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    let message = done.run.error.unwrap().message();
    assert!(message.contains("kaboom"), "{message}");
    let good = trigger(&h, "boom", json!({})).await;
    let done = h.wait_final(&good, Duration::from_secs(10)).await;
    assert_eq!(done.run.status, RunStatus::Completed);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_executing_and_waiting_runs() {
    let cancelled = Arc::new(AtomicU32::new(0));
    let c = cancelled.clone();
    let spinner = task::<Value, Value>("spinner")
        .on_cancel(move |_: CancelArgs<Value>| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
            }
        })
        .run(|_, ctx| async move {
            ctx.signal.cancelled().await;
            Ok::<_, TaskError>(json!("unreachable"))
        });
    let waiter = task::<Value, Value>("waiter").run(|_, _| async move {
        let token = wait::create_token(Default::default()).await?;
        wait::for_token::<Value>(&token.id).await?;
        Ok::<_, TaskError>(json!("unreachable"))
    });
    let h = Harness::start(vec![spinner.into_task(), waiter.into_task()], common::options()).await;
    let a = trigger(&h, "spinner", json!({})).await;
    let b = trigger(&h, "waiter", json!({})).await;
    h.wait_until(&a, Duration::from_secs(10), |d| d.run.status == RunStatus::Executing).await;
    h.wait_until(&b, Duration::from_secs(10), |d| d.run.status == RunStatus::Waiting).await;
    h.backend.cancel(&a).await.unwrap();
    h.backend.cancel(&b).await.unwrap();
    assert_eq!(h.wait_final(&a, Duration::from_secs(10)).await.run.status, RunStatus::Canceled);
    assert_eq!(h.wait_final(&b, Duration::from_secs(10)).await.run.status, RunStatus::Canceled);
    assert_eq!(cancelled.load(Ordering::SeqCst), 1, "onCancel ran for the executing run");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_batches_and_a_limit_one_queue_with_a_waiting_parent() {
    static SOLO: Queue = queue("solo").concurrency_limit(1);
    let double = task::<u64, u64>("double").queue(&SOLO).run(|n, _| async move { Ok::<_, TaskError>(n * 2) });
    let d = double.clone();
    let parent = task::<Vec<u64>, Value>("parent").queue(&SOLO).run(move |items, _| {
        let double = d.clone();
        async move {
            // Children on the parent's own limit-1 queue, with one slot on the worker.
            let first = double.trigger_and_wait(items[0], TriggerOptions::default()).await?.unwrap()?;
            let batch = double.batch_trigger_and_wait(items.iter().copied()).await?;
            let all: Vec<u64> = batch.runs.into_iter().map(|r| r.unwrap()).collect::<Result<_, _>>()?;
            Ok::<_, TaskError>(json!({ "first": first, "all": all }))
        }
    });
    let approval = task::<Value, Value>("approval").run(|_, _| async move {
        let token = wait::create_token(Default::default()).await?;
        trigger_sdk::metadata::set("token", &token.id);
        trigger_sdk::metadata::flush().await?;
        let approved: Value = wait::for_token(&token.id).await?.unwrap()?;
        Ok::<_, TaskError>(approved)
    });
    let options = WorkerOptions { concurrency: 1, ..common::options() };
    let h = Harness::start(vec![double.into_task(), parent.into_task(), approval.into_task()], options).await;

    let p = trigger(&h, "parent", json!([1, 2, 3, 4])).await;
    let done = h.wait_final(&p, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(output(&done), json!({ "first": 2, "all": [2, 4, 6, 8] }), "batch results in item order");

    let a = trigger(&h, "approval", json!({})).await;
    let waiting =
        h.wait_until(&a, Duration::from_secs(10), |d| common::metadata(d)["token"].is_string()).await;
    let token = common::metadata(&waiting)["token"].as_str().unwrap().to_string();
    h.wait_until(&a, Duration::from_secs(10), |d| d.run.status == RunStatus::Waiting).await;
    trigger_sdk::configure(h.backend.clone());
    wait::complete_token(&token, json!({ "approved": true })).await.unwrap();
    let done = h.wait_final(&a, Duration::from_secs(10)).await;
    assert_eq!(output(&done), json!({ "approved": true }));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machine_presets_bound_what_runs_at_once_and_global_hooks_see_every_task() {
    static SEEN: AtomicU32 = AtomicU32::new(0);
    trigger_sdk::tasks::on_success(
        "count-successes",
        |args: trigger_sdk::hooks::SuccessArgs<Value, Value>| async move {
            if args.ctx.task.id == "heavy" {
                assert_eq!(*args.output, json!("done"));
                SEEN.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    let current = Arc::new(AtomicU32::new(0));
    let max = Arc::new(AtomicU32::new(0));
    let (c, m) = (current.clone(), max.clone());
    let heavy =
        task::<Value, Value>("heavy").machine(trigger_sdk::MachinePreset::Medium1x).run(move |_, ctx| {
            let (c, m) = (c.clone(), m.clone());
            async move {
                assert_eq!(ctx.machine.name, trigger_sdk::MachinePreset::Medium1x);
                let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                c.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(json!("done"))
            }
        });
    // Room for two medium-1x machines (1 vCPU, 2 GB each) although ten slots are free.
    let options = WorkerOptions { concurrency: 10, cpu: Some(2.0), memory: Some(4.0), ..common::options() };
    let h = Harness::start(vec![heavy.into_task()], options).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(trigger(&h, "heavy", json!({})).await);
    }
    for id in &ids {
        assert_eq!(h.wait_final(id, Duration::from_secs(20)).await.run.status, RunStatus::Completed);
    }
    assert_eq!(max.load(Ordering::SeqCst), 2, "cpu and memory bound concurrency to two medium-1x runs");
    assert_eq!(SEEN.load(Ordering::SeqCst), 6, "the global onSuccess hook ran for every run");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_runs_and_hands_back_the_rest() {
    let quick = task::<Value, Value>("quick").run(|_, _| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, TaskError>(json!("finished during the drain"))
    });
    let stuck = task::<Value, Value>("stuck")
        .retry(trigger_sdk::RetryOptions { max_attempts: 2, ..Default::default() })
        .run(|_, ctx| async move {
            if ctx.attempt.number == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, TaskError>(json!("second attempt"))
        });
    let options = WorkerOptions { drain_timeout: Duration::from_millis(500), ..common::options() };
    let h = Harness::start(vec![quick.clone().into_task(), stuck.clone().into_task()], options).await;
    let q = trigger(&h, "quick", json!({})).await;
    let s = trigger(&h, "stuck", json!({})).await;
    h.wait_until(&q, Duration::from_secs(10), |d| d.run.status == RunStatus::Executing).await;
    h.wait_until(&s, Duration::from_secs(10), |d| d.run.status == RunStatus::Executing).await;
    let backend = h.backend.clone();
    let mut h = h;
    h.worker.take().unwrap().shutdown().await.unwrap();

    let done = h.wait_final(&q, Duration::from_secs(5)).await;
    assert_eq!(output(&done), json!("finished during the drain"));
    let handed_back = h.run(&s).await;
    assert_eq!(
        handed_back.run.status,
        RunStatus::Queued,
        "the stuck run was handed back to the queue, not failed"
    );
    assert!(handed_back.run.error.is_none(), "handing back is not a failure: {:?}", handed_back.run.error);
    assert_eq!(handed_back.run.attempt_number, 1);

    // Another worker picks it up.
    let worker = trigger_sdk::Worker::builder()
        .backend(backend)
        .options(common::options())
        .task(quick)
        .task(stuck)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    h.worker = Some(worker);
    let done = h.wait_final(&s, Duration::from_secs(20)).await;
    assert_eq!(output(&done), json!("second attempt"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_batches_and_parent_and_root_metadata() {
    let double = task::<u64, u64>("double").run(|n, _| async move {
        trigger_sdk::metadata::parent().increment("children", 1);
        trigger_sdk::metadata::root().append("finished", "double");
        Ok::<_, TaskError>(n * 2)
    });
    let shout = task::<String, String>("shout").run(|s, _| async move {
        trigger_sdk::metadata::parent().increment("children", 1);
        trigger_sdk::metadata::root().append("finished", "shout");
        Ok::<_, TaskError>(s.to_uppercase())
    });
    let fanout = task::<Value, Value>("fanout").run(|_, _| async move {
        use trigger_sdk::batch::{self, Item};
        let result =
            batch::trigger_and_wait(vec![Item::new("double", 21)?, Item::new("shout", "hi")?]).await?;
        let outputs: Vec<Value> = result.runs.into_iter().map(|r| r.unwrap()).collect::<Result<_, _>>()?;
        Ok::<_, TaskError>(json!(outputs))
    });
    let h =
        Harness::start(vec![double.into_task(), shout.into_task(), fanout.into_task()], common::options())
            .await;
    let id = trigger(&h, "fanout", json!({})).await;
    let done = h.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(output(&done), json!([42, "HI"]), "outputs in item order, per task");
    let m = common::metadata(&done);
    assert_eq!(m["children"], json!(2), "children updated their parent's metadata");
    let mut finished: Vec<String> = serde_json::from_value(m["finished"].clone()).unwrap();
    finished.sort();
    assert_eq!(finished, vec!["double", "shout"], "and their root's");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_error_can_delay_a_retry_and_replace_the_error() {
    let starts = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let s = starts.clone();
    let flaky = task::<Value, Value>("flaky")
        .retry(trigger_sdk::RetryOptions {
            max_attempts: 3,
            min_timeout_in_ms: 10,
            randomize: false,
            ..Default::default()
        })
        .catch_error(|args: trigger_sdk::hooks::CatchErrorArgs<Value>| async move {
            assert_eq!(
                args.retry_delay,
                Some(Duration::from_millis(10 * 2u64.pow(args.ctx.attempt.number - 1)))
            );
            match args.ctx.attempt.number {
                1 => trigger_sdk::CatchError::RetryAfter(Duration::from_millis(300)),
                _ => trigger_sdk::CatchError::ReplaceError(
                    TaskError::with_code("REPLACED", "replaced").skip_retrying(),
                ),
            }
        })
        .run(move |_, _| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(Instant::now());
                Err::<Value, _>(TaskError::new("always"))
            }
        });
    let h = Harness::start(vec![flaky.into_task()], common::options()).await;
    let id = trigger(&h, "flaky", json!({})).await;
    let done = h.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    assert_eq!(done.run.attempt_number, 2, "the replaced error skips retrying");
    match done.run.error.unwrap() {
        trigger_sdk::TaskRunError::BuiltIn { name, message, .. } => {
            assert_eq!((name.as_str(), message.as_str()), ("REPLACED", "replaced"))
        }
        other => panic!("unexpected error {other:?}"),
    }
    let gap = {
        let starts = starts.lock().unwrap();
        starts[1] - starts[0]
    };
    assert!(gap >= Duration::from_millis(300), "catchError's delay replaced the policy's 10 ms: {gap:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_are_stored_with_their_duration_and_parent() {
    let traced = task::<Value, Value>("traced").run(|_, _| async move {
        let total = trigger_sdk::logger::span("outer", json!({ "step": 1 }), async {
            let inner = trigger_sdk::logger::span("inner", (), async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                2
            })
            .await;
            inner + 1
        })
        .await;
        Ok::<_, TaskError>(json!(total))
    });
    let h = Harness::start(vec![traced.into_task()], common::options()).await;
    let id = trigger(&h, "traced", json!({})).await;
    let done = h.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(output(&done), json!(3), "a span returns what its work returns");
    let spans: Vec<_> = h.events(&id).await.into_iter().filter(|e| e.kind == "span").collect();
    let outer = spans.iter().find(|e| e.message == "outer").expect("outer span stored");
    let inner = spans.iter().find(|e| e.message == "inner").expect("inner span stored");
    assert_eq!(inner.parent_span_id, outer.span_id, "the inner span is the outer one's child");
    assert_eq!(outer.parent_span_id, None);
    assert_eq!(outer.attributes, json!({ "step": 1 }));
    assert!(inner.duration_ns >= 30_000_000, "{}", inner.duration_ns);
    assert!(outer.duration_ns >= inner.duration_ns);
    assert!(inner.start_time_ns >= outer.start_time_ns);
    h.shutdown().await;
}
