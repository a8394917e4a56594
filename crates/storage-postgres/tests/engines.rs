//! Two engines (two writer threads, two connections, one schema) as two replicas would run
//! them: racing to claim runs and to fire the same timers, and waking each other through
//! `LISTEN`/`NOTIFY`.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{backend_pids, terminate, url_named, Schemas};
use trigger_engine::*;
use trigger_storage_postgres::{PostgresOptions, PostgresStore};

const T0: i64 = 1_767_225_600_000;

fn engine(url: &str, schema: &str, clock: &ManualClock) -> Engine {
    let options = PostgresOptions { schema: Some(schema.to_string()), ..PostgresOptions::default() };
    let store = PostgresStore::connect(url, options).expect("connect");
    let config = Config { retry_immediately_threshold_ms: 0, dev_default_ttl_ms: None, ..Config::default() };
    Engine::start(store, EngineOptions { config, clock: Arc::new(clock.clone()) })
}

struct Pair {
    a: Engine,
    b: Engine,
    clock: ManualClock,
    env: Environment,
    // Dropped last: the engines close their connections first.
    _schemas: Schemas,
}

async fn pair(env_limit: u32, tasks: Vec<TaskManifest>, queues: Vec<QueueManifest>) -> Pair {
    let schemas = Schemas::new("engines");
    let schema = schemas.create();
    let clock = ManualClock::new(T0);
    // Sessions named after the test, so that one test can cut its own connections.
    let url = url_named(&schemas.application_name());
    let a = engine(&url, &schema, &clock);
    let b = engine(&url, &schema, &clock);
    let env = a.create_environment("proj_two", EnvironmentType::Production, Some(env_limit)).await.unwrap();
    a.register_worker(
        &env.id,
        WorkerManifest { content_hash: "v1".into(), tasks, queues, ..Default::default() },
    )
    .await
    .unwrap();
    Pair { a, b, clock, env, _schemas: schemas }
}

fn trigger_request(task: &str, options: TriggerOptions) -> TriggerRequest {
    TriggerRequest { task: task.into(), payload: Packet::json(&json!({"n": 1})), options }
}

/// Both engines claim concurrently, in rounds: within a round nothing completes, so the runs
/// held are exactly the slots taken, and they must fit every limit. Then a random part of
/// them completes (on either engine) and the next round claims again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_claim_each_run_once_within_every_limit() {
    const ENV_LIMIT: u32 = 6;
    let p = pair(
        ENV_LIMIT,
        vec![
            TaskManifest { queue_name: Some("q3".into()), ..TaskManifest::new("a") },
            TaskManifest { queue_name: Some("keyed".into()), ..TaskManifest::new("k") },
            TaskManifest::new("free"),
        ],
        vec![
            QueueManifest { name: "q3".into(), concurrency_limit: Some(3) },
            QueueManifest { name: "keyed".into(), concurrency_limit: Some(1) },
        ],
    )
    .await;
    let mut all = HashSet::new();
    for i in 0..120 {
        let engine = if i % 2 == 0 { &p.a } else { &p.b };
        let (task, key) = match i % 3 {
            0 => ("a", None),
            1 => ("k", Some(format!("user-{}", i % 4))),
            _ => ("free", None),
        };
        let options = TriggerOptions { concurrency_key: key, ..Default::default() };
        all.insert(engine.trigger(&p.env.id, trigger_request(task, options)).await.unwrap().run.id);
    }

    let mut held: HashMap<String, (usize, Dequeued)> = HashMap::new();
    let mut done = HashSet::new();
    let mut rounds = 0;
    while done.len() < all.len() {
        rounds += 1;
        assert!(rounds < 200, "no progress: {} of {} done", done.len(), all.len());
        // Claim: 8 concurrent dequeuers per engine until both come back empty.
        loop {
            let mut calls = Vec::new();
            for n in 0..16 {
                let side = n % 2;
                let engine = if side == 0 { p.a.clone() } else { p.b.clone() };
                let env = p.env.id.clone();
                calls.push(tokio::spawn(async move {
                    let got = engine.dequeue(&env, DequeueRequest::new(format!("w{n}"), 2)).await.unwrap();
                    (side, got)
                }));
            }
            let mut claimed = 0;
            for call in calls {
                let (side, got) = call.await.unwrap();
                for d in got {
                    claimed += 1;
                    assert!(!done.contains(&d.run.id), "{} claimed after it finished", d.run.id);
                    let previous = held.insert(d.run.id.clone(), (side, d));
                    assert!(previous.is_none(), "a run was claimed twice");
                }
            }
            if claimed == 0 {
                break;
            }
        }
        // Every limit holds, and the engines' counters agree with what is held.
        let per_queue = |q: &str| held.values().filter(|(_, d)| d.run.queue == q).count();
        assert!(held.len() <= ENV_LIMIT as usize, "environment limit: {} held", held.len());
        assert!(per_queue("q3") <= 3, "queue limit: {}", per_queue("q3"));
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (_, d) in held.values().filter(|(_, d)| d.run.queue == "keyed") {
            *keys.entry(d.run.concurrency_key.clone().unwrap()).or_default() += 1;
        }
        assert!(keys.values().all(|n| *n <= 1), "one per concurrency key: {keys:?}");
        assert_eq!(p.a.env_running(&p.env.id).await.unwrap() as usize, held.len());
        assert_eq!(p.b.env_running(&p.env.id).await.unwrap() as usize, held.len());
        assert!(!held.is_empty() || done.len() == all.len(), "work left but nothing claimable");

        // Finish about two thirds of the held runs, on the engine that did not claim them.
        let finishing: Vec<String> = held
            .keys()
            .enumerate()
            .filter(|(i, _)| i % 3 != 2 || held.len() < 3)
            .map(|(_, id)| id.clone())
            .collect();
        let mut calls = Vec::new();
        for id in finishing {
            let (side, d) = held.remove(&id).unwrap();
            let other = if side == 0 { p.b.clone() } else { p.a.clone() };
            let env = p.env.id.clone();
            calls.push(tokio::spawn(async move {
                let started = other.start_attempt(&env, &d.run.id, &d.snapshot.id).await.unwrap();
                let out = other
                    .complete_attempt(
                        &env,
                        &d.run.id,
                        &started.snapshot.id,
                        Completion::success(Packet::json(&json!("ok"))),
                        None,
                    )
                    .await
                    .unwrap();
                assert_eq!(out.run.status, RunStatus::Completed);
                d.run.id
            }));
        }
        for call in calls {
            assert!(done.insert(call.await.unwrap()), "finished twice");
        }
    }
    assert_eq!(done, all, "every run completed exactly once");
    assert_eq!(p.a.env_running(&p.env.id).await.unwrap(), 0, "counters back to zero");
    for queue in ["q3", "keyed", "task/free"] {
        for sq in p.b.list_subqueues(&p.env.id, queue).await.unwrap() {
            assert_eq!((sq.ready_count, sq.running), (0, 0), "{sq:?}");
        }
    }
    eprintln!("two engines: {} runs in {rounds} rounds", all.len());
}

/// Both engines fire due timers at once: each timer fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_fire_each_timer_once() {
    let p = pair(100, vec![TaskManifest::new("later")], vec![]).await;
    let mut delayed = Vec::new();
    for i in 0..150 {
        let engine = if i % 2 == 0 { &p.a } else { &p.b };
        let options = TriggerOptions { delay_until: Some(T0 + 10_000 + i), ..Default::default() };
        let run = engine.trigger(&p.env.id, trigger_request("later", options)).await.unwrap().run;
        assert_eq!(run.status, RunStatus::Delayed);
        delayed.push(run.id);
    }
    p.clock.advance(20_000);
    let (fa, fb) = tokio::join!(
        async {
            let mut n = 0;
            for _ in 0..3 {
                n += p.a.fire_due_timers().await.unwrap();
            }
            n
        },
        async {
            let mut n = 0;
            for _ in 0..3 {
                n += p.b.fire_due_timers().await.unwrap();
            }
            n
        }
    );
    assert_eq!(fa + fb, delayed.len(), "fired once each (a: {fa}, b: {fb})");
    assert_eq!(p.a.next_timer_at().await.unwrap(), None);
    for id in &delayed {
        let run = p.b.get_run(&p.env.id, id).await.unwrap().run;
        assert_eq!(run.status, RunStatus::Queued, "{id}");
        let log = p.a.snapshots_since(&p.env.id, id, None).await.unwrap();
        assert_eq!(log.len(), 2, "one DELAYED and one QUEUED snapshot: {log:?}");
    }
    eprintln!("timers fired: a {fa}, b {fb}");
}

/// A trigger on one engine wakes a long poll on the other, and a waitpoint completed on one
/// reaches the other's change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_on_one_engine_wakes_a_long_poll_on_the_other() {
    let p = pair(10, vec![TaskManifest::new("ping")], vec![]).await;
    let waiting = {
        let (b, env) = (p.b.clone(), p.env.id.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let got =
                b.dequeue_wait(&env, DequeueRequest::new("w-b", 1), Duration::from_secs(20)).await.unwrap();
            (got, started.elapsed())
        })
    };
    // Let the poll find nothing and go to sleep first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let triggered_at = Instant::now();
    let run = p.a.trigger(&p.env.id, trigger_request("ping", TriggerOptions::default())).await.unwrap().run;
    let (got, waited) = waiting.await.unwrap();
    let latency = triggered_at.elapsed();
    assert_eq!(got.len(), 1, "woken with the run");
    assert_eq!(got[0].run.id, run.id);
    assert!(waited >= Duration::from_millis(250), "it did wait: {waited:?}");
    assert!(latency < Duration::from_secs(2), "woken promptly: {latency:?}");
    eprintln!("cross-engine wake-up: {latency:?} from trigger on A to the claim on B");

    // The parent executes on B's worker and waits for a token; A completes the token.
    let mut feed = p.b.subscribe();
    let d = &got[0];
    let started = p.b.start_attempt(&p.env.id, &d.run.id, &d.snapshot.id).await.unwrap();
    let (token, _) = p.b.create_token(&p.env.id, TokenOptions::default()).await.unwrap();
    p.b.wait_for_token(&p.env.id, &d.run.id, Some(started.snapshot.id.clone()), &token.id).await.unwrap();
    let completed_at = Instant::now();
    p.a.complete_token(Some(&p.env.id), &token.id, Packet::json(&json!({"ok": true}))).await.unwrap();
    let resumed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let change = feed.recv().await.unwrap();
            if change.run_id == d.run.id && change.execution_status == ExecutionStatus::Executing {
                return change;
            }
        }
    })
    .await
    .expect("B's change feed hears that A resumed the run");
    assert_eq!(resumed.worker_instance.as_deref(), Some("w-b"));
    eprintln!("cross-engine run change: {:?}", completed_at.elapsed());
}

/// The database drops every connection (as in a restart): the call in flight fails with
/// `Unavailable` or succeeds on a new connection, the next ones succeed, and the listeners
/// reconnect so that wake-ups cross replicas again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_recover_when_the_database_drops_their_connections() {
    let p = pair(10, vec![TaskManifest::new("ping")], vec![]).await;
    p.a.trigger(&p.env.id, trigger_request("ping", TriggerOptions::default())).await.unwrap();
    let pids = backend_pids(&p._schemas.application_name());
    assert_eq!(pids.len(), 4, "two stores and two listeners: {pids:?}");
    terminate(&pids);

    for engine in [&p.a, &p.b] {
        match engine.trigger(&p.env.id, trigger_request("ping", TriggerOptions::default())).await {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(&e, Error::Storage(s) if s.kind == trigger_engine::storage::ErrorKind::Unavailable),
                "{e}"
            ),
        }
        engine
            .trigger(&p.env.id, trigger_request("ping", TriggerOptions::default()))
            .await
            .expect("reconnected");
    }
    let claimed = p.b.dequeue(&p.env.id, DequeueRequest::new("w", 10)).await.unwrap();
    assert!(claimed.len() >= 3, "the runs triggered before and after are there: {}", claimed.len());

    // Listeners are back within their first backoff steps.
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_pids(&p._schemas.application_name()).len() < 4 {
        assert!(Instant::now() < deadline, "the listeners reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = {
        let (b, env) = (p.b.clone(), p.env.id.clone());
        tokio::spawn(async move {
            b.dequeue_wait(&env, DequeueRequest::new("w", 1), Duration::from_secs(20)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let triggered_at = Instant::now();
    let run = p.a.trigger(&p.env.id, trigger_request("ping", TriggerOptions::default())).await.unwrap().run;
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.first().map(|d| d.run.id.as_str()), Some(run.id.as_str()));
    assert!(triggered_at.elapsed() < Duration::from_secs(2), "woken promptly: {:?}", triggered_at.elapsed());
}
