//! Health, readiness, timezones and the OpenAPI document.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::extract::QueryPairs;
use crate::routes::{table, Access, Group};
use crate::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "ok": true }))
}

/// Ready when the engine answers a round trip through its writer and the database.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.engine().list_organizations().await?;
    Ok(Json(json!({ "ok": true })))
}

/// IANA zone names offered for schedules. `UTC` is left out with `?excludeUtc=true`.
pub async fn timezones(query: QueryPairs) -> Json<Value> {
    let exclude_utc = query.get("excludeUtc") == Some("true");
    let zones: Vec<&str> = TIMEZONES.iter().copied().filter(|z| !(exclude_utc && *z == "UTC")).collect();
    Json(json!({ "timezones": zones }))
}

const TIMEZONES: &[&str] = &[
    "UTC",
    "Africa/Cairo",
    "Africa/Johannesburg",
    "Africa/Lagos",
    "Africa/Nairobi",
    "America/Anchorage",
    "America/Argentina/Buenos_Aires",
    "America/Bogota",
    "America/Chicago",
    "America/Denver",
    "America/Halifax",
    "America/Los_Angeles",
    "America/Mexico_City",
    "America/New_York",
    "America/Phoenix",
    "America/Santiago",
    "America/Sao_Paulo",
    "America/St_Johns",
    "America/Toronto",
    "America/Vancouver",
    "Asia/Bangkok",
    "Asia/Dhaka",
    "Asia/Dubai",
    "Asia/Hong_Kong",
    "Asia/Jakarta",
    "Asia/Jerusalem",
    "Asia/Karachi",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Asia/Manila",
    "Asia/Seoul",
    "Asia/Shanghai",
    "Asia/Singapore",
    "Asia/Taipei",
    "Asia/Tehran",
    "Asia/Tokyo",
    "Atlantic/Azores",
    "Atlantic/Reykjavik",
    "Australia/Adelaide",
    "Australia/Brisbane",
    "Australia/Perth",
    "Australia/Sydney",
    "Europe/Amsterdam",
    "Europe/Athens",
    "Europe/Berlin",
    "Europe/Dublin",
    "Europe/Helsinki",
    "Europe/Istanbul",
    "Europe/Lisbon",
    "Europe/London",
    "Europe/Madrid",
    "Europe/Moscow",
    "Europe/Paris",
    "Europe/Rome",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Zurich",
    "Pacific/Auckland",
    "Pacific/Honolulu",
];

/// OpenAPI 3.1 for the management API; the path list is generated from the route table.
pub async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(openapi_document(state.base_url()))
}

pub(crate) fn openapi_document(base_url: &str) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for spec in table().into_iter().filter(|s| s.group == Group::Management) {
        let params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| name.trim_start_matches('*'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": spec.summary,
            "operationId": operation_id(spec.method.as_str(), spec.path),
            "parameters": params,
            "responses": {
                "200": { "description": "Success", "content": { "application/json": { "schema": { "type": "object" } } } },
                "default": { "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if spec.access == Access::Public {
            op["security"] = json!([]);
        }
        if matches!(spec.method.as_str(), "POST" | "PUT") {
            let content_type =
                if spec.path.ends_with("/items") { "application/x-ndjson" } else { "application/json" };
            op["requestBody"] = json!({ "content": { content_type: { "schema": {} } } });
        }
        let entry = paths.entry(spec.path.to_string()).or_insert_with(|| json!({}));
        entry[spec.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "trigger.rs management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Trigger.dev v4 compatible management API. Authenticate with an environment's secret key as a Bearer token.",
        },
        "servers": [{ "url": base_url }],
        "security": [{ "secretKey": [] }],
        "components": {
            "securitySchemes": { "secretKey": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
            },
        },
        "paths": paths,
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "api") {
        let seg = seg.trim_start_matches('{').trim_start_matches('*').trim_end_matches('}');
        let mut chars = seg.chars().filter(|c| c.is_ascii_alphanumeric());
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}
