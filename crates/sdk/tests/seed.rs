//! The seed's semantics end to end: embedded engine, real worker, real clock.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use trigger_engine::{InternalErrorCode, RunStatus};
use trigger_sdk::hooks::{CatchErrorArgs, FailureArgs, MiddlewareArgs, StartArgs, SuccessArgs};
use trigger_sdk::{
    idempotency_keys, locals, logger, metadata, queue, task, tasks, CatchError, IntoTask, MachinePreset,
    Queue, RetryOptions, Task, TaskError, TriggerOptions,
};

use common::{output, Harness};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
    #[serde(default)]
    gate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    user_id: String,
    data: Vec<Item>,
    /// Attempts up to this number fail after processing every item.
    #[serde(default)]
    fail_attempts: u32,
    /// Fail with `FATAL_ERROR` instead of a transient error.
    #[serde(default)]
    fatal: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Output {
    processed: usize,
    user_id: String,
    results: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildOutput {
    result: String,
}

/// What the tasks observed.
#[derive(Default)]
struct Probe {
    /// Runs of `process-queue` inside a compute section right now, and the most seen.
    current: AtomicU32,
    max: AtomicU32,
    /// (run, event) in order.
    events: Mutex<Vec<(String, String)>>,
    /// (run, attempt, when) of every attempt start.
    attempts: Mutex<Vec<(String, u32, Instant)>>,
    /// (run, when) of every attempt's end, as the task's middleware sees it.
    ends: Mutex<Vec<(String, Instant)>>,
    child_runs: Mutex<HashMap<u64, u32>>,
    gate: Notify,
    gate_open: std::sync::atomic::AtomicBool,
}

impl Probe {
    fn event(&self, run: &str, what: &str) {
        self.events.lock().unwrap().push((run.to_string(), what.to_string()));
    }

    fn events_of(&self, run: &str) -> Vec<String> {
        self.events.lock().unwrap().iter().filter(|(r, _)| r == run).map(|(_, e)| e.clone()).collect()
    }

    async fn compute(&self, ms: u64) {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct ApiClient {
    name: &'static str,
}

static API_CLIENT_LOCAL: locals::LocalKey<ApiClient> = locals::create("apiClient");
static PROCESS_QUEUE: Queue = queue("process-queue").concurrency_limit(3);

fn register_middleware() {
    tasks::middleware("api-client", |MiddlewareArgs { next, .. }| async move {
        locals::set(&API_CLIENT_LOCAL, ApiClient { name: "test-client" });
        next.run().await
    });
}

fn child_task(probe: Arc<Probe>) -> Task<Item, ChildOutput> {
    task::<Item, ChildOutput>("child-task").run(move |item, _ctx| {
        let probe = probe.clone();
        async move {
            *probe.child_runs.lock().unwrap().entry(item.id).or_default() += 1;
            if item.gate {
                while !probe.gate_open.load(Ordering::SeqCst) {
                    let notified = probe.gate.notified();
                    if probe.gate_open.load(Ordering::SeqCst) {
                        break;
                    }
                    notified.await;
                }
            }
            Ok::<_, TaskError>(ChildOutput { result: format!("processed-{}", item.id) })
        }
    })
}

fn process_data(probe: Arc<Probe>, child: Task<Item, ChildOutput>) -> Task<Payload, Output> {
    let (p1, p2, p3, p4, p5, p6, p7) = (
        probe.clone(),
        probe.clone(),
        probe.clone(),
        probe.clone(),
        probe.clone(),
        probe.clone(),
        probe.clone(),
    );
    task::<Payload, Output>("process-data")
        .queue(&PROCESS_QUEUE)
        .machine(MachinePreset::Medium1x)
        .max_duration(Duration::from_secs(600))
        .retry(RetryOptions {
            max_attempts: 3,
            factor: 2.0,
            min_timeout_in_ms: 100,
            max_timeout_in_ms: 10_000,
            randomize: false,
        })
        .middleware(move |MiddlewareArgs { ctx, next, .. }| {
            let probe = p7.clone();
            async move {
                probe.event(&ctx.run.id, "middleware:before");
                let result = next.run().await;
                probe.event(&ctx.run.id, "middleware:after");
                probe.ends.lock().unwrap().push((ctx.run.id.clone(), Instant::now()));
                result
            }
        })
        .on_start_attempt(move |StartArgs { ctx, .. }| {
            let probe = p1.clone();
            async move {
                probe.attempts.lock().unwrap().push((ctx.run.id.clone(), ctx.attempt.number, Instant::now()));
            }
        })
        .on_start(move |StartArgs { payload, ctx }| {
            let probe = p2.clone();
            async move {
                probe.event(&ctx.run.id, "onStart");
                logger::info("Task started", json!({ "userId": payload.user_id }));
                metadata::set("status", "started").set("progress", 0);
            }
        })
        .on_success(move |SuccessArgs { output, ctx, .. }| {
            let probe = p3.clone();
            async move {
                probe.event(&ctx.run.id, "onSuccess");
                logger::info("Task completed", json!({ "result": *output }));
            }
        })
        .on_failure(move |FailureArgs { error, ctx, .. }| {
            let probe = p4.clone();
            async move {
                probe.event(&ctx.run.id, "onFailure");
                logger::error("Task failed", json!({ "error": error.message() }));
            }
        })
        .catch_error(|CatchErrorArgs { error, .. }| async move {
            CatchError::retry(error.code() != Some("FATAL_ERROR"))
        })
        .cleanup(move |StartArgs { ctx, .. }: StartArgs<Payload>| {
            let probe = p5.clone();
            async move {
                probe.event(&ctx.run.id, "cleanup");
                logger::debug("Cleanup completed", ());
            }
        })
        .run(move |payload, ctx| {
            let (probe, child) = (p6.clone(), child.clone());
            async move {
                let client = locals::get(&API_CLIENT_LOCAL);
                probe.event(&ctx.run.id, &format!("run:local={}", client.map_or("none", |c| c.name)));
                probe.compute(40).await;
                let mut results = Vec::new();
                for (i, item) in payload.data.iter().enumerate() {
                    let idempotency_key = idempotency_keys::create(format!("process-{}", item.id));
                    let result = child
                        .trigger_and_wait(
                            item,
                            TriggerOptions { idempotency_key: Some(idempotency_key), ..Default::default() },
                        )
                        .await?;
                    results.push(result.unwrap()?.result);
                    probe.compute(5).await;

                    let progress = (i + 1) as f64 / payload.data.len() as f64;
                    metadata::set("progress", progress).append("processed", item.id).increment("count", 1);
                    logger::info("Item processed", json!({ "itemId": item.id, "progress": progress }));
                    tracing::info!(item = item.id, "tracing event inside a run");
                }
                if ctx.attempt.number <= payload.fail_attempts {
                    return Err(if payload.fatal {
                        TaskError::with_code("FATAL_ERROR", "cannot go on")
                    } else {
                        TaskError::new(format!("transient failure on attempt {}", ctx.attempt.number))
                    });
                }
                Ok(Output { processed: payload.data.len(), user_id: payload.user_id, results })
            }
        })
}

async fn seed_harness() -> (Harness, Arc<Probe>) {
    static TRACING: std::sync::Once = std::sync::Once::new();
    TRACING.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(trigger_sdk::logger::layer());
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    register_middleware();
    let probe = Arc::new(Probe::default());
    let child = child_task(probe.clone());
    let parent = process_data(probe.clone(), child.clone());
    let harness = Harness::start(vec![parent.into_task(), child.into_task()], common::options()).await;
    (harness, probe)
}

fn payload(user: &str, ids: &[u64]) -> Payload {
    Payload {
        user_id: user.into(),
        data: ids.iter().map(|&id| Item { id, gate: false }).collect(),
        fail_attempts: 0,
        fatal: false,
    }
}

type ProcessData = Task<Payload, Output>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_limit_outputs_metadata_logs_and_backend_metadata() {
    let (h, probe) = seed_harness().await;
    trigger_sdk::configure(h.backend.clone());
    let mut ids = Vec::new();
    for n in 0..8u64 {
        let handle = tasks::trigger::<ProcessData>(
            "process-data",
            payload(&format!("user-{n}"), &[n * 10 + 1, n * 10 + 2]),
            TriggerOptions { metadata: Some(json!({ "source": "api" })), ..Default::default() },
        )
        .await
        .unwrap();
        ids.push((n, handle.id));
    }
    for (n, id) in &ids {
        let done = h.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
        assert_eq!(
            output(&done),
            json!({ "processed": 2, "userId": format!("user-{n}"),
                    "results": [format!("processed-{}", n * 10 + 1), format!("processed-{}", n * 10 + 2)] })
        );
        let m = common::metadata(&done);
        assert_eq!(m["source"], "api", "the backend trigger's metadata stays on the run");
        assert_eq!(m["progress"], json!(1.0));
        assert_eq!(m["processed"], json!([n * 10 + 1, n * 10 + 2]));
        assert_eq!(m["count"], json!(2));
        assert_eq!(m["status"], "started");

        let events = h.events(id).await;
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        for expected in ["Task started", "Item processed", "Task completed", "Cleanup completed"] {
            assert!(messages.contains(&expected), "{expected:?} missing from {messages:?}");
        }
        assert!(
            messages.contains(&"tracing event inside a run"),
            "the tracing layer attaches events to the run: {messages:?}"
        );
        let started = events.iter().find(|e| e.message == "Task started").unwrap();
        assert_eq!(started.attributes, json!({ "userId": format!("user-{n}") }));
        assert_eq!(started.level, "info");
    }
    let max = probe.max.load(Ordering::SeqCst);
    assert!(max <= 3, "at most 3 process-queue runs execute at once, saw {max}");
    assert_eq!(max, 3, "with 8 runs and room for 10 on the worker, the limit of 3 is reached");
    assert_eq!(probe.child_runs.lock().unwrap().len(), 16);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_hooks_middleware_locals_and_idempotent_children() {
    let (h, probe) = seed_harness().await;
    let engine = h.backend.engine().clone();
    let trigger = |p: Payload| {
        let backend = h.backend.clone();
        async move {
            let req = trigger_engine::TriggerRequest {
                task: "process-data".into(),
                payload: trigger_engine::Packet::json(&serde_json::to_value(p).unwrap()),
                options: Default::default(),
            };
            trigger_sdk::backend::Backend::trigger(&backend, req).await.unwrap().run.id
        }
    };

    // Always failing: exactly 3 attempts with growing delays (100 ms, then 200 ms).
    let failing = trigger(Payload { fail_attempts: 99, ..payload("u-fail", &[1]) }).await;
    // Failing once after its children ran: the retry finds them by idempotency key.
    let flaky = trigger(Payload { fail_attempts: 1, ..payload("u-flaky", &[7, 8]) }).await;
    // FATAL_ERROR: not retried.
    let fatal = trigger(Payload { fail_attempts: 99, fatal: true, ..payload("u-fatal", &[3]) }).await;

    let done = h.wait_final(&failing, Duration::from_secs(30)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    assert_eq!(done.run.attempt_number, 3);
    let starts: Vec<Instant> =
        probe.attempts.lock().unwrap().iter().filter(|(r, _, _)| *r == failing).map(|(_, _, t)| *t).collect();
    assert_eq!(starts.len(), 3);
    let ends: Vec<Instant> =
        probe.ends.lock().unwrap().iter().filter(|(r, _)| *r == failing).map(|(_, t)| *t).collect();
    assert_eq!(ends.len(), 3);
    // From the end of an attempt to the start of the next: the policy's delay (factor 2).
    let (gap1, gap2) = (starts[1] - ends[0], starts[2] - ends[1]);
    assert!(gap1 >= Duration::from_millis(100), "first retry waits the minimum: {gap1:?}");
    assert!(gap2 >= Duration::from_millis(200), "second retry waits twice as long: {gap2:?}");
    assert!(gap2 > gap1, "delays grow: {gap1:?} then {gap2:?}");
    let events = probe.events_of(&failing);
    let count = |e: &str| events.iter().filter(|x| *x == e).count();
    assert_eq!(count("onStart"), 1, "onStart runs on the first attempt only: {events:?}");
    assert_eq!(count("cleanup"), 3, "cleanup after every attempt");
    assert_eq!(count("middleware:before"), 3, "middleware around every attempt");
    assert_eq!(count("middleware:after"), 3);
    assert_eq!(count("run:local=test-client"), 3, "locals set by global middleware are visible in run");
    assert_eq!(count("onFailure"), 1, "onFailure once, at the end");
    assert_eq!(count("onSuccess"), 0);
    assert_eq!(events.first().map(String::as_str), Some("middleware:before"));
    // As in v4, the hooks that follow `run` (and cleanup) run inside the middleware.
    assert_eq!(events.last().map(String::as_str), Some("middleware:after"));
    assert_eq!(events[events.len() - 2], "cleanup");
    let failure_at = events.iter().position(|e| e == "onFailure").unwrap();
    assert!(
        events[failure_at..].iter().filter(|e| *e == "cleanup").count() == 1,
        "cleanup follows onFailure"
    );

    let done = h.wait_final(&flaky, Duration::from_secs(30)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(done.run.attempt_number, 2);
    assert_eq!(output(&done)["results"], json!(["processed-7", "processed-8"]));
    {
        let child_runs = probe.child_runs.lock().unwrap();
        assert_eq!(child_runs.get(&7), Some(&1), "the retry did not run child 7 again");
        assert_eq!(child_runs.get(&8), Some(&1), "the retry did not run child 8 again");
    }
    let children = engine.list_children(h.env(), &flaky).await.unwrap();
    assert_eq!(children.len(), 2, "one child run per item across both attempts");
    let events = probe.events_of(&flaky);
    assert_eq!(events.iter().filter(|e| *e == "onStart").count(), 1);
    assert_eq!(events.iter().filter(|e| *e == "cleanup").count(), 2);
    assert_eq!(events.iter().filter(|e| *e == "onSuccess").count(), 1);
    assert_eq!(events.iter().filter(|e| *e == "onFailure").count(), 0);

    let done = h.wait_final(&fatal, Duration::from_secs(30)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    assert_eq!(done.run.attempt_number, 1, "FATAL_ERROR is not retried");
    assert_eq!(done.run.error.as_ref().unwrap().message(), "cannot go on");
    assert_eq!(probe.events_of(&fatal).iter().filter(|e| *e == "onFailure").count(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_is_visible_while_the_run_executes() {
    let (h, probe) = seed_harness().await;
    let mut p = payload("u-live", &[1, 2]);
    p.data[1].gate = true;
    let req = trigger_engine::TriggerRequest {
        task: "process-data".into(),
        payload: trigger_engine::Packet::json(&serde_json::to_value(p).unwrap()),
        options: trigger_engine::TriggerOptions {
            metadata: Some(json!({ "source": "api" }).to_string()),
            ..Default::default()
        },
    };
    let id = trigger_sdk::backend::Backend::trigger(&h.backend, req).await.unwrap().run.id;

    // Child 2 is held, so the parent waits with half its items done: its metadata so far has
    // reached the engine.
    let live =
        h.wait_until(&id, Duration::from_secs(20), |d| common::metadata(d)["progress"] == json!(0.5)).await;
    assert!(!live.run.status.is_final());
    let m = common::metadata(&live);
    assert_eq!(m["processed"], json!([1]));
    assert_eq!(m["count"], json!(1));
    assert_eq!(m["source"], "api");
    let logs = h.events(&id).await;
    assert!(logs.iter().any(|e| e.message == "Item processed"), "logs arrive while the run executes");

    probe.gate_open.store(true, Ordering::SeqCst);
    probe.gate.notify_waiters();
    let done = h.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed);
    let m = common::metadata(&done);
    assert_eq!(
        (m["progress"].clone(), m["processed"].clone(), m["count"].clone()),
        (json!(1.0), json!([1, 2]), json!(2))
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payload_fails_without_retrying() {
    let (h, probe) = seed_harness().await;
    let req = trigger_engine::TriggerRequest {
        task: "process-data".into(),
        payload: trigger_engine::Packet::json(&json!({ "userId": 5 })),
        options: Default::default(),
    };
    let id = trigger_sdk::backend::Backend::trigger(&h.backend, req).await.unwrap().run.id;
    let done = h.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    assert_eq!(done.run.attempt_number, 1);
    assert_eq!(done.run.error.as_ref().and_then(|e| e.code()), Some(InternalErrorCode::TaskInputError));
    assert!(probe.events_of(&id).is_empty(), "no hook runs for a payload that does not parse");
    h.shutdown().await;
}
