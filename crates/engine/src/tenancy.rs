//! Organisations, projects, environments and the keys that open them.

use trigger_types::ids;

use crate::error::{not_found, Error, Result};
use crate::lifecycle::registry;
use crate::model::{ApiKey, ApiKeyKind, Environment, EnvironmentType, Organization, Project};
use crate::txn::Txn;

/// The default organisation, project and environments of a fresh installation.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenancy {
    pub organization: Organization,
    pub project: Project,
    /// One per [`EnvironmentType`], in the order dev, staging, prod, preview.
    pub environments: Vec<Environment>,
}

impl Tenancy {
    /// The environment of a kind.
    pub fn environment(&self, kind: EnvironmentType) -> Option<&Environment> {
        self.environments.iter().find(|e| e.kind == kind)
    }
}

/// Returns the first organisation's first project with its environments, creating them
/// (and any missing environment) on first start.
pub(crate) fn bootstrap(txn: &mut Txn<'_>, org_title: &str, project_name: &str) -> Result<Tenancy> {
    let organization = match txn.tx.list_organizations()?.into_iter().next() {
        Some(org) => org,
        None => {
            let org = Organization {
                id: txn.id(ids::ORGANIZATION),
                slug: slug(org_title),
                title: org_title.to_string(),
                created_at: txn.now,
            };
            txn.tx.insert_organization(&org)?;
            org
        }
    };
    let project = match txn.tx.list_projects(&organization.id)?.into_iter().next() {
        Some(p) => p,
        None => {
            let p = Project {
                id: txn.id(ids::PROJECT),
                external_ref: ids::project_ref(),
                org_id: organization.id.clone(),
                slug: slug(project_name),
                name: project_name.to_string(),
                created_at: txn.now,
            };
            txn.tx.insert_project(&p)?;
            p
        }
    };
    let mut environments = txn.tx.list_environments(&project.id)?;
    for kind in [
        EnvironmentType::Development,
        EnvironmentType::Staging,
        EnvironmentType::Production,
        EnvironmentType::Preview,
    ] {
        if !environments.iter().any(|e| e.kind == kind) {
            environments.push(registry::create_environment(txn, &project.id, kind, None)?);
        }
    }
    environments.sort_by_key(|e| match e.kind {
        EnvironmentType::Development => 0,
        EnvironmentType::Staging => 1,
        EnvironmentType::Production => 2,
        EnvironmentType::Preview => 3,
    });
    Ok(Tenancy { organization, project, environments })
}

fn slug(name: &str) -> String {
    let s: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "default".into()
    } else {
        s
    }
}

/// Creates a key and returns it with its only plain-text copy.
pub(crate) fn create_api_key(
    txn: &mut Txn<'_>,
    kind: ApiKeyKind,
    env_id: Option<&str>,
    name: &str,
) -> Result<(ApiKey, String)> {
    let plain = match kind {
        ApiKeyKind::Secret => {
            let env_id =
                env_id.ok_or_else(|| Error::Invalid("environment: a secret key needs one".into()))?;
            let env = registry::environment(txn, env_id)?;
            format!("tr_{}_{}", env.kind.slug(), ids::random_alphanumeric(24))
        }
        ApiKeyKind::PersonalAccessToken => format!("tr_pat_{}", ids::random_alphanumeric(40)),
        ApiKeyKind::Dashboard => format!("tr_dash_{}", ids::random_alphanumeric(32)),
    };
    let key = ApiKey {
        id: txn.id("key"),
        kind,
        env_id: env_id.map(str::to_string),
        key_hash: ids::sha256_hex(&plain),
        // `tr_dev_ab12…`: the kind and four characters, enough to tell keys apart.
        display_prefix: plain[..plain.rfind('_').map_or(8, |i| i + 5).min(plain.len())].to_string(),
        name: name.to_string(),
        created_at: txn.now,
        revoked_at: None,
    };
    txn.tx.insert_api_key(&key)?;
    Ok((key, plain))
}

/// The live key matching a plain-text key, with its environment for secret keys.
pub(crate) fn authenticate(txn: &mut Txn<'_>, plain: &str) -> Result<Option<(ApiKey, Option<Environment>)>> {
    let Some(key) = txn.tx.find_api_key_by_hash(&ids::sha256_hex(plain))? else { return Ok(None) };
    if key.revoked_at.is_some() {
        return Ok(None);
    }
    let env = match &key.env_id {
        Some(id) => txn.tx.get_environment(id)?,
        None => None,
    };
    Ok(Some((key, env)))
}

/// Revokes a key; revoking twice is harmless.
pub(crate) fn revoke_api_key(txn: &mut Txn<'_>, id: &str) -> Result<ApiKey> {
    let mut key = txn.tx.get_api_key(id)?.ok_or_else(|| not_found("API key", id))?;
    if key.revoked_at.is_none() {
        key.revoked_at = Some(txn.now);
        txn.tx.update_api_key(&key)?;
    }
    Ok(key)
}
