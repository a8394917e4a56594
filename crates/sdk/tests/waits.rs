//! Waits on the engine's virtual clock: a keyed `wait::for_duration` is not waited again
//! by a retried attempt, `wait::until(..).throw_if_in_the_past()`, and token keys with a
//! TTL. Nothing fires until the test moves the clock, so a wait that should not happen
//! again would leave the run waiting for good.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use trigger_engine::config::HeartbeatTimeouts;
use trigger_engine::{
    Config, Engine, EngineOptions, EnvironmentType, ManualClock, Packet, RunDetails, RunStatus,
    TriggerOptions as EngineOptions2, TriggerRequest,
};
use trigger_sdk::backend::{Backend, Embedded};
use trigger_sdk::wait::CreateTokenOptions;
use trigger_sdk::{idempotency_keys, task, wait, Error, RetryOptions, TaskError, Worker, WorkerHandle};
use trigger_storage_sqlite::SqliteStore;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const HOUR: Duration = Duration::from_secs(3600);

struct Virtual {
    backend: Embedded,
    clock: ManualClock,
    worker: WorkerHandle,
}

impl Virtual {
    async fn start(tasks: Vec<trigger_sdk::RegisteredTask>) -> Virtual {
        let clock = ManualClock::new(T0);
        let store = SqliteStore::memory().unwrap();
        // The clock jumps an hour at once while the worker heartbeats in real time: leases
        // long enough that a jump never looks like a vanished worker.
        let day = 24 * 3_600_000;
        let config = Config {
            heartbeat: HeartbeatTimeouts {
                pending_executing: day,
                executing: day,
                executing_with_waitpoints: day,
                pending_cancel: day,
            },
            ..Config::default()
        };
        let engine = Engine::start(store, EngineOptions { clock: Arc::new(clock.clone()), config });
        let tenancy = engine.bootstrap("test", "waits").await.unwrap();
        let env = tenancy.environment(EnvironmentType::Development).unwrap().id.clone();
        let backend = Embedded::new(engine, env);
        let mut builder = Worker::builder().backend(backend.clone());
        for t in tasks {
            builder = builder.task(t);
        }
        let worker = builder.build().unwrap().start().await.unwrap();
        Virtual { backend, clock, worker }
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by.as_millis() as i64);
        self.backend.engine().fire_due_timers().await.unwrap();
    }

    async fn trigger(&self, task: &str) -> String {
        let req = TriggerRequest {
            task: task.into(),
            payload: Packet::json(&json!({})),
            options: EngineOptions2::default(),
        };
        self.backend.trigger(req).await.unwrap().run.id
    }

    /// Re-reads the run on every engine change until `pred` holds (real-time deadline).
    async fn until(&self, id: &str, pred: impl Fn(&RunDetails) -> bool) -> RunDetails {
        let mut changes = self.backend.engine().subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let details = self.backend.engine().get_run(self.backend.env_id(), id).await.unwrap();
            if pred(&details) {
                return details;
            }
            assert!(tokio::time::Instant::now() < deadline, "run {id} stuck: {:?}", details.run.status);
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await;
        }
    }
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// A task that waits an hour (keyed or not), then fails its first attempt.
fn napper(id: &str, keyed: bool, log: Arc<Mutex<Vec<String>>>) -> trigger_sdk::Task<Value, Value> {
    task::<Value, Value>(id)
        .retry(RetryOptions {
            max_attempts: 2,
            min_timeout_in_ms: 10,
            randomize: false,
            ..Default::default()
        })
        .run(move |_, ctx| {
            let log = log.clone();
            async move {
                let attempt = ctx.attempt.number;
                let nap = wait::for_duration(HOUR);
                let nap = if keyed {
                    nap.idempotency_key(idempotency_keys::create("nap")).idempotency_key_ttl(2 * HOUR)
                } else {
                    nap
                };
                nap.await?;
                log.lock().unwrap().push(format!("{}:woke:{attempt}", ctx.task.id));
                if attempt == 1 {
                    return Err(TaskError::new("fails after its nap"));
                }
                Ok::<_, TaskError>(json!(attempt))
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_attempt_does_not_wait_again_on_a_keyed_wait() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let v = Virtual::start(vec![
        trigger_sdk::IntoTask::into_task(napper("keyed", true, log.clone())),
        trigger_sdk::IntoTask::into_task(napper("unkeyed", false, log.clone())),
    ])
    .await;
    let keyed = v.trigger("keyed").await;
    let unkeyed = v.trigger("unkeyed").await;
    v.until(&keyed, |d| d.run.status == RunStatus::Waiting).await;
    v.until(&unkeyed, |d| d.run.status == RunStatus::Waiting).await;

    v.advance(HOUR).await;
    // Both first attempts fail after their nap; a retry the engine queues needs the clock
    // to pass its delay (one second here, far short of another hour).
    let retried = |d: &RunDetails| {
        d.run.status == RunStatus::Queued || d.run.attempt_number == 2 || d.run.status.is_final()
    };
    v.until(&keyed, retried).await;
    v.until(&unkeyed, retried).await;
    v.advance(Duration::from_secs(1)).await;
    // The keyed run's second attempt finds its wait complete and finishes on the spot.
    let done = v.until(&keyed, |d| d.run.status.is_final()).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(done.output.unwrap().data.as_deref(), Some("2"));
    // Without a key the retry waits its hour again.
    let again = v.until(&unkeyed, |d| d.run.attempt_number == 2 && d.run.status == RunStatus::Waiting).await;
    assert_eq!(again.run.status, RunStatus::Waiting);
    v.advance(HOUR).await;
    assert_eq!(v.until(&unkeyed, |d| d.run.status.is_final()).await.run.status, RunStatus::Completed);
    let mut events = log.lock().unwrap().clone();
    events.sort();
    assert_eq!(events, ["keyed:woke:1", "keyed:woke:2", "unkeyed:woke:1", "unkeyed:woke:2"]);
    v.worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn until_a_past_time_continues_or_fails_and_token_keys_expire() {
    let clock_task = task::<Value, Value>("past").run(|_, _| async move {
        // The engine's clock stands at T0: an hour earlier is in the past.
        wait::until(at(T0 - 3_600_000)).await?;
        let thrown = wait::until(at(T0 - 3_600_000)).throw_if_in_the_past().await;
        let future_ok = wait::until(at(T0 + 1)).throw_if_in_the_past().await;
        Ok::<_, TaskError>(json!({
            "thrown": matches!(thrown, Err(Error::DateInThePast)),
            "message": thrown.err().map(|e| e.to_string()),
            "future": future_ok.is_ok(),
        }))
    });
    let v = Virtual::start(vec![trigger_sdk::IntoTask::into_task(clock_task)]).await;
    let id = v.trigger("past").await;
    // The last wait (1 ms) needs the clock to move.
    v.until(&id, |d| d.run.status == RunStatus::Waiting).await;
    v.advance(Duration::from_millis(1)).await;
    let done = v.until(&id, |d| d.run.status.is_final()).await;
    let out: Value = serde_json::from_str(done.output.unwrap().data.as_deref().unwrap()).unwrap();
    assert_eq!(out, json!({ "thrown": true, "message": "Date is in the past", "future": true }));

    trigger_sdk::configure(v.backend.clone());
    let opts = || CreateTokenOptions {
        idempotency_key: Some("approve-42".into()),
        idempotency_key_ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let first = wait::create_token(opts()).await.unwrap();
    let again = wait::create_token(opts()).await.unwrap();
    assert!(!first.is_cached);
    assert!(again.is_cached);
    assert_eq!(again.id, first.id);
    v.advance(Duration::from_secs(60)).await;
    let fresh = wait::create_token(opts()).await.unwrap();
    assert!(!fresh.is_cached, "the key expired with its TTL");
    assert_ne!(fresh.id, first.id);
    v.worker.shutdown().await.unwrap();
}
