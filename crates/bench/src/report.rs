//! A workload's result: JSON for scripts, a table row for people.

use serde_json::{json, Map, Value};

/// What one workload measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub workload: &'static str,
    /// `embedded` (engine in-process) or `http`.
    pub mode: &'static str,
    pub backend: String,
    /// The durability setting, e.g. `sqlite synchronous=NORMAL (WAL)`.
    pub durability: String,
    pub metrics: Map<String, Value>,
}

impl Report {
    pub fn new(workload: &'static str, mode: &'static str, backend: &str, durability: String) -> Self {
        Report { workload, mode, backend: backend.into(), durability, metrics: Map::new() }
    }

    pub fn metric(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        self.metrics.insert(name.into(), value.into());
        self
    }

    pub fn to_json(&self) -> Value {
        json!({
            "workload": self.workload,
            "mode": self.mode,
            "backend": self.backend,
            "durability": self.durability,
            "metrics": self.metrics,
        })
    }

    /// `| workload | mode | backend | metric=value … |`; nested objects (percentiles) are
    /// flattened to `name.p50_ms=…`.
    pub fn table_row(&self) -> String {
        let mut metrics = Vec::new();
        for (k, v) in &self.metrics {
            match v {
                Value::Object(inner) => {
                    metrics.extend(inner.iter().map(|(ik, iv)| format!("{k}.{ik}={}", number(iv))))
                }
                v => metrics.push(format!("{k}={}", number(v))),
            }
        }
        format!("| {} | {} | {} | {} |", self.workload, self.mode, self.backend, metrics.join(", "))
    }
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
        _ => v.to_string(),
    }
}
