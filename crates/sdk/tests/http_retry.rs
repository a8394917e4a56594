//! The HTTP backend's retries against a real server on a real socket, through a small TCP
//! proxy that injects faults per request: error answers (503 with `Retry-After`, 500),
//! connections dropped before the server saw the request, and answers lost after the
//! server acted on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use trigger_engine::{
    MetadataOp, MetadataUpdate, Packet, Page, RunFilter, TaskManifest, TriggerOptions, TriggerRequest,
    WorkerManifest,
};
use trigger_sdk::backend::{Backend, Http, HttpOptions, RequestRetry};
use trigger_server::{serve, Database, ServeOptions};

#[derive(Debug, Clone)]
enum Fault {
    /// Answer with this status (and `Retry-After`), without asking the server.
    Status(u16, Option<&'static str>),
    /// Pass the request on, then close without answering: the server acted, the client
    /// never hears of it.
    LoseAnswer,
}

/// A request as the proxy saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    request_key: Option<String>,
}

#[derive(Default)]
struct Proxy {
    /// Faults for requests whose path contains the first string, in order.
    plan: Mutex<VecDeque<(&'static str, Fault)>>,
    seen: Mutex<Vec<Seen>>,
}

impl Proxy {
    fn inject(&self, path_part: &'static str, faults: impl IntoIterator<Item = Fault>) {
        self.plan.lock().unwrap().extend(faults.into_iter().map(|f| (path_part, f)));
    }

    fn seen(&self, path_part: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path.contains(path_part)).cloned().collect()
    }

    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let at = plan.iter().position(|(part, _)| path.contains(part))?;
        plan.remove(at).map(|(_, f)| f)
    }

    /// One request per connection: every answer closes the connection.
    async fn handle(self: Arc<Self>, client: TcpStream, upstream: String) -> std::io::Result<()> {
        let mut client = BufReader::new(client);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if client.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let header = |name: &str| {
            head.iter().skip(1).find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        client.read_exact(&mut body).await?;
        let path = head[0].split_whitespace().nth(1).unwrap_or_default().to_string();
        let request_key = header("x-trigger-request-idempotency-key");
        self.seen.lock().unwrap().push(Seen { path: path.clone(), request_key });
        let fault = self.take_fault(&path);
        if let Some(Fault::Status(code, retry_after)) = &fault {
            let body = r#"{"error":"injected by the test proxy"}"#;
            let retry_after = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n{body}",
                body.len()
            );
            return client.get_mut().write_all(answer.as_bytes()).await;
        }
        let mut request = String::new();
        for line in &head {
            if !line.to_ascii_lowercase().starts_with("connection:") {
                request.push_str(line);
                request.push_str("\r\n");
            }
        }
        request.push_str("connection: close\r\n\r\n");
        let mut server = TcpStream::connect(&upstream).await?;
        server.write_all(request.as_bytes()).await?;
        server.write_all(&body).await?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        if matches!(fault, Some(Fault::LoseAnswer)) {
            return Ok(());
        }
        client.get_mut().write_all(&answer).await
    }
}

async fn start_proxy(upstream: String) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let p = proxy.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(p.clone().handle(socket, upstream.clone()));
        }
    });
    (proxy, url)
}

fn quick(max_attempts: u32) -> HttpOptions {
    HttpOptions {
        retry: RequestRetry {
            max_attempts,
            min_timeout: Duration::from_millis(10),
            max_timeout: Duration::from_millis(200),
            factor: 2.0,
            randomize: false,
        },
        ..Default::default()
    }
}

fn trigger_request() -> TriggerRequest {
    TriggerRequest {
        task: "retry-me".into(),
        payload: Packet::json(&json!({ "n": 1 })),
        options: TriggerOptions::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_are_bounded_never_repeat_an_action_and_leave_4xx_alone() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let upstream = server.base_url().trim_start_matches("http://").trim_end_matches('/').to_string();
    let (proxy, url) = start_proxy(upstream).await;
    // The task exists (a worker version declares it) but nothing runs it.
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let direct = Http::new(server.base_url(), &key, Some(project)).unwrap();
    let manifest = WorkerManifest {
        content_hash: "retry-test".into(),
        sdk_version: None,
        cli_version: None,
        tasks: vec![TaskManifest::new("retry-me")],
        queues: Vec::new(),
    };
    direct.register_worker(manifest).await.unwrap();
    let backend = Http::with_options(&url, &key, None, quick(4)).unwrap();
    let runs_of_task = || async {
        let filter = RunFilter { tasks: vec!["retry-me".into()], ..Default::default() };
        backend.list_runs(filter, Page { size: 100, ..Default::default() }).await.unwrap()
    };

    // A 503, then an answer lost after the server created the run: the third attempt
    // carries the same request key and gets the first run back.
    proxy.inject("/trigger", [Fault::Status(503, Some("0")), Fault::LoseAnswer]);
    let triggered = backend.trigger(trigger_request()).await.unwrap();
    let seen = proxy.seen("/trigger");
    assert_eq!(seen.len(), 3, "{seen:?}");
    let first_key = seen[0].request_key.clone().expect("triggers carry a request key");
    assert!(seen.iter().all(|s| s.request_key.as_deref() == Some(first_key.as_str())), "{seen:?}");
    let runs = runs_of_task().await;
    assert_eq!(runs.len(), 1, "one run for one trigger: {runs:?}");
    assert_eq!(runs[0].id, triggered.run.id);

    // A second trigger is a new logical request with a new key.
    let second = backend.trigger(trigger_request()).await.unwrap();
    assert_ne!(second.run.id, triggered.run.id);
    let seen = proxy.seen("/trigger");
    assert_eq!(seen.len(), 4);
    assert_ne!(seen[3].request_key.as_deref(), Some(first_key.as_str()));
    assert_eq!(runs_of_task().await.len(), 2);

    // Attempts are bounded: four 500s and the call fails, saying how often it tried.
    proxy.inject("/trigger", (0..4).map(|_| Fault::Status(500, None)));
    let err = backend.trigger(trigger_request()).await.unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("after 4 attempts"), "{err}");
    assert_eq!(proxy.seen("/trigger").len(), 8);
    assert_eq!(runs_of_task().await.len(), 2);

    // A 4xx is final: one request.
    let err = backend.get_run("run_doesnotexist").await.unwrap_err();
    assert!(matches!(err, trigger_sdk::Error::Engine(trigger_engine::Error::NotFound(_))), "{err}");
    assert_eq!(proxy.seen("run_doesnotexist").len(), 1);
    let lists = proxy.seen("/runs?").len();
    proxy.inject("/runs?", [Fault::Status(422, None)]);
    let filter = RunFilter { tasks: vec!["retry-me".into()], ..Default::default() };
    assert!(backend.list_runs(filter, Default::default()).await.is_err());
    assert_eq!(proxy.seen("/runs?").len(), lists + 1, "a 422 is not sent again");

    // Metadata operations are not idempotent: an error answer is retried (the server did
    // nothing), a lost answer is not (the server may have applied them).
    let run = triggered.run.id.clone();
    let increment = || MetadataUpdate {
        operations: vec![MetadataOp::Increment { key: "count".into(), value: 1.0 }],
        ..Default::default()
    };
    proxy.inject("/metadata", [Fault::Status(503, Some("0"))]);
    backend.update_metadata(&run, increment()).await.unwrap();
    assert_eq!(proxy.seen("/metadata").len(), 2);
    proxy.inject("/metadata", [Fault::LoseAnswer]);
    assert!(backend.update_metadata(&run, increment()).await.is_err());
    assert_eq!(proxy.seen("/metadata").len(), 3, "not sent again after a lost answer");
    let metadata: serde_json::Value =
        serde_json::from_str(&backend.get_run(&run).await.unwrap().run.metadata.unwrap()).unwrap();
    assert_eq!(metadata["count"], json!(2), "each increment applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_and_a_refused_connection_is_retried() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let upstream = server.base_url().trim_start_matches("http://").trim_end_matches('/').to_string();
    let (proxy, url) = start_proxy(upstream).await;
    // Backoff alone would wait 10 ms; the server asks for a second.
    let mut options = quick(3);
    options.retry.max_timeout = Duration::from_secs(5);
    let backend = Http::with_options(&url, &key, None, options).unwrap();
    proxy.inject("/api/v1/runs", [Fault::Status(503, Some("1"))]);
    let started = Instant::now();
    backend.list_runs(RunFilter::default(), Default::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(proxy.seen("/api/v1/runs").len(), 2);

    // Nothing listens: connection errors are retried, then reported.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let backend = Http::with_options(&dead, &key, None, quick(3)).unwrap();
    let started = Instant::now();
    let err = backend.list_runs(RunFilter::default(), Default::default()).await.unwrap_err().to_string();
    assert!(err.contains("after 3 attempts"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(30), "10 ms + 20 ms of backoff");

    // And an https URL without the `tls` feature says what to do.
    if !cfg!(feature = "tls") {
        let err = Http::new("https://example.com", &key, None).unwrap_err().to_string();
        assert!(err.contains("`tls` feature"), "{err}");
    }
}
