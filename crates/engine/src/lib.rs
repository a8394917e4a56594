//! The trigger.rs run engine: Trigger.dev v4's run lifecycle as a state machine over a
//! storage transaction.
//!
//! Every call goes through one writer thread that applies many calls in one transaction
//! (each behind a savepoint, so one failing call changes nothing), commits, and only then
//! answers and publishes effects: wake-ups for waiting workers and a change feed. Time comes
//! from an injected [`Clock`]; with a [`ManualClock`] tests move time and fire timers
//! themselves.
//!
//! ```
//! use std::sync::Arc;
//! use trigger_engine::{
//!     Completion, DequeueRequest, Engine, EngineOptions, EnvironmentType, ManualClock, Packet,
//!     TaskManifest, TriggerOptions, TriggerRequest, WorkerManifest,
//! };
//! use trigger_storage_sqlite::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let clock = ManualClock::new(1_700_000_000_000);
//! let engine = Engine::start(
//!     SqliteStore::memory().unwrap(),
//!     EngineOptions { clock: Arc::new(clock.clone()), ..Default::default() },
//! );
//! let env = engine.create_environment("proj_demo", EnvironmentType::Production, None).await.unwrap();
//! engine
//!     .register_worker(&env.id, WorkerManifest {
//!         content_hash: "v1".into(),
//!         tasks: vec![TaskManifest::new("hello")],
//!         ..Default::default()
//!     })
//!     .await
//!     .unwrap();
//!
//! let run = engine
//!     .trigger(&env.id, TriggerRequest {
//!         task: "hello".into(),
//!         payload: Packet::json(&serde_json::json!({ "name": "world" })),
//!         options: TriggerOptions::default(),
//!     })
//!     .await
//!     .unwrap()
//!     .run;
//!
//! let claimed = engine.dequeue(&env.id, DequeueRequest::new("worker-1", 10)).await.unwrap();
//! let started = engine.start_attempt(&env.id, &run.id, &claimed[0].snapshot.id).await.unwrap();
//! let done = engine
//!     .complete_attempt(&env.id, &run.id, &started.snapshot.id, Completion::success(Packet::json(&serde_json::json!("hi"))), None)
//!     .await
//!     .unwrap();
//! assert_eq!(done.run.status, trigger_engine::RunStatus::Completed);
//! # });
//! ```

pub mod clock;
pub mod config;
mod engine;
pub mod error;
pub mod lifecycle;
pub mod model;
mod runtime;
pub mod storage;
pub mod tenancy;
pub mod txn;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use engine::{Engine, EngineOptions, RunDetails};
pub use error::{Error, Result};
pub use lifecycle::attempt::{AttemptOutcome, Completion, RetryProposal, StartedAttempt};
pub use lifecycle::batch::{BatchItem, CreateBatch, ItemsAdded};
pub use lifecycle::dequeue::{DequeueRequest, Dequeued};
pub use lifecycle::manage::ReplayOverrides;
pub use lifecycle::metadata::{MetadataOp, MetadataUpdate};
pub use lifecycle::registry::{QueueManifest, TaskManifest, WorkerManifest};
pub use lifecycle::trigger::{TriggerOptions, TriggerRequest, Triggered};
pub use lifecycle::wait::{iso8601, TokenOptions};
pub use model::*;
pub use tenancy::Tenancy;
pub use trigger_types::{
    AttemptStatus, BatchStatus, ExecutionStatus, InternalErrorCode, MachinePreset, Millis, RetryOptions,
    RunStatus, TaskRunError, WaitpointStatus, WaitpointType,
};
pub use txn::RunChange;
