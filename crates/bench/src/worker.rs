//! A minimal embedded worker: claims runs, starts them, does what the task says, completes
//! them. It measures the engine, not a task runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use trigger_engine::*;

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

/// Observations the workloads read.
#[derive(Default)]
pub struct Observed {
    pub started: Mutex<HashMap<String, Instant>>,
    pub completed: Mutex<HashMap<String, Instant>>,
    pub tokens: Mutex<Vec<String>>,
    pub waiting: AtomicU32,
    pub executing: AtomicU32,
    pub max_executing: AtomicU32,
    pub done: Notify,
}

impl Observed {
    pub fn completed_count(&self) -> usize {
        self.completed.lock().map(|m| m.len()).unwrap_or(0)
    }
}

pub struct Worker {
    pub observed: Arc<Observed>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub fn spawn(
        engine: Engine,
        env_id: String,
        behaviors: HashMap<String, Behavior>,
        capacity: u32,
    ) -> Worker {
        let observed = Arc::new(Observed::default());
        let (stop, stopped) = watch::channel(false);
        let handle =
            tokio::spawn(run(engine, env_id, Arc::new(behaviors), capacity, observed.clone(), stopped));
        Worker { observed, stop, handle }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

async fn run(
    engine: Engine,
    env_id: String,
    behaviors: Arc<HashMap<String, Behavior>>,
    capacity: u32,
    observed: Arc<Observed>,
    mut stopped: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(AtomicU32::new(0));
    let freed = Arc::new(Notify::new());
    loop {
        if *stopped.borrow() {
            return;
        }
        let free = capacity.saturating_sub(in_flight.load(Ordering::SeqCst));
        if free == 0 {
            tokio::select! {
                _ = freed.notified() => continue,
                _ = stopped.changed() => return,
            }
        }
        let request = DequeueRequest::new("bench-worker", free.min(200));
        let claimed = tokio::select! {
            r = engine.dequeue_wait(&env_id, request, Duration::from_secs(1)) => r,
            _ = stopped.changed() => return,
        };
        let Ok(claimed) = claimed else { continue };
        for d in claimed {
            in_flight.fetch_add(1, Ordering::SeqCst);
            let behavior = behaviors.get(&d.run.task).copied().unwrap_or(Behavior::NoOp);
            let (engine, env_id, observed, in_flight, freed) =
                (engine.clone(), env_id.clone(), observed.clone(), in_flight.clone(), freed.clone());
            tokio::spawn(async move {
                let counted_until_wait =
                    execute(&engine, &env_id, d, behavior, &observed, &in_flight, &freed).await;
                if counted_until_wait {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    freed.notify_one();
                }
            });
        }
    }
}

/// Runs one claimed run. Returns true when the run still counts against capacity (it did
/// not release its capacity while waiting).
async fn execute(
    engine: &Engine,
    env_id: &str,
    d: Dequeued,
    behavior: Behavior,
    observed: &Observed,
    in_flight: &AtomicU32,
    freed: &Notify,
) -> bool {
    let Ok(started) = engine.start_attempt(env_id, &d.run.id, &d.snapshot.id).await else { return true };
    let run_id = d.run.id.clone();
    lock(&observed.started).insert(run_id.clone(), Instant::now());
    let now = observed.executing.fetch_add(1, Ordering::SeqCst) + 1;
    observed.max_executing.fetch_max(now, Ordering::SeqCst);
    let mut snapshot = started.snapshot.id;
    let mut counted = true;
    match behavior {
        Behavior::NoOp => {}
        Behavior::Sleep(d) => tokio::time::sleep(d).await,
        Behavior::WaitOnToken | Behavior::FanOut(_) => {
            let mut changes = engine.subscribe();
            let blocked = match behavior {
                Behavior::WaitOnToken => match engine.create_token(env_id, TokenOptions::default()).await {
                    Ok((token, _)) => {
                        lock(&observed.tokens).push(token.id.clone());
                        engine
                            .wait_for_token(env_id, &run_id, Some(snapshot.clone()), &token.id)
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                },
                Behavior::FanOut(n) => fan_out(engine, env_id, &run_id, n).await,
                _ => false,
            };
            if blocked {
                // A waiting run holds no capacity, like a real worker's.
                observed.executing.fetch_sub(1, Ordering::SeqCst);
                observed.waiting.fetch_add(1, Ordering::SeqCst);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                freed.notify_one();
                counted = false;
                loop {
                    match engine.latest_snapshot(env_id, &run_id).await {
                        Ok((_, s))
                            if s.execution_status == ExecutionStatus::Executing && s.id != snapshot =>
                        {
                            snapshot = s.id;
                            break;
                        }
                        Ok((run, _)) if run.status.is_final() => return false,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                    loop {
                        match changes.recv().await {
                            Ok(c) if c.run_id == run_id => break,
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(_) => return false,
                        }
                    }
                }
                observed.waiting.fetch_sub(1, Ordering::SeqCst);
                observed.executing.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    observed.executing.fetch_sub(1, Ordering::SeqCst);
    let done = engine
        .complete_attempt(
            env_id,
            &run_id,
            &snapshot,
            Completion::success(Packet::json(&serde_json::json!(null))),
            None,
        )
        .await;
    if done.is_ok() {
        lock(&observed.completed).insert(run_id, Instant::now());
        observed.done.notify_waiters();
    }
    counted
}

async fn fan_out(engine: &Engine, env_id: &str, parent: &str, n: u32) -> bool {
    let create = CreateBatch {
        expected_count: n,
        parent_run_id: Some(parent.to_string()),
        resume_parent_on_completion: true,
        ..Default::default()
    };
    let Ok((batch, _)) = engine.create_batch(env_id, create).await else { return false };
    let items = (0..n)
        .map(|i| BatchItem {
            index: i,
            request: crate::setup::request("noop", i as usize, TriggerOptions::default()),
        })
        .collect();
    engine.add_batch_items(env_id, &batch.id, items).await.is_ok()
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
