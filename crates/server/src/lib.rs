//! The trigger.rs HTTP server: Trigger.dev v4's wire protocol over the run engine, so the
//! official `@trigger.dev/sdk` and `trigger.dev` CLI work against it unchanged, and Rust
//! workers use the same endpoints.
//!
//! - **Management API** (`/api/…`): trigger, two-phase batches, runs, metadata, tags,
//!   idempotency keys, waitpoint tokens — what the SDK calls from a backend or a task.
//! - **Engine API** (`/engine/…`): dequeue (long poll), attempts, heartbeats, snapshots,
//!   waits, and an SSE push channel of snapshot changes for workers.
//! - **CLI routes**: `whoami`, an environment's key, env vars, worker registration.
//! - **OTLP sink** (`/otel/v1/{logs,traces,metrics}`): log records and spans become run
//!   events.
//!
//! Every route is classified in one table ([`routes::table`]): public, environment key, or
//! personal access token. Errors are `{ "error": "…" }` with the status the SDK expects
//! ([`Error`]).
//!
//! Checked against the real clients: `compat/` (in CI) drives a live `trigger dev` process
//! with `@trigger.dev/sdk` 4.8.3 and validates the worker responses with `@trigger.dev/core`'s
//! own Zod schemas; the `trigger.dev` 4.8.3 CLI's dev loop (`trigger dev`) runs tasks with
//! `triggerAndWait`, `wait.for`, tokens and offloaded outputs against it.
//!
//! # Where this differs from Trigger.dev, deliberately
//!
//! - **Push for workers.** Besides the CLI's socket.io `/dev-worker` channel (the subset the
//!   CLI uses: `run:subscribe`, `run:unsubscribe`, `run:notify`), `GET
//!   /engine/v1/dev/runs/notifications` streams snapshot changes as server-sent events for
//!   workers that prefer plain HTTP. Dequeue takes `maxRuns` (default 10, at most 100) and
//!   `timeoutMs` (long poll, at most 10 s).
//! - **Packets are stored by the server** (a folder beside the SQLite file, or memory), behind
//!   signed URLs under `/api/v1/packet-data`, instead of object storage.
//! - **Worker routes parse JSON whatever the content type**, because the CLI posts JSON as
//!   `text/plain`; management routes insist on `application/json` (415 otherwise).
//! - **Statuses are always the v4 (`2025-07-16`) mapping**; the legacy mapping for clients
//!   without `x-trigger-api-version` is not offered.
//! - **No JWTs**: trigger responses carry no `x-trigger-jwt` (the SDK then signs its own
//!   public token), and there is no realtime (Electric) API yet to use one with.
//! - **Run list filters** on schedules, bulk actions and regions match nothing, as none exist.
//! - **OTLP** records are stored only when they name their run and its environment
//!   (`ctx.run.id`, `ctx.environment.id`, also with the SDK's `$metadata.` prefix).
//!
//! # Quick start
//!
//! Build the router over an engine and call it in-process:
//!
//! ```
//! use axum::body::Body;
//! use axum::http::Request;
//! use tower::ServiceExt;
//! use trigger_engine::{Engine, EngineOptions};
//! use trigger_server::{app, AppState};
//! use trigger_storage_sqlite::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let engine = Engine::start(SqliteStore::memory().unwrap(), EngineOptions::default());
//! let router = app(AppState::new(engine, "http://localhost:3030"));
//! let response = router
//!     .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 200);
//! # });
//! ```
//!
//! Or run the whole server, bootstrapped with a default project and a dev key:
//!
//! ```no_run
//! use trigger_server::{serve, Database, ServeOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = serve(ServeOptions {
//!     database: Database::Sqlite("trigger.db".into()),
//!     ..ServeOptions::default()
//! })
//! .await?;
//! if let Some(key) = &server.bootstrap().dev_key {
//!     println!("TRIGGER_SECRET_KEY={key}");
//! }
//! server.wait().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use tokio::sync::watch;
use trigger_engine::{ApiKey, Engine};

pub mod auth;
pub mod dedupe;
pub mod error;
pub mod extract;
pub mod packets;
pub mod routes;
mod serve;
pub mod wire;

pub use error::{Error, Result};
pub use serve::{serve, Bootstrap, Database, ServeError, ServeOptions, Server};

/// What every handler shares: the engine, the public base URL, the auth cache.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    base_url: String,
    auth: auth::AuthCache,
    /// Plain-text secret keys this process created, by environment, for the CLI's
    /// `projects/{ref}/{env}` call. Memory only: keys are stored hashed.
    cli_keys: Mutex<HashMap<String, String>>,
    shutdown: watch::Sender<bool>,
    packets: packets::PacketStore,
    replays: dedupe::Replays,
    /// Signs packet URLs; per process, so URLs die with it (they live an hour anyway).
    packet_secret: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("base_url", &self.inner.base_url).finish_non_exhaustive()
    }
}

impl AppState {
    /// State over an engine; `base_url` is the URL clients reach this server at (used in
    /// callback URLs, env vars and the CLI's `apiUrl`).
    pub fn new(engine: Engine, base_url: impl Into<String>) -> AppState {
        AppState::with_packets(engine, base_url, packets::PacketStore::memory())
    }

    /// Like [`AppState::new`], keeping offloaded payloads and outputs in `packets`.
    pub fn with_packets(
        engine: Engine,
        base_url: impl Into<String>,
        packets: packets::PacketStore,
    ) -> AppState {
        AppState {
            inner: Arc::new(Shared {
                engine,
                base_url: base_url.into().trim_end_matches('/').to_string(),
                auth: auth::AuthCache::default(),
                cli_keys: Mutex::new(HashMap::new()),
                shutdown: watch::channel(false).0,
                packets,
                replays: dedupe::Replays::default(),
                packet_secret: trigger_types::ids::random_alphanumeric(32),
            }),
        }
    }

    pub fn packets(&self) -> &packets::PacketStore {
        &self.inner.packets
    }

    pub(crate) fn replays(&self) -> &dedupe::Replays {
        &self.inner.replays
    }

    pub(crate) fn packet_secret(&self) -> &str {
        &self.inner.packet_secret
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The public base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn auth_cache(&self) -> &auth::AuthCache {
        &self.inner.auth
    }

    /// Remembers (in memory only) a secret key's plain text, so the CLI can be handed it.
    pub fn remember_secret_key(&self, env_id: &str, plain: &str) {
        let mut keys = self.inner.cli_keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.insert(env_id.to_string(), plain.to_string());
    }

    pub(crate) fn remembered_secret_key(&self, env_id: &str) -> Option<String> {
        let keys = self.inner.cli_keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(env_id).cloned()
    }

    /// Revokes a key and drops it from the auth cache, so it stops working at once.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        let key = self.engine().revoke_api_key(id).await?;
        self.auth_cache().invalidate_key(id);
        let mut keys = self.inner.cli_keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(env) = &key.env_id {
            keys.remove(env);
        }
        Ok(key)
    }

    /// Ends long polls and event streams, so a graceful shutdown can drain.
    pub fn begin_shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }
}

/// The server's router over a state.
pub fn app(state: AppState) -> Router {
    let revoked = state.clone();
    let dashboard = trigger_dashboard::router(
        state.engine().clone(),
        trigger_dashboard::Options {
            // A key revoked in the dashboard stops working at once on this server.
            on_key_revoked: Some(Arc::new(move |id: &str| revoked.auth_cache().invalidate_key(id))),
            shutdown: Some(state.shutdown_signal()),
            ..trigger_dashboard::Options::from_env()
        },
    );
    routes::router(&state)
        .fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            tracing::debug!(%method, %uri, "no such route");
            Error::NotFound(format!("No such route: {method} {}", uri.path()))
        })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({ "error": "Method not allowed" })))
                .into_response()
        })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
        .merge(dashboard)
}

/// Resolves once shutdown has begun (the guard `wait_for` returns is dropped inside, so
/// callers' futures stay `Send`).
pub(crate) async fn shutdown_begun(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
