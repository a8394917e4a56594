//! Global hooks (`tasks::on_*`, `tasks::cleanup`, `tasks::middleware`) run for every task,
//! in v4's order: each kind's global hooks before the task's own, except `catch_error`,
//! where the task is asked first; everything from the start hooks to `cleanup` runs inside
//! the middleware. Its own test binary, since global hooks are per process.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use trigger_engine::{Packet, RunStatus, TriggerOptions as EngineOptions, TriggerRequest};
use trigger_sdk::backend::Backend;
use trigger_sdk::hooks::{
    CancelArgs, CatchErrorArgs, CompleteArgs, FailureArgs, MiddlewareArgs, StartArgs, SuccessArgs, WaitArgs,
};
use trigger_sdk::wait::WaitInfo;
use trigger_sdk::{task, tasks, wait, CatchError, IntoTask, Task, TaskError};

use common::Harness;

/// (run id, event), in order.
#[derive(Default)]
struct Log(Mutex<Vec<(String, String)>>);

impl Log {
    fn push(&self, run: &str, event: impl Into<String>) {
        self.0.lock().unwrap().push((run.to_string(), event.into()));
    }

    fn of(&self, run: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|(r, _)| r == run).map(|(_, e)| e.clone()).collect()
    }
}

fn register_globals(log: &Arc<Log>) {
    let l = log.clone();
    tasks::middleware("g", move |MiddlewareArgs { ctx, next, .. }| {
        let l = l.clone();
        async move {
            l.push(&ctx.run.id, "g:middleware:before");
            let result = next.run().await;
            l.push(&ctx.run.id, "g:middleware:after");
            result
        }
    });
    macro_rules! global {
        ($register:path, $args:ty, $event:literal) => {{
            let l = log.clone();
            $register("g", move |args: $args| {
                let l = l.clone();
                async move { l.push(&args.ctx.run.id, $event) }
            });
        }};
    }
    global!(tasks::on_start_attempt, StartArgs<Value>, "g:startAttempt");
    global!(tasks::on_start, StartArgs<Value>, "g:start");
    global!(tasks::on_success, SuccessArgs<Value, Value>, "g:success");
    global!(tasks::on_failure, FailureArgs<Value>, "g:failure");
    global!(tasks::on_complete, CompleteArgs<Value, Value>, "g:complete");
    global!(tasks::cleanup, StartArgs<Value>, "g:cleanup");
    global!(tasks::on_cancel, CancelArgs<Value>, "g:cancel");
    let l = log.clone();
    tasks::on_wait("g", move |WaitArgs { ctx, wait, payload }: WaitArgs<Value>| {
        let l = l.clone();
        async move {
            // Global hooks see the payload as JSON and what the run waits on.
            assert!(matches!(wait, WaitInfo::Duration { .. }), "{wait:?}");
            l.push(&ctx.run.id, format!("g:wait:{}", payload["label"].as_str().unwrap_or("?")));
        }
    });
    global!(tasks::on_resume, WaitArgs<Value>, "g:resume");
    let l = log.clone();
    tasks::catch_error("g", move |args: CatchErrorArgs<Value>| {
        let l = l.clone();
        async move {
            l.push(&args.ctx.run.id, "g:catchError");
            CatchError::Default
        }
    });
}

fn hooked(log: &Arc<Log>) -> Task<Value, Value> {
    macro_rules! own {
        ($builder:expr, $method:ident, $args:ty, $event:literal) => {{
            let l = log.clone();
            $builder.$method(move |args: $args| {
                let l = l.clone();
                async move { l.push(&args.ctx.run.id, $event) }
            })
        }};
    }
    let l = log.clone();
    let t = task::<Value, Value>("hooked").middleware(move |MiddlewareArgs { ctx, next, .. }| {
        let l = l.clone();
        async move {
            l.push(&ctx.run.id, "t:middleware:before");
            let result = next.run().await;
            l.push(&ctx.run.id, "t:middleware:after");
            result
        }
    });
    let t = own!(t, on_start_attempt, StartArgs<Value>, "t:startAttempt");
    let t = own!(t, on_start, StartArgs<Value>, "t:start");
    let t = own!(t, on_success, SuccessArgs<Value, Value>, "t:success");
    let t = own!(t, on_failure, FailureArgs<Value>, "t:failure");
    let t = own!(t, on_complete, CompleteArgs<Value, Value>, "t:complete");
    let t = own!(t, cleanup, StartArgs<Value>, "t:cleanup");
    let t = own!(t, on_cancel, CancelArgs<Value>, "t:cancel");
    let t = own!(t, on_wait, WaitArgs<Value>, "t:wait");
    let t = own!(t, on_resume, WaitArgs<Value>, "t:resume");
    let l = log.clone();
    let t = t.catch_error(move |args: CatchErrorArgs<Value>| {
        let l = l.clone();
        async move {
            l.push(&args.ctx.run.id, "t:catchError");
            CatchError::Default
        }
    });
    let l = log.clone();
    t.run(move |payload, ctx| {
        let l = l.clone();
        async move {
            l.push(&ctx.run.id, "run");
            match payload["mode"].as_str() {
                Some("fail") => Err(TaskError::new("failed on purpose")),
                Some("cancel") => {
                    ctx.signal.cancelled().await;
                    Ok(json!("unreachable"))
                }
                _ => {
                    wait::for_duration(Duration::from_millis(20)).await?;
                    Ok(json!("done"))
                }
            }
        }
    })
}

async fn trigger(h: &Harness, mode: &str) -> String {
    let req = TriggerRequest {
        task: "hooked".into(),
        payload: Packet::json(&json!({ "mode": mode, "label": mode })),
        options: EngineOptions::default(),
    };
    h.backend.trigger(req).await.unwrap().run.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_hooks_run_before_task_hooks_for_every_kind() {
    let log = Arc::new(Log::default());
    register_globals(&log);
    let h = Harness::start(vec![hooked(&log).into_task()], common::options()).await;

    let ok = trigger(&h, "ok").await;
    assert_eq!(h.wait_final(&ok, Duration::from_secs(20)).await.run.status, RunStatus::Completed);
    assert_eq!(
        log.of(&ok),
        [
            "g:middleware:before",
            "t:middleware:before",
            "g:startAttempt",
            "t:startAttempt",
            "g:start",
            "t:start",
            "run",
            "g:wait:ok",
            "t:wait",
            "g:resume",
            "t:resume",
            "g:success",
            "t:success",
            "g:complete",
            "t:complete",
            "g:cleanup",
            "t:cleanup",
            "t:middleware:after",
            "g:middleware:after",
        ]
    );

    let failed = trigger(&h, "fail").await;
    assert_eq!(h.wait_final(&failed, Duration::from_secs(20)).await.run.status, RunStatus::Failed);
    let events = log.of(&failed);
    let after_run = &events[events.iter().position(|e| e == "run").unwrap() + 1..];
    assert_eq!(
        after_run,
        [
            "t:catchError",
            "g:catchError",
            "g:failure",
            "t:failure",
            "g:complete",
            "t:complete",
            "g:cleanup",
            "t:cleanup",
            "t:middleware:after",
            "g:middleware:after",
        ]
    );

    let canceled = trigger(&h, "cancel").await;
    h.wait_until(&canceled, Duration::from_secs(20), |d| log.of(&d.run.id).contains(&"run".to_string()))
        .await;
    h.backend.cancel(&canceled).await.unwrap();
    assert_eq!(h.wait_final(&canceled, Duration::from_secs(20)).await.run.status, RunStatus::Canceled);
    let events = log.of(&canceled);
    assert_eq!(events[events.len() - 2..], ["g:cancel", "t:cancel"], "{events:?}");
    assert!(!events.iter().any(|e| e.ends_with("cleanup") || e.ends_with("failure")), "{events:?}");
    h.shutdown().await;
}
