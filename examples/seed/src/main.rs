//! The seed's Trigger.dev v4 example in Rust: `process-data` on a shared queue with every
//! hook, a global middleware that puts an API client in `locals`, an idempotent
//! `child-task` per item, metadata progress and logs — then a backend trigger with
//! `metadata: { source: "api" }`, on the embedded engine (SQLite under `./.trigger/`).
//!
//! Run it with `cargo run -p trigger-example-seed`. With `TRIGGER_API_URL`,
//! `TRIGGER_SECRET_KEY` and `TRIGGER_PROJECT_REF` set it runs against a server instead.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trigger_sdk::backend::{Backend, Embedded, Http, SharedBackend};
use trigger_sdk::hooks::{CatchErrorArgs, FailureArgs, MiddlewareArgs, StartArgs, SuccessArgs};
use trigger_sdk::{
    idempotency_keys, locals, logger, metadata, queue, runs, task, tasks, CatchError, MachinePreset, Queue,
    RetryOptions, Task, TaskError, TriggerOptions, Worker,
};

/// Stands in for the seed's `new ApiClient()`.
#[derive(Debug, Clone)]
struct ApiClient {
    base_url: String,
}

impl ApiClient {
    fn new() -> Self {
        ApiClient { base_url: "https://api.example.com".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessDataPayload {
    user_id: String,
    data: Vec<Item>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessDataOutput {
    processed: usize,
    user_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildOutput {
    result: String,
}

// Queue definition
static PROCESS_QUEUE: Queue = queue("process-queue").concurrency_limit(3);

// Locals for shared data
static API_CLIENT_LOCAL: locals::LocalKey<ApiClient> = locals::create("apiClient");

// Global middleware
fn register_middleware() {
    tasks::middleware("api-client", |MiddlewareArgs { next, .. }| async move {
        locals::set(&API_CLIENT_LOCAL, ApiClient::new());
        next.run().await
    });
}

type ProcessData = Task<ProcessDataPayload, ProcessDataOutput>;

// Comprehensive task with all features
static PROCESS_DATA: LazyLock<ProcessData> = LazyLock::new(|| {
    task::<ProcessDataPayload, ProcessDataOutput>("process-data")
        .queue(&PROCESS_QUEUE)
        .machine(MachinePreset::Medium1x)
        .max_duration(Duration::from_secs(600))
        .retry(RetryOptions { max_attempts: 3, factor: 2.0, min_timeout_in_ms: 1000, ..Default::default() })
        .on_start(|StartArgs { payload, .. }| async move {
            logger::info("Task started", json!({ "userId": payload.user_id }));
            metadata::set("status", "started").set("progress", 0);
        })
        .on_success(|SuccessArgs { output, .. }| async move {
            logger::info("Task completed", json!({ "result": *output }));
        })
        .on_failure(|FailureArgs { error, .. }| async move {
            logger::error("Task failed", json!({ "error": error.message() }));
        })
        .catch_error(|CatchErrorArgs { error, .. }| async move {
            CatchError::retry(error.code() != Some("FATAL_ERROR"))
        })
        .cleanup(|_: StartArgs<ProcessDataPayload>| async move {
            logger::debug("Cleanup completed", ());
        })
        .run(|payload, _ctx| async move {
            let client = locals::get(&API_CLIENT_LOCAL);
            logger::debug("Using API client", json!({ "baseUrl": client.map(|c| c.base_url) }));

            // Process data with progress tracking
            for (i, item) in payload.data.iter().enumerate() {
                // Idempotent child task
                let idempotency_key = idempotency_keys::create(format!("process-{}", item.id));
                let result = CHILD_TASK
                    .trigger_and_wait(
                        item,
                        TriggerOptions { idempotency_key: Some(idempotency_key), ..Default::default() },
                    )
                    .await?;
                let output = result.unwrap()?;

                // Update metadata
                let progress = (i + 1) as f64 / payload.data.len() as f64;
                metadata::set("progress", progress).append("processed", &item.id).increment("count", 1);

                logger::info(
                    "Item processed",
                    json!({ "itemId": item.id, "progress": progress, "result": output.result }),
                );
            }

            Ok::<_, TaskError>(ProcessDataOutput { processed: payload.data.len(), user_id: payload.user_id })
        })
});

static CHILD_TASK: LazyLock<Task<Item, ChildOutput>> = LazyLock::new(|| {
    task::<Item, ChildOutput>("child-task").run(|item, _ctx| async move {
        Ok::<_, TaskError>(ChildOutput { result: format!("processed-{}", item.id) })
    })
});

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The embedded engine by default; a server when TRIGGER_SECRET_KEY is set.
    let embedded = match std::env::var_os("TRIGGER_SECRET_KEY") {
        None => Some(Embedded::open(".trigger/trigger.db").await?),
        Some(_) => None,
    };
    let backend: SharedBackend = match &embedded {
        Some(e) => Arc::new(e.clone()),
        None => Arc::new(Http::from_env()?),
    };
    register_middleware();
    let worker = Worker::builder()
        .backend(backend.clone())
        .task(&PROCESS_DATA)
        .task(&CHILD_TASK)
        .build()?
        .start()
        .await?;
    match &embedded {
        Some(_) => eprintln!("worker started on the embedded engine (.trigger/trigger.db)"),
        None => eprintln!("worker started against {}", std::env::var("TRIGGER_API_URL").unwrap_or_default()),
    }

    // Trigger from backend
    let handle = tasks::trigger::<ProcessData>(
        "process-data",
        ProcessDataPayload {
            user_id: "123".into(),
            data: vec![Item { id: json!(1) }, Item { id: json!(2) }],
        },
        TriggerOptions { metadata: Some(json!({ "source": "api" })), ..Default::default() },
    )
    .await?;
    eprintln!("triggered {} (task {})", handle.id, handle.task_identifier);

    // Follow the run through the backend's change feed.
    let mut changes = backend.subscribe();
    let mut last = String::new();
    let run = loop {
        let details = runs::retrieve(&handle.id).await?;
        let line =
            format!("{} metadata={}", details.run.status, details.run.metadata.clone().unwrap_or_default());
        if line != last {
            eprintln!("  {line}");
            last = line;
        }
        if details.run.status.is_final() {
            break details;
        }
        match &mut changes {
            Some(rx) => drop(tokio::time::timeout(Duration::from_secs(2), rx.recv()).await),
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };

    if let Some(embedded) = &embedded {
        let events = embedded.engine().list_events(embedded.env_id(), &handle.id, 0, 100).await?;
        eprintln!("logs:");
        for e in &events {
            eprintln!("  [{}] {} {}", e.level, e.message, e.attributes);
        }
    }
    worker.shutdown().await?;

    let output: Value =
        run.output.and_then(|o| o.data).map(|d| serde_json::from_str(&d)).transpose()?.unwrap_or_default();
    let metadata: Value =
        run.run.metadata.as_deref().map(serde_json::from_str).transpose()?.unwrap_or_default();
    let mut serving = false;
    match &embedded {
        // The embedded engine serves its own dashboard while the example runs.
        Some(embedded) => match embedded.serve_dashboard("127.0.0.1:0").await {
            Ok(login) => {
                let base = login.split("/dashboard/").next().unwrap_or_default().to_string();
                eprintln!("dashboard: sign in at {login}");
                eprintln!("inspect it: {base}/dashboard/dev/runs/{}", run.run.id);
                serving = true;
            }
            Err(e) => eprintln!(
                "the dashboard could not start ({e}); `trigger dev` in this folder shows the run too"
            ),
        },
        None => eprintln!(
            "inspect it: {}/dashboard/dev/runs/{}",
            std::env::var("TRIGGER_API_URL").unwrap_or_default().trim_end_matches('/'),
            run.run.id
        ),
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "id": run.run.id,
            "status": run.run.status,
            "attempts": run.run.attempt_number,
            "output": output,
            "metadata": metadata,
        }))?
    );
    // Keep the dashboard up for a person at a terminal; scripts get their exit.
    if serving && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("press Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(())
}
