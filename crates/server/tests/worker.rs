//! The worker protocol over real HTTP: register, dequeue, attempts, heartbeats, snapshots,
//! `triggerAndWait`, waits, the notification stream and the OTLP sink.

mod common;

use std::time::Duration;

use common::{assert_date, assert_fields, TestServer};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

const SNAPSHOT: &[(&str, &str)] = &[
    ("id", "string"),
    ("friendlyId", "string"),
    ("executionStatus", "string"),
    ("description", "string"),
    ("createdAt", "date"),
];
const RUN_META: &[(&str, &str)] =
    &[("id", "string"), ("friendlyId", "string"), ("status", "string"), ("attemptNumber", "number")];

/// `startAttempts` (the Rust SDK's worker): each dequeued message carries the started
/// attempt, as `…/attempts/start` answers it, and the run completes on that attempt.
#[tokio::test]
async fn a_dequeue_can_start_the_attempts_it_claims() {
    let t = TestServer::start().await;
    let key = t.dev_key.clone();
    let worker = t.register_worker().await;
    let worker_id = worker["id"].as_str().unwrap().to_string();
    let run = t.trigger("hello", json!({ "payload": r#"{"n":7}"#, "options": {} })).await;
    let body = t
        .post(
            "/engine/v1/dev/dequeue",
            &key,
            json!({ "currentWorker": worker_id, "timeoutMs": 2000, "startAttempts": true }),
        )
        .await
        .expect(200);
    let messages = body["dequeuedMessages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message["run"]["friendlyId"], run.as_str());
    // The run's snapshot is the started attempt's: the claim and the start are one step.
    assert_eq!(message["snapshot"]["executionStatus"], "EXECUTING");
    let attempt = &message["attempt"];
    assert_eq!(message["snapshot"], attempt["snapshot"]);
    assert_fields(&attempt["snapshot"], SNAPSHOT);
    assert_eq!(attempt["snapshot"]["executionStatus"], "EXECUTING");
    assert_eq!(attempt["run"]["status"], "EXECUTING");
    assert_eq!(attempt["execution"]["attempt"]["number"], 1);
    assert_eq!(attempt["execution"]["run"]["payload"], r#"{"n":7}"#);
    assert!(attempt["envVars"].is_object());
    let snapshot = attempt["snapshot"]["friendlyId"].as_str().unwrap();
    let done = t
        .post(
            &format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/complete"),
            &key,
            json!({ "completion": { "ok": true, "output": "{}", "outputType": "application/json" } }),
        )
        .await
        .expect(200);
    assert_eq!(done["result"]["run"]["status"], "COMPLETED_SUCCESSFULLY", "{done}");
}

#[tokio::test]
async fn a_run_goes_round_trip_through_a_worker() {
    let t = TestServer::start().await;
    let key = t.dev_key.clone();

    let config = t.get("/engine/v1/dev/config", &key).await.expect(200);
    assert_fields(
        &config,
        &[
            ("environmentId", "string"),
            ("dequeueIntervalWithRun", "number"),
            ("dequeueIntervalWithoutRun", "number"),
            ("maxConcurrentRuns", "number"),
            ("engineUrl", "string"),
        ],
    );

    let worker = t.register_worker().await;
    assert_fields(&worker, &[("id", "string"), ("version", "string"), ("contentHash", "string")]);
    assert!(worker["id"].as_str().unwrap().starts_with("worker_"));
    assert_eq!(worker["contentHash"], "hash-1");
    let worker_id = worker["id"].as_str().unwrap().to_string();

    let payload = r#"{"json":{"n":1}}"#;
    let run = t
        .trigger("hello", json!({ "payload": payload, "options": { "payloadType": "application/super+json", "tags": ["w"], "maxAttempts": 3, "metadata": { "step": 0 } } }))
        .await;

    // Dequeue: the exact DequeuedMessage shape.
    let message = t.dequeue_run(&worker_id, &run).await;
    assert_eq!(message["version"], "1");
    assert!(message.get("attempt").is_none(), "no attempt unless the worker asks");
    assert_fields(&message["snapshot"], SNAPSHOT);
    assert_eq!(message["snapshot"]["executionStatus"], "PENDING_EXECUTING");
    assert_date(&message["dequeuedAt"]);
    assert_eq!(message["completedWaitpoints"], json!([]));
    assert_eq!(
        message["backgroundWorker"],
        json!({ "id": worker_id, "friendlyId": worker_id, "version": worker["version"] })
    );
    assert!(message["deployment"].is_object());
    assert_fields(
        &message["run"],
        &[
            ("id", "string"),
            ("friendlyId", "string"),
            ("isTest", "boolean"),
            ("machine", "object"),
            ("attemptNumber", "number"),
            ("masterQueue", "string"),
            ("traceContext", "object"),
        ],
    );
    assert_eq!(message["run"]["machine"]["name"], "small-2x");
    assert_fields(
        &message["run"]["machine"],
        &[("cpu", "number"), ("memory", "number"), ("centsPerMs", "number")],
    );
    assert_eq!(message["environment"]["type"], "DEVELOPMENT");
    assert_fields(&message["organization"], &[("id", "string")]);
    assert_fields(&message["project"], &[("id", "string")]);
    let snapshot = message["snapshot"]["friendlyId"].as_str().unwrap().to_string();

    // Start: snapshot, run, the TaskRunExecution with the payload verbatim, envVars.
    let started = t
        .post(&format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/start"), &key, json!({}))
        .await
        .expect(200);
    assert_fields(&started["snapshot"], SNAPSHOT);
    assert_eq!(started["snapshot"]["executionStatus"], "EXECUTING");
    assert_fields(&started["run"], RUN_META);
    assert_eq!(started["run"]["status"], "EXECUTING");
    assert!(started["envVars"].is_object());
    let execution = &started["execution"];
    assert_fields(&execution["attempt"], &[("number", "number"), ("startedAt", "date")]);
    assert_eq!(execution["attempt"]["number"], 1);
    assert_fields(
        &execution["run"],
        &[
            ("id", "string"),
            ("payload", "string"),
            ("payloadType", "string"),
            ("tags", "array"),
            ("isTest", "boolean"),
            ("createdAt", "date"),
            ("startedAt", "date"),
        ],
    );
    assert_eq!(execution["run"]["payload"], payload);
    assert_eq!(execution["run"]["payloadType"], "application/super+json");
    assert_eq!(execution["run"]["maxAttempts"], 3);
    assert_eq!(execution["run"]["metadata"], json!({ "step": 0 }));
    assert_eq!(
        execution["task"],
        json!({ "id": "hello", "filePath": "src/trigger/hello.ts", "exportName": "hello" })
    );
    assert_fields(&execution["queue"], &[("id", "string"), ("name", "string")]);
    assert_eq!(execution["environment"]["slug"], "dev");
    assert_fields(&execution["organization"], &[("id", "string"), ("slug", "string"), ("name", "string")]);
    assert_fields(
        &execution["project"],
        &[("id", "string"), ("ref", "string"), ("slug", "string"), ("name", "string")],
    );
    assert_eq!(execution["project"]["ref"], t.project_ref.as_str());
    assert_eq!(execution["machine"]["name"], "small-2x");
    let executing = started["snapshot"]["friendlyId"].as_str().unwrap().to_string();

    // A stale snapshot changes nothing and is a 409.
    t.post(&format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/start"), &key, json!({}))
        .await
        .expect_error(409, "");

    let beat = t
        .post(
            &format!("/engine/v1/dev/runs/{run}/snapshots/{executing}/heartbeat"),
            &key,
            json!({ "cpu": 0, "memory": 0 }),
        )
        .await
        .expect(200);
    assert_eq!(beat, json!({ "ok": true }));
    let logged = t
        .post(
            &format!("/engine/v1/dev/runs/{run}/logs/debug"),
            &key,
            json!({ "time": "2024-01-01T00:00:00Z", "message": "hi" }),
        )
        .await;
    logged.expect(200);

    let latest = t.get(&format!("/engine/v1/dev/runs/{run}/snapshots/latest"), &key).await.expect(200);
    let execution_data = &latest["execution"];
    assert_eq!(execution_data["version"], "1");
    assert_fields(&execution_data["snapshot"], SNAPSHOT);
    assert_fields(&execution_data["run"], RUN_META);
    assert_eq!(execution_data["snapshot"]["friendlyId"], executing.as_str());
    let since =
        t.get(&format!("/engine/v1/dev/runs/{run}/snapshots/since/{snapshot}"), &key).await.expect(200);
    let since = since["snapshots"].as_array().unwrap();
    assert_eq!(since.last().unwrap()["snapshot"]["friendlyId"], executing.as_str());

    // Complete with a SuperJSON output and the final metadata flush.
    let completion = json!({ "completion": {
        "ok": true, "id": run, "output": r#"{"json":{"done":true}}"#, "outputType": "application/super+json",
        "usage": { "durationMs": 42 },
        "flushedMetadata": { "data": r#"{"step":2}"#, "dataType": "application/json" },
    }});
    let done = t
        .post(&format!("/engine/v1/dev/runs/{run}/snapshots/{executing}/attempts/complete"), &key, completion)
        .await
        .expect(200);
    assert_eq!(done["result"]["attemptStatus"], "RUN_FINISHED");
    assert_fields(&done["result"]["snapshot"], SNAPSHOT);
    assert_eq!(done["result"]["snapshot"]["executionStatus"], "FINISHED");
    assert_eq!(done["result"]["run"]["status"], "COMPLETED_SUCCESSFULLY");

    let retrieved = t.get(&format!("/api/v3/runs/{run}"), &key).await.expect(200);
    assert_eq!(retrieved["status"], "COMPLETED");
    assert_eq!(
        (retrieved["isCompleted"].clone(), retrieved["isSuccess"].clone(), retrieved["isFailed"].clone()),
        (json!(true), json!(true), json!(false))
    );
    assert_eq!(retrieved["output"], json!({ "done": true }));
    assert_eq!(retrieved["durationMs"], 42);
    assert_eq!(retrieved["attemptCount"], 1);
    assert_eq!(retrieved["metadata"], json!({ "step": 2 }));
    assert_date(&retrieved["startedAt"]);
    assert_date(&retrieved["finishedAt"]);

    // A worker shutting down hands an executing run back: queued again, attempt not failed.
    let handed = t.trigger("hello", json!({ "payload": "{}" })).await;
    let m = t.dequeue_run(&worker_id, &handed).await;
    let snap = m["snapshot"]["friendlyId"].as_str().unwrap();
    let started = t
        .post(&format!("/engine/v1/dev/runs/{handed}/snapshots/{snap}/attempts/start"), &key, json!({}))
        .await
        .expect(200);
    let executing = started["snapshot"]["friendlyId"].as_str().unwrap();
    let released = t
        .post(&format!("/engine/v1/dev/runs/{handed}/snapshots/{executing}/release"), &key, json!({}))
        .await
        .expect(200);
    assert_eq!(released, json!({ "ok": true, "status": "QUEUED" }));
    let again =
        t.post(&format!("/engine/v1/dev/runs/{handed}/snapshots/{executing}/release"), &key, json!({})).await;
    again.expect(409);
    let retrieved = t.get(&format!("/api/v3/runs/{handed}"), &key).await.expect(200);
    assert_eq!(retrieved["status"], "QUEUED");
    assert!(retrieved.get("error").is_none_or(|e| e.is_null()), "{retrieved}");
    t.dequeue_run(&worker_id, &handed).await;

    // A failed attempt that is retried, then a disconnect cancels what is left.
    let failing = t.trigger("hello", json!({ "payload": "{}", "options": { "maxAttempts": 2 } })).await;
    let m = t.dequeue_run(&worker_id, &failing).await;
    let snap = m["snapshot"]["friendlyId"].as_str().unwrap();
    let started = t
        .post(&format!("/engine/v1/dev/runs/{failing}/snapshots/{snap}/attempts/start"), &key, json!({}))
        .await
        .expect(200);
    let snap = started["snapshot"]["friendlyId"].as_str().unwrap();
    let failure = json!({ "completion": {
        "ok": false, "id": failing,
        "error": { "type": "BUILT_IN_ERROR", "name": "Error", "message": "boom", "stackTrace": "at x" },
        "retry": { "timestamp": 0, "delay": 10 },
    }});
    let failed = t
        .post(&format!("/engine/v1/dev/runs/{failing}/snapshots/{snap}/attempts/complete"), &key, failure)
        .await
        .expect(200);
    assert!(
        ["RETRY_IMMEDIATELY", "RETRY_QUEUED"].contains(&failed["result"]["attemptStatus"].as_str().unwrap()),
        "{failed}"
    );
    let gone =
        t.post("/engine/v1/dev/disconnect", &key, json!({ "runFriendlyIds": [failing] })).await.expect(200);
    assert_eq!(gone, json!({ "cancelled": 1 }));
    // Its worker is gone, so nobody can confirm a cancel: the run is cancelled outright.
    let latest = t.get(&format!("/engine/v1/dev/runs/{failing}/snapshots/latest"), &key).await.expect(200);
    let status = latest["execution"]["snapshot"]["executionStatus"].as_str().unwrap();
    let run_after = t.get(&format!("/api/v3/runs/{failing}"), &key).await.expect(200);
    assert!(status == "FINISHED" && run_after["status"] == "CANCELED", "{status} {run_after}");

    // The official CLI posts worker bodies as `text/plain` (fetch with a string body); they
    // are JSON all the same. An empty dequeue answers after its (shortened) long poll.
    let body =
        json!({ "currentWorker": worker_id, "oldWorkers": [], "timeoutMs": 50 }).to_string().into_bytes();
    let plain = t
        .send(Method::POST, "/engine/v1/dev/dequeue", Some(&key), Some("text/plain;charset=UTF-8"), body)
        .await
        .expect(200);
    assert_eq!(plain, json!({ "dequeuedMessages": [] }));
    let empty = t
        .post(
            "/engine/v1/dev/dequeue",
            &key,
            json!({ "currentWorker": worker_id, "oldWorkers": [], "timeoutMs": 50 }),
        )
        .await
        .expect(200);
    assert_eq!(empty, json!({ "dequeuedMessages": [] }));
    t.server.shutdown().await.unwrap();
}

/// Reads server-sent events until one satisfies `pred`, within a deadline.
async fn next_event(
    body: &mut hyper::body::Incoming,
    buffer: &mut String,
    pred: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let event =
                block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
            let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
            let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if pred(&event, &value) {
                return value;
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn trigger_and_wait_resumes_the_parent_with_the_childs_output() {
    let t = TestServer::start().await;
    let key = t.dev_key.clone();
    let worker = t.register_worker().await;
    let worker_id = worker["id"].as_str().unwrap().to_string();
    let version = worker["version"].as_str().unwrap().to_string();

    // The push channel, open before anything happens.
    let stream = t.raw(Method::GET, "/engine/v1/dev/runs/notifications", Some(&key), None, Vec::new()).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut events = stream.into_body();
    let mut buffer = String::new();
    next_event(&mut events, &mut buffer, |e, _| e == "ready").await;

    let parent = t.trigger("parent", json!({ "payload": "{}" })).await;
    let m = t.dequeue_run(&worker_id, &parent).await;
    let snap = m["snapshot"]["friendlyId"].as_str().unwrap();
    t.post(&format!("/engine/v1/dev/runs/{parent}/snapshots/{snap}/attempts/start"), &key, json!({}))
        .await
        .expect(200);

    // Inside the parent: triggerAndWait on the child.
    let child = t
        .trigger("child", json!({ "payload": r#"{"json":{"x":1}}"#, "options": { "payloadType": "application/super+json", "parentRunId": parent, "resumeParentOnCompletion": true, "lockToVersion": version } }))
        .await;
    let blocked = t
        .wait_for_snapshot(&parent, |e| e["snapshot"]["executionStatus"] == "EXECUTING_WITH_WAITPOINTS")
        .await;
    assert_eq!(blocked["run"]["status"], "WAITING_TO_RESUME");
    let parent_run = t.get(&format!("/api/v3/runs/{parent}"), &key).await.expect(200);
    assert_eq!(parent_run["status"], "WAITING");
    assert_eq!(parent_run["relatedRuns"]["children"][0]["id"], child.as_str());
    let child_run = t.get(&format!("/api/v3/runs/{child}"), &key).await.expect(200);
    assert_eq!(child_run["triggerFunction"], "triggerAndWait");
    assert_eq!(child_run["relatedRuns"]["parent"]["id"], parent.as_str());
    assert_eq!(child_run["depth"], 1);

    // The stream told of the parent blocking; what follows is news.
    next_event(&mut events, &mut buffer, |e, v| {
        e == "run"
            && v["run"]["friendlyId"] == parent.as_str()
            && v["snapshot"]["executionStatus"] == "EXECUTING_WITH_WAITPOINTS"
    })
    .await;

    // The child runs and completes.
    let m = t.dequeue_run(&worker_id, &child).await;
    let snap = m["snapshot"]["friendlyId"].as_str().unwrap();
    let started = t
        .post(&format!("/engine/v1/dev/runs/{child}/snapshots/{snap}/attempts/start"), &key, json!({}))
        .await
        .expect(200);
    assert_eq!(started["execution"]["run"]["parentTaskRunId"], parent.as_str());
    assert_eq!(started["execution"]["queue"]["name"], "children");
    let snap = started["snapshot"]["friendlyId"].as_str().unwrap();
    let completion = json!({ "completion": { "ok": true, "id": child, "output": r#"{"json":{"y":2}}"#, "outputType": "application/super+json" } });
    t.post(&format!("/engine/v1/dev/runs/{child}/snapshots/{snap}/attempts/complete"), &key, completion)
        .await
        .expect(200);

    // The worker learns by push that the parent is executing again…
    let pushed = next_event(&mut events, &mut buffer, |e, v| {
        e == "run"
            && v["run"]["friendlyId"] == parent.as_str()
            && v["snapshot"]["executionStatus"] == "EXECUTING"
    })
    .await;
    let resumed_snapshot = pushed["snapshot"]["friendlyId"].as_str().unwrap().to_string();
    // …and its latest snapshot carries the child's completed waitpoint.
    let latest = t.get(&format!("/engine/v1/dev/runs/{parent}/snapshots/latest"), &key).await.expect(200);
    let execution = &latest["execution"];
    assert_eq!(execution["snapshot"]["friendlyId"], resumed_snapshot.as_str());
    assert_eq!(execution["snapshot"]["executionStatus"], "EXECUTING");
    let waitpoints = execution["completedWaitpoints"].as_array().unwrap();
    assert_eq!(waitpoints.len(), 1);
    let wp = &waitpoints[0];
    assert_fields(
        wp,
        &[
            ("id", "string"),
            ("friendlyId", "string"),
            ("type", "string"),
            ("completedAt", "date"),
            ("outputIsError", "boolean"),
        ],
    );
    assert_eq!(wp["type"], "RUN");
    assert_eq!(wp["completedByTaskRun"]["friendlyId"], child.as_str());
    assert_eq!(wp["output"], r#"{"json":{"y":2}}"#);
    assert_eq!(wp["outputType"], "application/super+json");
    assert_eq!(wp["outputIsError"], false);

    // wait.for inside the parent: a DATETIME waitpoint that completes by the real clock.
    let until = trigger_server::wire::iso(t.server.state().engine().now() + 300);
    let waited = t
        .post(&format!("/engine/v1/runs/{parent}/wait/duration"), &key, json!({ "date": until }))
        .await
        .expect(200);
    assert_fields(&waited, &[("waitUntil", "date"), ("waitpoint", "object")]);
    let wp_id = waited["waitpoint"]["id"].as_str().unwrap().to_string();
    let resumed = t
        .wait_for_snapshot(&parent, |e| {
            e["snapshot"]["executionStatus"] == "EXECUTING"
                && e["completedWaitpoints"]
                    .as_array()
                    .is_some_and(|w| w.iter().any(|w| w["friendlyId"] == wp_id.as_str()))
        })
        .await;
    assert_eq!(resumed["completedWaitpoints"][0]["type"], "DATETIME");
    assert_date(&resumed["completedWaitpoints"][0]["completedAfter"]);

    // wait.forToken: blocked until the token is completed through the API.
    let token = t.post("/api/v1/waitpoints/tokens", &key, json!({})).await.expect(200);
    let token_id = token["id"].as_str().unwrap().to_string();
    let waiting = t
        .post(&format!("/engine/v1/runs/{parent}/waitpoints/tokens/{token_id}/wait"), &key, json!({}))
        .await
        .expect(200);
    assert_eq!(waiting, json!({ "success": true }));
    t.wait_for_snapshot(&parent, |e| e["snapshot"]["executionStatus"] == "EXECUTING_WITH_WAITPOINTS").await;
    t.post(&format!("/api/v1/waitpoints/tokens/{token_id}/complete"), &key, json!({ "data": { "ok": 1 } }))
        .await
        .expect(200);
    let resumed = t
        .wait_for_snapshot(&parent, |e| {
            e["completedWaitpoints"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["friendlyId"] == token_id.as_str()))
        })
        .await;
    assert_eq!(resumed["completedWaitpoints"][0]["type"], "MANUAL");
    assert_eq!(resumed["completedWaitpoints"][0]["output"], r#"{"ok":1}"#);
    drop(events);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn otlp_logs_and_spans_become_run_events() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let run = t.trigger("hello", json!({ "payload": "{}" })).await;
    let env = t.server.bootstrap().tenancy.environments[0].id.clone();
    let attrs = json!([
        { "key": "ctx.run.id", "value": { "stringValue": run } },
        { "key": "ctx.environment.id", "value": { "stringValue": env } },
        { "key": "ctx.attempt.number", "value": { "intValue": "1" } },
    ]);
    let logs = json!({ "resourceLogs": [{ "resource": { "attributes": attrs }, "scopeLogs": [{ "logRecords": [
        { "timeUnixNano": "1700000000000000000", "severityText": "WARN", "body": { "stringValue": "careful" },
          "attributes": [{ "key": "n", "value": { "intValue": "3" } }], "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331" },
    ]}]}]});
    let reply = t
        .send(Method::POST, "/otel/v1/logs", None, Some("application/json"), logs.to_string().into_bytes())
        .await
        .expect(200);
    assert_eq!(reply, json!({}));
    // The 4.8 SDK names the run on span attributes with a `$metadata.` prefix and the
    // environment on the resource.
    let resource = json!([{ "key": "ctx.environment.id", "value": { "stringValue": env } }]);
    let span_attrs = json!([{ "key": "$metadata.ctx.run.id", "value": { "stringValue": run } }]);
    let spans = json!({ "resourceSpans": [{ "resource": { "attributes": resource }, "scopeSpans": [{ "spans": [
        { "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00f067aa0ba902b7", "name": "fetch", "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000", "status": { "code": 2 }, "attributes": span_attrs },
    ]}]}]});
    t.send(Method::POST, "/otel/v1/traces", None, Some("application/json"), spans.to_string().into_bytes())
        .await
        .expect(200);
    t.send(Method::POST, "/otel/v1/metrics", None, Some("application/json"), b"{}".to_vec())
        .await
        .expect(200);
    // Protobuf is accepted and ignored; records naming no run are dropped.
    t.send(Method::POST, "/otel/v1/logs", None, Some("application/x-protobuf"), vec![0x0a, 0x00])
        .await
        .expect(200);
    let stray = json!({ "resourceLogs": [{ "scopeLogs": [{ "logRecords": [{ "body": { "stringValue": "nobody" } }] }] }] });
    t.send(Method::POST, "/otel/v1/logs", None, Some("application/json"), stray.to_string().into_bytes())
        .await
        .expect(200);

    let events = t.server.state().engine().list_events(&env, &run, 0, 100).await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let log = events.iter().find(|e| e.kind == "log").unwrap();
    assert_eq!((log.level.as_str(), log.message.as_str(), log.attempt_number), ("warn", "careful", Some(1)));
    assert_eq!(log.attributes["n"], 3);
    assert_eq!(log.start_time_ns, 1_700_000_000_000_000_000);
    let span = events.iter().find(|e| e.kind == "span").unwrap();
    assert_eq!(
        (span.level.as_str(), span.message.as_str(), span.duration_ns),
        ("error", "fetch", 500_000_000)
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn presence_streams_until_shutdown() {
    let t = TestServer::start().await;
    let stream = t.raw(Method::GET, "/engine/v1/dev/presence", Some(&t.dev_key), None, Vec::new()).await;
    assert_eq!(stream.status(), 200);
    let mut body = stream.into_body();
    let mut buffer = String::new();
    let first = next_event(&mut body, &mut buffer, |e, _| e == "presence").await;
    assert_fields(&first, &[("environmentId", "string")]);
    // Shutdown ends the open stream instead of waiting on it forever.
    tokio::time::timeout(Duration::from_secs(5), t.server.shutdown()).await.expect("drains in time").unwrap();
}

/// The official CLI's push channel: socket.io on `/dev-worker`, `run:subscribe`, then a
/// `run:notify` for each change of a subscribed run.
#[tokio::test]
async fn socket_io_notifies_subscribed_runs() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let t = TestServer::start().await;
    t.register_worker().await;
    let run = t.trigger("hello", json!({ "payload": "{}" })).await;
    let other = t.trigger("hello", json!({ "payload": "{}" })).await;

    let url = format!("{}/socket.io/?EIO=4&transport=websocket", t.base.replace("http://", "ws://"));
    let mut refused = url.clone().into_client_request().unwrap();
    refused.headers_mut().insert("authorization", "Bearer tr_dev_wrong".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(refused).await.is_err(), "a bad key cannot open the socket");

    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", t.dev_key).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket upgrade");
    let open = next(&mut ws).await;
    let handshake: Value =
        serde_json::from_str(open.strip_prefix('0').expect("an Engine.IO open packet")).unwrap();
    assert_fields(
        &handshake,
        &[("sid", "string"), ("pingInterval", "number"), ("pingTimeout", "number"), ("upgrades", "array")],
    );

    ws.send(Message::Text("40/dev-worker,".into())).await.unwrap();
    let connected = next(&mut ws).await;
    assert!(connected.starts_with("40/dev-worker,{\"sid\":"), "{connected}");
    let subscribe =
        format!(r#"42/dev-worker,["run:subscribe",{{"version":"1","runFriendlyIds":["{run}"]}}]"#);
    ws.send(Message::Text(subscribe.into())).await.unwrap();
    // Give the subscription a moment to land, with a round trip the server must answer.
    ws.send(Message::Text("40/nope,".into())).await.unwrap();
    assert!(next(&mut ws).await.starts_with("44/nope,"));

    t.post(&format!("/api/v2/runs/{other}/cancel"), &t.dev_key, json!({})).await.expect(200);
    t.post(&format!("/api/v2/runs/{run}/cancel"), &t.dev_key, json!({})).await.expect(200);
    let notify = next(&mut ws).await;
    let payload: Value =
        serde_json::from_str(notify.strip_prefix("42/dev-worker,").expect("an event")).unwrap();
    assert_eq!(
        payload,
        json!(["run:notify", { "version": "1", "run": { "friendlyId": run } }]),
        "only the subscribed run is notified"
    );
    drop(ws);
    t.server.shutdown().await.unwrap();
}

async fn next(
    ws: &mut (impl futures_util::Stream<
        Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
    > + Unpin),
) -> String {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return text.to_string();
        }
    }
}

#[tokio::test]
async fn the_environment_limit_setting_caps_what_a_dev_worker_may_run() {
    let t = TestServer::start_with(trigger_server::ServeOptions {
        env_concurrency_limit: 3,
        ..trigger_server::ServeOptions::default()
    })
    .await;
    let key = t.dev_key.clone();
    let config = t.get("/engine/v1/dev/config", &key).await.expect(200);
    assert_eq!(config["maxConcurrentRuns"], 3);
    let worker = t.register_worker().await;
    let worker_id = worker["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        t.trigger("hello", json!({ "payload": "{}", "options": {} })).await;
    }
    let body = t
        .post(
            "/engine/v1/dev/dequeue",
            &key,
            json!({ "currentWorker": worker_id, "maxRuns": 10, "timeoutMs": 2000 }),
        )
        .await
        .expect(200);
    assert_eq!(body["dequeuedMessages"].as_array().unwrap().len(), 3, "three slots in the environment");

    // Without the setting, Trigger.dev's default of 100.
    let t = TestServer::start().await;
    let config = t.get("/engine/v1/dev/config", &t.dev_key).await.expect(200);
    assert_eq!(config["maxConcurrentRuns"], 100);
}
