//! The trigger.rs dashboard: Trigger.dev's browser UI, served by the server itself.
//!
//! Server-rendered HTML over the run engine, with one small embedded script that applies
//! live updates pushed over Server-Sent Events from [`Engine::subscribe`] (no polling, no
//! front-end build, no Node). Everything lives under `/dashboard`; every page needs a
//! session, which a login token opens (see [`Options`] and [`startup_token`]).
//!
//! Pages: runs (filters, cursor paging, live rows), a run (timeline, logs and spans,
//! payload, output, error, live metadata, the run tree, cancel / replay / reschedule),
//! tasks (per version, with a Test form), queues (pause / resume, per concurrency key),
//! batches, waitpoint tokens (complete by hand) and API keys (create, reveal once, revoke),
//! with an environment switcher.
//!
//! # Quick start
//!
//! ```
//! use axum::body::Body;
//! use axum::http::Request;
//! use tower::ServiceExt;
//! use trigger_engine::{Engine, EngineOptions};
//! use trigger_storage_sqlite::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let engine = Engine::start(SqliteStore::memory().unwrap(), EngineOptions::default());
//! engine.bootstrap("Default", "Default project").await.unwrap();
//! let token = trigger_dashboard::startup_token(&engine).await.unwrap();
//! let router = trigger_dashboard::router(engine, trigger_dashboard::Options::default());
//!
//! // Without a session every page sends the browser to the login form.
//! let response = router
//!     .clone()
//!     .oneshot(Request::get("/dashboard/dev/runs").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 303);
//! assert!(token.starts_with("tr_dash_"));
//! # });
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::OnceCell;
use trigger_engine::{ApiKeyKind, Engine, Environment, EnvironmentType, Tenancy};

mod auth;
mod error;
mod html;
mod live;
mod pages;

pub use error::Error;

/// Name given to the login token created at each start by [`startup_token`].
pub const STARTUP_TOKEN_NAME: &str = "dashboard login (startup)";

/// A callback told the id of each key the dashboard revokes.
pub type KeyRevoked = Arc<dyn Fn(&str) + Send + Sync>;

/// How the dashboard authenticates and behaves.
#[derive(Clone)]
pub struct Options {
    /// Plain tokens accepted as a login besides the engine's dashboard keys (for example
    /// `TRIGGER_DASHBOARD_TOKEN` configured for `trigger serve`).
    pub tokens: Vec<String>,
    /// Also accept the development environment's secret keys (`tr_dev_…`) as a login.
    /// Off by default: a dev key would otherwise open production.
    pub accept_dev_secret_key: bool,
    /// Mark the session cookie `Secure` (when the dashboard is served over HTTPS).
    pub secure_cookie: bool,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// Called with a key id after the dashboard revokes it, so a server can drop the key
    /// from its authentication cache at once.
    pub on_key_revoked: Option<KeyRevoked>,
    /// Turns `true` when the server begins a graceful shutdown: live streams end then, so
    /// an open dashboard tab does not hold the drain.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: Vec::new(),
            accept_dev_secret_key: false,
            secure_cookie: false,
            session_ttl: Duration::from_secs(12 * 3600),
            on_key_revoked: None,
            shutdown: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("tokens", &self.tokens.len())
            .field("accept_dev_secret_key", &self.accept_dev_secret_key)
            .field("secure_cookie", &self.secure_cookie)
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Defaults plus `TRIGGER_DASHBOARD_TOKEN` (a login token) when it is set.
    pub fn from_env() -> Options {
        let mut options = Options::default();
        if let Ok(token) = std::env::var("TRIGGER_DASHBOARD_TOKEN") {
            if !token.trim().is_empty() {
                options.tokens.push(token.trim().to_string());
            }
        }
        options
    }
}

/// What every dashboard handler shares.
#[derive(Clone)]
pub(crate) struct Dash {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    options: Options,
    sessions: auth::Sessions,
    tenancy: OnceCell<Tenancy>,
}

impl Dash {
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    pub(crate) fn sessions(&self) -> &auth::Sessions {
        &self.inner.sessions
    }

    /// The project the dashboard shows: the installation's first, as bootstrapped.
    pub(crate) async fn tenancy(&self) -> Result<&Tenancy, Error> {
        let engine = self.engine().clone();
        Ok(self
            .inner
            .tenancy
            .get_or_try_init(|| async move { engine.bootstrap("Default", "Default project").await })
            .await?)
    }

    /// The project's environments, fresh (limits and pauses change).
    pub(crate) async fn environments(&self) -> Result<Vec<Environment>, Error> {
        let tenancy = self.tenancy().await?;
        let mut envs = self.engine().list_environments(&tenancy.project.id).await?;
        envs.sort_by_key(|e| env_order(e.kind));
        Ok(envs)
    }

    /// The environment a URL slug names, with all of them (for the switcher).
    pub(crate) async fn environment(&self, slug: &str) -> Result<(Environment, Vec<Environment>), Error> {
        let kind = EnvironmentType::parse(slug)
            .ok_or_else(|| Error::NotFound(format!("No environment called {slug:?}")))?;
        let envs = self.environments().await?;
        let env = envs
            .iter()
            .find(|e| e.kind == kind)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("No {} environment", kind.slug())))?;
        Ok((env, envs))
    }
}

pub(crate) fn env_order(kind: EnvironmentType) -> u8 {
    match kind {
        EnvironmentType::Development => 0,
        EnvironmentType::Staging => 1,
        EnvironmentType::Production => 2,
        EnvironmentType::Preview => 3,
    }
}

/// The dashboard's routes, all under `/dashboard` (merge them into the server's router).
pub fn router(engine: Engine, options: Options) -> Router {
    let dash = Dash {
        inner: Arc::new(Inner {
            engine,
            sessions: auth::Sessions::new(options.session_ttl),
            options,
            tenancy: OnceCell::new(),
        }),
    };
    let protected = Router::new()
        .route("/dashboard", get(pages::home))
        .route("/dashboard/", get(pages::home))
        .route("/dashboard/logout", post(auth::logout))
        .route("/dashboard/{env}", get(pages::env_home))
        .route("/dashboard/{env}/runs", get(pages::runs::list))
        .route("/dashboard/{env}/runs/{run}", get(pages::runs::show))
        .route("/dashboard/{env}/runs/{run}/cancel", post(pages::runs::cancel))
        .route("/dashboard/{env}/runs/{run}/replay", post(pages::runs::replay))
        .route("/dashboard/{env}/runs/{run}/reschedule", post(pages::runs::reschedule))
        .route("/dashboard/{env}/tasks", get(pages::tasks::list))
        .route("/dashboard/{env}/tasks/{task}/test", post(pages::tasks::test))
        .route("/dashboard/{env}/queues", get(pages::queues::list))
        .route("/dashboard/{env}/queues/pause", post(pages::queues::pause))
        .route("/dashboard/{env}/batches", get(pages::batches::list))
        .route("/dashboard/{env}/waitpoints", get(pages::waitpoints::list))
        .route("/dashboard/{env}/waitpoints/{id}/complete", post(pages::waitpoints::complete))
        .route("/dashboard/{env}/keys", get(pages::keys::list).post(pages::keys::create))
        .route("/dashboard/{env}/keys/{id}/revoke", post(pages::keys::revoke))
        .route("/dashboard/{env}/live/runs", get(live::runs))
        .route("/dashboard/{env}/live/runs/{run}", get(live::run))
        .route("/dashboard/{env}/live/env", get(live::env))
        .route_layer(from_fn_with_state(dash.clone(), auth::require_session));
    Router::new()
        .route("/dashboard/login", get(auth::login_page).post(auth::login))
        .route("/dashboard/assets/{file}", get(pages::asset))
        .merge(protected)
        .with_state(dash)
}

/// Creates a fresh dashboard login token, revoking the ones earlier starts created, and
/// returns its only plain-text copy (print it, or put it in the dashboard URL).
pub async fn startup_token(engine: &Engine) -> Result<String, trigger_engine::Error> {
    for key in engine.list_api_keys(None).await? {
        if key.kind == ApiKeyKind::Dashboard && key.name == STARTUP_TOKEN_NAME && key.revoked_at.is_none() {
            engine.revoke_api_key(&key.id).await?;
        }
    }
    Ok(engine.create_api_key(ApiKeyKind::Dashboard, None, STARTUP_TOKEN_NAME).await?.1)
}

/// The dashboard's URL for a server base URL, with a login token that signs the browser
/// in on first visit.
pub fn login_url(base_url: &str, token: &str) -> String {
    format!("{}/dashboard/login?token={token}", base_url.trim_end_matches('/'))
}
