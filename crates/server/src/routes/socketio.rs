//! The dev worker's push channel as the official CLI expects it: socket.io (Engine.IO v4,
//! WebSocket transport only) on the `/dev-worker` namespace. The CLI subscribes with
//! `run:subscribe {version, runFriendlyIds}` and re-fetches a run's latest snapshot on each
//! `run:notify {version, run:{friendlyId}}`; without this it polls every 5 s.
//!
//! Only the small part of the protocol the CLI uses is spoken: the open packet, namespace
//! connect/disconnect, events, and server pings.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::auth::EnvCaller;
use crate::AppState;

const NAMESPACE: &str = "/dev-worker";
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn socket(State(state): State<AppState>, caller: EnvCaller, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |ws| session(state, caller, ws))
}

/// Splits a socket.io packet (`4` + type + optional `/nsp,` + payload) into its type,
/// namespace and JSON payload.
fn parse_packet(text: &str) -> Option<(char, &str, Option<Value>)> {
    let rest = text.strip_prefix('4')?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    let (nsp, payload) = match rest.strip_prefix('/') {
        Some(_) => match rest.find(',') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        },
        None => ("/", rest),
    };
    // An ack id may sit between the namespace and the payload.
    let payload = payload.trim_start_matches(|c: char| c.is_ascii_digit());
    Some((kind, nsp, serde_json::from_str(payload).ok()))
}

fn event(name: &str, data: Value) -> Message {
    Message::Text(format!("42{NAMESPACE},{}", json!([name, data])).into())
}

fn run_ids(data: Option<&Value>) -> Vec<String> {
    data.and_then(|d| d.get("runFriendlyIds"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

async fn session(state: AppState, caller: EnvCaller, mut ws: WebSocket) {
    let sid = trigger_types::ids::random_alphanumeric(20);
    let open = json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": PING_INTERVAL.as_millis() as u64,
        "pingTimeout": PING_TIMEOUT.as_millis() as u64,
        "maxPayload": 1_000_000,
    });
    if ws.send(Message::Text(format!("0{open}").into())).await.is_err() {
        return;
    }
    let mut changes = state.engine().subscribe();
    let mut shutdown = state.shutdown_signal();
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_pong = tokio::time::Instant::now();
    loop {
        tokio::select! {
            incoming = ws.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let text = text.as_str();
                if text == "3" {
                    last_pong = tokio::time::Instant::now();
                    continue;
                }
                if text == "1" {
                    return;
                }
                let Some((kind, nsp, payload)) = parse_packet(text) else { continue };
                match (kind, nsp == NAMESPACE) {
                    ('0', true) => {
                        let reply = format!("40{NAMESPACE},{}", json!({ "sid": trigger_types::ids::random_alphanumeric(20) }));
                        if ws.send(Message::Text(reply.into())).await.is_err() {
                            return;
                        }
                    }
                    ('0', false) => {
                        let reply = format!("44{nsp},{}", json!({ "message": "Invalid namespace" }));
                        let _ = ws.send(Message::Text(reply.into())).await;
                    }
                    ('1', true) => subscribed.clear(),
                    ('2', true) => {
                        let name = payload.as_ref().and_then(|p| p.get(0)).and_then(Value::as_str).unwrap_or("");
                        let ids = run_ids(payload.as_ref().and_then(|p| p.get(1)));
                        match name {
                            "run:subscribe" => subscribed.extend(ids),
                            "run:unsubscribe" => ids.iter().for_each(|id| { subscribed.remove(id); }),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            change = changes.recv() => match change {
                Ok(c) if c.env_id == caller.env.id && subscribed.contains(&c.run_id) => {
                    let notify = event("run:notify", json!({ "version": "1", "run": { "friendlyId": c.run_id } }));
                    if ws.send(notify).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Missed changes: tell every subscribed run to re-fetch.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for id in subscribed.clone() {
                        if ws.send(event("run:notify", json!({ "version": "1", "run": { "friendlyId": id } }))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > PING_INTERVAL + PING_TIMEOUT {
                    return;
                }
                if ws.send(Message::Text("2".into())).await.is_err() {
                    return;
                }
            }
            _ = crate::shutdown_begun(&mut shutdown) => {
                let _ = ws.send(Message::Text(format!("41{NAMESPACE},").into())).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_split_into_kind_namespace_and_payload() {
        let (kind, nsp, payload) =
            parse_packet(r#"42/dev-worker,["run:subscribe",{"version":"1","runFriendlyIds":["run_a"]}]"#)
                .unwrap();
        assert_eq!((kind, nsp), ('2', "/dev-worker"));
        assert_eq!(run_ids(payload.as_ref().and_then(|p| p.get(1))), vec!["run_a".to_string()]);
        assert_eq!(parse_packet("40/dev-worker,").map(|(k, n, _)| (k, n)), Some(('0', "/dev-worker")));
        assert_eq!(parse_packet("40").map(|(k, n, _)| (k, n)), Some(('0', "/")));
        assert!(parse_packet("3").is_none());
    }
}
