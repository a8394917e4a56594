//! Child processes: the `trigger` binary, a server started from it, and what `/proc` says
//! about a process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Error, Options};

/// The `trigger` binary: `--trigger-bin`, else `TRIGGER_BIN`, else this executable when it
/// is `trigger` (the bench runs inside it), else a `trigger` beside this executable or its
/// folder's parent (`target/…/deps/` in tests).
pub fn trigger_bin(options: &Options) -> Result<PathBuf, Error> {
    if let Some(bin) =
        options.trigger_bin.clone().or_else(|| std::env::var_os("TRIGGER_BIN").map(PathBuf::from))
    {
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    if exe.file_stem().is_some_and(|s| s == "trigger") {
        return Ok(exe);
    }
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    [dir.join("trigger"), dir.join("../trigger")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Failed("no trigger binary found: pass --trigger-bin or set TRIGGER_BIN".into()))
}

/// A free TCP port on 127.0.0.1 (free when asked; the child binds it right after).
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when `GET /healthz` answers 200.
pub async fn healthy(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let request = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

/// Polls `/healthz` every 5 ms until it answers, up to `limit`.
pub async fn wait_healthy(port: u16, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !healthy(port).await {
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "the server on port {port} did not become ready in {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process in bytes (Linux), if known.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// CPU time (user + system) a process has used, in seconds (Linux), if known.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Which server to start.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// `trigger dev --dir DIR --json`: SQLite under DIR, zero set-up.
    Dev { dir: PathBuf },
    /// `trigger serve --database-url URL [--schema S] --packet-dir DIR`.
    Serve { database_url: String, schema: Option<String>, packet_dir: PathBuf },
}

/// A `trigger dev` or `trigger serve` child process, ready, with the dev environment's
/// secret key and the project ref.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub api_url: String,
    pub secret_key: String,
    pub project_ref: String,
    /// Spawn → `/healthz` answers.
    pub ready_after: Duration,
}

impl Server {
    /// Starts a server and waits until `/healthz` answers. With `credentials`, also waits
    /// for the dev secret key, which `trigger serve` prints only on the start that created
    /// it (the first on a fresh database); `secret_key` is empty otherwise.
    pub async fn start(bin: &Path, kind: &ServerKind, credentials: bool) -> Result<Server, Error> {
        let port = free_port()?;
        let mut command = Command::new(bin);
        match kind {
            ServerKind::Dev { dir } => {
                command.arg("dev").arg("--dir").arg(dir).arg("--json");
            }
            ServerKind::Serve { database_url, schema, packet_dir } => {
                command.args(["serve", "--database-url", database_url]).arg("--packet-dir").arg(packet_dir);
                if let Some(schema) = schema {
                    command.args(["--schema", schema]);
                }
            }
        }
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--env-concurrency-limit", &crate::target::ENV_CONCURRENCY_LIMIT.to_string()])
            .env("RUST_LOG", "warn")
            .env_remove("TRIGGER_DATABASE_URL")
            .env_remove("TRIGGER_DATABASE_SCHEMA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = Instant::now();
        let mut child =
            command.spawn().map_err(|e| Error::Failed(format!("starting {}: {e}", bin.display())))?;
        let pid = child.id().unwrap_or(0);
        wait_healthy(port, Duration::from_secs(60)).await?;
        let ready_after = spawned.elapsed();

        // `dev --json` prints the connection as one JSON line on stdout; `serve` prints its
        // project and the freshly created dev key on stderr.
        let stdout = child.stdout.take().ok_or_else(|| Error::Failed("no stdout".into()))?;
        let stderr = child.stderr.take().ok_or_else(|| Error::Failed("no stderr".into()))?;
        let (mut out, mut err) = (BufReader::new(stdout).lines(), BufReader::new(stderr).lines());
        let (mut secret_key, mut project_ref) = (None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while (credentials && secret_key.is_none()) || project_ref.is_none() {
            let line = tokio::select! {
                l = out.next_line() => l?,
                l = err.next_line() => l?,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(line) = line else {
                return Err(Error::Failed("the server did not print its secret key and project".into()));
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                secret_key = v["secretKey"].as_str().map(str::to_string);
                project_ref = v["projectRef"].as_str().map(str::to_string);
            } else if let Some(rest) = line.split("(project ").nth(1) {
                project_ref = Some(rest.trim_end_matches(')').to_string());
            } else if let Some(key) = line.split("(shown once): ").nth(1).filter(|k| k.starts_with("tr_dev_"))
            {
                secret_key = Some(key.trim().to_string());
            }
        }
        // Keep reading both pipes so the server never blocks on a full one.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                if std::env::var_os("TRIGGER_BENCH_VERBOSE").is_some() {
                    eprintln!("server: {line}");
                }
            }
        });
        Ok(Server {
            child,
            pid,
            api_url: format!("http://127.0.0.1:{port}"),
            secret_key: secret_key.unwrap_or_default(),
            project_ref: project_ref.unwrap_or_default(),
            ready_after,
        })
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
