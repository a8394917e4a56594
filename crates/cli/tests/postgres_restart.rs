//! PostgreSQL is stopped (as by a crash) and started again while `trigger serve` is under
//! load. While the database is down, requests get `503` with `Retry-After` within a bounded
//! time — never a hang, never a 500 — and the server process stays up; after the database
//! is back, triggers succeed again, the delayed run whose timer came due during the outage
//! fires, and every trigger that was acknowledged with a 2xx runs to completion.
//!
//! The test starts its own PostgreSQL cluster (initdb into a temporary directory, on a free
//! port) so that stopping it does not disturb other tests using the machine's PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trigger_sdk::backend::{Http, SharedBackend};
use trigger_sdk::{task, TaskError, Worker, WorkerOptions};

/// The longest any request may take while the database is down or coming back.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// A private PostgreSQL cluster, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a PostgreSQL tool as the `postgres` user when the test runs as root (PostgreSQL
    /// refuses to run as root), else as the current user.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn create() -> Cluster {
        let bin = postgres_bindir();
        let dir = std::env::temp_dir().join(format!("trigger-pg-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Cluster { bin, dir, port };
        let out = cluster
            .tool("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(cluster.data())
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        cluster.start();
        cluster
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on",
            self.port,
            self.dir.display()
        );
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server the way a crash would: no checkpoint, connections cut.
    fn crash(&self) {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .expect("pg_ctl runs");
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// The directory holding `initdb` and `pg_ctl`: `$PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`. CI never skips this test: a
/// machine without PostgreSQL's server binaries fails it.
fn postgres_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let out = Command::new("pg_config").arg("--bindir").output().expect(
        "PostgreSQL's server binaries (initdb, pg_ctl) are needed: set PG_BINDIR or install postgresql",
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `trigger serve` on the cluster; returns it with its URL, dev key and project ref.
fn start_server(database_url: &str, packets: &Path) -> (Server, String, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trigger"))
        .args(["serve", "--database-url", database_url, "--schema", "trigger_restart"])
        .args(["--host", "127.0.0.1", "--port", "0", "--packet-dir"])
        .arg(packets)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trigger serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found: HashMap<&str, String> = HashMap::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("trigger.rs listening on ") {
                found.insert("url", rest.split_whitespace().next().unwrap_or_default().into());
                let project = rest.split("(project ").nth(1).unwrap_or_default().trim_end_matches(')');
                found.insert("project", project.into());
            }
            if let Some(key) = line.strip_prefix("created the dev secret key (shown once): ") {
                found.insert("key", key.into());
            }
            if !sent && found.len() == 3 {
                let _ = tx.send(found.clone());
                sent = true;
            }
        }
    });
    let found = rx.recv_timeout(Duration::from_secs(60)).expect("trigger serve printed its address");
    (Server(child), found["url"].clone(), found["key"].clone(), found["project"].clone())
}

/// One HTTP/1.1 exchange on a fresh connection: status, headers (lower-case names), body.
async fn request(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, HashMap<String, String>, Value)> {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    // Chunked bodies are not expected for these small JSON answers; tolerate them anyway.
    let json = serde_json::from_str(body)
        .or_else(|_| serde_json::from_str(body.lines().nth(1).unwrap_or_default()))
        .unwrap_or(Value::Null);
    Ok((status.unwrap_or(0), headers, json))
}

/// Polls `done` until it holds; fails the test after `deadline`.
async fn wait_for(what: &str, deadline: Duration, done: impl Fn() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct Tally {
    /// Payload number → run id, for every trigger answered 2xx.
    acknowledged: Mutex<HashMap<u64, String>>,
    /// Payload numbers acknowledged after the database came back.
    after_restart: Mutex<Vec<u64>>,
    unavailable: Mutex<u32>,
    unavailable_without_retry_after: Mutex<u32>,
    /// Anything else: another status, a transport error, an answer too slow.
    failures: Mutex<Vec<String>>,
    slowest: Mutex<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_answers_503_then_recovers_and_loses_nothing() {
    let cluster = Arc::new(Cluster::create());
    let packets = cluster.dir.join("packets");
    let (mut server, url, key, project) = start_server(&cluster.url(), &packets);

    let executed = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let seen = executed.clone();
    let work = task::<Value, Value>("work").run(move |payload, _| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().insert(payload["i"].as_u64().unwrap());
            Ok::<_, TaskError>(json!({ "ok": true }))
        }
    });
    let backend: SharedBackend = Arc::new(Http::new(&url, &key, Some(project)).unwrap());
    let worker = Worker::builder()
        .backend(backend)
        .options(WorkerOptions { concurrency: 8, ..WorkerOptions::default() })
        .task(&work)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();

    // A delayed run whose timer comes due while the database is down.
    const DELAYED: u64 = 1_000_000;
    let (status, _, body) = request(
        &url,
        "POST",
        "/api/v1/tasks/work/trigger",
        &key,
        Some(&json!({ "payload": { "i": DELAYED }, "options": { "delay": "3s" } })),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let delayed_id = body["id"].as_str().unwrap().to_string();

    // Four producers trigger as fast as the server answers until told to stop.
    let tally = Arc::new(Tally::default());
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..4u64 {
        let (tally, restarted, stop, url, key) =
            (tally.clone(), restarted.clone(), stop.clone(), url.clone(), key.clone());
        producers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let i = p * 100_000 + n;
                n += 1;
                let body = json!({ "payload": { "i": i } });
                let began = Instant::now();
                let answer = tokio::time::timeout(
                    ANSWER_WITHIN,
                    request(&url, "POST", "/api/v1/tasks/work/trigger", &key, Some(&body)),
                )
                .await;
                let took = began.elapsed();
                {
                    let mut slowest = tally.slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                }
                match answer {
                    Ok(Ok((200..=299, _, body))) => {
                        let id = body["id"].as_str().expect("a run id").to_string();
                        tally.acknowledged.lock().unwrap().insert(i, id);
                        if restarted.load(Ordering::SeqCst) {
                            tally.after_restart.lock().unwrap().push(i);
                        }
                    }
                    Ok(Ok((503, headers, _))) => {
                        *tally.unavailable.lock().unwrap() += 1;
                        if !headers.contains_key("retry-after") {
                            *tally.unavailable_without_retry_after.lock().unwrap() += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(Ok((status, _, body))) => {
                        tally.failures.lock().unwrap().push(format!("status {status}: {body}"));
                    }
                    Ok(Err(e)) => tally.failures.lock().unwrap().push(format!("transport: {e}")),
                    Err(_) => {
                        tally.failures.lock().unwrap().push(format!("no answer within {ANSWER_WITHIN:?}"))
                    }
                }
            }
        });
    }

    // Load first, then the crash.
    wait_for("200 acknowledged triggers", Duration::from_secs(60), || {
        tally.acknowledged.lock().unwrap().len() >= 200
    })
    .await;
    tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.crash()
    })
    .await
    .unwrap();
    wait_for("several 503 answers while the database is down", Duration::from_secs(60), || {
        *tally.unavailable.lock().unwrap() >= 5
    })
    .await;
    // Keep it down past the delayed run's due time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(server.0.try_wait().unwrap().is_none(), "the server process stays up while the database is down");

    tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.start()
    })
    .await
    .unwrap();
    restarted.store(true, Ordering::SeqCst);
    wait_for("100 triggers acknowledged after the restart", Duration::from_secs(60), || {
        tally.after_restart.lock().unwrap().len() >= 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = producers.join_next().await {
        r.unwrap();
    }

    let failures = tally.failures.lock().unwrap().clone();
    let slowest = *tally.slowest.lock().unwrap();
    eprintln!(
        "acknowledged {}, of which {} after the restart; {} answers were 503; slowest answer {slowest:?}",
        tally.acknowledged.lock().unwrap().len(),
        tally.after_restart.lock().unwrap().len(),
        tally.unavailable.lock().unwrap()
    );
    assert!(failures.is_empty(), "requests failed other than with 503: {failures:?}");
    assert_eq!(*tally.unavailable_without_retry_after.lock().unwrap(), 0, "a 503 without Retry-After");
    assert!(slowest < ANSWER_WITHIN, "a request took {slowest:?}");

    // Every acknowledged run, and the delayed one, runs to completion — as the server tells.
    let acknowledged = tally.acknowledged.lock().unwrap().clone();
    let mut pending: Vec<String> = acknowledged.values().cloned().collect();
    pending.push(delayed_id);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let (status, _, run) =
                request(&url, "GET", &format!("/api/v3/runs/{id}"), &key, None).await.unwrap();
            assert_eq!(status, 200, "{run}");
            match run["status"].as_str() {
                Some("COMPLETED") => {}
                Some("QUEUED" | "DEQUEUED" | "EXECUTING" | "DELAYED" | "WAITING") => still.push(id),
                _ => panic!("an acknowledged run did not complete: {run}"),
            }
        }
        pending = still;
        assert!(Instant::now() < deadline || pending.is_empty(), "runs never completed: {pending:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let executed = executed.lock().unwrap().clone();
    assert!(executed.contains(&DELAYED), "the delayed run executed");
    assert!(acknowledged.keys().all(|i| executed.contains(i)), "every acknowledged run executed");
    worker.shutdown().await.unwrap();
    drop(server);
}
