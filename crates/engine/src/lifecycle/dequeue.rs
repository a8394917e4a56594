//! Claiming runs: a worker asks for work that fits its free capacity and gets runs whose
//! queue, concurrency key and environment each have a free slot, oldest (by score) first.

use std::collections::{HashMap, HashSet};

use trigger_types::{ExecutionStatus, MachinePreset, RunStatus};

use crate::error::{not_found, Result};
use crate::lifecycle::attempt::{self, StartedAttempt};
use crate::lifecycle::{queue, registry};
use crate::model::{Holder, Run, Snapshot, TaskDef, TimerKind, WorkerVersion};
use crate::txn::Txn;

/// Subqueues considered per round of a claim.
const CLAIMABLE_PER_ROUND: u32 = 64;

/// What a worker can take on.
#[derive(Debug, Clone, PartialEq)]
pub struct DequeueRequest {
    /// The worker process asking; recorded on the runs it claims.
    pub worker_instance: String,
    /// The worker version it runs (`worker_…`); the newest registered version when `None`.
    pub worker_id: Option<String>,
    /// Most runs to claim.
    pub max_runs: u32,
    /// Free vCPUs and memory (GB); `None` is unbounded.
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    /// Also start each claimed run's attempt in the same transaction ([`Dequeued::started`]):
    /// for a worker that starts every run it claims at once, one call instead of two.
    pub start_attempts: bool,
}

/// A claimed run, ready for its attempt to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Dequeued {
    pub run: Run,
    /// The run's snapshot after the claim: `PENDING_EXECUTING`, or the started attempt's
    /// `EXECUTING` one when [`DequeueRequest::start_attempts`] asked.
    pub snapshot: Snapshot,
    pub worker: WorkerVersion,
    pub task: TaskDef,
    pub machine: MachinePreset,
    /// The attempt started with the claim, when [`DequeueRequest::start_attempts`] asked.
    pub started: Option<StartedAttempt>,
}

/// What a claim got.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub runs: Vec<Dequeued>,
    /// The claim left nothing any worker could claim in the environment now: it took all it
    /// could see, and nothing was passed over for reasons of this worker's own (its version,
    /// its tasks, its cpu or memory). Another claim in the same transaction would find
    /// nothing.
    pub drained: bool,
}

/// Claims runs for a worker. Each run is claimed once: it leaves the queue, takes a slot
/// and gets a `PENDING_EXECUTING` snapshot with a lease in the same transaction (or, when
/// the claim starts the attempts, goes straight on to `EXECUTING`).
pub(crate) fn dequeue(txn: &mut Txn<'_>, env_id: &str, req: &DequeueRequest) -> Result<Vec<Dequeued>> {
    Ok(claim(txn, env_id, req)?.runs)
}

/// [`dequeue`], telling also whether the claim drained the environment.
pub(crate) fn claim(txn: &mut Txn<'_>, env_id: &str, req: &DequeueRequest) -> Result<Claimed> {
    let env = registry::environment(txn, env_id)?;
    if env.paused || req.max_runs == 0 {
        return Ok(Claimed::default());
    }
    let worker = match &req.worker_id {
        Some(id) => match txn.tx.get_worker(id)? {
            Some(w) if w.env_id == env_id => w,
            _ => return Ok(Claimed::default()),
        },
        None => match txn.tx.latest_worker(env_id)? {
            Some(w) => w,
            None => return Ok(Claimed::default()),
        },
    };
    let tasks = txn.tx.list_tasks(env_id, &worker.id)?;
    let known: HashSet<&str> = tasks.iter().map(|t| t.slug.as_str()).collect();

    let mut out = Vec::new();
    // Claimed runs whose attempts start with the claim (`start_attempts`).
    let mut to_start: Vec<(Run, TaskDef, MachinePreset)> = Vec::new();
    let (mut cpu, mut memory) = (req.cpu.unwrap_or(f64::INFINITY), req.memory.unwrap_or(f64::INFINITY));
    let mut blocked: HashSet<(String, String)> = HashSet::new();
    // Set when the claim stops with nothing left for anyone: the environment is full, or a
    // round saw every claimable subqueue and left nothing behind.
    let mut drained = false;
    // A few rounds, while a round may have left claimable work it did not see.
    for _ in 0..4 {
        let (env_limit, env_running) = queue::env_capacity(txn, env_id)?;
        if env_running >= env_limit {
            drained = true;
            break;
        }
        if claimed_count(&out, &to_start) >= req.max_runs {
            break;
        }
        let subs = txn.tx.claimable_subqueues(env_id, env_limit, CLAIMABLE_PER_ROUND)?;
        // Another round can find more only if this one did not see every claimable subqueue
        // or took entries out without claiming them (expired, resumed), which may have left
        // ready runs past what it peeked; claiming alone fills subqueues, it never opens one.
        let mut again = subs.len() as u32 >= CLAIMABLE_PER_ROUND;
        for sub in subs {
            if blocked.contains(&(sub.queue.clone(), sub.concurrency_key.clone())) {
                continue;
            }
            let (env_limit, env_running) = queue::env_capacity(txn, env_id)?;
            let want = req.max_runs.saturating_sub(claimed_count(&out, &to_start));
            if want == 0 || env_running >= env_limit {
                break;
            }
            let limit = sub.limit.unwrap_or(env_limit).min(env_limit);
            let free = limit.saturating_sub(sub.running).min(env_limit - env_running);
            // The head entries and their runs, read (and locked) together.
            let (entries, runs) = txn.tx.peek_and_lock(
                env_id,
                &sub.queue,
                &sub.concurrency_key,
                free.min(want.max(1)),
                req.start_attempts,
            )?;
            let mut runs: HashMap<String, Run> = runs.into_iter().map(|run| (run.id.clone(), run)).collect();
            // The runs this subqueue gives: taken off the queue and given their slots together.
            let mut claimed: Vec<(Run, TaskDef, MachinePreset)> = Vec::new();
            for entry in entries {
                let mut run = runs.remove(&entry.run_id).ok_or_else(|| not_found("Run", &entry.run_id))?;
                if entry.resume {
                    txn.tx.dequeue_entry(&entry.run_id)?;
                    queue::promote(txn, &mut run)?;
                    again = true;
                    continue;
                }
                if claimed_count(&out, &to_start) + claimed.len() as u32 >= req.max_runs {
                    break;
                }
                let version_ok = run.lock_to_version.as_ref().is_none_or(|v| *v == worker.version);
                let fits = entry.machine.cpu() <= cpu && entry.machine.memory() <= memory;
                if !known.contains(entry.task.as_str()) || !version_ok || !fits {
                    // Keep FIFO within the subqueue: this worker cannot take its head.
                    blocked.insert((sub.queue.clone(), sub.concurrency_key.clone()));
                    break;
                }
                if run.ttl_ms.is_some_and(|ttl| run.queued_at.is_some_and(|q| q + ttl as i64 <= txn.now))
                    && run.attempt_number == 0
                {
                    attempt::expire(txn, &mut run)?;
                    again = true;
                    continue;
                }
                let Some(task) = tasks.iter().find(|t| t.slug == run.task).cloned() else { break };
                let machine = run.machine.or(task.machine).unwrap_or_default();
                cpu -= machine.cpu();
                memory -= machine.memory();
                claimed.push((run, task, machine));
            }
            let ids: Vec<&str> = claimed.iter().map(|(run, ..)| run.id.as_str()).collect();
            txn.tx.dequeue_entries(&ids)?;
            let holders: Vec<Holder> = claimed.iter().map(|(run, ..)| queue::holder(run)).collect();
            txn.tx.acquire_claimed(&holders)?;
            for (mut run, task, machine) in claimed {
                lock_to_task(&mut run, &worker, &task, machine, &req.worker_instance);
                run.status = RunStatus::Dequeued;
                if run.ttl_ms.is_some_and(|ttl| ttl > 0) && run.attempt_number == 0 {
                    // Only a first queueing with a TTL armed an expiry.
                    txn.clear_timer(TimerKind::Expire, &run.id)?;
                }
                if req.start_attempts {
                    // The attempt starts below, in this transaction: no one can observe the
                    // run between claim and start, so that state gets no snapshot row, and
                    // the start writes the run and arms its lease.
                    run.execution_status = ExecutionStatus::PendingExecuting;
                    to_start.push((run, task, machine));
                    continue;
                }
                let snapshot = txn.snapshot(
                    &mut run,
                    ExecutionStatus::PendingExecuting,
                    "run was dequeued",
                    Vec::new(),
                )?;
                txn.arm_heartbeat(&run)?;
                txn.save_run(&mut run)?;
                out.push(Dequeued { run, snapshot, worker: worker.clone(), task, machine, started: None });
            }
        }
        if !again {
            // Every claimable subqueue was seen. What is left there is behind a full
            // subqueue or environment (nobody's to claim), unless this worker passed it over.
            drained = blocked.is_empty() && claimed_count(&out, &to_start) < req.max_runs;
            break;
        }
    }
    if !to_start.is_empty() {
        // The payloads, read together where the store can.
        let ids: Vec<&str> = to_start.iter().map(|(run, ..)| run.id.as_str()).collect();
        txn.tx.prefetch_runs(&ids, &ids)?;
        for (run, task, machine) in to_start {
            let payload = txn.tx.get_payload(&run.id)?.unwrap_or_default();
            let started = attempt::begin_attempt(txn, env_id, run, payload)?;
            let (run, snapshot) = (started.run.clone(), started.snapshot.clone());
            out.push(Dequeued {
                run,
                snapshot,
                worker: worker.clone(),
                task,
                machine,
                started: Some(started),
            });
        }
    }
    Ok(Claimed { runs: out, drained })
}

fn claimed_count(out: &[Dequeued], to_start: &[(Run, TaskDef, MachinePreset)]) -> u32 {
    (out.len() + to_start.len()) as u32
}

/// At dequeue a run takes its settings from the task definition of the version it runs on.
fn lock_to_task(
    run: &mut Run,
    worker: &WorkerVersion,
    task: &TaskDef,
    machine: MachinePreset,
    instance: &str,
) {
    run.worker_id = Some(worker.id.clone());
    run.worker_instance = Some(instance.to_string());
    run.machine = Some(machine);
    run.retry = task.retry.clone();
    if run.max_attempts.is_none() {
        run.max_attempts = task.retry.as_ref().map(|r| r.max_attempts);
    }
    // Trigger.dev clamps `maxDuration` to at least 5 s.
    run.max_duration_secs = run.max_duration_secs.or(task.max_duration_secs).map(|d| d.max(5));
}

impl DequeueRequest {
    /// A request for up to `max_runs` runs on the newest worker version, with no cpu or
    /// memory bound.
    pub fn new(worker_instance: impl Into<String>, max_runs: u32) -> Self {
        DequeueRequest {
            worker_instance: worker_instance.into(),
            worker_id: None,
            max_runs,
            cpu: None,
            memory: None,
            start_attempts: false,
        }
    }
}
