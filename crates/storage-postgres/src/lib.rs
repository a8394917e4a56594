//! PostgreSQL storage for the trigger.rs run engine: any number of `trigger serve`
//! replicas on one database, with every engine guarantee intact.
//!
//! [`PostgresStore`] implements [`trigger_engine::storage::Store`] over one connection
//! (driven by a small runtime the store owns, so the engine's synchronous writer thread can
//! use it; a broken connection is replaced on the next [`Store::begin`]). The schema is
//! embedded and migrated on connect under an advisory lock, so replicas starting together
//! migrate it once; [`PostgresOptions::schema`] lets several deployments share a database.
//!
//! Rows are stored like the SQLite backend's: each struct whole as JSON next to indexed
//! copies of the fields queries use. What PostgreSQL adds for several replicas:
//!
//! - `lock_*` read `FOR UPDATE`; limit checks read the environment's running count
//!   `FOR UPDATE`, so replicas take slots of one environment in turn and limits hold;
//! - [`Tx::claimable_subqueues`] locks its subqueues `SKIP LOCKED`, so two replicas never
//!   claim from one subqueue at once; timers are taken with `FOR UPDATE SKIP LOCKED`, so each
//!   fires on exactly one replica;
//! - errors keep their meaning across the seam: SQLSTATE 23505 is
//!   [`ErrorKind::UniqueViolation`], 40001/40P01 [`ErrorKind::Conflict`] (the engine retries
//!   the batch), a lost connection, a shutdown or a timeout [`ErrorKind::Unavailable`];
//! - every transaction announces its effects (work available, run changes) with `NOTIFY`,
//!   delivered at commit, and each store listens on a second connection
//!   ([`Store::listen`]), so a run triggered on one replica wakes a worker long-polling
//!   another, and a run resumed on one reaches the change feed of all.
//!
//! Round trips are what a transaction of many commands costs, so every statement is
//! prepared once per connection, each method is one statement where it can be, and writes
//! whose answer the engine does not read (snapshots, timers, outputs, events, updates of runs
//! without an idempotency key) are pipelined: sent at once and answered together with the
//! next call that waits.
//!
//! Deadlocks between replicas (two batches locking rows in opposite orders) are detected
//! by PostgreSQL after `deadlock_timeout` (1 s by default) and retried by the engine; a
//! lower `deadlock_timeout` for the database role shortens that wait.
//!
//! # Quick start
//!
//! ```no_run
//! use trigger_engine::model::{Environment, EnvironmentType};
//! use trigger_engine::storage::Store;
//! use trigger_storage_postgres::{PostgresOptions, PostgresStore};
//!
//! # fn main() -> Result<(), trigger_engine::storage::StorageError> {
//! let options = PostgresOptions { schema: Some("trigger".into()), ..PostgresOptions::default() };
//! let mut store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/postgres", options)?;
//! let env = Environment {
//!     id: "env_1".into(),
//!     project_id: "proj_1".into(),
//!     kind: EnvironmentType::Production,
//!     concurrency_limit: 10,
//!     paused: false,
//!     created_at: 0,
//! };
//! let mut tx = store.begin()?;
//! tx.insert_environment(&env)?;
//! tx.commit()?;
//!
//! let mut tx = store.begin()?;
//! assert_eq!(tx.get_environment("env_1")?, Some(env));
//! # Ok(())
//! # }
//! ```
//!
//! With an engine: `Engine::start(PostgresStore::connect(url, options)?, engine_options)`.
//!
//! [`Store::begin`]: trigger_engine::storage::Store::begin
//! [`Store::listen`]: trigger_engine::storage::Store::listen
//! [`Tx::claimable_subqueues`]: trigger_engine::storage::Tx::claimable_subqueues
//! [`ErrorKind::UniqueViolation`]: trigger_engine::storage::ErrorKind::UniqueViolation
//! [`ErrorKind::Conflict`]: trigger_engine::storage::ErrorKind::Conflict
//! [`ErrorKind::Unavailable`]: trigger_engine::storage::ErrorKind::Unavailable

mod error;
mod notify;
mod pending;
mod store;
mod tx;

pub use store::{PostgresOptions, PostgresStore, SynchronousCommit, CLIENT_GRACE};
pub use tx::PostgresTx;
