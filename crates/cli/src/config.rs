//! Where the CLI finds the database, the server and its credentials.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use trigger_server::Database;

/// Parses `--database-url`: `postgres://…`, `sqlite:PATH`, `sqlite://PATH`, a path, or
/// `memory`. `schema` applies to PostgreSQL only.
pub fn database(url: &str, schema: Option<String>) -> Result<Database> {
    if url == "memory" || url == "sqlite::memory:" {
        return Ok(Database::Memory);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres { url: url.to_string(), schema });
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    if path.is_empty() {
        bail!("--database-url: empty path");
    }
    Ok(Database::Sqlite(PathBuf::from(path)))
}

/// Credentials `trigger dev` keeps for the local developer, so later commands (and later
/// starts) know the dev key. Only for local development: the database stores keys hashed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub api_url: Option<String>,
    pub dev_key: Option<String>,
    pub personal_access_token: Option<String>,
    pub project_ref: Option<String>,
}

pub fn credentials_path(dir: &Path) -> PathBuf {
    dir.join("credentials.json")
}

pub fn load_credentials(dir: &Path) -> Credentials {
    std::fs::read_to_string(credentials_path(dir))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

pub fn save_credentials(dir: &Path, credentials: &Credentials) -> Result<()> {
    let path = credentials_path(dir);
    let text = serde_json::to_string_pretty(credentials)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The default local data directory of `trigger dev`.
pub fn dev_dir() -> PathBuf {
    PathBuf::from(".trigger")
}

/// Server URL and key for API commands: flags and environment first, then `trigger dev`'s
/// credentials file.
pub fn api(url: Option<String>, key: Option<String>) -> Result<(String, String)> {
    let saved = load_credentials(&dev_dir());
    let url = url.or(saved.api_url).unwrap_or_else(|| "http://127.0.0.1:3030".into());
    let Some(key) = key.or(saved.dev_key) else {
        bail!("no secret key: pass --secret-key or set TRIGGER_SECRET_KEY (or run `trigger dev` in this folder first)");
    };
    Ok((url, key))
}
