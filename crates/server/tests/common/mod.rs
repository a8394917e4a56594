//! A real server on 127.0.0.1:0 with an in-memory store, and a small HTTP client.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use trigger_engine::{ApiKeyKind, EnvironmentType};
use trigger_server::{serve, Database, ServeOptions, Server};

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub dev_key: String,
    pub prod_key: String,
    pub pat: String,
    pub project_ref: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts an error status with an `{error}` body whose message contains `needle`.
    #[track_caller]
    pub fn expect_error(self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        let message =
            self.body["error"].as_str().unwrap_or_else(|| panic!("no error string in {}", self.body));
        assert!(message.contains(needle), "error {message:?} does not mention {needle:?}");
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServeOptions::default()).await
    }

    /// A server with `options`, on a private in-memory database and a free local port.
    pub async fn start_with(options: ServeOptions) -> TestServer {
        let server = serve(ServeOptions {
            database: Database::Memory,
            host: "127.0.0.1".into(),
            port: 0,
            public_url: None,
            drain_timeout: Duration::from_secs(2),
            ..options
        })
        .await
        .expect("server starts");
        let boot = server.bootstrap().clone();
        let prod = boot.tenancy.environment(EnvironmentType::Production).unwrap().id.clone();
        let (_, prod_key) =
            server.state().engine().create_api_key(ApiKeyKind::Secret, Some(&prod), "test").await.unwrap();
        TestServer {
            base: format!("http://{}", server.local_addr()),
            dev_key: boot.dev_key.expect("a fresh dev key"),
            pat: boot.personal_access_token.expect("a fresh PAT"),
            project_ref: boot.tenancy.project.external_ref.clone(),
            prod_key,
            server,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response<Incoming> {
        self.raw_with(method, path, key, content_type, &[], body).await
    }

    pub async fn raw_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response<Incoming> {
        let mut req = Request::builder().method(method).uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("request")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let response = self.raw(method, path, key, content_type, body).await;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.send(Method::GET, path, Some(key), None, Vec::new()).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(key), Some("application/json"), body.to_string().into_bytes())
            .await
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(key), Some("application/json"), body.to_string().into_bytes()).await
    }

    /// Registers a worker version with tasks `hello`, `parent` and `child`.
    pub async fn register_worker(&self) -> Value {
        let body = json!({
            "localOnly": true,
            "engine": "V2",
            "supportsLazyAttempts": true,
            "metadata": {
                "packageVersion": "4.8.3",
                "cliPackageVersion": "4.8.3",
                "contentHash": "hash-1",
                "runtime": "node",
                "tasks": [
                    { "id": "hello", "filePath": "src/trigger/hello.ts", "exportName": "hello", "machine": { "preset": "small-2x" } },
                    { "id": "parent", "filePath": "src/trigger/parent.ts", "retry": { "maxAttempts": 1 } },
                    { "id": "child", "filePath": "src/trigger/child.ts", "queue": { "name": "children", "concurrencyLimit": 5 } },
                ],
                "queues": [{ "name": "children", "concurrencyLimit": 5 }],
                "sourceFiles": [],
            }
        });
        self.post(&format!("/api/v1/projects/{}/background-workers", self.project_ref), &self.dev_key, body)
            .await
            .expect(200)
    }

    pub async fn trigger(&self, task: &str, body: Value) -> String {
        let reply =
            self.post(&format!("/api/v1/tasks/{task}/trigger"), &self.dev_key, body).await.expect(200);
        reply["id"].as_str().unwrap().to_string()
    }

    pub async fn run_count(&self) -> usize {
        let body = self.get("/api/v1/runs?page[size]=100", &self.dev_key).await.expect(200);
        body["data"].as_array().unwrap().len()
    }

    /// Dequeues until `run` is handed out (other runs are left claimed), within 10 s.
    pub async fn dequeue_run(&self, worker: &str, run: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let body = self
                .post(
                    "/engine/v1/dev/dequeue",
                    &self.dev_key,
                    json!({ "currentWorker": worker, "oldWorkers": [], "timeoutMs": 500 }),
                )
                .await
                .expect(200);
            if let Some(m) =
                body["dequeuedMessages"].as_array().unwrap().iter().find(|m| m["run"]["friendlyId"] == run)
            {
                return m.clone();
            }
        }
        panic!("run {run} was never dequeued");
    }

    /// Polls a run's latest snapshot until `pred` holds, within 10 s.
    pub async fn wait_for_snapshot(&self, run: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self
                .get(&format!("/engine/v1/dev/runs/{run}/snapshots/latest"), &self.dev_key)
                .await
                .expect(200);
            if pred(&body["execution"]) {
                return body["execution"].clone();
            }
            assert!(Instant::now() < deadline, "snapshot condition never held; last: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asserts a value is an RFC 3339 date-time string.
#[track_caller]
pub fn assert_date(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("expected a date string, got {v}"));
    assert!(trigger_server::wire::parse_date(s).is_some() && s.contains('T'), "not a date: {s}");
}

/// Asserts each key is present with the given JSON type.
#[track_caller]
pub fn assert_fields(v: &Value, fields: &[(&str, &str)]) {
    for (key, kind) in fields {
        let field = v.get(*key).unwrap_or_else(|| panic!("missing field {key} in {v}"));
        let ok = match *kind {
            "string" => field.is_string(),
            "number" => field.is_number(),
            "boolean" => field.is_boolean(),
            "array" => field.is_array(),
            "object" => field.is_object(),
            "date" => {
                assert_date(field);
                true
            }
            other => panic!("unknown kind {other}"),
        };
        assert!(ok, "field {key} is not a {kind}: {field}");
    }
}
