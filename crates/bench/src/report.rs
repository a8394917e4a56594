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
    pub fn new(workload: &'static str, backend: &str, durability: String) -> Self {
        Report { workload, mode: "embedded", backend: backend.into(), durability, metrics: Map::new() }
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

    /// `| workload | mode | backend | metric=value … |`
    pub fn table_row(&self) -> String {
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{k}={f:.2}"),
                _ => format!("{k}={v}"),
            })
            .collect();
        format!("| {} | {} | {} | {} |", self.workload, self.mode, self.backend, metrics.join(", "))
    }
}
