//! Idempotency keys, hashed exactly as `idempotencyKeys.create` hashes them.

use sha2::{Digest, Sha256};

/// Who an idempotency key is unique for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Unique within one parent run (the default inside a task).
    Run { run_id: &'a str },
    /// Unique within one attempt of a parent run.
    Attempt { run_id: &'a str, attempt: u32 },
    /// Unique in the environment.
    Global,
}

impl Scope<'_> {
    /// The scope's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Scope::Run { .. } => "run",
            Scope::Attempt { .. } => "attempt",
            Scope::Global => "global",
        }
    }
}

/// `sha256_hex([...parts, ...scopeSuffix].join("-"))`.
pub fn create_key<S: AsRef<str>>(parts: &[S], scope: Scope<'_>) -> String {
    let mut joined: Vec<String> = parts.iter().map(|p| p.as_ref().to_string()).collect();
    match scope {
        Scope::Run { run_id } => joined.push(run_id.to_string()),
        Scope::Attempt { run_id, attempt } => {
            joined.push(run_id.to_string());
            joined.push(attempt.to_string());
        }
        Scope::Global => {}
    }
    hex::encode(Sha256::digest(joined.join("-").as_bytes()))
}

/// True when `key` is already a 64-hex digest (the SDK sends hashed keys).
pub fn is_hashed(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_typescript_sdk() {
        // Known digests: `idempotencyKeys.create("my-key", { scope: "global" })` is
        // sha256("my-key"); the run and attempt scopes append the run id and attempt number.
        assert_eq!(
            create_key(&["my-key"], Scope::Global),
            "5e78863ed1ffb9fc66b1d61634b126bf8eb20267e7996297eeeb9b19c8c0f732"
        );
        assert_eq!(
            create_key(&["a", "b"], Scope::Run { run_id: "run_1" }),
            "ab91dd458ffb3d2abef424fa722205a9883ea5361855cbf839c897aa6f6fb5e2"
        );
        assert_eq!(
            create_key(&["k"], Scope::Attempt { run_id: "run_1", attempt: 2 }),
            "94db54e7a35c1ec3bd7c7b6e51da36c9fd94a0f8ffa90d8ce1e4c6d0e2dc1110"
        );
        assert!(is_hashed(&create_key(&["x"], Scope::Global)));
        assert!(!is_hashed("x"));
    }
}
