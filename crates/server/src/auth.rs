//! Bearer-key authentication with a short-lived in-memory cache.
//!
//! Every route is classified in the route table ([`crate::routes::Access`]); the router wraps
//! each one in the matching middleware, which puts the caller into the request's
//! extensions: an [`EnvCaller`] for environment routes, a [`PatCaller`] for CLI routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use trigger_engine::{ApiKey, ApiKeyKind, Environment, Organization, Project};

use crate::error::Error;
use crate::AppState;

/// How long a successful authentication is trusted without asking the engine again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// Who is calling, as a key resolves.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: ApiKey,
    /// For secret keys: the environment with its project and organisation.
    pub env: Option<(Environment, Project, Organization)>,
}

/// The caller of an environment route: a secret key's environment.
#[derive(Debug, Clone)]
pub struct EnvCaller {
    pub key_id: String,
    pub env: Environment,
    pub project: Project,
    pub org: Organization,
}

/// The caller of a CLI route: a personal access token.
#[derive(Debug, Clone)]
pub struct PatCaller {
    pub key: ApiKey,
}

/// How long a key that opens nothing is remembered as such, so that a flood of bad keys
/// does not become a flood of engine calls.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// When a key was looked up, and as whom it authenticated (`None`: it did not).
type Entry = (Instant, Option<Arc<Principal>>);

/// Recently looked-up keys, by SHA-256 of the key, so that the plain key is not kept.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn fresh((at, principal): &Entry) -> bool {
    at.elapsed() < if principal.is_some() { CACHE_TTL } else { NEGATIVE_TTL }
}

impl AuthCache {
    /// `Some(None)` for a key known to be bad.
    fn get(&self, hash: &[u8; 32]) -> Option<Option<Arc<Principal>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(hash).filter(|e| fresh(e)).map(|(_, p)| p.clone())
    }

    fn put(&self, hash: [u8; 32], principal: Option<Arc<Principal>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, e| fresh(e));
            if entries.len() > 10_000 {
                entries.clear();
            }
        }
        entries.insert(hash, (Instant::now(), principal));
    }

    /// Forgets a key, so that a revoked key stops working at once on this server.
    pub fn invalidate_key(&self, key_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (_, p)| p.as_ref().is_none_or(|p| p.key.id != key_id));
    }
}

fn bearer(parts_headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts_headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Resolves a plain key to its principal, through the cache.
pub async fn authenticate(state: &AppState, plain: &str) -> Result<Arc<Principal>, Error> {
    let hash: [u8; 32] = Sha256::digest(plain.as_bytes()).into();
    let invalid = || Error::Unauthorized("Invalid API key".into());
    if let Some(cached) = state.auth_cache().get(&hash) {
        return cached.ok_or_else(invalid);
    }
    let engine = state.engine();
    let Some((key, env)) = engine.authenticate(plain).await? else {
        state.auth_cache().put(hash, None);
        return Err(invalid());
    };
    let env = match env {
        Some(env) => {
            let project = engine
                .get_project(&env.project_id)
                .await?
                .ok_or_else(|| Error::Unauthorized("the key's project no longer exists".into()))?;
            let org = engine
                .list_organizations()
                .await?
                .into_iter()
                .find(|o| o.id == project.org_id)
                .ok_or_else(|| Error::Unauthorized("the key's organization no longer exists".into()))?;
            Some((env, project, org))
        }
        None => None,
    };
    let principal = Arc::new(Principal { key, env });
    state.auth_cache().put(hash, Some(principal.clone()));
    Ok(principal)
}

async fn principal_of(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Arc<Principal>, Error> {
    // Owned before awaiting: a request body is not `Sync`, so `&Request` cannot be held.
    let plain = bearer(headers).map(str::to_string);
    let plain =
        plain.ok_or_else(|| Error::Unauthorized("Missing Authorization: Bearer <key> header".into()))?;
    authenticate(state, &plain).await
}

/// Middleware of environment routes: a secret key is required.
pub(crate) async fn require_env(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match principal_of(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match (&principal.key.kind, &principal.env) {
        (ApiKeyKind::Secret, Some((env, project, org))) => {
            req.extensions_mut().insert(EnvCaller {
                key_id: principal.key.id.clone(),
                env: env.clone(),
                project: project.clone(),
                org: org.clone(),
            });
            next.run(req).await
        }
        _ => Error::Forbidden("this route needs an environment's secret key (tr_dev_…, tr_prod_…)".into())
            .into_response(),
    }
}

/// Middleware of CLI routes: a personal access token is required.
pub(crate) async fn require_pat(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match principal_of(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if principal.key.kind != ApiKeyKind::PersonalAccessToken {
        return Error::Forbidden("this route needs a personal access token (tr_pat_…)".into())
            .into_response();
    }
    req.extensions_mut().insert(PatCaller { key: principal.key.clone() });
    next.run(req).await
}

fn missing_caller() -> Error {
    // Only reachable when a route is classified wrongly in the route table.
    Error::Forbidden("this route is not classified for this kind of caller".into())
}

impl<S: Send + Sync> FromRequestParts<S> for EnvCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<EnvCaller>().cloned().ok_or_else(missing_caller)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PatCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<PatCaller>().cloned().ok_or_else(missing_caller)
    }
}
