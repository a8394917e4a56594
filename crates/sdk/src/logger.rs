//! The logger (`logger.*`): structured log lines stored as events of the current run, sent
//! with the metadata flushes. Every line is also emitted as a `tracing` event (target
//! `trigger_sdk::logger`), so it shows in the worker's own logs.
//!
//! [`layer`] returns a `tracing` layer that attaches ordinary `tracing` events emitted inside
//! a run to that run as well.

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::Layer;
use trigger_engine::RunEvent;

use crate::scope;

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Information.
    Info,
    /// Plain log line (stored as `log`).
    Log,
    /// A warning.
    Warn,
    /// An error.
    Error,
}

impl Level {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Log => "log",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn attributes(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map),
        Value::Null => Value::Object(Map::new()),
        other => serde_json::json!({ "value": other }),
    }
}

/// Buffers a line on the current run; false outside a run.
pub(crate) fn record(level: Level, message: String, attrs: Value) -> bool {
    let Some(scope) = scope::current() else { return false };
    let event = RunEvent {
        seq: 0,
        run_id: scope.ctx.run.id.clone(),
        kind: "log".into(),
        level: level.as_str().into(),
        message,
        attributes: attributes(attrs),
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        start_time_ns: now_ns(),
        duration_ns: 0,
        attempt_number: Some(scope.ctx.attempt.number),
    };
    scope.logs.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    true
}

/// Logs at a level with attributes (any serializable value; `()` for none).
pub fn write(level: Level, message: &str, attrs: impl Serialize) {
    let attrs = serde_json::to_value(attrs).unwrap_or(Value::Null);
    match level {
        Level::Trace => tracing::trace!(target: "trigger_sdk::logger", attributes = %attrs, "{message}"),
        Level::Debug => tracing::debug!(target: "trigger_sdk::logger", attributes = %attrs, "{message}"),
        Level::Info | Level::Log => {
            tracing::info!(target: "trigger_sdk::logger", attributes = %attrs, "{message}")
        }
        Level::Warn => tracing::warn!(target: "trigger_sdk::logger", attributes = %attrs, "{message}"),
        Level::Error => tracing::error!(target: "trigger_sdk::logger", attributes = %attrs, "{message}"),
    }
    record(level, message.to_string(), attrs);
}

/// `logger.trace`.
pub fn trace(message: &str, attrs: impl Serialize) {
    write(Level::Trace, message, attrs)
}

/// `logger.debug`.
pub fn debug(message: &str, attrs: impl Serialize) {
    write(Level::Debug, message, attrs)
}

/// `logger.info`.
pub fn info(message: &str, attrs: impl Serialize) {
    write(Level::Info, message, attrs)
}

/// `logger.log`.
pub fn log(message: &str, attrs: impl Serialize) {
    write(Level::Log, message, attrs)
}

/// `logger.warn`.
pub fn warn(message: &str, attrs: impl Serialize) {
    write(Level::Warn, message, attrs)
}

/// `logger.error`.
pub fn error(message: &str, attrs: impl Serialize) {
    write(Level::Error, message, attrs)
}

/// `logger.trace(name, fn)`: runs `work` as a named span of the current run, stored with its
/// start, duration and attributes, and returns what `work` returns. Spans started inside
/// it are its children. Outside a run it only runs `work`.
///
/// ```no_run
/// # async fn demo() {
/// let rows = trigger_sdk::logger::span("load rows", serde_json::json!({ "table": "users" }), async {
///     vec![1, 2, 3]
/// })
/// .await;
/// # let _ = rows; }
/// ```
pub async fn span<F: std::future::Future>(name: &str, attrs: impl Serialize, work: F) -> F::Output {
    let attrs = serde_json::to_value(attrs).unwrap_or(Value::Null);
    let span_id = trigger_types::ids::random_alphanumeric(16).to_ascii_lowercase();
    let parent = SPAN.try_with(|p| p.clone()).ok().flatten();
    let start = now_ns();
    let started = std::time::Instant::now();
    let output = SPAN.scope(Some(span_id.clone()), work).await;
    if let Some(scope) = scope::current() {
        let event = RunEvent {
            seq: 0,
            run_id: scope.ctx.run.id.clone(),
            kind: "span".into(),
            level: "info".into(),
            message: name.to_string(),
            attributes: attributes(attrs),
            trace_id: None,
            span_id: Some(span_id),
            parent_span_id: parent,
            start_time_ns: start,
            duration_ns: started.elapsed().as_nanos() as i64,
            attempt_number: Some(scope.ctx.attempt.number),
        };
        scope.logs.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
    output
}

tokio::task_local! {
    /// The span the current code runs in, so nested spans know their parent.
    static SPAN: Option<String>;
}

/// A `tracing` layer that stores events emitted inside a run as that run's log lines.
/// Events of this crate are skipped (the logger stores its own lines).
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let subscriber = tracing_subscriber::registry().with(trigger_sdk::logger::layer());
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
pub fn layer() -> RunEventsLayer {
    RunEventsLayer { _private: () }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct RunEventsLayer {
    _private: (),
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    attrs: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.attrs.insert(field.name().into(), Value::String(text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.attrs.insert(field.name().into(), Value::String(value.into()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attrs.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.attrs.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attrs.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attrs.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber> Layer<S> for RunEventsLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let meta = event.metadata();
        if meta.target().starts_with("trigger_sdk") || meta.target().starts_with("trigger_engine") {
            return;
        }
        if scope::current().is_none() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *meta.level() {
            tracing::Level::TRACE => Level::Trace,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::INFO => Level::Info,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::ERROR => Level::Error,
        };
        record(level, fields.message.unwrap_or_default(), Value::Object(fields.attrs));
    }
}
