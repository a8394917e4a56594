//! SQLite storage for the trigger.rs run engine: the embedded default backend.
//!
//! [`SqliteStore`] implements [`trigger_engine::storage::Store`] over one `rusqlite`
//! connection. A file database runs in WAL mode; [`Store::begin`] starts a
//! `BEGIN IMMEDIATE` transaction, so stores sharing a file serialize their writers instead of
//! failing late. The schema is embedded and migrated on open (see `migrations/`).
//!
//! Each row struct is stored whole as JSON next to indexed copies of the fields that queries
//! filter or order on, so every field round-trips exactly; payloads and outputs live in a table
//! of their own. Queue counters (`ready_count`, `running`, `head_score`) are kept by
//! [`Tx::enqueue`], [`Tx::dequeue_entry`], [`Tx::acquire`] and [`Tx::release`] within the
//! caller's transaction. A subqueue with nothing queued and nothing running is deleted, so
//! [`Tx::get_subqueue`] returns `None` for it (all counts zero, the queue's own settings).
//!
//! # Quick start
//!
//! ```
//! use trigger_engine::model::{Environment, EnvironmentType};
//! use trigger_engine::storage::Store;
//! use trigger_storage_sqlite::SqliteStore;
//!
//! # fn main() -> Result<(), trigger_engine::storage::StorageError> {
//! let mut store = SqliteStore::memory()?; // or SqliteStore::open("trigger.db")?
//! let env = Environment {
//!     id: "env_1".into(),
//!     project_id: "proj_1".into(),
//!     kind: EnvironmentType::Development,
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
//! [`Store::begin`]: trigger_engine::storage::Store::begin
//! [`Tx::enqueue`]: trigger_engine::storage::Tx::enqueue
//! [`Tx::dequeue_entry`]: trigger_engine::storage::Tx::dequeue_entry
//! [`Tx::acquire`]: trigger_engine::storage::Tx::acquire
//! [`Tx::release`]: trigger_engine::storage::Tx::release
//! [`Tx::get_subqueue`]: trigger_engine::storage::Tx::get_subqueue

mod checkpoint;
mod counts;
mod error;
mod store;
mod tx;

pub use store::{SqliteOptions, SqliteStore, Synchronous, BUSY_TIMEOUT};
pub use tx::SqliteTx;
