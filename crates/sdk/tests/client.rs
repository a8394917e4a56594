//! Backend-side calls through the configured default backend: `tasks::trigger`,
//! `tasks::batch_trigger`, idempotent triggers, and `runs::*`. One test, because the
//! default backend is process-wide.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trigger_engine::{Page, RunFilter, RunStatus};
use trigger_sdk::hooks::WaitArgs;
use trigger_sdk::wait::WaitInfo;
use trigger_sdk::{runs, task, tasks, wait, BatchTriggerItem, IntoTask, Task, TaskError, TriggerOptions};

use common::Harness;

type Echo = Task<Value, Value>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_and_tasks_from_backend_code() {
    let waits = Arc::new(AtomicU32::new(0));
    let resumes = Arc::new(AtomicU32::new(0));
    let (w, r) = (waits.clone(), resumes.clone());
    let echo = task::<Value, Value>("echo")
        .on_wait(move |WaitArgs { wait, .. }: WaitArgs<Value>| {
            let w = w.clone();
            async move {
                assert!(matches!(wait, WaitInfo::Duration { .. }));
                w.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_resume(move |_: WaitArgs<Value>| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        })
        .run(|payload, _| async move {
            wait::for_duration(Duration::from_millis(50)).await?;
            Ok::<_, TaskError>(payload)
        });
    let h = Harness::start(vec![echo.into_task()], common::options()).await;
    trigger_sdk::configure(h.backend.clone());

    // Trigger, poll, retrieve.
    let handle = tasks::trigger::<Echo>("echo", json!({ "n": 1 }), TriggerOptions::default()).await.unwrap();
    let done = runs::poll(&handle.id, Duration::from_millis(200)).await.unwrap();
    assert_eq!(done.run.status, RunStatus::Completed);
    assert_eq!(common::output(&done), json!({ "n": 1 }));
    assert_eq!(runs::retrieve(&handle.id).await.unwrap().run.id, handle.id);
    assert_eq!((waits.load(Ordering::SeqCst), resumes.load(Ordering::SeqCst)), (1, 1), "onWait and onResume");

    // An idempotency key from backend code is global: the same key returns the same run.
    let opts = TriggerOptions::default().idempotency_key("order-42");
    let first = tasks::trigger::<Echo>("echo", json!({ "n": 2 }), opts.clone()).await.unwrap();
    let again = tasks::trigger::<Echo>("echo", json!({ "n": 3 }), opts).await.unwrap();
    assert_eq!(first.id, again.id);
    assert!(again.is_cached && !first.is_cached);

    // Batch.
    let batch =
        tasks::batch_trigger::<Echo>("echo", (0..3).map(|n| BatchTriggerItem::from(json!({ "n": n }))))
            .await
            .unwrap();
    assert_eq!(batch.run_count, 3);
    for (n, id) in batch.runs.iter().enumerate() {
        assert_eq!(
            common::output(&runs::poll(id, Duration::from_millis(200)).await.unwrap()),
            json!({ "n": n })
        );
    }

    // Delayed: reschedule, then cancel.
    let delayed =
        tasks::trigger::<Echo>("echo", json!({}), TriggerOptions::default().delay(Duration::from_secs(3600)))
            .await
            .unwrap();
    assert_eq!(runs::retrieve(&delayed.id).await.unwrap().run.status, RunStatus::Delayed);
    let moved = runs::reschedule(&delayed.id, Duration::from_secs(7200)).await.unwrap();
    assert!(moved.delay_until.unwrap() > h.backend.engine().now() + 3_600_000);
    assert_eq!(runs::cancel(&delayed.id).await.unwrap().status, RunStatus::Canceled);

    // Replay and list.
    let replayed = runs::replay(&handle.id).await.unwrap();
    let replay = runs::poll(&replayed, Duration::from_millis(200)).await.unwrap();
    assert_eq!(common::output(&replay), json!({ "n": 1 }));
    let listed = runs::list(
        RunFilter { tasks: vec!["echo".into()], ..Default::default() },
        Page { size: 100, ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 7, "1 + 1 (the idempotent pair) + 3 (batch) + 1 (delayed) + 1 (replay)");
    h.shutdown().await;
}
