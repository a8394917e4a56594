//! The dashboard on its own engine with a small in-process worker, for trying it by hand and
//! for the browser tests:
//!
//! ```text
//! cargo run -p trigger-dashboard --example dev -- [--port 3040] [--db dash.db] [--demo]
//! ```
//!
//! Prints one JSON line on stdout (`url`, `login`, `token`, `devKey`) once it listens. The
//! worker runs the seed's tasks in every environment: `process-data` (on `process-queue`,
//! limit 3) moves its `progress` metadata item by item, writes logs and triggers
//! `child-task` runs; `flaky-task` always fails with a stack trace after its retries.

use std::time::Duration;

use serde_json::{json, Value};
use trigger_engine::{
    ApiKeyKind, BatchItem, Completion, CreateBatch, DequeueRequest, Dequeued, Engine, EngineOptions,
    EnvironmentType, InternalErrorCode, MachinePreset, MetadataOp, MetadataUpdate, Packet, QueueManifest,
    RetryOptions, RunEvent, TaskManifest, TaskRunError, TokenOptions, TriggerOptions, TriggerRequest,
    WorkerManifest,
};
use trigger_storage_sqlite::SqliteStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 3040u16;
    let mut db: Option<String> = None;
    let mut demo = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--db" => db = Some(args.next().ok_or("--db needs a path")?),
            "--demo" => demo = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let store = match &db {
        Some(path) => SqliteStore::open(path)?,
        None => SqliteStore::memory()?,
    };
    let engine = Engine::start(store, EngineOptions::default());
    let tenancy = engine.bootstrap("Default", "Default project").await?;
    let token = trigger_dashboard::startup_token(&engine).await?;
    let dev = tenancy.environment(EnvironmentType::Development).ok_or("no dev environment")?.clone();
    let (_, dev_key) = engine.create_api_key(ApiKeyKind::Secret, Some(&dev.id), "dev example").await?;

    for env in &tenancy.environments {
        engine.register_worker(&env.id, manifest()).await?;
        tokio::spawn(worker(engine.clone(), env.id.clone()));
    }
    if demo {
        demo_data(&engine, &dev.id).await?;
    }

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = trigger_dashboard::router(engine.clone(), trigger_dashboard::Options::default());
    println!(
        "{}",
        json!({ "url": url, "login": trigger_dashboard::login_url(&url, &token), "token": token, "devKey": dev_key })
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    engine.shutdown().await;
    Ok(())
}

fn manifest() -> WorkerManifest {
    let mut process = TaskManifest::new("process-data");
    process.file_path = "src/trigger/process-data.rs".into();
    process.description = Some("Processes each item with an idempotent child run, tracking progress".into());
    process.queue_name = Some("process-queue".into());
    process.machine = Some(MachinePreset::Medium1x);
    process.max_duration_secs = Some(600);
    process.retry = Some(RetryOptions {
        max_attempts: 3,
        factor: 2.0,
        min_timeout_in_ms: 1000,
        max_timeout_in_ms: 10_000,
        randomize: false,
    });
    let mut child = TaskManifest::new("child-task");
    child.file_path = "src/trigger/process-data.rs".into();
    let mut flaky = TaskManifest::new("flaky-task");
    flaky.file_path = "src/trigger/flaky.rs".into();
    flaky.retry = Some(RetryOptions {
        max_attempts: 2,
        factor: 2.0,
        min_timeout_in_ms: 100,
        max_timeout_in_ms: 1000,
        randomize: false,
    });
    WorkerManifest {
        content_hash: "dev-example-1".into(),
        sdk_version: Some("4.0.0".into()),
        cli_version: Some("4.0.0".into()),
        tasks: vec![process, child, flaky],
        queues: vec![QueueManifest { name: "process-queue".into(), concurrency_limit: Some(3) }],
    }
}

async fn worker(engine: Engine, env_id: String) {
    loop {
        let request = DequeueRequest::new("dev-worker", 10);
        match engine.dequeue_wait(&env_id, request, Duration::from_secs(30)).await {
            Ok(claimed) => {
                for d in claimed {
                    tokio::spawn(execute(engine.clone(), env_id.clone(), d));
                }
            }
            Err(trigger_engine::Error::Shutdown) => return,
            Err(e) => {
                eprintln!("dequeue failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

struct Attempt {
    engine: Engine,
    env_id: String,
    run_id: String,
    trace_id: Option<String>,
    span_id: String,
    attempt: u32,
}

impl Attempt {
    async fn log(&self, level: &str, message: &str, attributes: Value) {
        let event = RunEvent {
            seq: 0,
            run_id: self.run_id.clone(),
            kind: "log".into(),
            level: level.into(),
            message: message.into(),
            attributes,
            trace_id: self.trace_id.clone(),
            span_id: Some(trigger_types::ids::random_alphanumeric(16)),
            parent_span_id: Some(self.span_id.clone()),
            start_time_ns: now_ns(),
            duration_ns: 0,
            attempt_number: Some(self.attempt),
        };
        let _ = self.engine.record_events(&self.env_id, &self.run_id, vec![event]).await;
    }

    async fn metadata(&self, operations: Vec<MetadataOp>) {
        let update = MetadataUpdate { operations, ..Default::default() };
        let _ = self.engine.update_metadata(&self.env_id, &self.run_id, update).await;
    }

    async fn canceled(&self) -> bool {
        matches!(
            self.engine.get_run(&self.env_id, &self.run_id).await,
            Ok(d) if d.run.execution_status == trigger_engine::ExecutionStatus::PendingCancel || d.run.status.is_final()
        )
    }
}

async fn execute(engine: Engine, env_id: String, d: Dequeued) {
    let mut snapshot = d.snapshot.id.clone();
    // A short retry keeps the run on this worker: run the next attempt here when it is due.
    while let Some((next, at)) = attempt(&engine, &env_id, &d, &snapshot).await {
        let wait = (at - engine.now()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        snapshot = next;
    }
}

/// Runs one attempt; returns the snapshot and time of an immediate retry, if any.
async fn attempt(engine: &Engine, env_id: &str, d: &Dequeued, snapshot: &str) -> Option<(String, i64)> {
    let (engine, env_id) = (engine.clone(), env_id.to_string());
    let Ok(started) = engine.start_attempt(&env_id, &d.run.id, snapshot).await else { return None };
    let run = started.run.clone();
    let at = Attempt {
        engine: engine.clone(),
        env_id: env_id.clone(),
        run_id: run.id.clone(),
        trace_id: run.trace_id.clone(),
        span_id: trigger_types::ids::random_alphanumeric(16),
        attempt: run.attempt_number,
    };
    let begin = now_ns();
    let clock = std::time::Instant::now();
    let payload: Value =
        started.payload.data.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    let result = match run.task.as_str() {
        "process-data" => process_data(&at, &payload).await,
        "child-task" => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let id = payload.get("id").cloned().unwrap_or(Value::Null);
            Ok(json!({ "result": format!("processed-{}", id) }))
        }
        "flaky-task" => {
            at.log("warn", "Calling the upstream API", json!({ "url": "https://api.example.com/v1/items" }))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            at.log("error", "Upstream API returned 503", json!({ "status": 503 })).await;
            Err(TaskRunError::BuiltIn {
                name: "Error".into(),
                message: "Upstream API returned 503".into(),
                stack_trace: "Error: Upstream API returned 503\n    at callApi (src/trigger/flaky.ts:12:11)\n    at run (src/trigger/flaky.ts:24:5)\n    at Worker.execute (node_modules/@trigger.dev/core/v3/workers/taskExecutor.js:91:24)".into(),
                causes: None,
            })
        }
        _ => Ok(payload.clone()),
    };
    let usage_ms = clock.elapsed().as_millis() as u64;
    let span = RunEvent {
        seq: 0,
        run_id: run.id.clone(),
        kind: "span".into(),
        level: if result.is_ok() { "info" } else { "error" }.into(),
        message: format!("Attempt {}", run.attempt_number),
        attributes: json!({ "ctx.task.id": run.task, "ctx.attempt.number": run.attempt_number, "machine": d.machine.name() }),
        trace_id: run.trace_id.clone(),
        span_id: Some(at.span_id.clone()),
        parent_span_id: None,
        start_time_ns: begin,
        duration_ns: now_ns() - begin,
        attempt_number: Some(run.attempt_number),
    };
    let _ = engine.record_events(&env_id, &run.id, vec![span]).await;
    let completion = match result {
        Ok(output) => Completion::Success { output: Packet::json(&output), usage_ms },
        Err(error) => Completion::Failure { error, retry: None, skipped_retrying: false, usage_ms },
    };
    let latest = match engine.get_run(&env_id, &run.id).await {
        Ok(d) => d.run.snapshot_id,
        Err(_) => return None,
    };
    let snapshot = if at.canceled().await { latest } else { started.snapshot.id.clone() };
    match engine.complete_attempt(&env_id, &run.id, &snapshot, completion, None).await {
        Ok(o) if o.status == trigger_engine::AttemptStatus::RetryImmediately => {
            Some((o.snapshot.id, o.retry_at.unwrap_or_else(|| engine.now())))
        }
        Ok(_) => None,
        Err(e) => {
            eprintln!("completing {} failed: {e}", run.id);
            None
        }
    }
}

async fn process_data(at: &Attempt, payload: &Value) -> Result<Value, TaskRunError> {
    let cancelled = || TaskRunError::internal(InternalErrorCode::TaskRunCancelled, "Canceled");
    let user = payload.get("userId").cloned().unwrap_or(Value::Null);
    let items = payload.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    let delay = payload.get("delayMs").and_then(Value::as_u64).unwrap_or(700);
    at.log("info", "Task started", json!({ "userId": user })).await;
    at.metadata(vec![
        MetadataOp::Set { key: "status".into(), value: json!("started") },
        MetadataOp::Set { key: "progress".into(), value: json!(0) },
    ])
    .await;
    for (i, item) in items.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if at.canceled().await {
            at.log("warn", "Canceled; stopping", json!({ "processed": i })).await;
            return Err(cancelled());
        }
        let child = TriggerRequest {
            task: "child-task".into(),
            payload: Packet::json(item),
            options: TriggerOptions {
                parent_run_id: Some(at.run_id.clone()),
                tags: vec![format!("item:{}", item.get("id").unwrap_or(&Value::Null))],
                ..Default::default()
            },
        };
        let _ = at.engine.trigger(&at.env_id, child).await;
        let progress = (i + 1) as f64 / items.len() as f64;
        at.log("info", "Item processed", json!({ "itemId": item.get("id"), "progress": progress })).await;
        at.metadata(vec![
            MetadataOp::Set { key: "progress".into(), value: json!(progress) },
            MetadataOp::Append {
                key: "processed".into(),
                value: item.get("id").cloned().unwrap_or(Value::Null),
            },
            MetadataOp::Increment { key: "count".into(), value: 1.0 },
        ])
        .await;
    }
    at.metadata(vec![MetadataOp::Set { key: "status".into(), value: json!("done") }]).await;
    at.log("info", "Task completed", json!({ "processed": items.len() })).await;
    Ok(json!({ "processed": items.len(), "userId": user }))
}

/// A few runs of every kind, for screenshots.
async fn demo_data(engine: &Engine, env_id: &str) -> Result<(), trigger_engine::Error> {
    let trigger = |task: &str, payload: Value, tags: Vec<String>, delay: Option<i64>| TriggerRequest {
        task: task.into(),
        payload: Packet::json(&payload),
        options: TriggerOptions {
            tags,
            metadata: Some(json!({ "source": "api" }).to_string()),
            delay_until: delay.map(|ms| engine.now() + ms),
            ..Default::default()
        },
    };
    let data: Vec<Value> = (1..=4).map(|i| json!({ "id": i })).collect();
    for user in ["123", "456"] {
        engine
            .trigger(
                env_id,
                trigger(
                    "process-data",
                    json!({ "userId": user, "data": data, "delayMs": 300 }),
                    vec![format!("user:{user}"), "demo".into()],
                    None,
                ),
            )
            .await?;
    }
    engine
        .trigger(env_id, trigger("flaky-task", json!({ "attempt": "demo" }), vec!["demo".into()], None))
        .await?;
    engine
        .trigger(
            env_id,
            trigger(
                "process-data",
                json!({ "userId": "789", "data": data }),
                vec!["later".into()],
                Some(3_600_000),
            ),
        )
        .await?;
    let (batch, _) = engine
        .create_batch(
            env_id,
            CreateBatch {
                expected_count: 3,
                parent_run_id: None,
                resume_parent_on_completion: false,
                idempotency_key: None,
                idempotency_key_ttl_ms: None,
            },
        )
        .await?;
    let items = (0..3)
        .map(|i| BatchItem {
            index: i,
            request: trigger("child-task", json!({ "id": 100 + i }), vec!["batch".into()], None),
        })
        .collect();
    engine.add_batch_items(env_id, &batch.id, items).await?;
    engine
        .create_token(
            env_id,
            TokenOptions {
                timeout_at: Some(engine.now() + 86_400_000),
                tags: vec!["approval".into()],
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}
