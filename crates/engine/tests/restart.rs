//! Durability across restarts: what was acknowledged survives, and timers armed before a
//! restart fire once after it.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use trigger_engine::*;
use trigger_storage_sqlite::SqliteStore;

/// Where the test's data outlives its engines: a SQLite file, or a PostgreSQL schema.
enum Place {
    File(std::path::PathBuf),
    Schema(String),
}

impl Place {
    fn new(name: &str) -> Self {
        match Backend::current() {
            Backend::Sqlite => Place::File(temp_db(name)),
            Backend::Postgres => Place::Schema(unique_schema(name)),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        match self {
            Place::File(path) => {
                let _ = std::fs::remove_dir_all(path.parent().unwrap());
            }
            Place::Schema(schema) => drop(DropSchema(schema.clone())),
        }
    }
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("trigger-engine-{name}-{}-{}", std::process::id(), T0));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("trigger.db")
}

fn start(place: &Place, clock: &ManualClock) -> Engine {
    let store = match place {
        Place::File(path) => TestStore::Sqlite(Box::new(SqliteStore::open(path).unwrap())),
        Place::Schema(schema) => TestStore::Postgres(Box::new(postgres_store(schema)), None),
    };
    Engine::start(store, EngineOptions { config: config(), clock: Arc::new(clock.clone()) })
}

on_every_backend! {
async fn acknowledged_runs_and_armed_timers_survive_a_restart_and_fire_once() {
    let path = Place::new("restart");
    let clock = ManualClock::new(T0);
    let engine = start(&path, &clock);
    let env = engine.create_environment("proj", EnvironmentType::Production, None).await.unwrap();
    engine
        .register_worker(
            &env.id,
            WorkerManifest { content_hash: "v1".into(), tasks: vec![task("t")], ..Default::default() },
        )
        .await
        .unwrap();
    let delayed = engine
        .trigger(
            &env.id,
            request_with("t", TriggerOptions { delay_until: Some(T0 + 10_000), ..Default::default() }),
        )
        .await
        .unwrap()
        .run;
    let queued = engine.trigger(&env.id, request("t")).await.unwrap().run;
    let claimed = engine.dequeue(&env.id, DequeueRequest::new("w", 1)).await.unwrap();
    assert_eq!(claimed[0].run.id, queued.id);
    let started = engine.start_attempt(&env.id, &queued.id, &claimed[0].snapshot.id).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    let engine = start(&path, &clock);
    assert_eq!(engine.get_run(&env.id, &delayed.id).await.unwrap().run.status, RunStatus::Delayed);
    clock.advance(10_000);
    assert_eq!(engine.fire_due_timers().await.unwrap(), 1);
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0, "a timer fires once");
    assert_eq!(engine.get_run(&env.id, &delayed.id).await.unwrap().run.status, RunStatus::Queued);

    // The executing run's lease was persisted too: the lost worker is detected.
    clock.advance(Config::default().heartbeat.executing);
    engine.fire_due_timers().await.unwrap();
    let lost = engine.get_run(&env.id, &queued.id).await.unwrap().run;
    assert_eq!(lost.status, RunStatus::Failed, "no retry policy: the stalled attempt fails the run");
    assert_ne!(lost.snapshot_id, started.snapshot.id);
    let done = engine
        .complete_attempt(
            &env.id,
            &queued.id,
            &started.snapshot.id,
            Completion::success(Packet::json(&json!(1))),
            None,
        )
        .await;
    assert!(matches!(done, Err(Error::StaleSnapshot { .. })));
    engine.shutdown().await;
}
}
