//! Mapping PostgreSQL errors (by SQLSTATE class) and JSON errors to the engine's portable
//! [`ErrorKind`]s.

use trigger_engine::storage::{ErrorKind, StorageError, StorageResult};

/// The [`ErrorKind`] of a SQLSTATE code.
pub(crate) fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "23505" => ErrorKind::UniqueViolation,
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
        // query_canceled (statement_timeout), admin/crash shutdown, cannot connect now,
        // too many connections, out of disk/memory, read-only replica.
        "57014" | "57P01" | "57P02" | "57P03" | "53300" | "53100" | "53200" | "25006" => {
            ErrorKind::Unavailable
        }
        // data_corrupted, index_corrupted
        "XX001" | "XX002" => ErrorKind::Corrupt,
        // connection_exception and its subclasses
        c if c.starts_with("08") => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// The [`ErrorKind`] of a client error: a server error by its code; a closed connection or an
/// I/O failure is `Unavailable`; a value that does not convert is `Corrupt`.
pub(crate) fn kind_of(e: &tokio_postgres::Error) -> ErrorKind {
    if let Some(code) = e.code() {
        return kind_of_code(code.code());
    }
    if e.is_closed() {
        return ErrorKind::Unavailable;
    }
    let text = e.to_string();
    if text.starts_with("error deserializing column") || text.contains("unexpected NULL") {
        return ErrorKind::Corrupt;
    }
    if text.starts_with("error serializing parameter") {
        return ErrorKind::Other;
    }
    // Everything else the client reports without a SQLSTATE is about the connection
    // (I/O, TLS, protocol, connect timeout).
    ErrorKind::Unavailable
}

/// Converts a client error.
pub(crate) fn from_pg(e: tokio_postgres::Error) -> StorageError {
    let kind = kind_of(&e);
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    StorageError::new(kind, message)
}

/// True when the session cannot be used any more: the connection is gone, or the server
/// is shutting it down. A statement timeout or a constraint leaves it usable.
pub(crate) fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c) => c.code().starts_with("08") || c.code().starts_with("57P"),
        None => kind_of(e) == ErrorKind::Unavailable,
    }
}

/// Serializes a row body.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::new(ErrorKind::Other, format!("cannot encode row: {e}")))
}

/// Decodes a row body; a body that does not decode is corrupt data.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(text: &str) -> StorageResult<T> {
    serde_json::from_str(text)
        .map_err(|e| StorageError::new(ErrorKind::Corrupt, format!("cannot decode row: {e}")))
}

pub(crate) fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::new(ErrorKind::Corrupt, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_portable_kinds() {
        for (code, kind) in [
            ("23505", ErrorKind::UniqueViolation),
            ("40001", ErrorKind::Conflict),
            ("40P01", ErrorKind::Conflict),
            ("55P03", ErrorKind::Conflict),
            ("08006", ErrorKind::Unavailable),
            ("08001", ErrorKind::Unavailable),
            ("57P01", ErrorKind::Unavailable),
            ("57014", ErrorKind::Unavailable),
            ("53300", ErrorKind::Unavailable),
            ("XX001", ErrorKind::Corrupt),
            ("23502", ErrorKind::Other),
            ("42P01", ErrorKind::Other),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
    }

    #[test]
    fn bad_json_is_corrupt() {
        assert_eq!(decode::<serde_json::Value>("{nope").unwrap_err().kind, ErrorKind::Corrupt);
    }
}
