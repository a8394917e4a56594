//! Claims that wait for work (`Engine::dequeue_wait`): parked in the writer, applied in the
//! transaction that makes work available, and ended by their caller's timeout or drop.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use trigger_engine::storage::{RemoteSink, StorageResult, Store, Tx};
use trigger_engine::*;

/// The selected backend's store, counting the transactions begun on it.
struct Counted {
    inner: TestStore,
    begun: Arc<AtomicUsize>,
}

impl Store for Counted {
    fn begin(&mut self) -> StorageResult<Box<dyn Tx + '_>> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.inner.begin()
    }

    fn listen(&mut self, sink: RemoteSink) {
        self.inner.listen(sink);
    }
}

async fn counted_harness() -> (Harness, Arc<AtomicUsize>) {
    let begun = Arc::new(AtomicUsize::new(0));
    let store = Counted { inner: store(), begun: begun.clone() };
    (harness_on(store, config(), vec![task("t")], vec![]).await, begun)
}

/// Waits until the writer has begun `n` transactions. A message sent afterwards is taken in
/// a later round than the ones those transactions belong to.
async fn until_begun(begun: &AtomicUsize, n: usize) {
    while begun.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn wait_for_one(h: &Harness, timeout: Duration) -> tokio::task::JoinHandle<Result<Vec<Dequeued>>> {
    let (engine, env) = (h.engine.clone(), h.env.id.clone());
    tokio::spawn(async move { engine.dequeue_wait(&env, DequeueRequest::new("w", 1), timeout).await })
}

on_every_backend! {
async fn a_waiting_claim_commits_in_the_transaction_of_the_trigger_that_wakes_it() {
    let (h, begun) = counted_harness().await;
    let before_claim = begun.load(Ordering::SeqCst);
    let waiting = wait_for_one(&h, Duration::from_secs(60));
    // The claim's own transaction found nothing; it is parked once that round ends.
    until_begun(&begun, before_claim + 1).await;
    let before_trigger = begun.load(Ordering::SeqCst);
    let run = h.trigger("t").await;
    let claimed = waiting.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run.id, run.id);
    assert_eq!(
        begun.load(Ordering::SeqCst) - before_trigger,
        1,
        "the trigger and the claim it woke committed in one transaction"
    );
    assert_eq!(h.run(&run.id).await.execution_status, ExecutionStatus::PendingExecuting);
}

async fn a_claim_whose_wait_timed_out_claims_nothing_afterwards() {
    let (h, begun) = counted_harness().await;
    let before_claim = begun.load(Ordering::SeqCst);
    let waiting = wait_for_one(&h, Duration::from_millis(20));
    until_begun(&begun, before_claim + 1).await;
    assert!(waiting.await.unwrap().unwrap().is_empty(), "timed out with nothing");
    let run = h.trigger("t").await;
    assert_eq!(h.run(&run.id).await.status, RunStatus::Queued, "nobody claimed it");
    assert_eq!(h.running().await, 0);
    let claimed = h.dequeue(1).await;
    assert_eq!(claimed.len(), 1, "it is there for the next claim");
    assert_eq!(claimed[0].run.id, run.id);
}

async fn a_claim_whose_caller_went_away_while_waiting_claims_nothing() {
    let (h, begun) = counted_harness().await;
    let before_claim = begun.load(Ordering::SeqCst);
    let waiting = wait_for_one(&h, Duration::from_secs(60));
    until_begun(&begun, before_claim + 1).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    let run = h.trigger("t").await;
    assert_eq!(h.run(&run.id).await.status, RunStatus::Queued, "nobody claimed it");
    assert_eq!(h.running().await, 0);
    assert_eq!(h.dequeue(1).await.len(), 1);
}

async fn claims_waiting_together_share_the_work_and_the_rest_wait_on() {
    let (h, begun) = counted_harness().await;
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..3 {
        let (engine, env, answers) = (h.engine.clone(), h.env.id.clone(), answers.clone());
        tokio::spawn(async move {
            let claimed = engine.dequeue_wait(&env, DequeueRequest::new("w", 1), Duration::from_secs(60)).await;
            let _ = answers.send(claimed.unwrap());
        });
    }
    // All three claims were applied once and found nothing: once the writer begins a
    // transaction after them, they are parked.
    let before = begun.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.engine.env_running(&h.env.id).await.unwrap();
    until_begun(&begun, before + 1).await;
    let first = h.trigger("t").await;
    let second = h.trigger("t").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let claimed = answered.recv().await.unwrap();
        assert_eq!(claimed.len(), 1, "a woken claim that found the run took it");
        ids.push(claimed[0].run.id.clone());
    }
    ids.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids, expected, "each run claimed once");
    assert!(answered.try_recv().is_err(), "the third claim waits on");
    let third = h.trigger("t").await;
    let got = answered.recv().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].run.id, third.id);
}

async fn a_claim_that_passes_work_over_for_its_own_reasons_leaves_it_to_the_next() {
    let (h, begun) = counted_harness().await;
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    // The first claim's worker has too little cpu for a small-1x run; the second has room.
    for cpu in [Some(0.25), None] {
        let (engine, env, answers) = (h.engine.clone(), h.env.id.clone(), answers.clone());
        let request = DequeueRequest { cpu, ..DequeueRequest::new("w", 10) };
        tokio::spawn(async move {
            let claimed = engine.dequeue_wait(&env, request, Duration::from_secs(60)).await.unwrap();
            let _ = answers.send((cpu, claimed));
        });
        let before = begun.load(Ordering::SeqCst);
        until_begun(&begun, before + 1).await;
    }
    h.engine.env_running(&h.env.id).await.unwrap();
    let before_trigger = begun.load(Ordering::SeqCst);
    let run = h.trigger("t").await;
    let (cpu, claimed) = answered.recv().await.unwrap();
    assert_eq!(cpu, None, "the claim with room took the run");
    assert_eq!(claimed.iter().map(|d| d.run.id.as_str()).collect::<Vec<_>>(), [run.id.as_str()]);
    assert_eq!(begun.load(Ordering::SeqCst) - before_trigger, 1, "in the trigger's transaction");
    assert!(answered.try_recv().is_err(), "the small claim waits on");
}
}
