//! The route table: every route with its method, path, who may call it and what it is.
//!
//! The router is built from this table and nothing else, so a route cannot exist without an
//! [`Access`] class; the OpenAPI document's path list comes from it too.

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{on, MethodFilter, MethodRouter};

use crate::AppState;

pub mod batches;
pub mod cli;
pub mod engine;
pub mod meta;
pub mod otel;
pub mod packets;
pub mod runs;
pub mod socketio;
pub mod waitpoints;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key: health, timezones, the OTLP sinks, token callback URLs (which carry a secret).
    Public,
    /// An environment's secret key (`tr_dev_…`, `tr_prod_…`); the request is scoped to it.
    Env,
    /// A personal access token (`tr_pat_…`): the CLI's account routes.
    Pat,
}

/// Which API a route belongs to (the OpenAPI document covers [`Group::Management`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// What the SDK calls from a backend or a task (`/api/…`).
    Management,
    /// What workers and the CLI call (`/engine/…`, project and worker registration).
    Worker,
    /// Health, docs, telemetry.
    System,
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// axum path syntax (`/api/v3/runs/{runId}`), which is also OpenAPI's.
    pub path: &'static str,
    pub access: Access,
    pub group: Group,
    pub summary: &'static str,
    /// Largest request body accepted; `None` for routes that stream and cap themselves.
    pub body_limit: Option<usize>,
}

pub(crate) struct Route {
    pub spec: RouteSpec,
    pub handler: MethodRouter<AppState>,
}

const MIB: usize = 1024 * 1024;
/// Room for a 3 MiB payload plus its options, so the payload limit answers with its own
/// message instead of a generic body-limit one.
const DEFAULT_BODY_LIMIT: usize = 4 * MIB;

fn route<H, T>(
    method: Method,
    path: &'static str,
    access: Access,
    group: Group,
    summary: &'static str,
    handler: H,
) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("standard method");
    Route {
        spec: RouteSpec { method, path, access, group, summary, body_limit: Some(DEFAULT_BODY_LIMIT) },
        handler: on(filter, handler),
    }
}

impl Route {
    fn limit(mut self, limit: Option<usize>) -> Route {
        self.spec.body_limit = limit;
        self
    }
}

/// Every route of the server.
pub(crate) fn routes() -> Vec<Route> {
    use Access::*;
    use Group::*;
    let (get, post, put) = (Method::GET, Method::POST, Method::PUT);
    vec![
        // System.
        route(get.clone(), "/healthz", Public, System, "Liveness", meta::healthz),
        route(get.clone(), "/readyz", Public, System, "Readiness (an engine round trip)", meta::readyz),
        route(get.clone(), "/api/openapi.json", Public, System, "This API's OpenAPI document", meta::openapi),
        route(
            get.clone(),
            "/api/v1/timezones",
            Public,
            Management,
            "Supported IANA timezones",
            meta::timezones,
        ),
        route(post.clone(), "/otel/v1/logs", Public, System, "OTLP/HTTP logs sink", otel::logs)
            .limit(Some(16 * MIB)),
        route(post.clone(), "/otel/v1/traces", Public, System, "OTLP/HTTP traces sink", otel::traces)
            .limit(Some(16 * MIB)),
        route(post.clone(), "/otel/v1/metrics", Public, System, "OTLP/HTTP metrics sink", otel::metrics)
            .limit(Some(16 * MIB)),
        // Runs.
        route(
            post.clone(),
            "/api/v1/tasks/{taskId}/trigger",
            Env,
            Management,
            "Trigger a task",
            runs::trigger,
        ),
        route(get.clone(), "/api/v3/runs/{runId}", Env, Management, "Retrieve a run", runs::retrieve),
        route(get.clone(), "/api/v1/runs", Env, Management, "List runs", runs::list),
        route(post.clone(), "/api/v2/runs/{runId}/cancel", Env, Management, "Cancel a run", runs::cancel),
        route(post.clone(), "/api/v1/runs/{runId}/replay", Env, Management, "Replay a run", runs::replay),
        route(
            post.clone(),
            "/api/v1/runs/{runId}/reschedule",
            Env,
            Management,
            "Reschedule a delayed run",
            runs::reschedule,
        ),
        route(
            post.clone(),
            "/api/v1/runs/{runId}/tags",
            Env,
            Management,
            "Add tags to a run",
            runs::add_tags,
        ),
        route(
            put.clone(),
            "/api/v1/runs/{runId}/metadata",
            Env,
            Management,
            "Update run metadata",
            runs::put_metadata,
        ),
        route(
            get.clone(),
            "/api/v1/runs/{runId}/metadata",
            Env,
            Management,
            "Get run metadata",
            runs::get_metadata,
        ),
        route(
            post.clone(),
            "/api/v1/idempotencyKeys/{key}/reset",
            Env,
            Management,
            "Reset an idempotency key",
            runs::reset_idempotency_key,
        ),
        // Offloaded payloads and outputs (128 KB and more).
        route(
            put.clone(),
            "/api/v2/packets/{*path}",
            Env,
            Management,
            "Presign a packet upload",
            packets::upload_url,
        ),
        route(
            get.clone(),
            "/api/v1/packets/{*path}",
            Env,
            Management,
            "Presign a packet download",
            packets::download_url,
        ),
        route(
            get.clone(),
            "/api/v1/runs/{runId}/packets/{field}",
            Env,
            Management,
            "Presign a run's offloaded payload or output",
            packets::run_packet_url,
        ),
        route(
            put.clone(),
            "/api/v1/packet-data",
            Public,
            System,
            "Signed packet upload target",
            packets::put_data,
        )
        .limit(Some(11 * MIB)),
        route(
            get.clone(),
            "/api/v1/packet-data",
            Public,
            System,
            "Signed packet download target",
            packets::get_data,
        ),
        // Batches.
        route(post.clone(), "/api/v3/batches", Env, Management, "Create a batch (phase 1)", batches::create),
        route(
            post.clone(),
            "/api/v3/batches/{batchId}/items",
            Env,
            Management,
            "Stream batch items as NDJSON (phase 2)",
            batches::items,
        )
        .limit(None),
        route(
            get.clone(),
            "/api/v2/batches/{batchId}",
            Env,
            Management,
            "Retrieve a batch",
            batches::retrieve,
        ),
        // Waitpoint tokens.
        route(
            post.clone(),
            "/api/v1/waitpoints/tokens",
            Env,
            Management,
            "Create a waitpoint token",
            waitpoints::create,
        ),
        route(
            get.clone(),
            "/api/v1/waitpoints/tokens",
            Env,
            Management,
            "List waitpoint tokens",
            waitpoints::list,
        ),
        route(
            get.clone(),
            "/api/v1/waitpoints/tokens/{waitpointId}",
            Env,
            Management,
            "Retrieve a waitpoint token",
            waitpoints::retrieve,
        ),
        route(
            post.clone(),
            "/api/v1/waitpoints/tokens/{waitpointId}/complete",
            Env,
            Management,
            "Complete a waitpoint token",
            waitpoints::complete,
        )
        .limit(Some(12 * MIB)),
        route(
            post.clone(),
            "/api/v1/waitpoints/tokens/{waitpointId}/callback/{secret}",
            Public,
            Management,
            "Complete a token through its callback URL",
            waitpoints::callback,
        )
        .limit(Some(12 * MIB)),
        // CLI and worker registration.
        route(
            get.clone(),
            "/api/v2/whoami",
            Pat,
            Worker,
            "Who the personal access token belongs to",
            cli::whoami,
        ),
        route(
            get.clone(),
            "/api/v1/projects/{projectRef}/{env}",
            Pat,
            Worker,
            "An environment's API key for the CLI",
            cli::project_env,
        ),
        route(
            get.clone(),
            "/api/v1/projects/{projectRef}/envvars",
            Env,
            Worker,
            "Environment variables for dev workers",
            cli::envvars,
        ),
        route(
            post.clone(),
            "/api/v1/projects/{projectRef}/background-workers",
            Env,
            Worker,
            "Register a worker version",
            cli::register_worker,
        )
        .limit(Some(64 * MIB)),
        // Engine (workers).
        route(get.clone(), "/engine/v1/dev/config", Env, Worker, "Dev worker settings", engine::dev_config),
        route(
            get.clone(),
            "/engine/v1/dev/presence",
            Env,
            Worker,
            "Dev worker presence (SSE)",
            engine::presence,
        ),
        route(post.clone(), "/engine/v1/dev/dequeue", Env, Worker, "Claim runs (long poll)", engine::dequeue),
        route(
            get.clone(),
            "/socket.io/",
            Env,
            Worker,
            "The CLI's socket.io push channel (/dev-worker namespace)",
            socketio::socket,
        ),
        route(
            get.clone(),
            "/engine/v1/dev/runs/notifications",
            Env,
            Worker,
            "Snapshot changes of the environment's runs (SSE)",
            engine::notifications,
        ),
        route(
            post.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/{snapshotId}/attempts/start",
            Env,
            Worker,
            "Start an attempt",
            engine::start_attempt,
        ),
        route(
            post.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/{snapshotId}/attempts/complete",
            Env,
            Worker,
            "Complete an attempt",
            engine::complete_attempt,
        )
        .limit(Some(12 * MIB)),
        route(
            post.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/{snapshotId}/heartbeat",
            Env,
            Worker,
            "Heartbeat a run",
            engine::heartbeat,
        ),
        route(
            post.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/{snapshotId}/release",
            Env,
            Worker,
            "Hand a claimed or executing run back to its queue (a worker shutting down; trigger.rs extension)",
            engine::release,
        ),
        route(
            get.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/latest",
            Env,
            Worker,
            "A run's latest snapshot",
            engine::latest_snapshot,
        ),
        route(
            get.clone(),
            "/engine/v1/dev/runs/{runId}/snapshots/since/{snapshotId}",
            Env,
            Worker,
            "A run's snapshots after one",
            engine::snapshots_since,
        ),
        route(
            post.clone(),
            "/engine/v1/dev/runs/{runId}/logs/debug",
            Env,
            Worker,
            "A worker's debug log line",
            engine::debug_log,
        ),
        route(
            post.clone(),
            "/engine/v1/dev/disconnect",
            Env,
            Worker,
            "A dev worker went away: cancel its runs",
            engine::disconnect,
        ),
        route(
            post.clone(),
            "/engine/v1/runs/{runId}/wait/duration",
            Env,
            Worker,
            "Wait for a duration (wait.for / wait.until)",
            engine::wait_for_duration,
        ),
        route(
            post,
            "/engine/v1/runs/{runId}/waitpoints/tokens/{waitpointId}/wait",
            Env,
            Worker,
            "Wait for a token",
            engine::wait_for_token,
        ),
    ]
}

/// The route table without handlers.
pub fn table() -> Vec<RouteSpec> {
    routes().into_iter().map(|r| r.spec).collect()
}

pub(crate) fn router(state: &AppState) -> axum::Router<AppState> {
    let mut router = axum::Router::new();
    for Route { spec, handler } in routes() {
        let handler = match spec.body_limit {
            Some(limit) => handler.layer(DefaultBodyLimit::max(limit)),
            None => handler.layer(DefaultBodyLimit::disable()),
        };
        let handler = match spec.access {
            Access::Public => handler,
            Access::Env => handler.route_layer(from_fn_with_state(state.clone(), crate::auth::require_env)),
            Access::Pat => handler.route_layer(from_fn_with_state(state.clone(), crate::auth::require_pat)),
        };
        router = router.route(spec.path, handler);
    }
    router
}
