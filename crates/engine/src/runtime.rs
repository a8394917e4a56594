//! The writer thread: it owns the store, applies commands in batches (one transaction,
//! one savepoint per command) and publishes their effects after the commit.
//!
//! A claim that waits for work ([`Writer::submit_waiting`], behind `Engine::dequeue_wait`)
//! is parked here when it finds nothing, and applied again in the transaction of the first
//! batch that makes work available in its environment: a trigger and the claim it wakes
//! commit together, so a run reaches a waiting worker one commit after it is triggered.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot, Notify};
use trigger_types::Millis;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::dequeue::{self, DequeueRequest, Dequeued};
use crate::storage::{ErrorKind, StorageError, Store};
use crate::txn::{Effect, RunChange, Txn};

/// What callers send the writer thread.
pub(crate) enum Message {
    /// A command for the next batch.
    Run(Box<dyn Command>),
    /// The caller of a waiting claim gave up: answer it (nothing claimed) unless it already
    /// was.
    StopWaiting { env_id: String, id: u64 },
    /// Another process made work available in an environment (empty: in all of them).
    Wake { env_id: String },
}

/// A command for the writer thread. `apply` may run more than once when a transaction is
/// retried after a lost race; `finish` runs once, after the commit.
pub(crate) trait Command: Send {
    /// The run the command reads and changes first, if it names one up front.
    fn hint(&self) -> Option<&RunHint>;
    fn apply(&mut self, txn: &mut Txn<'_>) -> Applied;
    fn finish(self: Box<Self>, commit: std::result::Result<(), StorageError>);
    /// A waiting claim that found nothing: its environment and id. It is parked rather than
    /// finished.
    fn waiting(&self) -> Option<(&str, u64)> {
        None
    }
    /// Nobody awaits the answer any more.
    fn abandoned(&self) -> bool {
        false
    }
    /// A claim whose last application left nothing claimable in its environment: other
    /// claims there need not be applied again in the same transaction.
    fn drained(&self) -> bool {
        false
    }
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

impl Applied {
    fn of<T>(result: &Result<T>) -> Applied {
        match result {
            Ok(_) => Applied::Ok,
            Err(Error::Storage(StorageError { kind: ErrorKind::UniqueViolation, .. })) => Applied::LostRace,
            Err(Error::Storage(StorageError { kind: ErrorKind::Conflict, .. })) => Applied::Conflict,
            Err(_) => Applied::Failed,
        }
    }
}

/// A command's answer once its transaction ended.
fn answer<T>(result: Option<Result<T>>, commit: std::result::Result<(), StorageError>) -> Result<T> {
    match (result, commit) {
        (Some(Err(e)), _) => Err(e),
        (Some(Ok(_)), Err(e)) => Err(Error::Storage(e)),
        (Some(Ok(v)), Ok(())) => Ok(v),
        (None, Err(e)) => Err(Error::Storage(e)),
        (None, Ok(())) => Err(Error::Shutdown),
    }
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
        let applied = Applied::of(&result);
        self.result = Some(result);
        applied
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), StorageError>) {
        let _ = self.reply.send(answer(self.result, commit));
    }
}

/// A claim that waits in the writer until it claims something or its caller stops it.
struct WaitingClaim {
    env_id: String,
    id: u64,
    request: DequeueRequest,
    result: Option<Result<Vec<Dequeued>>>,
    /// The last application left nothing claimable in the environment.
    drained: bool,
    reply: oneshot::Sender<Result<Vec<Dequeued>>>,
}

impl Command for WaitingClaim {
    fn hint(&self) -> Option<&RunHint> {
        None
    }

    fn apply(&mut self, txn: &mut Txn<'_>) -> Applied {
        let result = dequeue::claim(txn, &self.env_id, &self.request);
        self.drained = result.as_ref().is_ok_and(|c| c.drained);
        let result = result.map(|c| c.runs);
        let applied = Applied::of(&result);
        self.result = Some(result);
        applied
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), StorageError>) {
        let _ = self.reply.send(answer(self.result, commit));
    }

    fn waiting(&self) -> Option<(&str, u64)> {
        match &self.result {
            Some(Ok(claimed)) if claimed.is_empty() => Some((&self.env_id, self.id)),
            _ => None,
        }
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn drained(&self) -> bool {
        self.drained
    }
}

/// Waiting claims that found nothing, by environment; owned by the writer thread.
#[derive(Default)]
struct Parked {
    claims: HashMap<String, Vec<Box<dyn Command>>>,
}

impl Parked {
    fn park(&mut self, env_id: String, claim: Box<dyn Command>) {
        self.claims.entry(env_id).or_default().push(claim);
    }

    /// The claims waiting for work in an environment (empty: in every environment), taken
    /// out; those nobody awaits any more are dropped.
    fn take(&mut self, env_id: &str) -> Vec<Box<dyn Command>> {
        let taken: Vec<Box<dyn Command>> = if env_id.is_empty() {
            self.claims.drain().flat_map(|(_, claims)| claims).collect()
        } else {
            self.claims.remove(env_id).unwrap_or_default()
        };
        taken.into_iter().filter(|claim| !claim.abandoned()).collect()
    }

    /// Answers a parked claim (nothing claimed); false when it is not parked.
    fn stop(&mut self, env_id: &str, id: u64) -> bool {
        let Some(claims) = self.claims.get_mut(env_id) else { return false };
        let Some(at) = claims.iter().position(|claim| claim.waiting().is_some_and(|(_, i)| i == id)) else {
            return false;
        };
        claims.swap_remove(at).finish(Ok(()));
        if claims.is_empty() {
            self.claims.remove(env_id);
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    fn answer_all(&mut self) {
        for claim in self.claims.drain().flat_map(|(_, claims)| claims) {
            claim.finish(Ok(()));
        }
    }
}

/// Wake-ups published after commits.
pub(crate) struct Notifier {
    pub(crate) timers: Notify,
    pub(crate) changes: broadcast::Sender<RunChange>,
    pub(crate) earliest_timer: Mutex<Option<Millis>>,
    /// The writer's channel, for work another process made available (set while the writer
    /// runs).
    writer: Mutex<Option<mpsc::Sender<Message>>>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            timers: Notify::new(),
            changes: broadcast::channel(4096).0,
            earliest_timer: Mutex::new(None),
            writer: Mutex::new(None),
        }
    }

    /// Publishes effects committed by this process. Work made available here was already
    /// handed to the waiting claims, in the transaction that made it.
    pub(crate) fn publish(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::WorkAvailable { .. } => {}
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

    /// Publishes effects another process committed on a shared database: work it made
    /// available wakes this process's waiting claims.
    pub(crate) fn publish_remote(&self, effects: Vec<Effect>) {
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            for effect in &effects {
                if let Effect::WorkAvailable { env_id } = effect {
                    let _ = writer.send(Message::Wake { env_id: env_id.clone() });
                }
            }
        }
        self.publish(effects);
    }
}

pub(crate) struct Writer {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    notifier: Arc<Notifier>,
}

impl Writer {
    pub(crate) fn start(
        store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        notifier: Arc<Notifier>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Message>();
        *notifier.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        let thread = {
            let notifier = notifier.clone();
            std::thread::Builder::new()
                .name("trigger-engine-writer".into())
                .spawn(move || writer_loop(store, receiver, clock, config, notifier))
                .expect("spawn the engine writer thread")
        };
        Writer { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)), notifier }
    }

    fn send(&self, message: Message) -> Result<()> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender.as_ref().ok_or(Error::Shutdown)?.send(message).map_err(|_| Error::Shutdown)
    }

    /// Hands a command to the writer thread at once; the returned receiver yields its result
    /// after the commit.
    pub(crate) fn submit<T, F>(&self, hint: Option<RunHint>, f: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        self.send(Message::Run(Box::new(Call { hint, f, result: None, reply })))?;
        Ok(receiver)
    }

    /// Submits a claim that, finding nothing, waits in the writer for work in its
    /// environment until [`Writer::stop_waiting`] with the same id.
    pub(crate) fn submit_waiting(
        &self,
        env_id: &str,
        id: u64,
        request: DequeueRequest,
    ) -> Result<oneshot::Receiver<Result<Vec<Dequeued>>>> {
        let (reply, receiver) = oneshot::channel();
        let claim =
            WaitingClaim { env_id: env_id.to_string(), id, request, result: None, drained: false, reply };
        self.send(Message::Run(Box::new(claim)))?;
        Ok(receiver)
    }

    /// Ends a waiting claim's wait: it is answered with what it claimed, or nothing.
    pub(crate) fn stop_waiting(&self, env_id: &str, id: u64) {
        let _ = self.send(Message::StopWaiting { env_id: env_id.to_string(), id });
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
        self.notifier.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

const MAX_TX_RETRIES: usize = 5;

/// One round of the writer: the commands to apply, the environments other processes woke,
/// and the waits callers ended.
#[derive(Default)]
struct Round {
    batch: Vec<Box<dyn Command>>,
    woken: HashSet<String>,
    stops: Vec<(String, u64)>,
}

impl Round {
    fn add(&mut self, message: Message) {
        match message {
            Message::Run(command) => self.batch.push(command),
            Message::StopWaiting { env_id, id } => self.stops.push((env_id, id)),
            Message::Wake { env_id } => {
                self.woken.insert(env_id);
            }
        }
    }
}

fn writer_loop(
    mut store: Box<dyn Store>,
    receiver: mpsc::Receiver<Message>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    notifier: Arc<Notifier>,
) {
    let mut parked = Parked::default();
    while let Ok(first) = receiver.recv() {
        let mut round = Round::default();
        round.add(first);
        while round.batch.len() < config.max_batch {
            match receiver.try_recv() {
                Ok(message) => round.add(message),
                Err(_) => break,
            }
        }
        // A stop for a claim in this batch is applied after it (the claim may park).
        round.stops.retain(|(env_id, id)| !parked.stop(env_id, *id));
        for env_id in std::mem::take(&mut round.woken) {
            round.batch.extend(parked.take(&env_id));
        }
        if round.batch.is_empty() {
            continue;
        }
        let mut batch = round.batch;
        let mut attempt = 0;
        // Most batches succeed whole: try without savepoints first, and only when a command
        // fails roll everything back and apply the batch again with one savepoint each.
        let mut careful = false;
        loop {
            attempt += 1;
            let mut effects = Vec::new();
            let outcome = run_batch(
                store.as_mut(),
                &mut batch,
                &mut parked,
                clock.now(),
                &config,
                &mut effects,
                careful,
            );
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
                        match command.waiting() {
                            Some((env_id, _)) if !command.abandoned() => {
                                parked.park(env_id.to_string(), command)
                            }
                            _ => command.finish(Ok(())),
                        }
                    }
                    notifier.publish(effects);
                }
            }
            break;
        }
        for (env_id, id) in round.stops {
            parked.stop(&env_id, id);
        }
    }
    parked.answer_all();
}

/// Applies a batch in one transaction. Without `careful`, a failing command aborts the
/// whole attempt (returns `Ok(false)`, nothing committed); with it, each command runs behind
/// a savepoint and a failing one is rolled back alone.
///
/// When the batch makes work available, the claims waiting for it in that environment —
/// parked by earlier batches, or of this batch and found nothing before the work came —
/// are applied after the other commands, in the same transaction; parked ones join the
/// batch.
fn run_batch(
    store: &mut dyn Store,
    batch: &mut Vec<Box<dyn Command>>,
    parked: &mut Parked,
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
        if !apply(tx.as_mut(), command.as_mut(), now, config, effects, careful)? {
            return Ok(false);
        }
    }
    // Nothing waits (the usual case under load): no wake-ups to gather.
    if parked.is_empty() && !batch.iter().any(|command| command.waiting().is_some()) {
        return finish_batch(tx, effects);
    }
    let woken: HashSet<String> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::WorkAvailable { env_id } => Some(env_id.clone()),
            _ => None,
        })
        .collect();
    if !woken.is_empty() {
        let wakes = |env_id: &str| woken.contains("") || woken.contains(env_id);
        // Environments a claim just drained: the claims after it there would find nothing,
        // so they stay as they are (parked again after the commit) without a query.
        let mut drained: HashSet<String> = HashSet::new();
        let mut apply_claim = |claim: &mut dyn Command, tx: &mut dyn crate::storage::Tx| {
            let Some((env_id, _)) = claim.waiting() else { return Ok(true) };
            if drained.contains(env_id) {
                return Ok(true);
            }
            let env_id = env_id.to_string();
            let applied = apply(tx, claim, now, config, effects, careful)?;
            if claim.drained() {
                drained.insert(env_id);
            }
            Ok(applied)
        };
        for command in batch.iter_mut() {
            if command.waiting().is_some_and(|(env_id, _)| wakes(env_id))
                && !apply_claim(command.as_mut(), tx.as_mut())?
            {
                return Ok(false);
            }
        }
        for env_id in &woken {
            for mut claim in parked.take(env_id) {
                let applied = apply_claim(claim.as_mut(), tx.as_mut());
                batch.push(claim);
                if !applied? {
                    return Ok(false);
                }
            }
        }
    }
    finish_batch(tx, effects)
}

/// Announces the batch's effects to other processes and commits.
fn finish_batch(
    mut tx: Box<dyn crate::storage::Tx + '_>,
    effects: &[Effect],
) -> std::result::Result<bool, StorageError> {
    if !effects.is_empty() {
        tx.publish(effects)?;
    }
    tx.commit()?;
    Ok(true)
}

/// Applies one command of a batch; `Ok(false)` when it failed without `careful` (the batch
/// is then applied again, carefully).
fn apply(
    tx: &mut dyn crate::storage::Tx,
    command: &mut dyn Command,
    now: Millis,
    config: &Config,
    effects: &mut Vec<Effect>,
    careful: bool,
) -> std::result::Result<bool, StorageError> {
    if !careful {
        return match command.apply(&mut Txn { tx, now, config, effects, last_snapshot: None }) {
            Applied::Ok => Ok(true),
            Applied::Conflict => Err(conflict()),
            _ => Ok(false),
        };
    }
    tx.savepoint()?;
    let mark = effects.len();
    let mut applied = command.apply(&mut Txn { tx, now, config, effects, last_snapshot: None });
    if applied == Applied::LostRace {
        // A lost unique race (two triggers with one idempotency key from two
        // replicas) succeeds on a second try, which finds the winner's row.
        tx.rollback_to_savepoint()?;
        effects.truncate(mark);
        tx.savepoint()?;
        applied = command.apply(&mut Txn { tx, now, config, effects, last_snapshot: None });
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
    Ok(true)
}

fn conflict() -> StorageError {
    StorageError::new(ErrorKind::Conflict, "a command lost a race with another database client")
}
