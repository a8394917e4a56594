//! The worker as a separate process (HTTP mode): `trigger bench worker` runs [`Worker`]
//! over the SDK's HTTP backend and reports what it observes as lines on stdout; the bench
//! spawns it with [`RemoteWorker::spawn`] and replays those lines into its own [`Observed`].
//!
//! Lines: `ready` once the worker runs, then `s RUN µs` (started), `c RUN µs` (completed),
//! `t TOKEN` (created a token), `w ±1` (waiting runs), `m N` (most runs executing at once).

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use trigger_sdk::backend::{Http, SharedBackend};

use super::{Behavior, Observed, Worker};
use crate::Error;

/// What `trigger bench worker` needs.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub api_url: String,
    pub secret_key: String,
    /// Task slug → what its runs do; other tasks complete at once.
    pub behaviors: HashMap<String, Behavior>,
    /// Most runs executing at once.
    pub capacity: u32,
}

/// Parses `slug=behavior` (`noop=noop`, `parent=fanout:1000`, `work=sleep:1`, `w=token`).
pub fn parse_task(s: &str) -> Result<(String, Behavior), String> {
    let (slug, behavior) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected SLUG=BEHAVIOR"))?;
    Ok((slug.to_string(), behavior.parse()?))
}

/// The worker process: runs until killed or its stdout closes.
pub async fn run_worker_process(args: WorkerArgs) -> Result<(), Error> {
    let backend: SharedBackend = Arc::new(Http::new(&args.api_url, &args.secret_key, None)?);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let observed = Arc::new(Observed::reporting_to(tx));
    let waits = args.behaviors.values().any(|b| matches!(b, Behavior::WaitOnToken | Behavior::FanOut(_)));
    let _worker = Worker::spawn(backend, args.behaviors, args.capacity, observed);
    if waits {
        // The change feed (SSE) connects in the background; a run that blocks before it is
        // up would only be woken by the slow fallback.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut lines = Vec::with_capacity(4096);
    let mut buffer = String::new();
    while rx.recv_many(&mut lines, 4096).await > 0 {
        buffer.clear();
        for line in lines.drain(..) {
            buffer.push_str(&line);
            buffer.push('\n');
        }
        stdout.write_all(buffer.as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// A worker process started by the bench.
pub struct RemoteWorker {
    child: Child,
    pub pid: u32,
    pub observed: Arc<Observed>,
}

impl RemoteWorker {
    pub async fn spawn(
        bin: &Path,
        api_url: &str,
        secret_key: &str,
        behaviors: &HashMap<String, Behavior>,
        capacity: u32,
    ) -> Result<RemoteWorker, Error> {
        let mut command = Command::new(bin);
        command.args(["bench", "worker", "--capacity", &capacity.to_string()]);
        for (slug, behavior) in behaviors {
            command.arg("--task").arg(format!("{slug}={behavior}"));
        }
        command
            .env("TRIGGER_API_URL", api_url)
            .env("TRIGGER_SECRET_KEY", secret_key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| Error::Failed(format!("starting the worker {}: {e}", bin.display())))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().ok_or_else(|| Error::Failed("worker: no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => {}
            other => return Err(Error::Failed(format!("the worker process did not start: {other:?}"))),
        }
        let observed = Arc::new(Observed::default());
        let replay = observed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                replay.apply(&line);
            }
        });
        Ok(RemoteWorker { child, pid, observed })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
