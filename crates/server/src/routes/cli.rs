//! Routes of the `trigger.dev` CLI: who am I, an environment's key, env vars, and worker
//! registration.

use axum::extract::{Path, State};
use axum::Json as JsonResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trigger_engine::{
    ApiKeyKind, EnvironmentType, MachinePreset, QueueManifest, RetryOptions, TaskManifest, WorkerManifest,
};

use crate::auth::{EnvCaller, PatCaller};
use crate::error::{Error, Result};
use crate::extract::{QueryPairs, WorkerJson};
use crate::AppState;

/// The account behind a PAT. There are no user accounts here, so the token stands in.
pub async fn whoami(
    State(state): State<AppState>,
    caller: PatCaller,
    query: QueryPairs,
) -> Result<JsonResponse<Value>> {
    let mut body = json!({
        "userId": caller.key.id,
        "email": "admin@trigger.local",
        "dashboardUrl": state.base_url(),
    });
    if let Some(r) = query.get("projectRef") {
        if let Some(project) = state.engine().find_project_by_ref(r).await? {
            let org = state.engine().list_organizations().await?.into_iter().find(|o| o.id == project.org_id);
            body["project"] = json!({
                "name": project.name,
                "url": format!("{}/projects/{}", state.base_url(), project.external_ref),
                "orgTitle": org.map(|o| o.title).unwrap_or_default(),
            });
        }
    }
    Ok(JsonResponse(body))
}

/// `GetProjectEnvResponse`: the environment's secret key for the CLI. Keys are stored
/// hashed, so the key handed out is one this process created (at bootstrap, or now).
pub async fn project_env(
    State(state): State<AppState>,
    _caller: PatCaller,
    Path((project_ref, env)): Path<(String, String)>,
) -> Result<JsonResponse<Value>> {
    let engine = state.engine();
    let project = engine
        .find_project_by_ref(&project_ref)
        .await?
        .ok_or_else(|| Error::NotFound(format!("Project not found: {project_ref}")))?;
    let kind = EnvironmentType::parse(&env)
        .ok_or_else(|| Error::NotFound(format!("Environment not found: {env}")))?;
    let environment = engine
        .list_environments(&project.id)
        .await?
        .into_iter()
        .find(|e| e.kind == kind)
        .ok_or_else(|| Error::NotFound(format!("Environment not found: {env}")))?;
    let key = match state.remembered_secret_key(&environment.id) {
        Some(key) => key,
        None => {
            let (_, plain) = engine.create_api_key(ApiKeyKind::Secret, Some(&environment.id), "CLI").await?;
            state.remember_secret_key(&environment.id, &plain);
            plain
        }
    };
    Ok(JsonResponse(json!({
        "apiKey": key,
        "name": project.name,
        "apiUrl": state.base_url(),
        "projectId": project.id,
    })))
}

fn check_project(caller: &EnvCaller, project_ref: &str) -> Result<()> {
    if caller.project.external_ref != project_ref {
        return Err(Error::NotFound(format!("Project not found: {project_ref}")));
    }
    Ok(())
}

/// The variables a dev worker passes to task processes; the OTLP endpoint matters most:
/// without it the SDK exports telemetry to `0.0.0.0:4318`.
pub async fn envvars(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(project_ref): Path<String>,
) -> Result<JsonResponse<Value>> {
    check_project(&caller, &project_ref)?;
    Ok(JsonResponse(json!({ "variables": dev_env_vars(&state) })))
}

/// What task processes need to reach this server. The 4.8 CLI builds a run's environment
/// from the `envVars` of the attempt-start response, so they are sent there too.
pub(crate) fn dev_env_vars(state: &AppState) -> DevEnvVars {
    let base = state.base_url();
    DevEnvVars {
        api_url: base.to_string(),
        stream_url: base.to_string(),
        otlp_endpoint: format!("{base}/otel"),
    }
}

/// The variables [`dev_env_vars`] gives task processes.
#[derive(Debug, Serialize)]
pub(crate) struct DevEnvVars {
    #[serde(rename = "TRIGGER_API_URL")]
    api_url: String,
    #[serde(rename = "TRIGGER_STREAM_URL")]
    stream_url: String,
    #[serde(rename = "TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: String,
}

/// `CreateBackgroundWorkerRequestBody` (the fields the engine uses).
#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    metadata: WorkerMetadata,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkerMetadata {
    #[serde(default)]
    package_version: Option<String>,
    content_hash: String,
    #[serde(default)]
    cli_package_version: Option<String>,
    tasks: Vec<TaskResource>,
    #[serde(default)]
    queues: Option<Vec<QueueResource>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueResource {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    concurrency_limit: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineConfig {
    cpu: Option<f64>,
    memory: Option<f64>,
    preset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskResource {
    id: String,
    file_path: String,
    #[serde(default)]
    export_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    queue: Option<QueueResource>,
    #[serde(default)]
    retry: Option<RetryOptions>,
    #[serde(default)]
    machine: Option<MachineConfig>,
    #[serde(default)]
    max_duration: Option<f64>,
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default)]
    payload_schema: Option<Value>,
}

fn limit(l: Option<f64>) -> Option<u32> {
    l.filter(|l| l.is_finite() && *l >= 0.0).map(|l| l.min(u32::MAX as f64) as u32)
}

fn task_manifest(i: usize, t: TaskResource) -> Result<TaskManifest> {
    let field = |name: &str| format!("metadata.tasks[{i}].{name}");
    let machine = match t.machine {
        None => None,
        Some(m) => match (m.preset, m.cpu, m.memory) {
            (Some(p), _, _) => Some(MachinePreset::parse(&p).ok_or_else(|| {
                Error::unprocessable(&field("machine.preset"), format!("unknown preset {p:?}"))
            })?),
            (None, None, None) => None,
            (None, cpu, memory) => Some(
                MachinePreset::smallest_fitting(cpu.unwrap_or(0.0), memory.unwrap_or(0.0))
                    .ok_or_else(|| Error::unprocessable(&field("machine"), "no preset is that large"))?,
            ),
        },
    };
    let ttl_ms = match t.ttl {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(trigger_types::parse_duration(&s).map_err(|e| Error::unprocessable(&field("ttl"), e))?)
        }
        Some(Value::Number(n)) => Some(
            n.as_u64().ok_or_else(|| Error::unprocessable(&field("ttl"), "expected seconds ≥ 0"))? * 1000,
        ),
        Some(_) => return Err(Error::unprocessable(&field("ttl"), "expected a duration or seconds")),
    };
    let (queue_name, queue_concurrency_limit) = match t.queue {
        Some(q) => (q.name, limit(q.concurrency_limit)),
        None => (None, None),
    };
    Ok(TaskManifest {
        slug: t.id,
        file_path: t.file_path,
        export_name: t.export_name,
        description: t.description,
        queue_name,
        queue_concurrency_limit,
        retry: t.retry,
        machine,
        max_duration_secs: t.max_duration.filter(|d| d.is_finite() && *d > 0.0).map(|d| d.ceil() as u32),
        ttl_ms,
        payload_schema: t.payload_schema,
    })
}

pub async fn register_worker(
    State(state): State<AppState>,
    caller: EnvCaller,
    Path(project_ref): Path<String>,
    WorkerJson(body): WorkerJson<RegisterBody>,
) -> Result<JsonResponse<Value>> {
    check_project(&caller, &project_ref)?;
    let m = body.metadata;
    let tasks =
        m.tasks.into_iter().enumerate().map(|(i, t)| task_manifest(i, t)).collect::<Result<Vec<_>>>()?;
    let queues = m
        .queues
        .unwrap_or_default()
        .into_iter()
        .filter_map(|q| {
            q.name.map(|name| QueueManifest { name, concurrency_limit: limit(q.concurrency_limit) })
        })
        .collect();
    let manifest = WorkerManifest {
        content_hash: m.content_hash,
        sdk_version: m.package_version,
        cli_version: m.cli_package_version,
        tasks,
        queues,
    };
    let worker = state.engine().register_worker(&caller.env.id, manifest).await?;
    Ok(JsonResponse(
        json!({ "id": worker.id, "version": worker.version, "contentHash": worker.content_hash }),
    ))
}
