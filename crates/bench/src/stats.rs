//! Percentiles of latency samples.

use serde_json::{json, Value};

/// p50/p95/p99/max of samples in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` without samples.
    pub fn of(samples: &mut [f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99), max: samples[samples.len() - 1] })
    }

    pub fn to_json(self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({"p50_ms": r(self.p50), "p95_ms": r(self.p95), "p99_ms": r(self.p99), "max_ms": r(self.max)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut s).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!(Percentiles::of(&mut []).is_none());
    }
}
