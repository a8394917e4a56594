//! Cross-replica wake-ups over `LISTEN`/`NOTIFY`.
//!
//! A transaction publishes its effects with `pg_notify` just before it commits, so they are
//! delivered exactly when the transaction commits and never when it rolls back. Each store
//! listens on a dedicated connection driven by a background thread, which reconnects with
//! backoff; notifications a store sent itself are recognised by their origin and dropped.
//! Only what other processes can act on travels: work available in an environment and run
//! changes (timers are found by every replica's timer loop on its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use trigger_engine::storage::RemoteSink;
use trigger_engine::txn::{Effect, RunChange};
use trigger_types::{ExecutionStatus, RunStatus};

use crate::store::quote_ident;

/// `NOTIFY` payloads must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7_000;

/// The channel of a schema: one per deployment sharing the database.
pub(crate) fn channel_name(schema: &str) -> String {
    let name = format!("trigger_rs.{schema}");
    if name.len() <= 63 {
        return name;
    }
    // Channel names are identifiers (at most 63 bytes): hash long schema names (FNV-1a).
    let hash = schema
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("trigger_rs.{hash:016x}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    /// The publishing store.
    o: String,
    /// Environments with work available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    w: Vec<String>,
    /// Run changes: run, env, status, snapshot, execution status, worker instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    r: Vec<(String, String, String, String, String, Option<String>)>,
}

/// The payloads announcing `effects`, each small enough for `NOTIFY`.
pub(crate) fn payloads(origin: &str, effects: &[Effect]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = Payload { o: origin.to_string(), ..Payload::default() };
    let mut size = origin.len() + 16;
    let mut flush = |current: &mut Payload, size: &mut usize| {
        if !current.w.is_empty() || !current.r.is_empty() {
            let done = std::mem::replace(current, Payload { o: origin.to_string(), ..Payload::default() });
            out.push(serde_json::to_string(&done).expect("payloads serialize"));
        }
        *size = origin.len() + 16;
    };
    for effect in effects {
        let item_size = match effect {
            Effect::WorkAvailable { env_id } => env_id.len() + 4,
            Effect::RunChanged(c) => {
                c.run_id.len()
                    + c.env_id.len()
                    + c.snapshot_id.len()
                    + c.worker_instance.as_ref().map_or(4, |w| w.len() * 2 + 2)
                    + 64
            }
            Effect::TimerArmed { .. } => continue,
        };
        if item_size > MAX_PAYLOAD / 2 {
            tracing::warn!("a run change too large to announce to other replicas was not sent");
            continue;
        }
        if size + item_size > MAX_PAYLOAD {
            flush(&mut current, &mut size);
        }
        size += item_size;
        match effect {
            Effect::WorkAvailable { env_id } => current.w.push(env_id.clone()),
            Effect::RunChanged(c) => current.r.push((
                c.run_id.clone(),
                c.env_id.clone(),
                c.status.as_str().to_string(),
                c.snapshot_id.clone(),
                c.execution_status.as_str().to_string(),
                c.worker_instance.clone(),
            )),
            Effect::TimerArmed { .. } => {}
        }
    }
    flush(&mut current, &mut size);
    out
}

/// The effects in a payload, unless it came from `origin` or does not parse.
pub(crate) fn effects_of(payload: &str, origin: &str) -> Vec<Effect> {
    let Ok(p) = serde_json::from_str::<Payload>(payload) else {
        tracing::warn!("ignoring a notification that does not parse");
        return Vec::new();
    };
    if p.o == origin {
        return Vec::new();
    }
    let mut effects: Vec<Effect> = p.w.into_iter().map(|env_id| Effect::WorkAvailable { env_id }).collect();
    for (run_id, env_id, status, snapshot_id, execution_status, worker_instance) in p.r {
        let (Some(status), Some(execution_status)) =
            (RunStatus::parse(&status), ExecutionStatus::parse(&execution_status))
        else {
            continue;
        };
        effects.push(Effect::RunChanged(RunChange {
            run_id,
            env_id,
            status,
            snapshot_id,
            execution_status,
            worker_instance,
        }));
    }
    effects
}

/// The listening thread of a store; stops when dropped.
pub(crate) struct Listener {
    stop: Arc<(AtomicBool, Notify)>,
}

impl Listener {
    pub(crate) fn spawn(
        config: tokio_postgres::Config,
        channel: String,
        origin: Arc<str>,
        sink: RemoteSink,
    ) -> Self {
        let stop = Arc::new((AtomicBool::new(false), Notify::new()));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new().name("trigger-pg-listen".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the PostgreSQL listener");
                    return;
                }
            };
            rt.block_on(listen_forever(config, channel, origin, sink, flag));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn the PostgreSQL listener thread");
        }
        Listener { stop }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::SeqCst);
        self.stop.1.notify_one();
    }
}

async fn listen_forever(
    config: tokio_postgres::Config,
    channel: String,
    origin: Arc<str>,
    sink: RemoteSink,
    stop: Arc<(AtomicBool, Notify)>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    while !stop.0.load(Ordering::SeqCst) {
        let outcome = listen_once(&config, &channel, &origin, &sink, &stop, &mut first, &mut backoff).await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "PostgreSQL listener lost its connection");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.1.notified() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Listens until stopped (`Ok`) or until the connection fails.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    origin: &str,
    sink: &RemoteSink,
    stop: &(AtomicBool, Notify),
    first: &mut bool,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            let failed = message.is_err();
            if sender.send(message).is_err() || failed {
                break;
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {}", quote_ident(channel))).await?;
        *backoff = Duration::from_millis(50);
        if !std::mem::take(first) {
            // Notifications sent while we were away are lost: wake everything once.
            sink(vec![Effect::WorkAvailable { env_id: String::new() }]);
        }
        loop {
            tokio::select! {
                _ = stop.1.notified() => return Ok(()),
                message = messages.recv() => match message {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let effects = effects_of(n.payload(), origin);
                        if !effects.is_empty() {
                            sink(effects);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => {
                        // The connection ended without an error: ask the client why.
                        return client.batch_execute("SELECT 1").await;
                    }
                },
            }
        }
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: usize) -> Effect {
        Effect::RunChanged(RunChange {
            run_id: format!("run_{i:020}"),
            env_id: "env_1".into(),
            status: RunStatus::Executing,
            snapshot_id: format!("snapshot_{i:020}"),
            execution_status: ExecutionStatus::ExecutingWithWaitpoints,
            worker_instance: if i % 2 == 0 { Some("worker\t\"a\"\n".into()) } else { None },
        })
    }

    #[test]
    fn effects_round_trip_in_small_payloads_and_own_ones_are_dropped() {
        let mut effects: Vec<Effect> = (0..500).map(change).collect();
        effects.push(Effect::WorkAvailable { env_id: "env_2".into() });
        effects.push(Effect::TimerArmed { at: 5 });
        let sent = payloads("me", &effects);
        assert!(sent.len() > 1, "split");
        assert!(sent.iter().all(|p| p.len() < 8000), "each fits NOTIFY");
        let back: Vec<Effect> = sent.iter().flat_map(|p| effects_of(p, "other")).collect();
        let mut want: Vec<Effect> =
            effects.iter().filter(|e| !matches!(e, Effect::TimerArmed { .. })).cloned().collect();
        let key = |e: &Effect| format!("{e:?}");
        want.sort_by_key(key);
        let mut got = back.clone();
        got.sort_by_key(key);
        assert_eq!(got, want);
        assert!(sent.iter().all(|p| effects_of(p, "me").is_empty()), "own notifications ignored");
        assert!(payloads("me", &[Effect::TimerArmed { at: 1 }]).is_empty());
    }

    #[test]
    fn channel_names_fit_an_identifier() {
        assert_eq!(channel_name("public"), "trigger_rs.public");
        let long = channel_name(&"x".repeat(100));
        assert!(long.len() <= 63 && long.starts_with("trigger_rs."));
        assert_ne!(long, channel_name(&"y".repeat(100)));
    }
}
