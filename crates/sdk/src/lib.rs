//! The trigger.rs Rust SDK: Trigger.dev v4's task vocabulary in Rust — [`task`],
//! [`queue`], [`metadata`], [`logger`], [`locals`], [`tasks`], [`batch`], [`idempotency_keys`],
//! [`wait`], [`runs`] — and the [`Worker`] that executes tasks.
//!
//! # Quick start
//!
//! ```
//! use std::sync::LazyLock;
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use trigger_sdk::{backend::Embedded, logger, metadata, queue, task, Queue, Task, TaskError, TriggerOptions, Worker};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Hello { name: String }
//!
//! static GREETINGS: Queue = queue("greetings").concurrency_limit(2);
//!
//! static HELLO: LazyLock<Task<Hello, String>> = LazyLock::new(|| {
//!     task::<Hello, String>("hello")
//!         .queue(&GREETINGS)
//!         .run(|payload, _ctx| async move {
//!             logger::info("greeting", serde_json::json!({ "name": payload.name }));
//!             metadata::set("greeted", true);
//!             Ok::<_, TaskError>(format!("hello, {}", payload.name))
//!         })
//! });
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let backend = Embedded::memory().await.unwrap(); // or Embedded::open(".trigger/trigger.db")
//! let worker = Worker::builder().backend(backend.clone()).task(&HELLO).build().unwrap().start().await.unwrap();
//!
//! let handle = HELLO.trigger(Hello { name: "world".into() }, TriggerOptions::default()).await.unwrap();
//! let run = trigger_sdk::runs::poll(&handle.id, Duration::from_millis(100)).await.unwrap();
//! assert_eq!(run.output.unwrap().data.as_deref(), Some("\"hello, world\""));
//! worker.shutdown().await.unwrap();
//! # });
//! ```
//!
//! # How it fits together
//!
//! - **Backends.** Everything reaches the engine through the [`backend::Backend`] trait.
//!   [`backend::Embedded`] runs the engine in-process on SQLite (no server; the default,
//!   and the one pushed changes come from directly). [`backend::Http`] speaks the server's
//!   Trigger.dev-compatible endpoints (`TRIGGER_API_URL`, `TRIGGER_SECRET_KEY`,
//!   `TRIGGER_PROJECT_REF`), with changes pushed over the server's SSE channel. It retries
//!   failed requests ([`backend::RequestRetry`]: connection errors, 408, 409, 429, 5xx, with
//!   backoff and `Retry-After`) without ever triggering twice, and speaks `https://` with
//!   the `tls` feature.
//!
//! # Features
//!
//! - `tls`: `https://` API URLs (rustls with the ring provider and the webpki roots; more
//!   roots in [`backend::HttpOptions`]). Off by default; without it an `https://` URL is
//!   refused with an error saying to enable it.
//! - `dashboard`: `Embedded::serve_dashboard`, the browser dashboard for an embedded engine.
//! - **The current run** is a Tokio task-local set around each attempt, so [`metadata`],
//!   [`logger`], [`locals`], [`wait`], [`idempotency_keys`] and triggering find their run
//!   without being handed it. Futures spawned with `tokio::spawn` from `run` leave that
//!   scope.
//! - **Attempt order**: global middleware, task middleware, and inside them
//!   `on_start_attempt`, `on_start` (first attempt), `run` (with `on_wait`/`on_resume`
//!   around each wait); then `on_success` and `on_complete`, or `catch_error` and (when no
//!   retry follows) `on_failure` and `on_complete`; then `cleanup`; `on_cancel` instead
//!   when the run is canceled. Global hooks ([`tasks::on_start`], [`tasks::cleanup`],
//!   [`tasks::on_wait`], …) run before the task's own, as in v4; only `catch_error` asks the
//!   task first. See [`hooks`].
//! - **Retries.** The worker proposes the retry from the task's policy (`retry`, merged with
//!   the run's `max_attempts`) and `catch_error`; the engine decides. A task without a
//!   policy is not retried. A payload that does not deserialize into the task's type fails
//!   the run at once with `TASK_INPUT_ERROR`.
//! - **`max_duration`** counts compute time only: the time spent inside the run future's
//!   `poll`. Awaiting a child, a wait, or a timer does not count. A task that blocks its
//!   thread without ever yielding cannot be stopped mid-way (as with any async code); it is
//!   stopped at its next `.await`. The engine clamps the limit to at least 5 s. An exceeded
//!   run ends `TIMED_OUT` with `MAX_DURATION_EXCEEDED`, without `cleanup`, `on_success` or
//!   `on_failure`.
//! - **Waits** always go through the engine (no in-process shortcut for short waits), and a
//!   waiting run holds no concurrency, neither in its queue nor on the worker. A wait with
//!   an idempotency key (`wait::for_duration(d).idempotency_key(k)`) is not waited again by
//!   a retried attempt.
//! - **Metadata** changes apply to the task's own copy at once and reach the engine about
//!   once a second and with the completion. Log lines travel the same way.
//!
//! # Differences from the TypeScript SDK
//!
//! - Payloads and outputs are sent as plain JSON (`application/json`, which TS tasks
//!   accept), not SuperJSON. What a TS backend or TS child sends (SuperJSON, or `text/plain`
//!   for a string) is decoded to the plain JSON a serde type expects; see
//!   [`trigger_types::superjson`] for the mapping (a `Date` arrives as its ISO string, a
//!   `BigInt` as a number, a `Map` as an object, an `undefined` field is absent). Values the
//!   TS SDK offloaded to object storage (`application/store`, 128 KB and more) are fetched
//!   from the server first. The Rust SDK itself never offloads: it sends values inline (up
//!   to the server's limits of 3 MiB for a payload and 10 MiB for an output).
//! - Hooks are set once per task (one closure per kind); global hooks receive JSON.
//! - `max_duration` measures time inside the run future's `poll`, not process CPU time, so
//!   an in-process `tokio::time::sleep` does not count (the TS SDK counts in-process waits
//!   of 5 s or less).
//! - A waiting run releases its concurrency in the engine and on the worker. Trigger.dev's
//!   dev mode has no checkpoints and keeps the slot while waiting (reference 2.6); releasing
//!   it is what lets a parent wait on children in its own limit-1 queue.
//! - Calls outside a task use the backend set with [`configure`], else an
//!   [`backend::Http`] from `TRIGGER_*` variables, else the first worker's backend.
//! - Shutdown hands unfinished runs back to their queue without failing the attempt
//!   (`Engine::release_run`, over HTTP `…/snapshots/{id}/release`); a run blocked on a wait
//!   cannot be handed back and fails its attempt with `GRACEFUL_EXIT_TIMEOUT`, retried six
//!   seconds later.

#![warn(missing_docs)]

pub mod backend;
pub mod batch;
mod client;
pub mod context;
mod error;
pub mod hooks;
pub mod idempotency_keys;
pub mod locals;
pub mod logger;
pub mod metadata;
mod packet;
mod queue;
pub mod runs;
mod scope;
mod task;
pub mod tasks;
mod trigger;
pub mod wait;
mod worker;

pub use client::configure;
pub use context::{CancelReason, CancellationToken, Context};
pub use error::{Error, Result, TaskError};
pub use hooks::CatchError;
pub use queue::{queue, Queue};
pub use task::{task, IntoTask, RegisteredTask, Task, TaskBuilder, TaskSpec};
pub use trigger::{BatchHandle, BatchResult, BatchTriggerItem, RunHandle, TaskRunResult, TriggerOptions};
pub use worker::{Worker, WorkerBuilder, WorkerHandle, WorkerOptions};

pub use trigger_engine::{MachinePreset, RetryOptions, RunStatus, TaskRunError};
