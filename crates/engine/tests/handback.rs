//! Workers that leave: a run handed back on shutdown, and runs of a worker known to be gone.

#[macro_use]
mod common;

use common::*;
use std::future::Future;

use serde_json::json;
use trigger_engine::*;

on_every_backend! {
async fn a_handed_back_run_is_queued_again_in_its_place_without_failing() {
    let h = harness(vec![on_queue("t", "one")], vec![QueueManifest { name: "one".into(), concurrency_limit: Some(1) }]).await;
    let first = h.trigger("t").await;
    h.clock.advance(1000);
    let second = h.trigger("t").await;
    let snapshot = h.claim_and_start(&first.id).await;

    let back = h.engine.release_run(&h.env.id, &first.id, &snapshot).await.unwrap();
    assert_eq!(back.status, RunStatus::Queued);
    assert!(back.error.is_none(), "handing back is not a failure");
    assert_eq!(h.running().await, 0);
    let stale = h.engine.release_run(&h.env.id, &first.id, &snapshot).await;
    assert!(matches!(stale, Err(Error::StaleSnapshot { .. })));

    let next = h.dequeue(1).await;
    assert_eq!(next[0].run.id, first.id, "it keeps its place ahead of newer runs");
    let s = h.start(&next[0]).await;
    h.succeed(&first.id, &s, json!(1)).await;
    assert_eq!(h.dequeue(1).await[0].run.id, second.id);
}

async fn runs_of_a_vanished_worker_are_canceled_at_once() {
    let h = harness(vec![task("parent"), task("child")], vec![]).await;
    let parent = h.trigger("parent").await;
    h.claim_and_start(&parent.id).await;
    let child = h
        .trigger_with(
            "child",
            TriggerOptions { parent_run_id: Some(parent.id.clone()), resume_parent_on_completion: true, ..Default::default() },
        )
        .await
        .run;
    let canceled = h.engine.cancel_abandoned(&h.env.id, &parent.id, "the dev worker disconnected").await.unwrap();
    assert_eq!(canceled.status, RunStatus::Canceled, "no PENDING_CANCEL: nobody is left to confirm");
    assert_eq!(canceled.error.unwrap().message(), "the dev worker disconnected");
    assert_eq!(h.run(&child.id).await.status, RunStatus::Canceled);
    assert_eq!(h.running().await, 0);
    assert_eq!(h.engine.run_environment(&parent.id).await.unwrap(), Some(h.env.id.clone()));
    assert_eq!(h.engine.run_environment("run_missing").await.unwrap(), None);
}
}

#[tokio::test]
async fn a_claim_whose_caller_went_away_is_handed_back() {
    let h = harness(vec![task("t")], vec![]).await;
    let run = h.trigger("t").await;
    // Poll a claim once (its command is submitted) and drop it. When the writer answered
    // before the drop, the claim was received: hand it back and try again until one is
    // dropped unread.
    let mut abandoned = false;
    for _ in 0..200 {
        let mut claim = Box::pin(h.engine.dequeue(&h.env.id, DequeueRequest::new("w", 1)));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(claim.as_mut().poll(cx))).await;
        drop(claim);
        match first {
            std::task::Poll::Pending => {
                abandoned = true;
                break;
            }
            std::task::Poll::Ready(claimed) => {
                for d in claimed.unwrap() {
                    h.engine.release_run(&h.env.id, &d.run.id, &d.snapshot.id).await.unwrap();
                }
            }
        }
    }
    assert!(abandoned, "no claim was ever dropped before its answer");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = h.run(&run.id).await.status;
        if status == RunStatus::Queued && h.running().await == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned claim was never handed back ({status})");
        tokio::task::yield_now().await;
    }
    let claimed = h.dequeue(1).await;
    assert_eq!(claimed.len(), 1, "the run can be claimed again at once, not after its lease");
    assert_eq!(claimed[0].run.id, run.id);
}
