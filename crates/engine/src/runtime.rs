//! The writer thread: it owns the store, applies commands in batches (one transaction,
//! one savepoint per command) and publishes their effects after the commit.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot, Notify};
use trigger_types::Millis;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::storage::{ErrorKind, StorageError, Store};
use crate::txn::{Effect, RunChange, Txn};

/// A command for the writer thread. `apply` may run more than once when a transaction is
/// retried after a lost race; `finish` runs once, after the commit.
pub(crate) trait Command: Send {
    /// The run the command reads and changes first, if it names one up front.
    fn hint(&self) -> Option<&RunHint>;
    fn apply(&mut self, txn: &mut Txn<'_>) -> Applied;
    fn finish(self: Box<Self>, commit: std::result::Result<(), StorageError>);
}

/// How applying a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Ok,
    Failed,
    /// A unique constraint fired: another writer got there first.
    LostRace,
    /// The transaction lost a race with another process (deadlock, serialization failure):
    /// the whole batch is retried.
    Conflict,
}

/// A run a command is about to change, told to the store before the batch's commands run
/// so that it can read all of them at once ([`crate::storage::Tx::prefetch_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunHint {
    pub run_id: String,
    /// The command also reads the run's payload (an attempt start).
    pub payload: bool,
}

struct Call<T, F> {
    hint: Option<RunHint>,
    f: F,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Command for Call<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
{
    fn hint(&self) -> Option<&RunHint> {
        self.hint.as_ref()
    }

    fn apply(&mut self, txn: &mut Txn<'_>) -> Applied {
        let result = (self.f)(txn);
        let applied = match &result {
            Ok(_) => Applied::Ok,
            Err(Error::Storage(StorageError { kind: ErrorKind::UniqueViolation, .. })) => Applied::LostRace,
            Err(Error::Storage(StorageError { kind: ErrorKind::Conflict, .. })) => Applied::Conflict,
            Err(_) => Applied::Failed,
        };
        self.result = Some(result);
        applied
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), StorageError>) {
        let result = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(e)) => Err(Error::Storage(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Err(e)) => Err(Error::Storage(e)),
            (None, Ok(())) => Err(Error::Shutdown),
        };
        let _ = self.reply.send(result);
    }
}

/// Wake-ups published after commits.
pub(crate) struct Notifier {
    envs: Mutex<HashMap<String, Arc<Notify>>>,
    pub(crate) timers: Notify,
    pub(crate) changes: broadcast::Sender<RunChange>,
    pub(crate) earliest_timer: Mutex<Option<Millis>>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            envs: Mutex::new(HashMap::new()),
            timers: Notify::new(),
            changes: broadcast::channel(4096).0,
            earliest_timer: Mutex::new(None),
        }
    }

    /// The wake-up of an environment's dequeuers.
    pub(crate) fn env(&self, env_id: &str) -> Arc<Notify> {
        let mut envs = self.envs.lock().unwrap_or_else(|e| e.into_inner());
        envs.entry(env_id.to_string()).or_insert_with(|| Arc::new(Notify::new())).clone()
    }

    pub(crate) fn publish(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::WorkAvailable { env_id } if env_id.is_empty() => {
                    let envs = self.envs.lock().unwrap_or_else(|e| e.into_inner());
                    envs.values().for_each(|n| n.notify_waiters());
                }
                Effect::WorkAvailable { env_id } => self.env(&env_id).notify_waiters(),
                Effect::RunChanged(change) => {
                    let _ = self.changes.send(change);
                }
                Effect::TimerArmed { at } => {
                    let mut earliest = self.earliest_timer.lock().unwrap_or_else(|e| e.into_inner());
                    if earliest.is_none_or(|e| at < e) {
                        *earliest = Some(at);
                        self.timers.notify_one();
                    }
                }
            }
        }
    }
}

pub(crate) struct Writer {
    sender: Mutex<Option<mpsc::Sender<Box<dyn Command>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(
        store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        notifier: Arc<Notifier>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Box<dyn Command>>();
        let thread = std::thread::Builder::new()
            .name("trigger-engine-writer".into())
            .spawn(move || writer_loop(store, receiver, clock, config, notifier))
            .expect("spawn the engine writer thread");
        Writer { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)) }
    }

    /// Hands a command to the writer thread at once; the returned receiver yields its result
    /// after the commit.
    pub(crate) fn submit<T, F>(&self, hint: Option<RunHint>, f: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let command: Box<dyn Command> = Box::new(Call { hint, f, result: None, reply });
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender.as_ref().ok_or(Error::Shutdown)?.send(command).map_err(|_| Error::Shutdown)?;
        Ok(receiver)
    }

    pub(crate) async fn call<T, F>(&self, hint: Option<RunHint>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(hint, f)?.await.map_err(|_| Error::Shutdown)?
    }

    /// Stops accepting commands, lets the thread finish the queued ones, and waits for it.
    pub(crate) fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

const MAX_TX_RETRIES: usize = 5;

fn writer_loop(
    mut store: Box<dyn Store>,
    receiver: mpsc::Receiver<Box<dyn Command>>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    notifier: Arc<Notifier>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        // Most batches succeed whole: try without savepoints first, and only when a command
        // fails roll everything back and apply the batch again with one savepoint each.
        let mut careful = false;
        loop {
            attempt += 1;
            let mut effects = Vec::new();
            let outcome = run_batch(store.as_mut(), &mut batch, clock.now(), &config, &mut effects, careful);
            match outcome {
                Ok(false) => {
                    careful = true;
                    continue;
                }
                Err(e) if e.kind == ErrorKind::Conflict && attempt < MAX_TX_RETRIES => {
                    // Let the other side of the race finish first; jitter keeps two replicas
                    // from colliding again in lockstep.
                    let pause = 2u64.pow(attempt as u32) + rand::random::<u64>() % 5;
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, commands = batch.len(), "engine transaction failed");
                    for command in batch {
                        command.finish(Err(e.clone()));
                    }
                }
                Ok(true) => {
                    for command in batch {
                        command.finish(Ok(()));
                    }
                    notifier.publish(effects);
                }
            }
            break;
        }
    }
}

/// Applies a batch in one transaction. Without `careful`, a failing command aborts the
/// whole attempt (returns `Ok(false)`, nothing committed); with it, each command runs behind
/// a savepoint and a failing one is rolled back alone.
fn run_batch(
    store: &mut dyn Store,
    batch: &mut [Box<dyn Command>],
    now: Millis,
    config: &Config,
    effects: &mut Vec<Effect>,
    careful: bool,
) -> std::result::Result<bool, StorageError> {
    let mut tx = store.begin()?;
    let (mut runs, mut payloads) = (Vec::new(), Vec::new());
    for hint in batch.iter().filter_map(|command| command.hint()) {
        runs.push(hint.run_id.as_str());
        if hint.payload {
            payloads.push(hint.run_id.as_str());
        }
    }
    if !runs.is_empty() {
        tx.prefetch_runs(&runs, &payloads)?;
    }
    for command in batch.iter_mut() {
        if !careful {
            match command.apply(&mut Txn { tx: tx.as_mut(), now, config, effects, last_snapshot: None }) {
                Applied::Ok => continue,
                Applied::Conflict => return Err(conflict()),
                _ => return Ok(false),
            }
        }
        tx.savepoint()?;
        let mark = effects.len();
        let mut applied =
            command.apply(&mut Txn { tx: tx.as_mut(), now, config, effects, last_snapshot: None });
        if applied == Applied::LostRace {
            // A lost unique race (two triggers with one idempotency key from two
            // replicas) succeeds on a second try, which finds the winner's row.
            tx.rollback_to_savepoint()?;
            effects.truncate(mark);
            tx.savepoint()?;
            applied = command.apply(&mut Txn { tx: tx.as_mut(), now, config, effects, last_snapshot: None });
        }
        if applied == Applied::Conflict {
            // The database aborted this transaction's work (another replica holds the rows):
            // retry the batch rather than failing one command for a race it did not lose.
            return Err(conflict());
        }
        if applied == Applied::Ok {
            tx.release_savepoint()?;
        } else {
            tx.rollback_to_savepoint()?;
            effects.truncate(mark);
        }
    }
    if !effects.is_empty() {
        tx.publish(effects)?;
    }
    tx.commit()?;
    Ok(true)
}

fn conflict() -> StorageError {
    StorageError::new(ErrorKind::Conflict, "a command lost a race with another database client")
}
