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
        Some(f) if v.is_f64() && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// The figures `docs/benchmarks.md` shows for each workload (paths into `metrics`).
const COLUMNS: &[(&str, &[&str])] = &[
    ("w1-burn-down", &["runs", "trigger_runs_per_s", "drain_runs_per_s", "total_runs_per_s"]),
    (
        "w2-sustained",
        &[
            "offered_runs_per_s",
            "achieved_offered_runs_per_s",
            "trigger_to_start.p50_ms",
            "trigger_to_start.p95_ms",
            "trigger_to_start.p99_ms",
            "trigger_to_finish.p50_ms",
            "trigger_to_finish.p95_ms",
            "trigger_to_finish.p99_ms",
            "backlog_max",
            "backlog_slope_runs_per_s",
            "backlog_flat",
        ],
    ),
    (
        "w3-latency",
        &[
            "runs",
            "trigger_to_ack.p50_ms",
            "trigger_to_start.p50_ms",
            "trigger_to_start.p95_ms",
            "trigger_to_start.p99_ms",
            "trigger_to_completed.p50_ms",
            "trigger_to_completed.p99_ms",
        ],
    ),
    ("w4-fan-out", &["children", "parent_trigger_to_done_s"]),
    (
        "w5-waiting",
        &[
            "waiting_runs",
            "rss_mb_server",
            "rss_mb_worker",
            "rss_mb_total",
            "database_mb",
            "idle_cpu_cores",
            "drain_runs_per_s",
        ],
    ),
    ("w6-delayed-herd", &["runs", "start_lateness.p50_ms", "start_lateness.p99_ms"]),
    ("w7-fairness", &["flood_runs", "trickle_wait.p50_ms", "trickle_wait.p99_ms", "max_concurrent_runs"]),
    (
        "w8-footprint",
        &[
            "server",
            "cold_start_ready_ms",
            "restart_ready_ms",
            "idle_rss_mb",
            "queued_runs",
            "queued_rss_mb",
            "database_mb",
        ],
    ),
];

/// Markdown tables, one per workload, from reports printed with `--json` (as in
/// `docs/benchmarks.md`): a row per report with its backend, mode and durability.
pub fn markdown_tables(reports: &[Value]) -> String {
    let mut out = String::new();
    for (workload, columns) in COLUMNS {
        let rows: Vec<&Value> = reports.iter().filter(|r| r["workload"] == *workload).collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "**{workload}**\n\n| backend | mode | durability | {} |\n",
            columns.join(" | ")
        ));
        out.push_str(&format!("|---|---|---|{}\n", "---|".repeat(columns.len())));
        for r in rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|path| {
                    let v = path.split('.').fold(&r["metrics"], |v, key| &v[key]);
                    match v {
                        Value::Null => "–".to_string(),
                        Value::String(s) => s.clone(),
                        v => number(v),
                    }
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r["backend"].as_str().unwrap_or(""),
                r["mode"].as_str().unwrap_or(""),
                r["durability"].as_str().unwrap_or(""),
                cells.join(" | ")
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_render_as_rows_and_tables() {
        let mut r = Report::new("w3-latency", "http", "postgres", "postgresql synchronous_commit=on".into());
        r.metric("runs", 10).metric("trigger_to_start", json!({"p50_ms": 1.5, "p99_ms": 4.0}));
        assert_eq!(
            r.table_row(),
            "| w3-latency | http | postgres | runs=10, trigger_to_start.p50_ms=1.50, trigger_to_start.p99_ms=4 |"
        );
        let tables = markdown_tables(&[r.to_json()]);
        assert!(tables.starts_with("**w3-latency**\n"), "{tables}");
        assert!(tables.contains(
            "| postgres | http | postgresql synchronous_commit=on | 10 | – | 1.50 | – | 4 | – | – |"
        ));
        assert!(!tables.contains("w1-burn-down"));
    }
}
