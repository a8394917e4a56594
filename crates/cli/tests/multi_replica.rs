//! Three `trigger serve` processes on one PostgreSQL schema, four workers spread over them:
//! 5,000 runs on a queue with limit 5 and on 100 concurrency keys with limit 1. Every run
//! executes once, no limit is ever exceeded, and the concurrency counters return to zero.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trigger_engine::{Engine, EngineOptions, EnvironmentType, Packet, TriggerOptions, TriggerRequest};
use trigger_sdk::backend::{Backend, Http, SharedBackend};
use trigger_sdk::{queue, task, Queue, TaskError, Worker, WorkerOptions};
use trigger_storage_postgres::{PostgresOptions, PostgresStore};

const RUNS_PER_KIND: usize = 2_500;
const KEYS: usize = 100;

fn database_url() -> String {
    std::env::var("TRIGGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `trigger serve` and reads its listening URL (and, on first start, the dev key and
/// project ref) from its stderr.
fn start_replica(
    schema: &str,
    packets: &std::path::Path,
    first: bool,
) -> (Replica, HashMap<&'static str, String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trigger"))
        .args([
            "serve",
            "--database-url",
            &database_url(),
            "--schema",
            schema,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .arg("--packet-dir")
        .arg(packets)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trigger serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = HashMap::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("trigger.rs listening on ") {
                let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                let project =
                    rest.split("(project ").nth(1).unwrap_or_default().trim_end_matches(')').to_string();
                found.insert("url", url);
                found.insert("project", project);
            }
            if let Some(key) = line.strip_prefix("created the dev secret key (shown once): ") {
                found.insert("key", key.to_string());
            }
            if found.contains_key("url") && (!first || found.contains_key("key")) {
                let _ = tx.send(found.clone());
            }
        }
    });
    let found = rx.recv_timeout(Duration::from_secs(60)).expect("trigger serve printed its address");
    (Replica { child, url: found["url"].clone() }, found)
}

/// Three replicas on one schema, with the dev key and project the first one created.
struct Cluster {
    replicas: Vec<Replica>,
    key: String,
    project: String,
    urls: Vec<String>,
}

/// The first replica bootstraps the project; the others join it.
fn start_cluster(schema: &str, packets: &std::path::Path) -> Cluster {
    let (first, boot) = start_replica(schema, packets, true);
    let mut replicas = vec![first];
    for _ in 0..2 {
        replicas.push(start_replica(schema, packets, false).0);
    }
    Cluster {
        key: boot.get("key").expect("the first start created a dev key").clone(),
        project: boot["project"].clone(),
        urls: replicas.iter().map(|r| r.url.clone()).collect(),
        replicas,
    }
}

#[derive(Default)]
struct Observed {
    executions: Mutex<HashMap<u64, u32>>,
    queue_now: AtomicU32,
    queue_max: AtomicU32,
    keys_now: Mutex<HashMap<String, u32>>,
    keys_max: AtomicU32,
}

static LIMITED: Queue = queue("limited-5").concurrency_limit(5);
static PER_KEY: Queue = queue("per-key-1").concurrency_limit(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_four_workers_5000_runs_keep_every_guarantee() {
    let schema = format!("trigger_replicas_{}", std::process::id());
    let packets = std::env::temp_dir().join(format!("{schema}-packets"));
    let Cluster { replicas, key, project, urls } = start_cluster(&schema, &packets);

    let observed = Arc::new(Observed::default());
    let o = observed.clone();
    let limited = task::<Value, Value>("limited").queue(&LIMITED).run(move |payload, _| {
        let o = o.clone();
        async move {
            *o.executions.lock().unwrap().entry(payload["i"].as_u64().unwrap()).or_default() += 1;
            let now = o.queue_now.fetch_add(1, Ordering::SeqCst) + 1;
            o.queue_max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            o.queue_now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, TaskError>(json!(null))
        }
    });
    let o = observed.clone();
    let keyed = task::<Value, Value>("keyed").queue(&PER_KEY).run(move |payload, ctx| {
        let o = o.clone();
        async move {
            *o.executions.lock().unwrap().entry(payload["i"].as_u64().unwrap()).or_default() += 1;
            let key = payload["key"].as_str().unwrap().to_string();
            let now = {
                let mut keys = o.keys_now.lock().unwrap();
                let n = keys.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            o.keys_max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            *o.keys_now.lock().unwrap().get_mut(&key).unwrap() -= 1;
            let _ = ctx;
            Ok::<_, TaskError>(json!(null))
        }
    });

    let mut workers = Vec::new();
    for i in 0..4 {
        let backend: SharedBackend = Arc::new(Http::new(&urls[i % 3], &key, Some(project.clone())).unwrap());
        let worker = Worker::builder()
            .backend(backend)
            .options(WorkerOptions { concurrency: 16, ..WorkerOptions::default() })
            .task(&limited)
            .task(&keyed)
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        workers.push(worker);
    }

    // Trigger through all three replicas at once.
    let backends: Vec<Http> =
        urls.iter().map(|u| Http::new(u, &key, Some(project.clone())).unwrap()).collect();
    let mut triggers = tokio::task::JoinSet::new();
    for chunk in 0..50u64 {
        let backend = backends[chunk as usize % 3].clone();
        triggers.spawn(async move {
            for j in 0..(2 * RUNS_PER_KIND as u64 / 50) {
                let i = chunk * (2 * RUNS_PER_KIND as u64 / 50) + j;
                let (task, key) = if i % 2 == 0 {
                    ("limited", None)
                } else {
                    ("keyed", Some(format!("k{}", i % KEYS as u64)))
                };
                let request = TriggerRequest {
                    task: task.into(),
                    payload: Packet::json(&json!({ "i": i, "key": key })),
                    options: TriggerOptions { concurrency_key: key, ..Default::default() },
                };
                backend.trigger(request).await.expect("trigger accepted");
            }
        });
    }
    while let Some(r) = triggers.join_next().await {
        r.unwrap();
    }

    let total = 2 * RUNS_PER_KIND;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = observed.executions.lock().unwrap().len();
        if done >= total {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {total} runs executed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in workers {
        worker.shutdown().await.unwrap();
    }

    let executions = observed.executions.lock().unwrap().clone();
    assert_eq!(executions.len(), total);
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "runs executed more than once: {twice:?}");
    assert!(observed.queue_max.load(Ordering::SeqCst) <= 5, "queue limit 5 exceeded");
    assert!(observed.queue_max.load(Ordering::SeqCst) >= 2, "the queue ran runs in parallel");
    assert_eq!(observed.keys_max.load(Ordering::SeqCst), 1, "a concurrency key ran two runs at once");

    // Every run finished and every counter is back to zero, as the database sees it.
    let url = database_url();
    let options = PostgresOptions { schema: Some(schema.clone()), ..PostgresOptions::default() };
    let store =
        tokio::task::spawn_blocking(move || PostgresStore::connect(&url, options)).await.unwrap().unwrap();
    let engine = Engine::start(store, EngineOptions::default());
    let tenancy = engine.bootstrap("Default", "Default project").await.unwrap();
    let dev = tenancy.environment(EnvironmentType::Development).unwrap().id.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = engine.env_running(&dev).await.unwrap();
        let subqueues: Vec<_> =
            [LIMITED.name(), PER_KEY.name()].into_iter().map(|q| (q, engine.clone())).collect::<Vec<_>>();
        let mut busy = running;
        for (q, e) in subqueues {
            for s in e.list_subqueues(&dev, q).await.unwrap() {
                busy += s.running + s.ready_count;
            }
        }
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "counters did not return to zero (env running {running})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown().await;
    drop(replicas);
    let url = database_url();
    let schema_to_drop = schema.clone();
    tokio::task::spawn_blocking(move || PostgresStore::drop_schema(&url, &schema_to_drop))
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(packets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_across_three_replicas_makes_one_run() {
    let schema = format!("trigger_idem_{}", std::process::id());
    let packets = std::env::temp_dir().join(format!("{schema}-packets"));
    let Cluster { replicas, key, project, urls } = start_cluster(&schema, &packets);

    // A task must be registered for triggers to be accepted.
    let backend = Http::new(&urls[0], &key, Some(project.clone())).unwrap();
    backend
        .register_worker(trigger_engine::WorkerManifest {
            content_hash: "idem".into(),
            tasks: vec![trigger_engine::TaskManifest::new("once")],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut triggers = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        let backend = Http::new(&urls[i % 3], &key, Some(project.clone())).unwrap();
        triggers.spawn(async move {
            let request = TriggerRequest {
                task: "once".into(),
                payload: Packet::json(&json!({ "i": i })),
                options: TriggerOptions { idempotency_key: Some("the-one-key".into()), ..Default::default() },
            };
            backend.trigger(request).await.expect("trigger accepted").run.id
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(id) = triggers.join_next().await {
        ids.insert(id.unwrap());
    }
    assert_eq!(ids.len(), 1, "every response names the same run: {ids:?}");

    drop(replicas);
    let url = database_url();
    tokio::task::spawn_blocking(move || PostgresStore::drop_schema(&url, &schema)).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(packets);
}
