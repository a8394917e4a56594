//! A quick in-process throughput probe: trigger N runs concurrently, then drain them with
//! one worker loop (a claim that starts the attempts → complete), as the SDK's worker does. Not a benchmark suite; see docs/benchmarks.md.
//!
//! `cargo run --release -p trigger-engine --example throughput -- 20000` on a SQLite file;
//! add `postgres` to run on PostgreSQL (`TRIGGER_TEST_DATABASE_URL`, a fresh schema that is
//! dropped afterwards).

use std::sync::Arc;
use std::time::Instant;

use trigger_engine::*;
use trigger_storage_postgres::{PostgresOptions, PostgresStore};
use trigger_storage_sqlite::SqliteStore;

/// As the `trigger` binary does, so that the counts match what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let on_postgres = std::env::args().nth(2).as_deref() == Some("postgres");
    let options = EngineOptions { clock: Arc::new(SystemClock), config: Config::default() };
    let dir = std::env::temp_dir().join(format!("trigger-throughput-{}", std::process::id()));
    let url = std::env::var("TRIGGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("trigger_throughput_{}", std::process::id());
    let engine = if on_postgres {
        let pg = PostgresOptions { schema: Some(schema.clone()), ..PostgresOptions::default() };
        Engine::start(PostgresStore::connect(&url, pg).unwrap(), options)
    } else {
        std::fs::create_dir_all(&dir).unwrap();
        Engine::start(SqliteStore::open(dir.join("t.db")).unwrap(), options)
    };
    let env = engine.create_environment("p", EnvironmentType::Production, Some(1000)).await.unwrap();
    engine
        .register_worker(
            &env.id,
            WorkerManifest {
                content_hash: "x".into(),
                tasks: vec![TaskManifest::new("noop")],
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let t0 = Instant::now();
    let mut handles = Vec::new();
    for chunk in 0..(n / 500).max(1) {
        let engine = engine.clone();
        let env = env.id.clone();
        handles.push(tokio::spawn(async move {
            let calls: Vec<_> = (0..500)
                .map(|i| {
                    let engine = engine.clone();
                    let env = env.clone();
                    async move {
                        let req = TriggerRequest {
                            task: "noop".into(),
                            payload: Packet::json(&serde_json::json!({"i": chunk * 500 + i})),
                            options: TriggerOptions { ttl_ms: Some(0), ..Default::default() },
                        };
                        engine.trigger(&env, req).await.unwrap();
                    }
                })
                .collect();
            for c in calls {
                c.await;
            }
        }));
    }
    // The spawned tasks await sequentially inside; run many tasks in parallel instead.
    for h in handles {
        h.await.unwrap();
    }
    let trigger_secs = t0.elapsed().as_secs_f64();
    println!("triggered {n} in {trigger_secs:.2}s = {:.0} runs/s", n as f64 / trigger_secs);

    let t1 = Instant::now();
    let mut done = 0;
    while done < n {
        let request = DequeueRequest { start_attempts: true, ..DequeueRequest::new("w", 200) };
        let claimed = engine.dequeue(&env.id, request).await.unwrap();
        let mut starts = Vec::new();
        for d in &claimed {
            let engine = engine.clone();
            let (env, run) = (env.id.clone(), d.run.id.clone());
            let s = d.started.clone().expect("started with the claim");
            starts.push(tokio::spawn(async move {
                engine
                    .complete_attempt(
                        &env,
                        &run,
                        &s.snapshot.id,
                        Completion::success(Packet::default()),
                        None,
                    )
                    .await
                    .unwrap();
            }));
        }
        for s in starts {
            s.await.unwrap();
        }
        done += claimed.len();
    }
    let drain_secs = t1.elapsed().as_secs_f64();
    println!("drained {n} in {drain_secs:.2}s = {:.0} runs/s", n as f64 / drain_secs);
    engine.shutdown().await;
    if on_postgres {
        PostgresStore::drop_schema(&url, &schema).unwrap();
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}
