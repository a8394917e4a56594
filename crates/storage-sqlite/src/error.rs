//! Mapping SQLite and JSON errors to the engine's portable [`ErrorKind`]s.

use rusqlite::{ffi, ErrorCode};
use trigger_engine::storage::{ErrorKind, StorageError, StorageResult};

/// The [`ErrorKind`] of a rusqlite error.
pub(crate) fn kind_of(e: &rusqlite::Error) -> ErrorKind {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            {
                return ErrorKind::UniqueViolation;
            }
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => ErrorKind::Conflict,
                ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::PermissionDenied
                | ErrorCode::NoLargeFileSupport
                | ErrorCode::FileLockingProtocolFailed => ErrorKind::Unavailable,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => ErrorKind::Corrupt,
                _ => ErrorKind::Other,
            }
        }
        // A column held something its Rust type cannot take.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(_) => ErrorKind::Corrupt,
        _ => ErrorKind::Other,
    }
}

/// Converts a rusqlite error.
pub(crate) fn from_sqlite(e: rusqlite::Error) -> StorageError {
    StorageError::new(kind_of(&e), e.to_string())
}

/// `.db()?` converts rusqlite results (a `From` impl is ruled out: both types are foreign).
pub(crate) trait DbResult<T> {
    fn db(self) -> StorageResult<T>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> StorageResult<T> {
        self.map_err(from_sqlite)
    }
}

/// Serializes a row body.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::new(ErrorKind::Other, format!("cannot encode row: {e}")))
}

/// Decodes a row body; a body that does not decode is corrupt data.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StorageResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageError::new(ErrorKind::Corrupt, format!("cannot decode row: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn unique_and_primary_key_violations_map_to_unique_violation() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, p TEXT);
             CREATE TABLE w (a TEXT, b TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
             INSERT INTO t VALUES (1, 'a', 'x'); INSERT INTO w VALUES ('a', 'b');",
        )
        .unwrap();
        let unique = conn.execute("INSERT INTO t VALUES (2, 'a', 'y')", []).unwrap_err();
        assert_eq!(kind_of(&unique), ErrorKind::UniqueViolation);
        let pk = conn.execute("INSERT INTO w VALUES ('a', 'b')", []).unwrap_err();
        assert_eq!(kind_of(&pk), ErrorKind::UniqueViolation);
        // Other constraints are not unique violations.
        conn.execute_batch("CREATE TABLE n (v TEXT NOT NULL)").unwrap();
        let not_null = conn.execute("INSERT INTO n VALUES (NULL)", []).unwrap_err();
        assert_eq!(kind_of(&not_null), ErrorKind::Other);
    }

    #[test]
    fn busy_maps_to_conflict() {
        let dir = std::env::temp_dir().join(format!("trigger-sqlite-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("busy.db");
        let a = Connection::open(&path).unwrap();
        let b = Connection::open(&path).unwrap();
        b.busy_timeout(std::time::Duration::ZERO).unwrap();
        a.execute_batch("CREATE TABLE t (v); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);").unwrap();
        let busy = b.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert_eq!(kind_of(&busy), ErrorKind::Conflict);
        a.execute_batch("COMMIT").unwrap();
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn open_failure_maps_to_unavailable() {
        let path = std::env::temp_dir().join("trigger-sqlite-no-such-dir").join("x").join("db");
        let e = Connection::open(path).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Unavailable);
    }

    #[test]
    fn bad_json_and_bad_columns_map_to_corrupt() {
        let e = decode::<serde_json::Value>(b"{not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        let conn = Connection::open_in_memory().unwrap();
        let e = conn.query_row("SELECT 'text'", [], |r| r.get::<_, i64>(0)).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Corrupt);
        let e = conn.query_row("SELECT -1", [], |r| r.get::<_, u32>(0)).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Corrupt);
    }

    #[test]
    fn everything_else_is_other() {
        let conn = Connection::open_in_memory().unwrap();
        let e = conn.execute("SELECT * FROM nowhere", []).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Other);
        assert_eq!(from_sqlite(e).kind, ErrorKind::Other);
    }
}
