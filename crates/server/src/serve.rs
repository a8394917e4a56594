//! Running the server: storage, engine, bootstrap, listener, graceful shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use trigger_engine::{ApiKeyKind, Config, Engine, EngineOptions, EnvironmentType, Tenancy};
use trigger_storage_postgres::{PostgresOptions, PostgresStore};
use trigger_storage_sqlite::SqliteStore;

use crate::packets::PacketStore;
use crate::{app, AppState};

/// Where runs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created on first start.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of replicas; `schema` keeps several
    /// deployments apart in one database.
    Postgres { url: String, schema: Option<String> },
    /// In memory: everything is gone when the process ends (tests, demos).
    Memory,
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub database: Database,
    pub host: String,
    /// `0` picks a free port.
    pub port: u16,
    /// The URL clients reach the server at; `http://<host>:<port>` when `None`.
    pub public_url: Option<String>,
    /// How long in-flight requests may take to finish on shutdown before they are cut.
    pub drain_timeout: Duration,
    /// Where offloaded payloads and outputs go with PostgreSQL (beside the file with SQLite,
    /// in memory with `Memory`). Replicas must share it. Default `./trigger-packets`.
    pub packet_dir: Option<PathBuf>,
    /// The concurrency limit of environments created from now on, the bootstrapped ones
    /// included (Trigger.dev's `DEFAULT_ENV_EXECUTION_CONCURRENCY_LIMIT`, 100 by default).
    /// An environment keeps the limit it was created with.
    pub env_concurrency_limit: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            database: Database::Sqlite("trigger.db".into()),
            host: "127.0.0.1".into(),
            port: 3030,
            public_url: None,
            drain_timeout: Duration::from_secs(10),
            packet_dir: None,
            env_concurrency_limit: Config::default().default_env_concurrency_limit,
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the database: {0}")]
    Database(#[from] trigger_engine::storage::StorageError),
    #[error("bootstrapping: {0}")]
    Engine(#[from] trigger_engine::Error),
    #[error("listening on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the first start (or this start) set up.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub tenancy: Tenancy,
    /// The dev environment's secret key, only when it was created by this start (keys are
    /// stored hashed; this is its only plain-text copy).
    pub dev_key: Option<String>,
    /// Ids of the dev environment's live secret keys.
    pub dev_key_ids: Vec<String>,
    /// A personal access token for the CLI, only when created by this start.
    pub personal_access_token: Option<String>,
    /// Where to point a browser: the dashboard's login link, with this start's login token.
    pub dashboard_url: String,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    bootstrap: Bootstrap,
    state: AppState,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    engine: Engine,
}

/// Offloaded payloads and outputs live beside the database: `trigger.db` → `trigger.db.packets/`.
fn packet_dir(db: &std::path::Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "trigger.db".into());
    name.push(".packets");
    db.with_file_name(name)
}

/// Opens the database, starts the engine, bootstraps the default project, and listens.
pub async fn serve(options: ServeOptions) -> Result<Server, ServeError> {
    let engine_options = || EngineOptions {
        config: Config { default_env_concurrency_limit: options.env_concurrency_limit, ..Config::default() },
        ..EngineOptions::default()
    };
    let engine = match &options.database {
        Database::Sqlite(path) => Engine::start(SqliteStore::open(path)?, engine_options()),
        Database::Memory => Engine::start(SqliteStore::memory()?, engine_options()),
        Database::Postgres { url, schema } => {
            let options = PostgresOptions { schema: schema.clone(), ..PostgresOptions::default() };
            let (url, store_options) = (url.clone(), options);
            let store = tokio::task::spawn_blocking(move || PostgresStore::connect(&url, store_options))
                .await
                .map_err(std::io::Error::other)??;
            Engine::start(store, engine_options())
        }
    };
    let addr = format!("{}:{}", options.host, options.port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let base_url = options.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    let packets = match &options.database {
        Database::Sqlite(path) => {
            PacketStore::Dir(options.packet_dir.clone().unwrap_or_else(|| packet_dir(path)))
        }
        Database::Memory => PacketStore::memory(),
        Database::Postgres { .. } => {
            PacketStore::Dir(options.packet_dir.clone().unwrap_or_else(|| PathBuf::from("trigger-packets")))
        }
    };
    let state = AppState::with_packets(engine.clone(), base_url.clone(), packets);
    let bootstrap = bootstrap(&state).await?;
    log_bootstrap(&bootstrap, local);

    let (stop, mut stopped) = watch::channel(false);
    let router = app(state.clone());
    let drain_state = state.clone();
    let drain_timeout = options.drain_timeout;
    let task = tokio::spawn(async move {
        let mut drain_signal = stopped.clone();
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = drain_signal.wait_for(|v| *v).await;
            // Long polls and event streams end now so that draining can finish.
            drain_state.begin_shutdown();
        });
        let server = server.into_future();
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            _ = async {
                let _ = stopped.wait_for(|v| *v).await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!("requests still running after the drain timeout; cancelling them");
                Ok(())
            }
        }
    });
    Ok(Server { addr: local, bootstrap, state, stop, task, engine })
}

impl Server {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The public base URL.
    pub fn base_url(&self) -> &str {
        self.state.base_url()
    }

    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the drain
    /// timeout), then stops the engine.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        self.finish().await
    }

    /// Runs until Ctrl-C (or SIGTERM on Unix), then shuts down gracefully.
    pub async fn wait(self) -> std::io::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }

    async fn finish(self) -> std::io::Result<()> {
        let result = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.engine.shutdown().await;
        result
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Creates the default organisation, project and environments, a dev secret key when the
/// dev environment has none, and a personal access token when there is none.
pub async fn bootstrap(state: &AppState) -> Result<Bootstrap, trigger_engine::Error> {
    let engine = state.engine();
    let tenancy = engine.bootstrap("Default", "Default project").await?;
    let dev = tenancy
        .environment(EnvironmentType::Development)
        .ok_or_else(|| trigger_engine::Error::NotFound("the dev environment is missing".into()))?
        .clone();
    let live = |k: &trigger_engine::ApiKey| k.revoked_at.is_none();
    let mut dev_keys: Vec<_> = engine
        .list_api_keys(Some(&dev.id))
        .await?
        .into_iter()
        .filter(|k| k.kind == ApiKeyKind::Secret && live(k))
        .collect();
    let dev_key = if dev_keys.is_empty() {
        let (key, plain) =
            engine.create_api_key(ApiKeyKind::Secret, Some(&dev.id), "default dev key").await?;
        state.remember_secret_key(&dev.id, &plain);
        dev_keys.push(key);
        Some(plain)
    } else {
        None
    };
    let has_pat = engine
        .list_api_keys(None)
        .await?
        .iter()
        .any(|k| k.kind == ApiKeyKind::PersonalAccessToken && live(k));
    let personal_access_token = if has_pat {
        None
    } else {
        Some(engine.create_api_key(ApiKeyKind::PersonalAccessToken, None, "default CLI token").await?.1)
    };
    // A fresh login token each start, in the printed dashboard link (sessions are in memory).
    let dashboard_token = trigger_dashboard::startup_token(engine).await?;
    Ok(Bootstrap {
        dashboard_url: trigger_dashboard::login_url(state.base_url(), &dashboard_token),
        dev_key,
        dev_key_ids: dev_keys.into_iter().map(|k| k.id).collect(),
        personal_access_token,
        tenancy,
    })
}

fn log_bootstrap(b: &Bootstrap, addr: SocketAddr) {
    let dashboard = b.dashboard_url.split("/login").next().unwrap_or_default();
    tracing::info!(%addr, %dashboard, project = %b.tenancy.project.external_ref, "trigger.rs server listening");
    match &b.dev_key {
        Some(_) => tracing::info!("created a dev secret key; it is shown once (see the bootstrap output)"),
        None => tracing::info!(
            keys = ?b.dev_key_ids,
            "the dev environment has secret keys (stored hashed); if you lost yours, create a new one with the CLI"
        ),
    }
}
