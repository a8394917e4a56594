//! Replays of SDK requests: the SDK sends `x-trigger-request-idempotency-key` (a UUID per
//! logical request, the same on every retry), so a trigger whose response was lost is not
//! run twice when the SDK retries it. Answers are remembered in memory for a while, per
//! environment and route; this covers retries against the same replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;

/// The request header carrying the key.
pub const HEADER: &str = "x-trigger-request-idempotency-key";
/// How long an answer is replayed.
pub const TTL: Duration = Duration::from_secs(10 * 60);
const MAX_ENTRIES: usize = 50_000;

type Entry = (Instant, u16, Value);

/// Remembered answers by (environment, route, key).
#[derive(Debug, Default)]
pub struct Replays {
    entries: Mutex<HashMap<(String, &'static str, String), Entry>>,
}

impl Replays {
    /// The key of a request, if it carries a usable one.
    pub fn key(headers: &HeaderMap) -> Option<String> {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .map(str::to_string)
    }

    /// A remembered answer (status, body).
    pub fn get(&self, env_id: &str, route: &'static str, key: &str) -> Option<(u16, Value)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(env_id.to_string(), route, key.to_string()))
            .filter(|(at, _, _)| at.elapsed() < TTL)
            .map(|(_, status, body)| (*status, body.clone()))
    }

    /// Remembers a successful answer.
    pub fn put(&self, env_id: &str, route: &'static str, key: String, status: u16, body: Value) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _, _)| at.elapsed() < TTL);
            if entries.len() >= MAX_ENTRIES {
                // Still full of live entries: forget the oldest half rather than grow.
                let mut ages: Vec<Instant> = entries.values().map(|(at, _, _)| *at).collect();
                ages.sort();
                let cutoff = ages[ages.len() / 2];
                entries.retain(|_, (at, _, _)| *at > cutoff);
            }
        }
        entries.insert((env_id.to_string(), route, key), (Instant::now(), status, body));
    }
}
