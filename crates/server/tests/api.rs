//! The management API over real HTTP: every endpoint's response shape, the bad-input
//! matrix, and the auth matrix generated from the route table.

mod common;

use common::{assert_date, assert_fields, TestServer};
use hyper::Method;
use serde_json::{json, Value};
use trigger_server::routes::{table, Access};

const RUN_FIELDS: &[(&str, &str)] = &[
    ("id", "string"),
    ("status", "string"),
    ("taskIdentifier", "string"),
    ("isQueued", "boolean"),
    ("isExecuting", "boolean"),
    ("isWaiting", "boolean"),
    ("isCompleted", "boolean"),
    ("isSuccess", "boolean"),
    ("isFailed", "boolean"),
    ("isCancelled", "boolean"),
    ("isTest", "boolean"),
    ("createdAt", "date"),
    ("updatedAt", "date"),
    ("tags", "array"),
    ("costInCents", "number"),
    ("baseCostInCents", "number"),
    ("durationMs", "number"),
];

#[tokio::test]
async fn trigger_retrieve_list_and_manage_runs() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let key = t.dev_key.clone();

    // A trigger with every option the SDK sends.
    let payload =
        r#"{"json":{"hello":"world","at":"1970-01-01T00:00:00.000Z"},"meta":{"values":{"at":["Date"]}}}"#;
    let reply = t
        .post(
            "/api/v1/tasks/hello/trigger",
            &key,
            json!({
                "payload": payload,
                "options": {
                    "queue": { "name": "task/hello" }, "concurrencyKey": "u1", "payloadType": "application/super+json",
                    "idempotencyKey": "k1", "idempotencyKeyTTL": "5m", "idempotencyKeyOptions": { "key": "k1", "scope": "global" },
                    "delay": "1h", "ttl": "10m", "tags": ["a", "b"], "maxAttempts": 2, "metadata": { "m": 1 },
                    "maxDuration": 60, "machine": "small-2x", "priority": 10, "test": true,
                }
            }),
        )
        .await;
    let body = reply.expect(200);
    assert_fields(&body, &[("id", "string"), ("isCached", "boolean")]);
    assert_eq!(body["isCached"], false);
    let delayed = body["id"].as_str().unwrap().to_string();
    assert!(delayed.starts_with("run_"));

    // The same idempotency key returns the same run, cached.
    let again = t
        .post(
            "/api/v1/tasks/hello/trigger",
            &key,
            json!({ "payload": payload, "options": { "idempotencyKey": "k1" } }),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], delayed.as_str());
    assert_eq!(again["isCached"], true);

    // Retrieve: the full RetrieveRunResponse.
    let run = t.get(&format!("/api/v3/runs/{delayed}"), &key).await.expect(200);
    assert_fields(&run, RUN_FIELDS);
    assert_fields(
        &run,
        &[
            ("depth", "number"),
            ("triggerFunction", "string"),
            ("relatedRuns", "object"),
            ("attemptCount", "number"),
        ],
    );
    assert_eq!(run["status"], "DELAYED");
    assert_eq!(run["isQueued"], true);
    assert_eq!(run["isTest"], true);
    assert_eq!(run["triggerFunction"], "trigger");
    assert_eq!(run["tags"], json!(["a", "b"]));
    assert_eq!(run["ttl"], "10m");
    assert_eq!(run["idempotencyKey"], "k1");
    assert_date(&run["delayedUntil"]);
    assert_eq!(run["metadata"], json!({ "m": 1 }));
    // SuperJSON payloads are presented deserialized.
    assert_eq!(run["payload"], json!({ "hello": "world", "at": "1970-01-01T00:00:00.000Z" }));
    assert_eq!(run["costInCents"], 0);
    assert_eq!(run["attemptCount"], 0);
    assert_eq!(run["relatedRuns"]["children"], json!([]));

    // Reschedule a delayed run: RetrieveRunResponse with the new time.
    let moved = t
        .post(
            &format!("/api/v1/runs/{delayed}/reschedule"),
            &key,
            json!({ "delay": "2030-01-01T00:00:00.000Z" }),
        )
        .await
        .expect(200);
    assert_eq!(moved["delayedUntil"], "2030-01-01T00:00:00.000Z");
    assert_fields(&moved, RUN_FIELDS);

    // Tags: added up to 10, 422 beyond.
    let tagged =
        t.post(&format!("/api/v1/runs/{delayed}/tags"), &key, json!({ "tags": ["c"] })).await.expect(200);
    assert_fields(&tagged, &[("message", "string")]);
    let many: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    t.post(&format!("/api/v1/runs/{delayed}/tags"), &key, json!({ "tags": many }))
        .await
        .expect_error(422, "tags");
    assert_eq!(
        t.get(&format!("/api/v3/runs/{delayed}"), &key).await.expect(200)["tags"],
        json!(["a", "b", "c"])
    );

    // Metadata: operations applied in order, GET returns the object.
    let flushed = t
        .put(
            &format!("/api/v1/runs/{delayed}/metadata"),
            &key,
            json!({ "operations": [
                { "type": "set", "key": "progress", "value": 0.5 },
                { "type": "append", "key": "log", "value": "x" },
                { "type": "increment", "key": "m", "value": 2 },
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(flushed["metadata"], json!({ "m": 3, "progress": 0.5, "log": ["x"] }));
    let got = t.get(&format!("/api/v1/runs/{delayed}/metadata"), &key).await.expect(200);
    assert_eq!(got["metadata"], flushed["metadata"]);

    // Cancel → {id}; the run is CANCELED and a second reschedule is 422.
    let cancelled = t.post(&format!("/api/v2/runs/{delayed}/cancel"), &key, json!({})).await.expect(200);
    assert_eq!(cancelled, json!({ "id": delayed }));
    let run = t.get(&format!("/api/v3/runs/{delayed}"), &key).await.expect(200);
    assert_eq!(run["status"], "CANCELED");
    assert_eq!(
        (run["isCompleted"].clone(), run["isCancelled"].clone(), run["isFailed"].clone()),
        (json!(true), json!(true), json!(true))
    );
    assert_fields(&run["error"], &[("message", "string")]);
    t.post(&format!("/api/v1/runs/{delayed}/reschedule"), &key, json!({ "delay": "1h" }))
        .await
        .expect_error(422, "not delayed");

    // Replay (no body, and with the 4.8 override body) → {id} of a new run.
    let replayed = t
        .send(Method::POST, &format!("/api/v1/runs/{delayed}/replay"), Some(&key), None, Vec::new())
        .await
        .expect(200);
    let replay_id = replayed["id"].as_str().unwrap().to_string();
    assert_ne!(replay_id, delayed);
    let replayed = t
        .post(&format!("/api/v1/runs/{delayed}/replay"), &key, json!({ "tags": ["r"], "machine": "micro" }))
        .await
        .expect(200);
    let replay2 =
        t.get(&format!("/api/v3/runs/{}", replayed["id"].as_str().unwrap()), &key).await.expect(200);
    assert_eq!(replay2["tags"], json!(["r"]));
    assert_eq!(replay2["payload"], run["payload"]);
    t.post(&format!("/api/v1/runs/{delayed}/replay"), &key, json!({ "bogus": 1 }))
        .await
        .expect_error(422, "bogus");

    // Idempotency key reset → {id}; the key then starts a new run.
    t.post("/api/v1/idempotencyKeys/k2/reset", &key, json!({ "taskIdentifier": "hello" }))
        .await
        .expect_error(404, "k2");
    let first = t.trigger("hello", json!({ "payload": "{}", "options": { "idempotencyKey": "k2" } })).await;
    let reset = t
        .post("/api/v1/idempotencyKeys/k2/reset", &key, json!({ "taskIdentifier": "hello" }))
        .await
        .expect(200);
    assert_fields(&reset, &[("id", "string")]);
    let second = t.trigger("hello", json!({ "payload": "{}", "options": { "idempotencyKey": "k2" } })).await;
    assert_ne!(first, second);

    // List with filters and cursor pagination.
    let page1 = t.get("/api/v1/runs?page[size]=2", &key).await.expect(200);
    let data = page1["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for item in data {
        assert_fields(item, RUN_FIELDS);
        assert_fields(&item["env"], &[("id", "string"), ("name", "string")]);
        assert!(item.get("payload").is_none(), "list items carry no payload");
    }
    let next = page1["pagination"]["next"].as_str().expect("a next cursor").to_string();
    assert!(page1["pagination"].get("previous").is_none());
    let page2 = t.get(&format!("/api/v1/runs?page[size]=2&page[after]={next}"), &key).await.expect(200);
    let ids = |p: &Value| {
        p["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(ids(&page2).iter().all(|id| !ids(&page1).contains(id)));
    let previous = page2["pagination"]["previous"].as_str().expect("a previous cursor");
    let back = t.get(&format!("/api/v1/runs?page[size]=2&page[before]={previous}"), &key).await.expect(200);
    assert_eq!(ids(&back), ids(&page1));
    let canceled = t.get("/api/v1/runs?filter[status]=CANCELED", &key).await.expect(200);
    assert_eq!(ids(&canceled), vec![delayed.clone()]);
    let tagged = t.get("/api/v1/runs?filter[tag]=r&filter[taskIdentifier]=hello", &key).await.expect(200);
    assert_eq!(ids(&tagged), vec![replayed["id"].as_str().unwrap().to_string()]);
    t.get("/api/v1/runs?filter[status]=NOPE", &key).await.expect_error(422, "filter[status]");
    t.get("/api/v1/runs?page[size]=0", &key).await.expect_error(422, "page[size]");
    assert_eq!(t.get("/api/v1/runs?filter[schedule]=sched_1", &key).await.expect(200)["data"], json!([]));

    // Another environment's key sees none of these runs.
    t.get(&format!("/api/v3/runs/{delayed}"), &t.prod_key).await.expect_error(404, "");
    assert_eq!(t.get("/api/v1/runs", &t.prod_key).await.expect(200)["data"], json!([]));
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batches_stream_ndjson_items() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let key = t.dev_key.clone();

    let created =
        t.post("/api/v3/batches", &key, json!({ "runCount": 3, "idempotencyKey": "bk" })).await.expect(202);
    assert_fields(
        &created,
        &[("id", "string"), ("runCount", "number"), ("isCached", "boolean"), ("idempotencyKey", "string")],
    );
    assert_eq!(created["isCached"], false);
    let batch = created["id"].as_str().unwrap().to_string();
    let cached =
        t.post("/api/v3/batches", &key, json!({ "runCount": 3, "idempotencyKey": "bk" })).await.expect(202);
    assert_eq!((cached["id"].as_str(), cached["isCached"].clone()), (Some(batch.as_str()), json!(true)));

    let line = |i: u32| {
        json!({ "index": i, "task": "hello", "payload": format!("{{\"json\":{{\"n\":{i}}}}}"), "options": { "payloadType": "application/super+json" } }).to_string()
    };
    // Two of three items: not sealed yet, with the counts a client needs to resume.
    let body = format!("{}\n{}\n", line(0), line(1));
    let reply = t
        .send(
            Method::POST,
            &format!("/api/v3/batches/{batch}/items"),
            Some(&key),
            Some("application/x-ndjson"),
            body.into_bytes(),
        )
        .await
        .expect(200);
    assert_eq!(
        reply,
        json!({ "id": batch, "itemsAccepted": 2, "itemsDeduplicated": 0, "sealed": false, "enqueuedCount": 2, "expectedCount": 3 })
    );
    // The retried stream: two deduplicated, the last one accepted, sealed.
    let body = format!("{}\n{}\n{}", line(0), line(1), line(2));
    let reply = t
        .send(
            Method::POST,
            &format!("/api/v3/batches/{batch}/items"),
            Some(&key),
            Some("application/ndjson"),
            body.into_bytes(),
        )
        .await
        .expect(200);
    assert_eq!(reply, json!({ "id": batch, "itemsAccepted": 1, "itemsDeduplicated": 2, "sealed": true }));

    let retrieved = t.get(&format!("/api/v2/batches/{batch}"), &key).await.expect(200);
    assert_fields(
        &retrieved,
        &[
            ("id", "string"),
            ("status", "string"),
            ("createdAt", "date"),
            ("updatedAt", "date"),
            ("runCount", "number"),
            ("runs", "array"),
            ("processing", "object"),
        ],
    );
    assert_eq!(retrieved["runCount"], 3);
    assert_eq!(retrieved["runs"].as_array().unwrap().len(), 3);
    assert_eq!(retrieved["processing"]["errors"], json!([]));
    let first = retrieved["runs"][0].as_str().unwrap();
    let run = t.get(&format!("/api/v3/runs/{first}"), &key).await.expect(200);
    assert_eq!(run["payload"], json!({ "n": 0 }));
    assert_eq!(run["batchId"], batch.as_str());
    assert_eq!(run["triggerFunction"], "batchTrigger");

    // Bad input: wrong content type, a malformed line, an index out of range.
    let path = format!("/api/v3/batches/{batch}/items");
    t.send(Method::POST, &path, Some(&key), Some("application/json"), b"{}".to_vec())
        .await
        .expect_error(415, "ndjson");
    let other = t.post("/api/v3/batches", &key, json!({ "runCount": 1 })).await.expect(202);
    let other_path = format!("/api/v3/batches/{}/items", other["id"].as_str().unwrap());
    t.send(Method::POST, &other_path, Some(&key), Some("application/x-ndjson"), b"{nope\n".to_vec())
        .await
        .expect_error(400, "line 1");
    t.send(
        Method::POST,
        &other_path,
        Some(&key),
        Some("application/x-ndjson"),
        format!("{}\n", line(5)).into_bytes(),
    )
    .await
    .expect_error(422, "index");
    t.send(
        Method::POST,
        &other_path,
        Some(&key),
        Some("application/x-ndjson"),
        b"{\"index\":0,\"task\":\"hello\",\"options\":{\"ttl\":-1}}\n".to_vec(),
    )
    .await
    .expect_error(422, "line 1: options.ttl");
    t.get(&format!("/api/v2/batches/{batch}"), &t.prod_key).await.expect_error(404, "");
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn waitpoint_tokens_complete_by_api_and_callback() {
    let t = TestServer::start().await;
    let key = t.dev_key.clone();

    let created = t
        .post(
            "/api/v1/waitpoints/tokens",
            &key,
            json!({ "timeout": "1h", "tags": ["x"], "idempotencyKey": "tk", "idempotencyKeyTTL": "1h" }),
        )
        .await
        .expect(200);
    assert_fields(&created, &[("id", "string"), ("isCached", "boolean"), ("url", "string")]);
    let id = created["id"].as_str().unwrap().to_string();
    let url = created["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/api/v1/waitpoints/tokens/{id}/callback/", t.base)), "{url}");
    let cached =
        t.post("/api/v1/waitpoints/tokens", &key, json!({ "idempotencyKey": "tk" })).await.expect(200);
    assert_eq!((cached["id"].as_str(), cached["isCached"].clone()), (Some(id.as_str()), json!(true)));

    let token = t.get(&format!("/api/v1/waitpoints/tokens/{id}"), &key).await.expect(200);
    assert_fields(
        &token,
        &[
            ("id", "string"),
            ("url", "string"),
            ("status", "string"),
            ("tags", "array"),
            ("createdAt", "date"),
            ("timeoutAt", "date"),
        ],
    );
    assert_eq!(token["status"], "WAITING");
    let listed = t.get("/api/v1/waitpoints/tokens?filter[status]=WAITING", &key).await.expect(200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_fields(&listed["pagination"], &[]);

    let done = t
        .post(
            &format!("/api/v1/waitpoints/tokens/{id}/complete"),
            &key,
            json!({ "data": { "approved": true } }),
        )
        .await
        .expect(200);
    assert_eq!(done, json!({ "success": true }));
    let token = t.get(&format!("/api/v1/waitpoints/tokens/{id}"), &key).await.expect(200);
    assert_eq!(token["status"], "COMPLETED");
    assert_eq!(token["output"], r#"{"approved":true}"#);
    assert_eq!(token["outputType"], "application/json");
    assert_eq!(token["outputIsError"], false);
    assert_date(&token["completedAt"]);
    assert_eq!(
        t.get("/api/v1/waitpoints/tokens?filter[status]=WAITING", &key).await.expect(200)["data"],
        json!([])
    );
    assert_eq!(
        t.get("/api/v1/waitpoints/tokens?filter[status]=COMPLETED", &key).await.expect(200)["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The callback URL is public; the secret in it is the credential.
    let second = t.post("/api/v1/waitpoints/tokens", &key, json!({})).await.expect(200);
    let second_id = second["id"].as_str().unwrap();
    let callback = second["url"].as_str().unwrap().strip_prefix(&t.base).unwrap().to_string();
    let wrong = format!("/api/v1/waitpoints/tokens/{second_id}/callback/wrong");
    t.send(Method::POST, &wrong, None, Some("application/json"), b"{}".to_vec()).await.expect_error(404, "");
    let ok = t
        .send(Method::POST, &callback, None, Some("application/json"), br#"{"from":"webhook"}"#.to_vec())
        .await
        .expect(200);
    assert_eq!(ok, json!({ "success": true }));
    let token = t.get(&format!("/api/v1/waitpoints/tokens/{second_id}"), &key).await.expect(200);
    assert_eq!(token["output"], r#"{"from":"webhook"}"#);

    t.get(&format!("/api/v1/waitpoints/tokens/{id}"), &t.prod_key).await.expect_error(404, "");
    t.post("/api/v1/waitpoints/tokens", &key, json!({ "idempotencyKeyTTL": "1w" }))
        .await
        .expect_error(422, "idempotencyKeyTTL");
    t.server.shutdown().await.unwrap();
}

/// Each bad input gets its status and an `{error}` naming the problem, and stores nothing.
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let key = t.dev_key.clone();
    let run = t.trigger("hello", json!({ "payload": "{}" })).await;
    let before = t.run_count().await;
    let trigger = "/api/v1/tasks/hello/trigger";

    /// Name, content type, body, expected status, and what the error must mention.
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", Some("application/json"), b"{\"payload\":".to_vec(), 400, "malformed JSON"),
        ("wrong content type", Some("text/plain"), b"{}".to_vec(), 415, "application/json"),
        ("no content type", None, b"{}".to_vec(), 415, "application/json"),
        (
            "payload over 3 MiB",
            Some("application/json"),
            json!({ "payload": "x".repeat(3 * 1024 * 1024 + 1) }).to_string().into_bytes(),
            413,
            "payload",
        ),
        (
            "metadata over 256 KiB",
            Some("application/json"),
            json!({ "options": { "metadata": { "big": "x".repeat(256 * 1024) } } }).to_string().into_bytes(),
            413,
            "metadata",
        ),
        (
            "bad delay",
            Some("application/json"),
            json!({ "options": { "delay": "soon" } }).to_string().into_bytes(),
            422,
            "options.delay",
        ),
        (
            "bad ttl",
            Some("application/json"),
            json!({ "options": { "ttl": "forever" } }).to_string().into_bytes(),
            422,
            "options.ttl",
        ),
        (
            "11 tags",
            Some("application/json"),
            json!({ "options": { "tags": (0..11).map(|i| format!("t{i}")).collect::<Vec<_>>() } })
                .to_string()
                .into_bytes(),
            422,
            "tags",
        ),
        (
            "bad idempotency TTL",
            Some("application/json"),
            json!({ "options": { "idempotencyKey": "k", "idempotencyKeyTTL": "5w" } })
                .to_string()
                .into_bytes(),
            422,
            "options.idempotencyKeyTTL",
        ),
        (
            "wrong type",
            Some("application/json"),
            json!({ "options": { "maxAttempts": "three" } }).to_string().into_bytes(),
            422,
            "options.maxAttempts",
        ),
        (
            "unknown machine",
            Some("application/json"),
            json!({ "options": { "machine": "huge" } }).to_string().into_bytes(),
            422,
            "options.machine",
        ),
    ];
    for (name, content_type, body, status, needle) in cases {
        let reply = t.send(Method::POST, trigger, Some(&key), content_type, body).await;
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.body);
        reply.expect_error(status, needle);
    }
    t.post("/api/v1/tasks/nope/trigger", &key, json!({ "payload": "{}" })).await.expect_error(404, "nope");
    t.post("/api/v3/batches", &key, json!({ "runCount": 1001 })).await.expect_error(400, "runCount");
    t.post("/api/v3/batches", &key, json!({ "runCount": 0 })).await.expect_error(422, "runCount");
    t.post("/api/v3/batches", &key, json!({ "runCount": "many" })).await.expect_error(422, "runCount");
    let big = json!({ "operations": [{ "type": "set", "key": "big", "value": "x".repeat(256 * 1024) }] });
    t.put(&format!("/api/v1/runs/{run}/metadata"), &key, big).await.expect_error(413, "metadata");
    t.put(&format!("/api/v1/runs/{run}/metadata"), &key, json!({ "operations": [{ "type": "explode" }] }))
        .await
        .expect_error(422, "operations");
    t.get("/api/v3/runs/run_doesnotexist", &key).await.expect_error(404, "run_doesnotexist");
    t.send(Method::GET, "/api/v9/nothing", Some(&key), None, Vec::new()).await.expect_error(404, "route");
    t.send(Method::DELETE, "/api/v3/runs/x", Some(&key), None, Vec::new()).await.expect_error(405, "Method");

    assert_eq!(t.run_count().await, before, "a refused request stored a run");
    assert_eq!(t.get(&format!("/api/v1/runs/{run}/metadata"), &key).await.expect(200)["metadata"], json!({}));
    t.server.shutdown().await.unwrap();
}

fn concrete(path: &str, run: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{runId}" => run.to_string(),
            "{projectRef}" => "proj_unknown".into(),
            "{env}" => "dev".into(),
            s if s.starts_with('{') => "x".into(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A body that gets a route past validation, so that what answers is the run lookup.
fn valid_body(path: &str) -> Value {
    if path.ends_with("/tags") {
        json!({ "tags": ["a"] })
    } else if path.ends_with("/reschedule") {
        json!({ "delay": "1h" })
    } else if path.ends_with("/attempts/complete") {
        json!({ "completion": { "ok": true, "id": "x", "outputType": "application/json" } })
    } else if path.ends_with("/wait/duration") {
        json!({ "date": "2030-01-01T00:00:00.000Z" })
    } else {
        json!({})
    }
}

/// Generated from the route table: every classified route enforces its class, so a new
/// route is covered as soon as it is added.
#[tokio::test]
async fn auth_matrix_follows_the_route_table() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let run = t.trigger("hello", json!({ "payload": "{}" })).await;
    let routes = table();
    assert!(routes.len() >= 40, "the table lists every route");
    for spec in &routes {
        let path = concrete(spec.path, &run);
        let send = |key: Option<String>| {
            let (method, path, ct) = (spec.method.clone(), path.clone(), Some("application/json"));
            let body = valid_body(spec.path).to_string().into_bytes();
            let t = &t;
            async move { t.send(method, &path, key.as_deref(), ct, body).await }
        };
        match spec.access {
            Access::Public => {
                let reply = send(None).await;
                assert!(
                    ![401, 403].contains(&reply.status.as_u16()),
                    "{} {} is public: {}",
                    spec.method,
                    spec.path,
                    reply.body
                );
            }
            Access::Env => {
                send(None).await.expect_error(401, "Authorization");
                send(Some("tr_dev_notarealkey000000000000".into())).await.expect_error(401, "Invalid");
                send(Some(t.pat.clone())).await.expect_error(403, "secret key");
                if spec.path.contains("{runId}") {
                    let reply = send(Some(t.prod_key.clone())).await;
                    assert_eq!(
                        reply.status.as_u16(),
                        404,
                        "{} {} with another env's key: {}",
                        spec.method,
                        spec.path,
                        reply.body
                    );
                }
            }
            Access::Pat => {
                send(None).await.expect_error(401, "Authorization");
                send(Some("tr_pat_bogus".into())).await.expect_error(401, "Invalid");
                send(Some(t.dev_key.clone())).await.expect_error(403, "personal access token");
            }
        }
    }
    // The OpenAPI document lists exactly the management routes of the table.
    let doc = t.send(Method::GET, "/api/openapi.json", None, None, Vec::new()).await.expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for spec in routes.iter().filter(|s| s.group == trigger_server::routes::Group::Management) {
        let op = &paths[spec.path][spec.method.as_str().to_ascii_lowercase()];
        assert_eq!(op["summary"], spec.summary, "{} {}", spec.method, spec.path);
    }
    assert!(paths.keys().all(|p| routes.iter().any(|s| s.path == p)));
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_timezones_and_cli_bootstrap() {
    let t = TestServer::start().await;
    assert_eq!(
        t.send(Method::GET, "/healthz", None, None, Vec::new()).await.expect(200),
        json!({ "ok": true })
    );
    assert_eq!(
        t.send(Method::GET, "/readyz", None, None, Vec::new()).await.expect(200),
        json!({ "ok": true })
    );
    let zones = t.send(Method::GET, "/api/v1/timezones", None, None, Vec::new()).await.expect(200);
    assert!(zones["timezones"].as_array().unwrap().contains(&json!("UTC")));
    assert!(zones["timezones"].as_array().unwrap().contains(&json!("Europe/London")));
    let zones =
        t.send(Method::GET, "/api/v1/timezones?excludeUtc=true", None, None, Vec::new()).await.expect(200);
    assert!(!zones["timezones"].as_array().unwrap().contains(&json!("UTC")));

    // The CLI's PAT calls: whoami, then the dev environment's key.
    let me = t.get(&format!("/api/v2/whoami?projectRef={}", t.project_ref), &t.pat).await.expect(200);
    assert_fields(
        &me,
        &[("userId", "string"), ("email", "string"), ("dashboardUrl", "string"), ("project", "object")],
    );
    assert!(me["email"].as_str().unwrap().contains('@'));
    assert_fields(&me["project"], &[("name", "string"), ("url", "string"), ("orgTitle", "string")]);
    let env = t.get(&format!("/api/v1/projects/{}/dev", t.project_ref), &t.pat).await.expect(200);
    assert_fields(
        &env,
        &[("apiKey", "string"), ("name", "string"), ("apiUrl", "string"), ("projectId", "string")],
    );
    assert_eq!(env["apiKey"], t.dev_key.as_str(), "the key created at bootstrap is handed to the CLI");
    assert_eq!(env["apiUrl"], t.base.as_str());
    // A prod key is created on demand and works.
    let prod = t.get(&format!("/api/v1/projects/{}/prod", t.project_ref), &t.pat).await.expect(200);
    let prod_key = prod["apiKey"].as_str().unwrap();
    assert!(prod_key.starts_with("tr_prod_"));
    t.get("/api/v1/runs", prod_key).await.expect(200);
    t.get("/api/v1/projects/proj_nope/dev", &t.pat).await.expect_error(404, "proj_nope");
    t.get(&format!("/api/v1/projects/{}/nope", t.project_ref), &t.pat).await.expect_error(404, "nope");

    // Env vars for the dev worker's task processes.
    let vars = t.get(&format!("/api/v1/projects/{}/envvars", t.project_ref), &t.dev_key).await.expect(200);
    assert_eq!(vars["variables"]["TRIGGER_API_URL"], t.base.as_str());
    assert_eq!(vars["variables"]["TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT"], format!("{}/otel", t.base));
    t.get("/api/v1/projects/proj_other/envvars", &t.dev_key).await.expect_error(404, "proj_other");

    // Revoking through the server takes effect at once, despite the auth cache.
    let keys = t
        .server
        .state()
        .engine()
        .list_api_keys(Some(&t.server.bootstrap().tenancy.environments[0].id))
        .await
        .unwrap();
    for k in keys {
        t.server.state().revoke_api_key(&k.id).await.unwrap();
    }
    t.get("/api/v1/runs", &t.dev_key).await.expect_error(401, "Invalid");
    t.server.shutdown().await.unwrap();
}

/// Offloaded payloads: presign, upload to the signed URL, trigger with the storage path,
/// and read it back through the run's presigned URL.
#[tokio::test]
async fn offloaded_packets_round_trip_through_signed_urls() {
    let t = TestServer::start().await;
    t.register_worker().await;
    let key = t.dev_key.clone();

    let presigned = t
        .send(
            Method::PUT,
            "/api/v2/packets/run_x%2Fpayload.json",
            Some(&key),
            Some("application/json"),
            Vec::new(),
        )
        .await
        .expect(200);
    assert_fields(&presigned, &[("presignedUrl", "string"), ("storagePath", "string")]);
    assert_eq!(presigned["storagePath"], "run_x/payload.json");
    let upload = presigned["presignedUrl"].as_str().unwrap().strip_prefix(&t.base).unwrap().to_string();
    let big = json!({ "big": "x".repeat(200 * 1024) }).to_string();
    t.send(Method::PUT, &upload, None, Some("application/json"), big.clone().into_bytes()).await.expect(200);
    // A tampered signature is refused and stores nothing.
    let tampered = upload.replace("sig=", "sig=0");
    t.send(Method::PUT, &tampered, None, Some("application/json"), b"{}".to_vec())
        .await
        .expect_error(404, "Packet");

    let run = t
        .trigger(
            "hello",
            json!({ "payload": "run_x/payload.json", "options": { "payloadType": "application/store" } }),
        )
        .await;
    let retrieved = t.get(&format!("/api/v3/runs/{run}"), &key).await.expect(200);
    assert!(retrieved.get("payload").is_none());
    let download = retrieved["payloadPresignedUrl"]
        .as_str()
        .expect("a presigned payload URL")
        .strip_prefix(&t.base)
        .unwrap()
        .to_string();
    let response = t.raw(Method::GET, &download, None, None, Vec::new()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    use http_body_util::BodyExt;
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), big.as_bytes());

    let by_run = t.get(&format!("/api/v1/runs/{run}/packets/payload"), &key).await.expect(200);
    assert_fields(&by_run, &[("presignedUrl", "string")]);
    t.get(&format!("/api/v1/runs/{run}/packets/output"), &key).await.expect_error(404, "output");
    t.get("/api/v1/packets/run_x%2Fpayload.json", &key).await.expect(200);
    t.get("/api/v1/packets/run_x%2Fpayload.json", &t.prod_key).await.expect_error(404, "Packet");
    t.send(Method::PUT, "/api/v1/tasks/hello/trigger", Some(&key), None, Vec::new())
        .await
        .expect_error(405, "Method");
    t.post("/api/v1/tasks/hello/trigger", &key, json!({ "options": { "payloadType": "application/store" } }))
        .await
        .expect_error(422, "payload");
    t.server.shutdown().await.unwrap();
}

/// A retried SDK request (same `x-trigger-request-idempotency-key`) gets the first answer
/// instead of a second run or batch.
#[tokio::test]
async fn retried_requests_are_answered_once() {
    use http_body_util::BodyExt;
    let t = TestServer::start().await;
    t.register_worker().await;
    let send = |path: &'static str, request_key: &'static str, body: Value| {
        let t = &t;
        async move {
            let headers = [("x-trigger-request-idempotency-key", request_key)];
            let r = t
                .raw_with(
                    Method::POST,
                    path,
                    Some(&t.dev_key),
                    Some("application/json"),
                    &headers,
                    body.to_string().into_bytes(),
                )
                .await;
            let status = r.status().as_u16();
            let body: Value =
                serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (status, body)
        }
    };
    let first = send("/api/v1/tasks/hello/trigger", "req-1", json!({ "payload": "{}" })).await;
    let retry = send("/api/v1/tasks/hello/trigger", "req-1", json!({ "payload": "{}" })).await;
    let other = send("/api/v1/tasks/hello/trigger", "req-2", json!({ "payload": "{}" })).await;
    assert_eq!(first.0, 200);
    assert_eq!(first, retry);
    assert_ne!(first.1["id"], other.1["id"]);
    assert_eq!(t.run_count().await, 2);
    // Another environment's request with the same key is its own request.
    let headers = [("x-trigger-request-idempotency-key", "req-1")];
    let prod = t
        .raw_with(
            Method::POST,
            "/api/v3/batches",
            Some(&t.prod_key),
            Some("application/json"),
            &headers,
            br#"{"runCount":1}"#.to_vec(),
        )
        .await;
    assert_eq!(prod.status(), 202);

    let batch = send("/api/v3/batches", "req-3", json!({ "runCount": 2 })).await;
    let again = send("/api/v3/batches", "req-3", json!({ "runCount": 2 })).await;
    assert_eq!((batch.0, &batch.1["id"]), (again.0, &again.1["id"]));
    assert_eq!(batch.0, 202);
    t.server.shutdown().await.unwrap();
}
