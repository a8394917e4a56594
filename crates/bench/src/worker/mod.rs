//! A minimal worker: claims runs, starts them, does what the task says, completes them. It
//! measures the engine and the protocol, not a task runtime. It reaches the engine through
//! the SDK's [`Backend`] seam, so the same code runs in-process (embedded) and in a child
//! process over HTTP ([`process`]).

pub mod process;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use trigger_engine::*;
use trigger_sdk::backend::{Backend, SharedBackend};

/// Microseconds since the Unix epoch: the wall clock, shared by the bench and its worker
/// process, so latencies can be taken across processes.
pub type Micros = i64;

pub fn now_us() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What a run of a task does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Completes at once.
    NoOp,
    /// Works this long, then completes.
    Sleep(Duration),
    /// Creates a token, waits on it, completes when it is completed.
    WaitOnToken,
    /// Batch-triggers this many `noop` children and waits for them.
    FanOut(u32),
}

impl std::fmt::Display for Behavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behavior::NoOp => write!(f, "noop"),
            Behavior::Sleep(d) => write!(f, "sleep:{}", d.as_millis()),
            Behavior::WaitOnToken => write!(f, "token"),
            Behavior::FanOut(n) => write!(f, "fanout:{n}"),
        }
    }
}

impl FromStr for Behavior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let number =
            || arg.parse::<u64>().map_err(|_| format!("behavior {s:?}: expected a number after ':'"));
        match kind {
            "noop" => Ok(Behavior::NoOp),
            "sleep" => Ok(Behavior::Sleep(Duration::from_millis(number()?))),
            "token" => Ok(Behavior::WaitOnToken),
            "fanout" => Ok(Behavior::FanOut(number()? as u32)),
            _ => Err(format!("unknown behavior {s:?} (noop, sleep:MS, token, fanout:N)")),
        }
    }
}

/// What the worker saw, as the workloads read it. A worker in a child process reports each
/// observation as a line on its stdout, which the bench applies to its own copy.
#[derive(Default)]
pub struct Observed {
    started: Mutex<HashMap<String, Micros>>,
    completed: Mutex<HashMap<String, Micros>>,
    tokens: Mutex<Vec<String>>,
    waiting: AtomicI64,
    executing: AtomicI64,
    max_executing: AtomicI64,
    done: Notify,
    sink: Option<mpsc::UnboundedSender<String>>,
}

impl Observed {
    /// Observations that are also sent, as lines, to `sink`.
    pub fn reporting_to(sink: mpsc::UnboundedSender<String>) -> Self {
        Observed { sink: Some(sink), ..Default::default() }
    }

    fn emit(&self, line: impl FnOnce() -> String) {
        if let Some(sink) = &self.sink {
            let _ = sink.send(line());
        }
    }

    pub fn on_started(&self, run: &str, at: Micros) {
        lock(&self.started).insert(run.to_string(), at);
        self.emit(|| format!("s {run} {at}"));
    }

    pub fn on_completed(&self, run: &str, at: Micros) {
        lock(&self.completed).insert(run.to_string(), at);
        self.done.notify_waiters();
        self.emit(|| format!("c {run} {at}"));
    }

    pub fn on_token(&self, token: &str) {
        lock(&self.tokens).push(token.to_string());
        self.emit(|| format!("t {token}"));
    }

    pub fn on_waiting(&self, delta: i64) {
        self.waiting.fetch_add(delta, Ordering::SeqCst);
        self.emit(|| format!("w {delta}"));
    }

    fn on_executing(&self, delta: i64) {
        let now = self.executing.fetch_add(delta, Ordering::SeqCst) + delta;
        if self.max_executing.fetch_max(now, Ordering::SeqCst) < now {
            self.emit(|| format!("m {now}"));
        }
    }

    /// Applies one line reported by a worker process.
    pub fn apply(&self, line: &str) {
        let mut parts = line.split_whitespace();
        let (kind, a, b) = (parts.next(), parts.next(), parts.next());
        let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
        match (kind, a) {
            (Some("s"), Some(run)) => self.on_started(run, number(b).unwrap_or_else(now_us)),
            (Some("c"), Some(run)) => self.on_completed(run, number(b).unwrap_or_else(now_us)),
            (Some("t"), Some(token)) => self.on_token(token),
            (Some("w"), _) => self.on_waiting(number(a).unwrap_or(0)),
            (Some("m"), _) => {
                self.max_executing.fetch_max(number(a).unwrap_or(0), Ordering::SeqCst);
            }
            _ => {}
        }
    }

    pub fn started_count(&self) -> usize {
        lock(&self.started).len()
    }

    pub fn completed_count(&self) -> usize {
        lock(&self.completed).len()
    }

    pub fn started_at(&self, run: &str) -> Option<Micros> {
        lock(&self.started).get(run).copied()
    }

    pub fn completed_at(&self, run: &str) -> Option<Micros> {
        lock(&self.completed).get(run).copied()
    }

    pub fn started(&self) -> HashMap<String, Micros> {
        lock(&self.started).clone()
    }

    pub fn completed(&self) -> HashMap<String, Micros> {
        lock(&self.completed).clone()
    }

    pub fn tokens(&self) -> Vec<String> {
        lock(&self.tokens).clone()
    }

    pub fn waiting_now(&self) -> i64 {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn max_executing(&self) -> i64 {
        self.max_executing.load(Ordering::SeqCst)
    }

    /// Waits until `count` runs completed, or fails after `limit`.
    pub async fn wait_completed(&self, count: usize, limit: Duration) -> Result<(), crate::Error> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.done.notified();
            if self.completed_count() >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(crate::Error::Failed(format!(
                    "only {} of {count} runs completed within {limit:?}",
                    self.completed_count()
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

/// A worker running on this process's runtime.
pub struct Worker {
    pub observed: Arc<Observed>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub fn spawn(
        backend: SharedBackend,
        behaviors: HashMap<String, Behavior>,
        capacity: u32,
        observed: Arc<Observed>,
    ) -> Worker {
        let (stop, stopped) = watch::channel(false);
        // Only runs that wait need pushed changes; a worker of no-op runs does not subscribe,
        // so it does not pay for every run change of the environment.
        let waits = behaviors.values().any(|b| matches!(b, Behavior::WaitOnToken | Behavior::FanOut(_)));
        let waiters = if waits { Waiters::start(&backend) } else { Waiters::default() };
        let handle =
            tokio::spawn(run(backend, Arc::new(behaviors), capacity, observed.clone(), waiters, stopped));
        Worker { observed, stop, handle }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// Wakes waiting runs when the engine changes them: one subscription to the change feed,
/// dispatched by run id (one receiver per waiting run would wake every waiter on every change).
#[derive(Clone, Default)]
struct Waiters {
    runs: Arc<Mutex<HashMap<String, Arc<Waiter>>>>,
}

/// One waiting run: woken on each change, with the last change it heard (as the SDK's
/// worker does, a run continues on the snapshot the change feed names, without reading it).
#[derive(Default)]
struct Waiter {
    wake: Notify,
    heard: Mutex<Heard>,
}

#[derive(Default)]
enum Heard {
    #[default]
    Nothing,
    Change {
        snapshot: String,
        status: ExecutionStatus,
    },
    /// Changes were missed (a resync or a lagging receiver): read the run.
    Missed,
}

impl Waiter {
    fn hear(&self, heard: Heard) {
        *lock(&self.heard) = heard;
        self.wake.notify_one();
    }

    fn take(&self) -> Heard {
        std::mem::take(&mut *lock(&self.heard))
    }
}

impl Waiters {
    fn start(backend: &SharedBackend) -> Waiters {
        let waiters = Waiters::default();
        if let Some(mut changes) = backend.subscribe() {
            let runs = Arc::downgrade(&waiters.runs);
            tokio::spawn(async move {
                loop {
                    let change = changes.recv().await;
                    let Some(runs) = runs.upgrade() else { return };
                    let runs = lock(&runs);
                    match change {
                        Ok(c) if !c.run_id.is_empty() => {
                            if let Some(w) = runs.get(&c.run_id) {
                                w.hear(Heard::Change { snapshot: c.snapshot_id, status: c.execution_status });
                            }
                        }
                        // A missed change or a resync: every waiter re-reads its snapshot.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            runs.values().for_each(|w| w.hear(Heard::Missed))
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        waiters
    }

    fn register(&self, run: &str) -> Arc<Waiter> {
        lock(&self.runs).entry(run.to_string()).or_default().clone()
    }

    fn forget(&self, run: &str) {
        lock(&self.runs).remove(run);
    }
}

/// Claims a worker keeps in flight at once.
const CLAIMS_IN_FLIGHT: usize = 2;
/// The most runs the server hands out per claim (`POST /engine/v1/dev/dequeue`).
const MAX_RUNS_PER_CLAIM: u32 = 100;

async fn run(
    backend: SharedBackend,
    behaviors: Arc<HashMap<String, Behavior>>,
    capacity: u32,
    observed: Arc<Observed>,
    waiters: Waiters,
    mut stopped: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(AtomicU32::new(0));
    let freed = Arc::new(Notify::new());
    let instance = format!("bench-worker-{}", std::process::id());
    // Claims in flight, each with the slots it asked for: a second claim is sent while the
    // first is answered, so the worker's CPU, the server's and the engine's writer work at
    // once instead of in turn.
    let mut claims = FuturesUnordered::new();
    let mut reserved = 0u32;
    loop {
        if *stopped.borrow() {
            return;
        }
        let free = capacity.saturating_sub(in_flight.load(Ordering::SeqCst) + reserved);
        if free > 0 && claims.len() < CLAIMS_IN_FLIGHT {
            let n = free.min(MAX_RUNS_PER_CLAIM);
            reserved += n;
            // As the SDK's worker does: each claimed run's attempt starts with the claim.
            let request = DequeueRequest { start_attempts: true, ..DequeueRequest::new(instance.clone(), n) };
            let backend = backend.clone();
            claims.push(async move { (n, backend.dequeue(request, Duration::from_secs(1)).await) });
            continue;
        }
        let (asked, claimed) = tokio::select! {
            Some(answer) = claims.next(), if !claims.is_empty() => answer,
            _ = freed.notified() => continue,
            _ = stopped.changed() => return,
        };
        reserved -= asked;
        let claimed = match claimed {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        for d in claimed {
            in_flight.fetch_add(1, Ordering::SeqCst);
            let run = Run {
                backend: backend.clone(),
                observed: observed.clone(),
                waiters: waiters.clone(),
                in_flight: in_flight.clone(),
                freed: freed.clone(),
            };
            let behaviors = behaviors.clone();
            tokio::spawn(async move {
                if run.execute(d, &behaviors).await {
                    run.in_flight.fetch_sub(1, Ordering::SeqCst);
                    run.freed.notify_one();
                }
            });
        }
    }
}

/// What one executing run needs.
struct Run {
    backend: SharedBackend,
    observed: Arc<Observed>,
    waiters: Waiters,
    in_flight: Arc<AtomicU32>,
    freed: Arc<Notify>,
}

impl Run {
    /// Runs one claimed run. Returns true when the run still counts against capacity (it
    /// did not give its capacity back while waiting).
    async fn execute(&self, d: Dequeued, behaviors: &HashMap<String, Behavior>) -> bool {
        let backend = &self.backend;
        let started = match d.started {
            Some(started) => started,
            None => match checked("start", backend.start_attempt(&d.run.id, &d.snapshot.id).await) {
                Some(started) => started,
                None => return true,
            },
        };
        // The task is known from the started attempt (over HTTP the dequeued message only
        // carries the run id).
        let behavior = behaviors.get(&started.run.task).copied().unwrap_or(Behavior::NoOp);
        let run_id = d.run.id.clone();
        self.observed.on_started(&run_id, now_us());
        self.observed.on_executing(1);
        let mut snapshot = started.snapshot.id;
        let mut counted = true;
        match behavior {
            Behavior::NoOp => {}
            Behavior::Sleep(d) => tokio::time::sleep(d).await,
            Behavior::WaitOnToken | Behavior::FanOut(_) => {
                let waiter = self.waiters.register(&run_id);
                let blocked = match behavior {
                    Behavior::WaitOnToken => {
                        match checked("create token", backend.create_token(TokenOptions::default()).await) {
                            Some((token, _)) => {
                                self.observed.on_token(&token.id);
                                let wait = backend.wait_for_token(&run_id, &snapshot, &token.id).await;
                                checked("wait for token", wait).is_some()
                            }
                            None => false,
                        }
                    }
                    Behavior::FanOut(n) => fan_out(backend, &run_id, n).await,
                    _ => false,
                };
                if blocked {
                    // A waiting run holds no capacity, like a real worker's.
                    self.observed.on_executing(-1);
                    self.observed.on_waiting(1);
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    self.freed.notify_one();
                    counted = false;
                    let mut read = false;
                    loop {
                        if !read {
                            match waiter.take() {
                                Heard::Change { snapshot: s, status: ExecutionStatus::Executing }
                                    if s != snapshot =>
                                {
                                    snapshot = s;
                                    break;
                                }
                                Heard::Change { status: ExecutionStatus::Finished, .. } => {
                                    self.waiters.forget(&run_id);
                                    return false;
                                }
                                Heard::Missed => read = true,
                                _ => {}
                            }
                        }
                        if !read {
                            // Pushed changes wake the run; the timeout only covers a lost push.
                            read = tokio::time::timeout(Duration::from_secs(60), waiter.wake.notified())
                                .await
                                .is_err();
                            continue;
                        }
                        read = false;
                        match backend.latest_snapshot(&run_id).await {
                            Ok((_, s))
                                if s.execution_status == ExecutionStatus::Executing && s.id != snapshot =>
                            {
                                snapshot = s.id;
                                break;
                            }
                            Ok((run, _)) if run.status.is_final() => {
                                self.waiters.forget(&run_id);
                                return false;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                checked::<()>("latest snapshot", Err(e));
                                self.waiters.forget(&run_id);
                                return false;
                            }
                        }
                    }
                    self.observed.on_waiting(-1);
                    self.observed.on_executing(1);
                }
                self.waiters.forget(&run_id);
            }
        }
        self.observed.on_executing(-1);
        let done = backend
            .complete_attempt(
                &run_id,
                &snapshot,
                Completion::success(Packet::json(&serde_json::json!(null))),
                None,
            )
            .await;
        if checked("complete", done).is_some() {
            self.observed.on_completed(&run_id, now_us());
        }
        counted
    }
}

async fn fan_out(backend: &SharedBackend, parent: &str, n: u32) -> bool {
    let create = CreateBatch {
        expected_count: n,
        parent_run_id: Some(parent.to_string()),
        resume_parent_on_completion: true,
        ..Default::default()
    };
    let Some((batch, _)) = checked("create batch", backend.create_batch(create).await) else { return false };
    let items = (0..n)
        .map(|i| BatchItem {
            index: i,
            request: crate::target::request("noop", i as usize, TriggerOptions::default()),
        })
        .collect();
    checked("add batch items", backend.add_batch_items(&batch.id, items).await).is_some()
}

/// Reports a failed call on stderr when `TRIGGER_BENCH_VERBOSE` is set (the workloads
/// only see that a run did not complete).
fn checked<T>(what: &str, r: trigger_sdk::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            if std::env::var_os("TRIGGER_BENCH_VERBOSE").is_some() {
                eprintln!("bench worker: {what}: {e}");
            }
            None
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviors_round_trip_and_reports_replay() {
        for b in [
            Behavior::NoOp,
            Behavior::Sleep(Duration::from_millis(3)),
            Behavior::WaitOnToken,
            Behavior::FanOut(7),
        ] {
            assert_eq!(b.to_string().parse::<Behavior>(), Ok(b));
        }
        assert!("sleep:x".parse::<Behavior>().is_err());

        let (tx, mut rx) = mpsc::unbounded_channel();
        let child = Observed::reporting_to(tx);
        child.on_started("run_a", 10);
        child.on_executing(1);
        child.on_executing(1);
        child.on_executing(-1);
        child.on_token("waitpoint_t");
        child.on_waiting(1);
        child.on_completed("run_a", 25);
        let parent = Observed::default();
        while let Ok(line) = rx.try_recv() {
            parent.apply(&line);
        }
        assert_eq!(parent.started_at("run_a"), Some(10));
        assert_eq!(parent.completed_at("run_a"), Some(25));
        assert_eq!(
            (parent.tokens(), parent.waiting_now(), parent.max_executing()),
            (vec!["waitpoint_t".into()], 1, 2)
        );
    }
}
