//! Retry policy and the exponential backoff formula.

use serde::{Deserialize, Serialize};

/// The engine never runs more attempts than this, whatever a policy says.
pub const MAX_ATTEMPTS_CAP: u32 = 250;

/// A retry policy (`RetryOptions`). `max_attempts` counts every attempt, the first included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOptions {
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::factor")]
    pub factor: f64,
    #[serde(default = "defaults::min_timeout")]
    pub min_timeout_in_ms: u64,
    #[serde(default = "defaults::max_timeout")]
    pub max_timeout_in_ms: u64,
    #[serde(default = "defaults::randomize")]
    pub randomize: bool,
}

mod defaults {
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn factor() -> f64 {
        2.0
    }
    pub fn min_timeout() -> u64 {
        1000
    }
    pub fn max_timeout() -> u64 {
        60_000
    }
    pub fn randomize() -> bool {
        true
    }
}

impl Default for RetryOptions {
    /// The SDK's `defaultRetryOptions`: 3 attempts, factor 2, 1 s to 60 s, randomized.
    fn default() -> Self {
        RetryOptions {
            max_attempts: defaults::max_attempts(),
            factor: defaults::factor(),
            min_timeout_in_ms: defaults::min_timeout(),
            max_timeout_in_ms: defaults::max_timeout(),
            randomize: defaults::randomize(),
        }
    }
}

impl RetryOptions {
    /// The delay in ms before the attempt after `attempt` (1-based), or `None` when `attempt`
    /// was the last one. `jitter` in `[0, 1)` is the random part, used only when `randomize`:
    /// `delay = round(min(max, (1 + jitter) · min · factor^(attempt-1)))`.
    pub fn delay_for_attempt(&self, attempt: u32, jitter: f64) -> Option<u64> {
        if attempt >= self.max_attempts.min(MAX_ATTEMPTS_CAP) {
            return None;
        }
        let r = if self.randomize { 1.0 + jitter.clamp(0.0, 0.999_999) } else { 1.0 };
        let exp = attempt.saturating_sub(1) as i32;
        let raw = r * self.min_timeout_in_ms as f64 * self.factor.powi(exp);
        Some(raw.min(self.max_timeout_in_ms as f64).round().max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_reference_formula() {
        let p = RetryOptions {
            max_attempts: 5,
            factor: 2.0,
            min_timeout_in_ms: 1000,
            max_timeout_in_ms: 5000,
            randomize: false,
        };
        let delays: Vec<_> = (1..=5).map(|a| p.delay_for_attempt(a, 0.5)).collect();
        assert_eq!(delays, vec![Some(1000), Some(2000), Some(4000), Some(5000), None]);
        let r = RetryOptions { randomize: true, ..p };
        assert_eq!(r.delay_for_attempt(1, 0.5), Some(1500));
        assert_eq!(r.delay_for_attempt(2, 0.0), Some(2000));
        let parsed: RetryOptions = serde_json::from_str(r#"{"maxAttempts":2}"#).unwrap();
        assert_eq!(parsed.factor, 2.0);
        assert_eq!(parsed.delay_for_attempt(2, 0.0), None);
        let huge = RetryOptions { max_attempts: 10_000, ..RetryOptions::default() };
        assert_eq!(huge.delay_for_attempt(MAX_ATTEMPTS_CAP, 0.0), None);
    }
}
