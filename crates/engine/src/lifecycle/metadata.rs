//! Run metadata: operations applied in order on the server, to a run and to its parent and
//! root, within the 256 KiB limit.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::limits;
use crate::error::{Error, Result};
use crate::model::Run;
use crate::txn::Txn;

/// One metadata operation, as the SDK flushes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MetadataOp {
    /// Replace the whole object.
    Update {
        value: Value,
    },
    Set {
        key: String,
        value: Value,
    },
    Delete {
        key: String,
    },
    /// Append to an array (a missing key becomes an array; a scalar becomes `[old, new]`).
    Append {
        key: String,
        value: Value,
    },
    /// Remove every element equal to `value` from an array.
    Remove {
        key: String,
        value: Value,
    },
    /// Add to a number (decrement is a negative increment).
    Increment {
        key: String,
        value: f64,
    },
}

/// A metadata flush (`FlushedRunMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataUpdate {
    /// Replaces the run's metadata before the operations apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<MetadataOp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_operations: Vec<MetadataOp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_operations: Vec<MetadataOp>,
}

/// Applies operations to a metadata object, in order.
pub fn apply_ops(metadata: &mut Value, ops: &[MetadataOp]) -> Result<()> {
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    for op in ops {
        match op {
            MetadataOp::Update { value } => {
                if !value.is_object() {
                    return Err(Error::Invalid("metadata: update needs an object".into()));
                }
                *metadata = value.clone();
            }
            MetadataOp::Set { key, value } => {
                *slot(metadata, key, true)?.ok_or_else(|| bad_path(key))? = value.clone()
            }
            MetadataOp::Delete { key } => delete(metadata, key)?,
            MetadataOp::Append { key, value } => {
                let target = slot(metadata, key, true)?.ok_or_else(|| bad_path(key))?;
                match target {
                    Value::Array(items) => items.push(value.clone()),
                    Value::Null => *target = Value::Array(vec![value.clone()]),
                    other => *other = Value::Array(vec![other.clone(), value.clone()]),
                }
            }
            MetadataOp::Remove { key, value } => {
                if let Some(Value::Array(items)) = slot(metadata, key, false)? {
                    items.retain(|v| v != value);
                }
            }
            MetadataOp::Increment { key, value } => {
                let target = slot(metadata, key, true)?.ok_or_else(|| bad_path(key))?;
                let current = target.as_f64().unwrap_or(0.0);
                *target = number(current + value);
            }
        }
    }
    Ok(())
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn bad_path(key: &str) -> Error {
    Error::Invalid(format!("metadata: cannot address {key:?}"))
}

/// Splits a key: `"$.a.b[0]"` is a JSON path, anything else is one plain key.
fn path(key: &str) -> Result<Vec<Segment>> {
    let Some(rest) = key.strip_prefix("$.") else {
        return Ok(vec![Segment::Key(key.to_string())]);
    };
    let mut out = Vec::new();
    for part in rest.split('.') {
        let (name, mut indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name.to_string()));
        }
        while let Some(stripped) = indexes.strip_prefix('[') {
            let end = stripped.find(']').ok_or_else(|| bad_path(key))?;
            let index: usize = stripped[..end].parse().map_err(|_| bad_path(key))?;
            out.push(Segment::Index(index));
            indexes = &stripped[end + 1..];
        }
    }
    for segment in &out {
        if let Segment::Key(k) = segment {
            if matches!(k.as_str(), "__proto__" | "constructor" | "prototype") {
                return Err(Error::Invalid(format!("metadata: the path segment {k:?} is not allowed")));
            }
        }
    }
    if out.is_empty() {
        return Err(bad_path(key));
    }
    Ok(out)
}

enum Segment {
    Key(String),
    Index(usize),
}

/// The value at `key`, created (as `null`, with intermediate objects) when `create`.
fn slot<'a>(root: &'a mut Value, key: &str, create: bool) -> Result<Option<&'a mut Value>> {
    let segments = path(key)?;
    let mut current = root;
    for segment in segments {
        current = match segment {
            Segment::Key(k) => {
                if current.is_null() && create {
                    *current = Value::Object(Map::new());
                }
                let Value::Object(map) = current else { return Ok(None) };
                if !map.contains_key(&k) {
                    if !create {
                        return Ok(None);
                    }
                    map.insert(k.clone(), Value::Null);
                }
                map.get_mut(&k).ok_or_else(|| bad_path(key))?
            }
            Segment::Index(i) => {
                let Value::Array(items) = current else { return Ok(None) };
                match items.get_mut(i) {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
        };
    }
    Ok(Some(current))
}

fn delete(root: &mut Value, key: &str) -> Result<()> {
    let mut segments = path(key)?;
    let last = segments.pop();
    let parent = if segments.is_empty() {
        Some(root)
    } else {
        let prefix = segments
            .iter()
            .map(|s| match s {
                Segment::Key(k) => format!(".{k}"),
                Segment::Index(i) => format!("[{i}]"),
            })
            .collect::<String>();
        slot(root, &format!("${prefix}"), false)?
    };
    match (parent, last) {
        (Some(Value::Object(map)), Some(Segment::Key(k))) => {
            map.remove(&k);
        }
        (Some(Value::Array(items)), Some(Segment::Index(i))) if i < items.len() => {
            items.remove(i);
        }
        _ => {}
    }
    Ok(())
}

/// The run's metadata as a JSON object (`{}` when unset or not JSON).
pub fn current(run: &Run) -> Value {
    run.metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()))
}

/// Applies a flush to a run (already locked by the caller) and to its parent and root.
pub(crate) fn apply_update(txn: &mut Txn<'_>, run: &mut Run, update: &MetadataUpdate) -> Result<Value> {
    if let Some(done) = run.completed_at {
        if txn.now - done > txn.config.metadata_updatable_window_ms {
            return Err(Error::InvalidState("Cannot update metadata for a completed run".into()));
        }
    }
    let mut value = match &update.metadata {
        Some(v) if v.is_object() => v.clone(),
        Some(_) => return Err(Error::Invalid("metadata: must be an object".into())),
        None => current(run),
    };
    apply_ops(&mut value, &update.operations)?;
    store(run, &value)?;
    txn.tx.update_run(run)?;
    txn.changed(run);

    for (target, ops) in [
        (run.parent_run_id.clone(), &update.parent_operations),
        (run.root_run_id.clone(), &update.root_operations),
    ] {
        if ops.is_empty() {
            continue;
        }
        // A root run is its own root and parent.
        let target = target.unwrap_or_else(|| run.id.clone());
        if target == run.id {
            let mut own = current(run);
            apply_ops(&mut own, ops)?;
            store(run, &own)?;
            txn.tx.update_run(run)?;
            continue;
        }
        let mut other = txn.lock_run(&target)?;
        let mut theirs = current(&other);
        apply_ops(&mut theirs, ops)?;
        store(&mut other, &theirs)?;
        other.updated_at = txn.now;
        txn.tx.update_run(&other)?;
        txn.changed(&other);
    }
    Ok(current(run))
}

fn store(run: &mut Run, value: &Value) -> Result<()> {
    let text = value.to_string();
    if text.len() > limits::METADATA {
        return Err(Error::TooLarge(format!(
            "metadata: {} bytes is over the limit of {} bytes",
            text.len(),
            limits::METADATA
        )));
    }
    run.metadata = Some(text);
    run.metadata_type = "application/json".into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_apply_in_order_like_the_sdk() {
        let mut m = json!({"source": "api"});
        let ops: Vec<MetadataOp> = serde_json::from_value(json!([
            {"type": "set", "key": "status", "value": "started"},
            {"type": "set", "key": "progress", "value": 0},
            {"type": "set", "key": "progress", "value": 0.5},
            {"type": "append", "key": "processed", "value": 1},
            {"type": "append", "key": "processed", "value": 2},
            {"type": "increment", "key": "count", "value": 1},
            {"type": "increment", "key": "count", "value": 1},
            {"type": "increment", "key": "count", "value": -3},
            {"type": "remove", "key": "processed", "value": 1},
            {"type": "set", "key": "$.nested.deep", "value": true},
            {"type": "append", "key": "$.nested.list", "value": "x"},
            {"type": "delete", "key": "status"},
        ]))
        .unwrap();
        apply_ops(&mut m, &ops).unwrap();
        assert_eq!(
            m,
            json!({"source": "api", "progress": 0.5, "processed": [2], "count": -1,
                   "nested": {"deep": true, "list": ["x"]}})
        );
        let bad: Vec<MetadataOp> =
            serde_json::from_value(json!([{"type": "set", "key": "$.__proto__.x", "value": 1}])).unwrap();
        assert!(apply_ops(&mut m, &bad).is_err());
        apply_ops(&mut m, &[MetadataOp::Delete { key: "$.nested.deep".into() }]).unwrap();
        assert_eq!(m["nested"], json!({"list": ["x"]}));
        apply_ops(&mut m, &[MetadataOp::Update { value: json!({"a": 1}) }]).unwrap();
        assert_eq!(m, json!({"a": 1}));
    }
}
