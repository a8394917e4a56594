//! Idempotency keys, hashed exactly as the TypeScript SDK's `idempotencyKeys.create`.

use trigger_types::idempotency::{create_key, Scope as KeyScope};

use crate::scope;

/// Who a key is unique for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Unique within the current run (the default): the run id is appended.
    #[default]
    Run,
    /// Unique within the current attempt: the run id and attempt number are appended.
    Attempt,
    /// Unique in the environment.
    Global,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Run => "run",
            Scope::Attempt => "attempt",
            Scope::Global => "global",
        }
    }
}

/// A hashed idempotency key, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    hash: String,
    key: String,
    scope: Scope,
}

impl IdempotencyKey {
    /// The 64-hex key sent to the engine.
    pub fn as_str(&self) -> &str {
        &self.hash
    }

    /// The parts joined with `-`, as the dashboard shows them.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The scope it was made with.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub(crate) fn options_json(&self) -> serde_json::Value {
        serde_json::json!({ "key": self.key, "scope": self.scope.name() })
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hash)
    }
}

/// `idempotencyKeys.create(key)`: hashed with the default `run` scope. Outside a run every
/// scope is global.
pub fn create(key: impl AsRef<str>) -> IdempotencyKey {
    create_with(&[key.as_ref()], Scope::Run)
}

/// `idempotencyKeys.create([...parts], { scope })`.
pub fn create_with<S: AsRef<str>>(parts: &[S], scope: Scope) -> IdempotencyKey {
    let current = scope::current();
    let run_id = current.as_ref().map(|s| s.ctx.run.id.clone());
    let attempt = current.as_ref().map_or(0, |s| s.ctx.attempt.number);
    let key_scope = match (scope, run_id.as_deref()) {
        (Scope::Run, Some(run_id)) => KeyScope::Run { run_id },
        (Scope::Attempt, Some(run_id)) => KeyScope::Attempt { run_id, attempt },
        _ => KeyScope::Global,
    };
    IdempotencyKey {
        hash: create_key(parts, key_scope),
        key: parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("-"),
        scope,
    }
}

/// A raw string used as a key is hashed with the `run` scope (as since TS SDK 4.3.1).
impl From<&str> for IdempotencyKey {
    fn from(key: &str) -> Self {
        create(key)
    }
}

impl From<String> for IdempotencyKey {
    fn from(key: String) -> Self {
        create(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_run_keys_are_global_sha256() {
        let key = create("my-key");
        assert_eq!(key.as_str(), "5e78863ed1ffb9fc66b1d61634b126bf8eb20267e7996297eeeb9b19c8c0f732");
        assert_eq!(create_with(&["a", "b"], Scope::Global).key(), "a-b");
    }
}
