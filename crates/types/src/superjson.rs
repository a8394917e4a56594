//! Reading SuperJSON, the format the official TypeScript SDK sends payloads and outputs in
//! (`application/super+json`): `{"json": …, "meta": {"values": …}}`, where `json` is plain
//! JSON and `meta.values` names the paths whose JavaScript type JSON cannot carry.
//!
//! [`to_json`] turns such a value into the plain JSON a serde type expects:
//!
//! | JavaScript | SuperJSON `json` | here |
//! |---|---|---|
//! | `Date` | ISO-8601 string | the same string (fits `chrono`/`time` with serde, or `String`) |
//! | `BigInt` | decimal string | a number when it fits `i64`/`u64`, else the string |
//! | `Set` | array | the array |
//! | `Map` | array of `[key, value]` pairs | an object when every key is a string, else the pairs |
//! | `undefined` | `null` | the field is absent (`null` inside an array, as `JSON.stringify` does) |
//! | `NaN`, `±Infinity` | `"NaN"`, `"Infinity"`, … | `null`, as serde_json writes a non-finite `f64` |
//! | `-0` | `"-0"` | `0` |
//! | `RegExp`, `URL` | string (`"/ab+c/gi"`, the href) | the string |
//! | `Error` | `{name, message}` | that object |
//! | typed arrays, `Buffer`, registered classes and symbols | their JSON form | unchanged |
//!
//! Referential-equality annotations are ignored: SuperJSON repeats shared objects in
//! `json` anyway, and a circular reference is already `null` there.
//!
//! ```
//! let text = r#"{"json":{"at":"2024-01-02T03:04:05.678Z","big":"42","tags":["a"]},
//!               "meta":{"values":{"at":["Date"],"big":["bigint"],"tags":["set"]}}}"#;
//! let plain = trigger_types::superjson::to_json(text).unwrap();
//! assert_eq!(plain, serde_json::json!({ "at": "2024-01-02T03:04:05.678Z", "big": 42, "tags": ["a"] }));
//! ```

use serde_json::{Map, Number, Value};

/// Why a SuperJSON value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SuperJSON: {0}")]
pub struct Error(String);

fn invalid(why: impl Into<String>) -> Error {
    Error(why.into())
}

/// Parses a SuperJSON string and returns its value as plain JSON.
pub fn to_json(text: &str) -> Result<Value, Error> {
    let value: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    decode(value)
}

/// Turns a parsed SuperJSON envelope (`{"json": …, "meta": …}`) into plain JSON.
pub fn decode(envelope: Value) -> Result<Value, Error> {
    let Value::Object(mut envelope) = envelope else {
        return Err(invalid("expected an object with a `json` field"));
    };
    let mut json = envelope.remove("json").unwrap_or(Value::Null);
    let annotations = match envelope.remove("meta") {
        Some(Value::Object(mut meta)) => meta.remove("values"),
        Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("`meta` is not an object")),
    };
    let mut steps = Vec::new();
    if let Some(tree) = &annotations {
        collect(tree, &[], &mut steps)?;
    }
    for (path, kind) in steps {
        apply(&mut json, &path, &kind)?;
    }
    Ok(json)
}

/// A type annotation: `"Date"`, `"bigint"`, … or `["custom", "buffer"]`, `["class", "X"]`.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Undefined,
    BigInt,
    Map,
    Number,
    /// Anything whose JSON form is already what serde wants (`Date`, `set`, `regexp`, …).
    Keep,
}

fn kind(annotation: &Value) -> Result<Kind, Error> {
    Ok(match annotation {
        Value::String(s) => match s.as_str() {
            "undefined" => Kind::Undefined,
            "bigint" => Kind::BigInt,
            "map" => Kind::Map,
            "number" => Kind::Number,
            _ => Kind::Keep,
        },
        Value::Array(a) if a.first().is_some_and(Value::is_string) => Kind::Keep,
        other => return Err(invalid(format!("unknown type annotation {other}"))),
    })
}

/// Walks an annotation tree and lists (path, kind) in the order SuperJSON applies them:
/// a node's children (on its JSON form) before the node itself.
fn collect(tree: &Value, origin: &[String], out: &mut Vec<(Vec<String>, Kind)>) -> Result<(), Error> {
    match tree {
        Value::Object(children) => {
            for (key, subtree) in children {
                let mut path = origin.to_vec();
                path.extend(parse_path(key));
                collect(subtree, &path, out)?;
            }
            Ok(())
        }
        Value::Array(node) => {
            let annotation = node.first().ok_or_else(|| invalid("empty annotation"))?;
            if let Some(children) = node.get(1) {
                let Value::Object(children) = children else {
                    return Err(invalid("annotation children are not an object"));
                };
                for (key, subtree) in children {
                    let mut path = origin.to_vec();
                    path.extend(parse_path(key));
                    collect(subtree, &path, out)?;
                }
            }
            out.push((origin.to_vec(), kind(annotation)?));
            Ok(())
        }
        other => Err(invalid(format!("annotation tree node {other}"))),
    }
}

/// Splits `a.b\.c` into `["a", "b.c"]` (SuperJSON escapes dots in keys with a backslash).
fn parse_path(path: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut segment = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                segment.push('.');
            }
            '.' => segments.push(std::mem::take(&mut segment)),
            c => segment.push(c),
        }
    }
    segments.push(segment);
    segments
}

/// Which child of `parent` the path continues with, and how many segments that took.
/// SuperJSON 2.2 leaves dots unescaped in the last key of a flattened path (`"user.a.b"`
/// for `{user: {"a.b": date}}`), so a missing key is retried joined with what follows.
fn child_key(parent: &Map<String, Value>, segments: &[String]) -> Option<(String, usize)> {
    (1..=segments.len()).map(|n| (segments[..n].join("."), n)).find(|(key, _)| parent.contains_key(key))
}

fn apply(root: &mut Value, path: &[String], kind: &Kind) -> Result<(), Error> {
    if *kind == Kind::Keep {
        return Ok(());
    }
    let mut node = root;
    let mut rest = path;
    let missing = || invalid(format!("annotated path {:?} is not in the value", path.join(".")));
    loop {
        if rest.is_empty() {
            transform(node, kind);
            return Ok(());
        }
        match node {
            Value::Object(map) => {
                let (key, used) = child_key(map, rest).ok_or_else(missing)?;
                if used == rest.len() && *kind == Kind::Undefined {
                    map.remove(&key);
                    return Ok(());
                }
                rest = &rest[used..];
                node = map.get_mut(&key).ok_or_else(missing)?;
            }
            Value::Array(items) => {
                let index: usize = rest[0].parse().map_err(|_| missing())?;
                rest = &rest[1..];
                node = items.get_mut(index).ok_or_else(missing)?;
            }
            _ => return Err(missing()),
        }
    }
}

fn transform(value: &mut Value, kind: &Kind) {
    match kind {
        Kind::Undefined => *value = Value::Null,
        Kind::BigInt => {
            if let Value::String(s) = value {
                let number =
                    s.parse::<i64>().map(Number::from).or_else(|_| s.parse::<u64>().map(Number::from)).ok();
                if let Some(n) = number {
                    *value = Value::Number(n);
                }
            }
        }
        Kind::Number => {
            if let Value::String(s) = value {
                *value = match s.as_str() {
                    "-0" => Value::Number(0.into()),
                    other => other
                        .parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .map_or(Value::Null, Value::Number),
                };
            }
        }
        Kind::Map => {
            let Value::Array(pairs) = value else { return };
            let all_string_keys =
                pairs.iter().all(|p| p.as_array().is_some_and(|kv| kv.len() == 2 && kv[0].is_string()));
            if all_string_keys {
                let object: Map<String, Value> = std::mem::take(pairs)
                    .into_iter()
                    .filter_map(|p| match p {
                        Value::Array(mut kv) => {
                            let v = kv.pop()?;
                            let k = kv.pop()?;
                            Some((k.as_str()?.to_string(), v))
                        }
                        _ => None,
                    })
                    .collect();
                *value = Value::Object(object);
            }
        }
        Kind::Keep => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Fixtures are `superjson.stringify(...)` output of @trigger.dev/core 4.8.3 (superjson
    // 2.2.1), the serializer the official SDK uses for payloads and outputs.

    #[test]
    fn dates_bigints_sets_maps_and_undefined() {
        let text = r#"{"json":{"at":"2024-01-02T03:04:05.678Z","big":"12345678901234567890123","small":"42","tags":["a","b"],"byName":[["x",1],["y","1970-01-01T00:00:00.000Z"]],"pairs":[[1,"one"],[2,"two"]],"gone":null,"keep":null},"meta":{"values":{"at":["Date"],"big":["bigint"],"small":["bigint"],"tags":["set"],"byName":["map",{"1.1":["Date"]}],"pairs":["map"],"gone":["undefined"]}}}"#;
        assert_eq!(
            to_json(text).unwrap(),
            json!({
                "at": "2024-01-02T03:04:05.678Z",
                "big": "12345678901234567890123",
                "small": 42,
                "tags": ["a", "b"],
                "byName": { "x": 1, "y": "1970-01-01T00:00:00.000Z" },
                "pairs": [[1, "one"], [2, "two"]],
                "keep": null,
            })
        );
    }

    #[test]
    fn nested_paths_special_numbers_regexp_error_and_url() {
        // `{user: {"dotted.key": date, list: [undefined, 1n, NaN, Infinity, -Infinity, -0]}, …}`:
        // SuperJSON leaves the dot of the last key unescaped.
        let text = r#"{"json":{"user":{"dotted.key":"1970-01-02T00:00:00.000Z","list":[null,"1","NaN","Infinity","-Infinity","-0"]},"re":"/ab+c/gi","err":{"name":"Error","message":"boom"},"url":"https://example.com/a?b=1"},"meta":{"values":{"user.dotted.key":["Date"],"user.list.0":["undefined"],"user.list.1":["bigint"],"user.list.2":["number"],"user.list.3":["number"],"user.list.4":["number"],"user.list.5":["number"],"re":["regexp"],"err":["Error"],"url":["URL"]}}}"#;
        assert_eq!(
            to_json(text).unwrap(),
            json!({
                "user": { "dotted.key": "1970-01-02T00:00:00.000Z", "list": [null, 1, null, null, null, 0] },
                "re": "/ab+c/gi",
                "err": { "name": "Error", "message": "boom" },
                "url": "https://example.com/a?b=1",
            })
        );
    }

    #[test]
    fn transformed_roots_and_nested_transformations() {
        assert_eq!(
            to_json(r#"{"json":"2020-06-15T00:00:00.000Z","meta":{"values":["Date"]}}"#).unwrap(),
            json!("2020-06-15T00:00:00.000Z")
        );
        // new Map([["k", new Set([1n])]]): the set's bigint is converted before the map.
        let text = r#"{"json":[["k",["1"]]],"meta":{"values":["map",{"0.1":["set",{"0":["bigint"]}]}]}}"#;
        assert_eq!(to_json(text).unwrap(), json!({ "k": [1] }));
        assert_eq!(to_json(r#"{"json":null,"meta":{"values":["undefined"]}}"#).unwrap(), Value::Null);
        let plain = r#"{"json":{"hello":"world","n":[1,2,3]}}"#;
        assert_eq!(to_json(plain).unwrap(), json!({ "hello": "world", "n": [1, 2, 3] }));
        let buffer = r#"{"json":{"bytes":[1,2,255]},"meta":{"values":{"bytes":[["custom","buffer"]]}}}"#;
        assert_eq!(to_json(buffer).unwrap(), json!({ "bytes": [1, 2, 255] }));
    }

    #[test]
    fn escaped_dots_and_bad_input() {
        assert_eq!(parse_path(r"a\.b.c"), vec!["a.b".to_string(), "c".to_string()]);
        let text = r#"{"json":{"a.b":{"c":"7"}},"meta":{"values":{"a\\.b.c":["bigint"]}}}"#;
        assert_eq!(to_json(text).unwrap(), json!({ "a.b": { "c": 7 } }));
        assert!(to_json("not json").is_err());
        assert!(to_json("[1]").is_err());
        let err = to_json(r#"{"json":{},"meta":{"values":{"missing":["bigint"]}}}"#).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(to_json(r#"{"json":{"a":1},"meta":{"values":{"a":[7]}}}"#).is_err());
    }
}
