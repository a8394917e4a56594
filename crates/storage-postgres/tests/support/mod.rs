//! Shared by the PostgreSQL tests: the database URL, schemas of their own that are dropped
//! at the end (also when the test fails), and a side connection for inspecting the server.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use trigger_storage_postgres::{PostgresOptions, PostgresStore};

/// `TRIGGER_TEST_DATABASE_URL`, or the local server.
pub fn url() -> String {
    std::env::var("TRIGGER_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url()` with an `application_name`, to find a store's sessions on the server.
pub fn url_named(name: &str) -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Schemas with unique names, all dropped when this is dropped.
pub struct Schemas {
    prefix: String,
    names: Mutex<Vec<String>>,
}

impl Schemas {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let prefix = format!(
            "trigger_test_{what}_{}_{nanos:x}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Schemas { prefix, names: Mutex::new(Vec::new()) }
    }

    /// A new unique schema name (created by whoever connects first with it).
    pub fn name(&self) -> String {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("{}_{}", self.prefix, names.len());
        names.push(name.clone());
        name
    }

    /// A new schema, migrated.
    pub fn create(&self) -> String {
        let name = self.name();
        drop(self.store_in(&name));
        name
    }

    /// A store on a new, empty schema.
    pub fn fresh_store(&self) -> PostgresStore {
        let name = self.name();
        self.store_in(&name)
    }

    /// A store on a schema, its sessions named after the first schema of this set.
    pub fn store_in(&self, schema: &str) -> PostgresStore {
        let options = PostgresOptions { schema: Some(schema.to_string()), ..PostgresOptions::default() };
        PostgresStore::connect(&url_named(&self.application_name()), options)
            .unwrap_or_else(|e| panic!("cannot connect to {} (is PostgreSQL running?): {e}", url()))
    }

    /// The `application_name` of this set's stores.
    pub fn application_name(&self) -> String {
        // At most 63 bytes are kept by the server.
        self.prefix.chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect()
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            if let Err(e) = PostgresStore::drop_schema(&url(), &name) {
                eprintln!("could not drop schema {name}: {e}");
            }
        }
    }
}

/// Runs SQL on a side connection and returns the first column of each row as text.
pub fn admin(sql: &str) -> Vec<Option<String>> {
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            let rows = client.simple_query(&sql).await.expect("admin query");
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                    _ => None,
                })
                .collect()
        })
    })
    .join()
    .expect("admin thread")
}

/// Backend pids of the sessions with this `application_name`.
pub fn backend_pids(application_name: &str) -> Vec<String> {
    admin(&format!(
        "SELECT pid::text FROM pg_stat_activity WHERE application_name = '{}'",
        application_name.replace('\'', "''")
    ))
    .into_iter()
    .flatten()
    .collect()
}

/// Ends those sessions, as a server restart would.
pub fn terminate(pids: &[String]) {
    for pid in pids {
        admin(&format!("SELECT pg_terminate_backend({pid})"));
    }
}
