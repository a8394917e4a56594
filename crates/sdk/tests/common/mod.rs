//! Shared harness: an in-memory embedded engine, a real worker, real time, and waits that
//! are bounded by deadlines and driven by the engine's change feed.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use trigger_engine::{RunDetails, RunEvent};
use trigger_sdk::backend::Embedded;
use trigger_sdk::{IntoTask, Worker, WorkerHandle, WorkerOptions};

pub struct Harness {
    pub backend: Embedded,
    pub worker: Option<WorkerHandle>,
}

pub fn options() -> WorkerOptions {
    WorkerOptions {
        concurrency: 10,
        flush_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        ..WorkerOptions::default()
    }
}

impl Harness {
    pub async fn start(tasks: Vec<trigger_sdk::RegisteredTask>, options: WorkerOptions) -> Harness {
        let backend = Embedded::memory().await.unwrap();
        let mut builder = Worker::builder().backend(backend.clone()).options(options);
        for t in tasks {
            builder = builder.task(Wrapped(t));
        }
        let worker = builder.build().unwrap().start().await.unwrap();
        Harness { backend, worker: Some(worker) }
    }

    pub fn env(&self) -> &str {
        self.backend.env_id()
    }

    pub async fn run(&self, id: &str) -> RunDetails {
        self.backend.engine().get_run(self.env(), id).await.unwrap()
    }

    /// Waits until `pred` holds for the run, re-reading it on every change of the engine.
    pub async fn wait_until(
        &self,
        id: &str,
        deadline: Duration,
        pred: impl Fn(&RunDetails) -> bool,
    ) -> RunDetails {
        let mut changes = self.backend.engine().subscribe();
        let end = Instant::now() + deadline;
        loop {
            let details = self.run(id).await;
            if pred(&details) {
                return details;
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                let history = self.backend.engine().snapshots_since(self.env(), id, None).await.unwrap();
                let history: Vec<String> = history
                    .iter()
                    .map(|s| {
                        format!("{} (attempt {}): {}", s.execution_status, s.attempt_number, s.description)
                    })
                    .collect();
                panic!(
                    "deadline passed waiting for run {id}: {:?} metadata {:?}\nsnapshots: {history:#?}",
                    details.run.status, details.run.metadata
                );
            };
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), changes.recv()).await;
        }
    }

    pub async fn wait_final(&self, id: &str, deadline: Duration) -> RunDetails {
        self.wait_until(id, deadline, |d| d.run.status.is_final()).await
    }

    pub async fn events(&self, id: &str) -> Vec<RunEvent> {
        self.backend.engine().list_events(self.env(), id, 0, 1000).await.unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await.unwrap();
        }
    }
}

/// Lets an already-erased task go through `WorkerBuilder::task`.
struct Wrapped(trigger_sdk::RegisteredTask);

impl IntoTask for Wrapped {
    fn into_task(self) -> trigger_sdk::RegisteredTask {
        self.0
    }
}

pub fn metadata(d: &RunDetails) -> serde_json::Value {
    d.run.metadata.as_deref().map(|m| serde_json::from_str(m).unwrap()).unwrap_or_default()
}

pub fn output(d: &RunDetails) -> serde_json::Value {
    d.output
        .as_ref()
        .and_then(|o| o.data.as_deref())
        .map(|o| serde_json::from_str(o).unwrap())
        .unwrap_or_default()
}
