//! Interop with the official TypeScript SDK, which sends payloads and outputs as SuperJSON
//! strings (`application/super+json`) and strings as `text/plain`. A Rust task must see the
//! plain JSON its serde type expects, on the embedded engine and over HTTP.
//!
//! The SuperJSON fixtures are `superjson.stringify(...)` output of @trigger.dev/core 4.8.3.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trigger_engine::{Packet, TokenOptions, TriggerOptions as EngineOptions, TriggerRequest};
use trigger_sdk::backend::{Backend, Http};
use trigger_sdk::{runs, task, wait, IntoTask, RunStatus, TaskError, Worker};
use trigger_server::{serve, Database, ServeOptions};

use common::{options, output, Harness};

/// `{ at: new Date(...), big: 12345678901234567890123n, small: 42n, tags: new Set(["a","b"]),
///    byName: new Map([["x",1],["y",new Date(0)]]), pairs: new Map([[1,"one"],[2,"two"]]),
///    gone: undefined, keep: null }` as SDK 4.8.3 sends it.
const ORDER: &str = r#"{"json":{"at":"2024-01-02T03:04:05.678Z","big":"12345678901234567890123","small":"42","tags":["a","b"],"byName":[["x",1],["y","1970-01-01T00:00:00.000Z"]],"pairs":[[1,"one"],[2,"two"]],"gone":null,"keep":null},"meta":{"values":{"at":["Date"],"big":["bigint"],"small":["bigint"],"tags":["set"],"byName":["map",{"1.1":["Date"]}],"pairs":["map"],"gone":["undefined"]}}}"#;

/// `{ approved: true, at: new Date(86400000), amount: 10n, note: undefined }`.
const APPROVAL: &str = r#"{"json":{"approved":true,"at":"1970-01-02T00:00:00.000Z","amount":"10","note":null},"meta":{"values":{"at":["Date"],"amount":["bigint"],"note":["undefined"]}}}"#;

const SUPER_JSON: &str = "application/super+json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    at: String,
    big: String,
    small: u64,
    tags: Vec<String>,
    by_name: HashMap<String, Value>,
    pairs: Vec<(u32, String)>,
    /// `undefined` in TS: absent here, so the default applies (a `null` would not fit).
    #[serde(default = "seven")]
    gone: u32,
    keep: Option<String>,
    #[serde(default)]
    token: String,
}

fn seven() -> u32 {
    7
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Approval {
    approved: bool,
    at: String,
    amount: i64,
    #[serde(default = "no_note")]
    note: String,
}

fn no_note() -> String {
    "none".into()
}

fn order_task() -> trigger_sdk::Task<Order, Value> {
    task::<Order, Value>("ts-order").run(|order, _ctx| async move {
        let approval: Approval = wait::for_token::<Approval>(&order.token).await?.unwrap()?;
        Ok::<_, TaskError>(json!({
            "at": order.at,
            "big": order.big,
            "small": order.small,
            "tags": order.tags,
            "y": order.by_name["y"],
            "pairs": order.pairs,
            "gone": order.gone,
            "keep": order.keep,
            "approval": approval,
        }))
    })
}

fn expected_output() -> Value {
    json!({
        "at": "2024-01-02T03:04:05.678Z",
        "big": "12345678901234567890123",
        "small": 42,
        "tags": ["a", "b"],
        "y": "1970-01-01T00:00:00.000Z",
        "pairs": [[1, "one"], [2, "two"]],
        "gone": 7,
        "keep": null,
        "approval": { "approved": true, "at": "1970-01-02T00:00:00.000Z", "amount": 10, "note": "none" },
    })
}

/// The order fixture with the token id added (a top-level key the meta does not name).
fn order_with_token(token: &str) -> String {
    let mut v: Value = serde_json::from_str(ORDER).unwrap();
    v["json"]["token"] = json!(token);
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn superjson_payloads_token_data_and_text_reach_rust_tasks_as_plain_json() {
    let shout =
        task::<String, String>("ts-shout").run(|s, _| async move { Ok::<_, TaskError>(s.to_uppercase()) });
    let h = Harness::start(vec![order_task().into_task(), shout.into_task()], options()).await;
    let engine = h.backend.engine();
    let (token, _) = engine.create_token(h.env(), TokenOptions::default()).await.unwrap();

    // What the official SDK's `tasks.trigger("ts-order", payload)` stores.
    let request = TriggerRequest {
        task: "ts-order".into(),
        payload: Packet { data: Some(order_with_token(&token.id)), data_type: SUPER_JSON.into() },
        options: EngineOptions::default(),
    };
    let run = h.backend.trigger(request).await.unwrap().run;
    h.wait_until(&run.id, Duration::from_secs(20), |d| d.run.status == RunStatus::Waiting).await;
    // `wait.completeToken(id, data)` from TS: the data arrives as SuperJSON too.
    engine
        .complete_token(
            Some(h.env()),
            &token.id,
            Packet { data: Some(APPROVAL.into()), data_type: SUPER_JSON.into() },
        )
        .await
        .unwrap();
    let done = h.wait_final(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(output(&done), expected_output());

    // runs::retrieve hands back plain JSON whatever the stored content type.
    trigger_sdk::configure(h.backend.clone());
    let details = runs::retrieve(&run.id).await.unwrap();
    assert_eq!(details.payload.data_type, "application/json");
    let payload: Value = serde_json::from_str(details.payload.data.as_deref().unwrap()).unwrap();
    assert_eq!(payload["small"], 42);
    assert_eq!(payload["byName"], json!({ "x": 1, "y": "1970-01-01T00:00:00.000Z" }));
    assert!(payload.get("gone").is_none(), "undefined fields are absent: {payload}");

    // A string payload is sent as text/plain, not JSON.
    let request = TriggerRequest {
        task: "ts-shout".into(),
        payload: Packet { data: Some("hello".into()), data_type: "text/plain".into() },
        options: EngineOptions::default(),
    };
    let run = h.backend.trigger(request).await.unwrap().run;
    let done = h.wait_final(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Completed, "{:?}", done.run.error);
    assert_eq!(output(&done), json!("HELLO"));

    // SuperJSON whose annotations do not fit its value fails the run without retrying.
    let request = TriggerRequest {
        task: "ts-shout".into(),
        payload: Packet {
            data: Some(r#"{"json":"x","meta":{"values":{"a.b":["bigint"]}}}"#.into()),
            data_type: SUPER_JSON.into(),
        },
        options: EngineOptions { max_attempts: Some(3), ..Default::default() },
    };
    let run = h.backend.trigger(request).await.unwrap().run;
    let done = h.wait_final(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.run.status, RunStatus::Failed);
    assert_eq!(done.run.attempt_number, 1);
    let error = serde_json::to_string(&done.run.error).unwrap();
    assert!(error.contains("TASK_INPUT_ERROR") && error.contains("SuperJSON"), "{error}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_http_a_typescript_trigger_reaches_a_rust_worker_as_plain_json() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let backend = Http::new(server.base_url(), &key, Some(project)).unwrap();
    let worker =
        Worker::builder().backend(backend.clone()).task(order_task()).build().unwrap().start().await.unwrap();

    let (token, _) = backend.create_token(TokenOptions::default()).await.unwrap();
    // The request body `tasks.trigger` sends: the SuperJSON string with its payloadType.
    let request = TriggerRequest {
        task: "ts-order".into(),
        payload: Packet { data: Some(order_with_token(&token.id)), data_type: SUPER_JSON.into() },
        options: EngineOptions::default(),
    };
    let run = backend.trigger(request).await.unwrap().run;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while backend.get_run(&run.id).await.unwrap().run.status != RunStatus::Waiting {
        assert!(tokio::time::Instant::now() < deadline, "the run never waited on its token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `wait.completeToken` sends `{data}` as plain JSON on this endpoint.
    let approval = json!({ "approved": true, "at": "1970-01-02T00:00:00.000Z", "amount": 10 });
    backend.complete_token(&token.id, Packet::json(&approval)).await.unwrap();

    trigger_sdk::configure(backend.clone());
    let details = runs::poll(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(details.run.status, RunStatus::Completed, "{:?}", details.run.error);
    let out: Value = serde_json::from_str(details.output.unwrap().data.as_deref().unwrap()).unwrap();
    assert_eq!(out, expected_output());
    // The server decodes SuperJSON for `runs.retrieve` too.
    let payload: Value = serde_json::from_str(details.payload.data.as_deref().unwrap()).unwrap();
    assert_eq!(payload["small"], 42);
    assert_eq!(payload["byName"]["x"], 1);
    worker.shutdown().await.unwrap();
}

/// PUTs (or GETs) with the hyper client the SDK itself uses.
async fn http(method: &str, url: &str, key: Option<&str>, content_type: &str, body: String) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url).header("content-type", content_type);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let response = client.request(req.body(Full::new(bytes::Bytes::from(body))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Big {
    at: String,
    n: u64,
    lines: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offloaded_payload_is_fetched_before_the_task_runs() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let backend = Http::new(server.base_url(), &key, Some(project)).unwrap();
    let big = task::<Big, Value>("ts-big").run(|big, _| async move {
        Ok::<_, TaskError>(
            json!({ "at": big.at, "n": big.n, "lines": big.lines.len(), "last": big.lines.last() }),
        )
    });
    let worker = Worker::builder().backend(backend.clone()).task(big).build().unwrap().start().await.unwrap();

    // What the TS SDK does with a payload of 128 KB or more: ask for an upload URL, PUT the
    // SuperJSON there, and trigger with the storage path as an `application/store` payload.
    let lines: Vec<String> = (0..2000).map(|i| format!("{i:04}-{}", "x".repeat(95))).collect();
    let superjson = json!({
        "json": { "at": "2024-05-06T07:08:09.000Z", "n": "123", "lines": lines },
        "meta": { "values": { "at": ["Date"], "n": ["bigint"] } },
    })
    .to_string();
    assert!(superjson.len() > 128 * 1024);
    let base = server.base_url().trim_end_matches('/').to_string();
    let (status, body) = http(
        "PUT",
        &format!("{base}/api/v2/packets/batch_x/0/payload.json"),
        Some(&key),
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let upload: Value = serde_json::from_str(&body).unwrap();
    let (status, body) =
        http("PUT", upload["presignedUrl"].as_str().unwrap(), None, SUPER_JSON, superjson).await;
    assert_eq!(status, 200, "{body}");
    let request = TriggerRequest {
        task: "ts-big".into(),
        payload: Packet {
            data: Some(upload["storagePath"].as_str().unwrap().into()),
            data_type: "application/store".into(),
        },
        options: EngineOptions::default(),
    };
    let run = backend.trigger(request).await.unwrap().run;

    trigger_sdk::configure(backend.clone());
    let details = runs::poll(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(details.run.status, RunStatus::Completed, "{:?}", details.run.error);
    let out: Value = serde_json::from_str(details.output.unwrap().data.as_deref().unwrap()).unwrap();
    assert_eq!(
        out,
        json!({ "at": "2024-05-06T07:08:09.000Z", "n": 123, "lines": 2000, "last": format!("1999-{}", "x".repeat(95)) })
    );
    // runs::retrieve fetches the offloaded payload too, and decodes it.
    let payload: Value = serde_json::from_str(details.payload.data.as_deref().unwrap()).unwrap();
    assert_eq!(payload["n"], 123);
    assert_eq!(payload["lines"].as_array().unwrap().len(), 2000);
    worker.shutdown().await.unwrap();
}
