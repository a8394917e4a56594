//! Shared set-up for the engine's tests: an engine on in-memory SQLite with a virtual clock.

#![allow(dead_code)]

use std::sync::Arc;

use serde_json::json;
use trigger_engine::*;
use trigger_storage_sqlite::SqliteStore;

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub env: Environment,
}

pub fn config() -> Config {
    Config { retry_immediately_threshold_ms: 0, dev_default_ttl_ms: None, ..Config::default() }
}

pub async fn harness(tasks: Vec<TaskManifest>, queues: Vec<QueueManifest>) -> Harness {
    harness_with(config(), tasks, queues).await
}

pub async fn harness_with(config: Config, tasks: Vec<TaskManifest>, queues: Vec<QueueManifest>) -> Harness {
    let clock = ManualClock::new(T0);
    let engine = Engine::start(
        SqliteStore::memory().expect("memory store"),
        EngineOptions { config, clock: Arc::new(clock.clone()) },
    );
    let env = engine.create_environment("proj_test", EnvironmentType::Production, None).await.unwrap();
    engine
        .register_worker(
            &env.id,
            WorkerManifest { content_hash: "v1".into(), tasks, queues, ..Default::default() },
        )
        .await
        .unwrap();
    Harness { engine, clock, env }
}

pub fn task(slug: &str) -> TaskManifest {
    TaskManifest::new(slug)
}

pub fn retrying(slug: &str, max_attempts: u32) -> TaskManifest {
    TaskManifest {
        retry: Some(RetryOptions {
            max_attempts,
            factor: 2.0,
            min_timeout_in_ms: 1000,
            max_timeout_in_ms: 60_000,
            randomize: false,
        }),
        ..TaskManifest::new(slug)
    }
}

pub fn on_queue(slug: &str, queue: &str) -> TaskManifest {
    TaskManifest { queue_name: Some(queue.into()), ..TaskManifest::new(slug) }
}

pub fn request(task: &str) -> TriggerRequest {
    TriggerRequest {
        task: task.into(),
        payload: Packet::json(&json!({"n": 1})),
        options: TriggerOptions::default(),
    }
}

pub fn request_with(task: &str, options: TriggerOptions) -> TriggerRequest {
    TriggerRequest { options, ..request(task) }
}

impl Harness {
    pub async fn trigger(&self, task: &str) -> Run {
        self.engine.trigger(&self.env.id, request(task)).await.unwrap().run
    }

    pub async fn trigger_with(&self, task: &str, options: TriggerOptions) -> Triggered {
        self.engine.trigger(&self.env.id, request_with(task, options)).await.unwrap()
    }

    pub async fn dequeue(&self, max: u32) -> Vec<Dequeued> {
        self.engine.dequeue(&self.env.id, DequeueRequest::new("worker-a", max)).await.unwrap()
    }

    /// Claims and starts one specific run; returns the executing snapshot id.
    pub async fn claim_and_start(&self, run_id: &str) -> String {
        let claimed = self.dequeue(100).await;
        let d =
            claimed.iter().find(|d| d.run.id == run_id).unwrap_or_else(|| panic!("{run_id} not claimable"));
        self.engine.start_attempt(&self.env.id, run_id, &d.snapshot.id).await.unwrap().snapshot.id
    }

    pub async fn start(&self, d: &Dequeued) -> String {
        self.engine.start_attempt(&self.env.id, &d.run.id, &d.snapshot.id).await.unwrap().snapshot.id
    }

    pub async fn succeed(&self, run_id: &str, snapshot: &str, output: serde_json::Value) -> AttemptOutcome {
        self.engine
            .complete_attempt(
                &self.env.id,
                run_id,
                snapshot,
                Completion::success(Packet::json(&output)),
                None,
            )
            .await
            .unwrap()
    }

    pub async fn fail(&self, run_id: &str, snapshot: &str, message: &str) -> AttemptOutcome {
        let error = TaskRunError::BuiltIn {
            name: "Error".into(),
            message: message.into(),
            stack_trace: String::new(),
            causes: None,
        };
        self.engine
            .complete_attempt(&self.env.id, run_id, snapshot, Completion::failure(error), None)
            .await
            .unwrap()
    }

    pub async fn run(&self, id: &str) -> Run {
        self.engine.get_run(&self.env.id, id).await.unwrap().run
    }

    pub async fn snapshot(&self, id: &str) -> Snapshot {
        self.engine.latest_snapshot(&self.env.id, id).await.unwrap().1
    }

    /// Moves virtual time and fires what is due.
    pub async fn advance(&self, ms: i64) -> usize {
        self.clock.advance(ms);
        self.engine.fire_due_timers().await.unwrap()
    }

    pub async fn running(&self) -> u32 {
        self.engine.env_running(&self.env.id).await.unwrap()
    }
}
