//! Payloads and outputs as they arrive: plain JSON from Rust, SuperJSON or text from the
//! TypeScript SDK. Everything the SDK receives goes through [`to_json`], so a serde type
//! sees the same plain JSON whichever SDK produced the value.

use serde_json::Value;
use trigger_engine::Packet;

/// The content types a packet may have.
pub(crate) const JSON: &str = "application/json";
const SUPER_JSON: &str = "application/super+json";
const TEXT: &str = "text/plain";
const STORE: &str = "application/store";

/// A packet's value as plain JSON: SuperJSON is decoded (dates stay ISO strings, bigints
/// become numbers, maps objects, `undefined` fields disappear), a `text/plain` packet is a
/// JSON string, and no data is `null`.
pub(crate) fn to_json(data: Option<&str>, data_type: &str) -> Result<Value, String> {
    let Some(data) = data.filter(|d| !d.is_empty()) else {
        return Ok(Value::Null);
    };
    match data_type {
        SUPER_JSON => trigger_types::superjson::to_json(data).map_err(|e| e.to_string()),
        TEXT => Ok(Value::String(data.to_string())),
        STORE => Err(format!(
            "the value was offloaded to object storage ({STORE}, path {data:?}) and not fetched: only the HTTP backend can"
        )),
        t if t.is_empty() || t.contains("json") => {
            serde_json::from_str(data).map_err(|e| format!("not JSON: {e}"))
        }
        other => Err(format!("unsupported content type {other:?}")),
    }
}

/// The packet as `application/json` (unchanged when it cannot be read).
pub(crate) fn normalize(packet: Packet) -> Packet {
    if packet.data_type == JSON || packet.data.is_none() {
        return packet;
    }
    match to_json(packet.data.as_deref(), &packet.data_type) {
        Ok(value) => Packet::json(&value),
        Err(_) => packet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_content_type_reads_as_plain_json() {
        let sj = r#"{"json":{"at":"1970-01-01T00:00:00.000Z","n":"9"},"meta":{"values":{"at":["Date"],"n":["bigint"]}}}"#;
        assert_eq!(
            to_json(Some(sj), SUPER_JSON).unwrap(),
            json!({ "at": "1970-01-01T00:00:00.000Z", "n": 9 })
        );
        assert_eq!(to_json(Some("hello"), TEXT).unwrap(), json!("hello"));
        assert_eq!(to_json(Some(r#"{"a":1}"#), JSON).unwrap(), json!({ "a": 1 }));
        assert_eq!(to_json(Some(r#"{"a":1}"#), "").unwrap(), json!({ "a": 1 }));
        assert_eq!(to_json(None, SUPER_JSON).unwrap(), Value::Null);
        assert!(to_json(Some("run_1/payload.json"), STORE).unwrap_err().contains("offloaded"));
        assert!(to_json(Some("x"), "image/png").is_err());
        assert!(to_json(Some("{"), JSON).is_err());

        let p = normalize(Packet { data: Some(sj.into()), data_type: SUPER_JSON.into() });
        assert_eq!(p.data_type, JSON);
        assert_eq!(serde_json::from_str::<Value>(p.data.as_deref().unwrap()).unwrap()["n"], 9);
    }
}
