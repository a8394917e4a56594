//! The HTTP backend against a real server in this process: a worker speaking the engine
//! endpoints runs a parent that waits on idempotent children, updates metadata and logs,
//! retries once, and is triggered with metadata from "backend" code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trigger_sdk::backend::{Backend, Http};
use trigger_sdk::{
    idempotency_keys, logger, metadata, task, wait, RetryOptions, TaskError, TriggerOptions, Worker,
};
use trigger_server::{serve, Database, ServeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_over_http_runs_the_seed_flow() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let backend = Http::new(server.base_url(), &key, Some(project)).unwrap();

    let child_runs = Arc::new(AtomicU32::new(0));
    let c = child_runs.clone();
    let child = task::<Value, Value>("child-task").run(move |item, _| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(json!({ "result": format!("processed-{}", item["id"]) }))
        }
    });
    let ch = child.clone();
    let parent = task::<Value, Value>("process-data")
        .retry(RetryOptions {
            max_attempts: 2,
            min_timeout_in_ms: 50,
            randomize: false,
            ..Default::default()
        })
        .run(move |payload, ctx| {
            let child = ch.clone();
            async move {
                let items = payload["data"].as_array().cloned().unwrap_or_default();
                let mut results = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key = idempotency_keys::create(format!("process-{}", item["id"]));
                    let result = child
                        .trigger_and_wait(
                            item,
                            TriggerOptions { idempotency_key: Some(key), ..Default::default() },
                        )
                        .await?;
                    results.push(result.unwrap()?["result"].clone());
                    let progress = (i + 1) as f64 / items.len() as f64;
                    metadata::set("progress", progress)
                        .append("processed", &item["id"])
                        .increment("count", 1);
                    logger::info("Item processed", json!({ "itemId": item["id"] }));
                }
                wait::for_duration(Duration::from_millis(200)).await?;
                if ctx.attempt.number == 1 {
                    return Err(TaskError::new("first attempt fails after its children"));
                }
                Ok::<_, TaskError>(json!({ "processed": items.len(), "results": results }))
            }
        });
    let worker = Worker::builder()
        .backend(backend.clone())
        .options(trigger_sdk::WorkerOptions {
            flush_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .task(parent)
        .task(child)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();

    trigger_sdk::configure(backend.clone());
    let handle = trigger_sdk::tasks::trigger::<trigger_sdk::Task<Value, Value>>(
        "process-data",
        json!({ "userId": "123", "data": [{ "id": 1 }, { "id": 2 }] }),
        TriggerOptions { metadata: Some(json!({ "source": "api" })), ..Default::default() },
    )
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut changes = backend.subscribe().unwrap();
    let done = loop {
        let details = backend.get_run(&handle.id).await.unwrap();
        if details.run.status.is_final() {
            break details;
        }
        assert!(Instant::now() < deadline, "run did not finish: {:?}", details.run.status);
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.recv()).await;
    };
    assert_eq!(done.run.status, trigger_sdk::RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(done.run.attempt_number, 2);
    let output: Value = serde_json::from_str(done.output.unwrap().data.as_deref().unwrap()).unwrap();
    assert_eq!(output, json!({ "processed": 2, "results": ["processed-1", "processed-2"] }));
    assert_eq!(child_runs.load(Ordering::SeqCst), 2, "the retry found its children by idempotency key");
    let m: Value = serde_json::from_str(done.run.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(m["source"], "api");
    assert_eq!(m["progress"], json!(1.0));
    assert_eq!(m["count"], json!(4), "both attempts incremented the count");
    let events = server
        .state()
        .engine()
        .list_events(&server.bootstrap().tenancy.environments[0].id, &handle.id, 0, 100)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.message == "Item processed"), "logs reach the run over OTLP: {events:?}");

    worker.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_runs_over_http_with_the_default_page_gives_a_full_page() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let backend = Http::new(server.base_url(), &key, Some(project)).unwrap();
    backend
        .register_worker(trigger_engine::WorkerManifest {
            content_hash: "page".into(),
            tasks: vec![trigger_engine::TaskManifest::new("listed")],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..30 {
        let request = trigger_engine::TriggerRequest {
            task: "listed".into(),
            payload: trigger_engine::Packet::json(&json!({ "i": i })),
            options: Default::default(),
        };
        backend.trigger(request).await.unwrap();
    }
    let listed = backend.list_runs(Default::default(), Default::default()).await.unwrap();
    assert_eq!(listed.len(), 25, "the default page, as with the embedded engine");
}
