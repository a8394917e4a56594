//! Environments and the task registry: worker versions with their tasks and queues.

use serde::{Deserialize, Serialize};
use trigger_types::{ids, MachinePreset, RetryOptions, RunStatus};

use crate::config::limits;
use crate::error::{not_found, Error, Result};
use crate::lifecycle::queue;
use crate::model::{Environment, EnvironmentType, QueueDef, TaskDef, WorkerVersion};
use crate::txn::Txn;

/// A queue as a worker declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueManifest {
    pub name: String,
    pub concurrency_limit: Option<u32>,
}

/// A task as a worker declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskManifest {
    pub slug: String,
    pub file_path: String,
    pub export_name: Option<String>,
    pub description: Option<String>,
    /// The task's queue: a named queue, or (name `None`) its own `task/<slug>` queue with an
    /// optional limit.
    pub queue_name: Option<String>,
    pub queue_concurrency_limit: Option<u32>,
    pub retry: Option<RetryOptions>,
    pub machine: Option<MachinePreset>,
    pub max_duration_secs: Option<u32>,
    pub ttl_ms: Option<u64>,
    pub payload_schema: Option<serde_json::Value>,
}

/// What a worker registers: its tasks and the queues they use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerManifest {
    pub content_hash: String,
    pub sdk_version: Option<String>,
    pub cli_version: Option<String>,
    pub tasks: Vec<TaskManifest>,
    pub queues: Vec<QueueManifest>,
}

/// Creates an environment of a project.
pub(crate) fn create_environment(
    txn: &mut Txn<'_>,
    project_id: &str,
    kind: EnvironmentType,
    concurrency_limit: Option<u32>,
) -> Result<Environment> {
    let env = Environment {
        id: txn.id(ids::ENVIRONMENT),
        project_id: project_id.to_string(),
        kind,
        concurrency_limit: concurrency_limit.unwrap_or(txn.config.default_env_concurrency_limit),
        paused: false,
        created_at: txn.now,
    };
    txn.tx.insert_environment(&env)?;
    Ok(env)
}

pub(crate) fn environment(txn: &mut Txn<'_>, env_id: &str) -> Result<Environment> {
    txn.tx.get_environment(env_id)?.ok_or_else(|| not_found("Environment", env_id))
}

/// Keeps `[a-zA-Z0-9_\-/]`, at most 128 characters, as Trigger.dev sanitizes queue names.
pub fn sanitize_queue_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
        .take(limits::QUEUE_NAME)
        .collect()
}

/// Registers a worker version. Registering the same content again returns the existing
/// version. Queues are created or updated, and runs waiting for a version
/// (`PENDING_VERSION`) whose task and queue now exist are queued.
pub(crate) fn register_worker(
    txn: &mut Txn<'_>,
    env_id: &str,
    manifest: &WorkerManifest,
) -> Result<WorkerVersion> {
    environment(txn, env_id)?;
    let mut queues: Vec<(String, Option<u32>, bool)> = Vec::new();
    for q in &manifest.queues {
        let name = sanitize_queue_name(&q.name);
        if name.is_empty() {
            return Err(Error::Invalid(format!("queues: invalid queue name {:?}", q.name)));
        }
        queues.push((name, q.concurrency_limit, true));
    }
    for task in &manifest.tasks {
        if task.slug.is_empty() {
            return Err(Error::Invalid("tasks: a task has an empty id".into()));
        }
        match &task.queue_name {
            Some(name) => {
                let name = sanitize_queue_name(name);
                if !queues.iter().any(|(n, _, _)| *n == name) {
                    queues.push((name, task.queue_concurrency_limit, true));
                }
            }
            None => queues.push((format!("task/{}", task.slug), task.queue_concurrency_limit, false)),
        }
    }

    let latest = txn.tx.latest_worker(env_id)?;
    let worker = match latest {
        Some(w) if w.content_hash == manifest.content_hash && !manifest.content_hash.is_empty() => w,
        _ => {
            let worker = WorkerVersion {
                id: txn.id(ids::WORKER),
                env_id: env_id.to_string(),
                version: next_version(txn.tx.latest_worker(env_id)?.as_ref(), txn.now),
                content_hash: manifest.content_hash.clone(),
                sdk_version: manifest.sdk_version.clone(),
                cli_version: manifest.cli_version.clone(),
                created_at: txn.now,
            };
            txn.tx.insert_worker(&worker)?;
            worker
        }
    };

    for (name, limit, named) in queues {
        let existing = txn.tx.get_queue(env_id, &name)?;
        let def = QueueDef {
            id: existing.as_ref().map(|q| q.id.clone()).unwrap_or_else(|| txn.id(ids::QUEUE)),
            env_id: env_id.to_string(),
            name,
            concurrency_limit: limit,
            paused: existing.as_ref().is_some_and(|q| q.paused),
            named,
            created_at: existing.as_ref().map_or(txn.now, |q| q.created_at),
            updated_at: txn.now,
        };
        txn.tx.upsert_queue(&def)?;
    }
    for task in &manifest.tasks {
        let def = TaskDef {
            env_id: env_id.to_string(),
            worker_id: worker.id.clone(),
            slug: task.slug.clone(),
            file_path: task.file_path.clone(),
            export_name: task.export_name.clone(),
            description: task.description.clone(),
            queue: match &task.queue_name {
                Some(name) => sanitize_queue_name(name),
                None => format!("task/{}", task.slug),
            },
            retry: task.retry.clone(),
            machine: task.machine,
            max_duration_secs: task.max_duration_secs,
            ttl_ms: task.ttl_ms,
            payload_schema: task.payload_schema.clone(),
            created_at: txn.now,
        };
        txn.tx.upsert_task(&def)?;
    }
    release_pending_versions(txn, env_id)?;
    txn.work_available(env_id);
    Ok(worker)
}

/// Queues the runs that waited for their task or queue to be registered.
fn release_pending_versions(txn: &mut Txn<'_>, env_id: &str) -> Result<()> {
    loop {
        let pending = txn.tx.list_runs_in_status(env_id, RunStatus::PendingVersion, 500)?;
        let mut moved = 0;
        for run in &pending {
            if txn.tx.get_queue(env_id, &run.queue)?.is_none() {
                continue;
            }
            let mut run = txn.lock_run(&run.id)?;
            queue::enqueue(txn, &mut run, "queue registered by a worker version")?;
            txn.save_run(&mut run)?;
            moved += 1;
        }
        if pending.len() < 500 || moved == 0 {
            return Ok(());
        }
    }
}

/// `YYYYMMDD.N`: the date of `now`, numbered after the previous version of the same day.
fn next_version(previous: Option<&WorkerVersion>, now: i64) -> String {
    let date = civil_date(now);
    let n = previous
        .and_then(|w| w.version.split_once('.'))
        .filter(|(d, _)| *d == date)
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .map_or(1, |n| n + 1);
    format!("{date}.{n}")
}

/// `YYYYMMDD` (UTC) of a millisecond timestamp (Howard Hinnant's days-to-civil).
pub(crate) fn civil_date(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}{m:02}{d:02}")
}

/// The task definition a new run of `slug` uses: from the locked version if given, else
/// from the newest version that has the task.
pub(crate) fn resolve_task(
    txn: &mut Txn<'_>,
    env_id: &str,
    slug: &str,
    lock_to_version: Option<&str>,
) -> Result<(WorkerVersion, TaskDef)> {
    if let Some(version) = lock_to_version {
        let worker = txn
            .tx
            .find_worker_by_version(env_id, version)?
            .ok_or_else(|| Error::NotFound(format!("Worker version not found: {version}")))?;
        let task = txn
            .tx
            .get_task(env_id, &worker.id, slug)?
            .ok_or_else(|| Error::NotFound(format!("Task not found: {slug} (version {version})")))?;
        return Ok((worker, task));
    }
    for worker in txn.tx.list_workers(env_id, 20)? {
        if let Some(task) = txn.tx.get_task(env_id, &worker.id, slug)? {
            return Ok((worker, task));
        }
    }
    Err(Error::NotFound(format!("Task not found: {slug}")))
}

impl TaskManifest {
    /// A task with defaults: its own `task/<slug>` queue, no retry policy, the default machine.
    pub fn new(slug: impl Into<String>) -> Self {
        let slug = slug.into();
        TaskManifest {
            file_path: format!("src/{slug}.rs"),
            slug,
            export_name: None,
            description: None,
            queue_name: None,
            queue_concurrency_limit: None,
            retry: None,
            machine: None,
            max_duration_secs: None,
            ttl_ms: None,
            payload_schema: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_dates() {
        assert_eq!(civil_date(0), "19700101");
        assert_eq!(civil_date(1_738_972_800_000), "20250208");
        assert_eq!(next_version(None, 1_738_972_800_000), "20250208.1");
        let prev = WorkerVersion {
            id: "worker_1".into(),
            env_id: "env".into(),
            version: "20250208.3".into(),
            content_hash: String::new(),
            sdk_version: None,
            cli_version: None,
            created_at: 0,
        };
        assert_eq!(next_version(Some(&prev), 1_738_972_800_000), "20250208.4");
        assert_eq!(next_version(Some(&prev), 1_739_059_200_000), "20250209.1");
        assert_eq!(sanitize_queue_name("my queue!/a"), "myqueue/a");
    }
}
