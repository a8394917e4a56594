//! The workloads, one function each.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use trigger_engine::*;

use crate::setup::{cpu_seconds, request, rss_bytes, Bench};
use crate::stats::Percentiles;
use crate::worker::{lock, Behavior, Worker};
use crate::{Error, Options, Report};

fn noop_task(slug: &str) -> TaskManifest {
    TaskManifest::new(slug)
}

fn behaviors(pairs: &[(&str, Behavior)]) -> HashMap<String, Behavior> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until `count` runs completed, or fails after `limit`.
async fn wait_completed(worker: &Worker, count: usize, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    loop {
        let notified = worker.observed.done.notified();
        if worker.observed.completed_count() >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "only {} of {count} runs completed within {limit:?}",
                worker.observed.completed_count()
            )));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64()).round()
}

/// W1: N no-op runs triggered in batches of 1,000, then drained by one worker.
pub async fn burn_down(options: &Options) -> Result<Report, Error> {
    let n = options.count(100_000);
    let bench = Bench::start("w1", options, vec![], vec![noop_task("noop")]).await?;
    let started = Instant::now();
    let mut remaining = n;
    let mut index = 0;
    while remaining > 0 {
        let size = remaining.min(1000);
        let (batch, _) = bench
            .engine
            .create_batch(&bench.env.id, CreateBatch { expected_count: size as u32, ..Default::default() })
            .await?;
        let items = (0..size)
            .map(|i| BatchItem {
                index: i as u32,
                request: request("noop", index + i, TriggerOptions::default()),
            })
            .collect();
        bench.engine.add_batch_items(&bench.env.id, &batch.id, items).await?;
        remaining -= size;
        index += size;
    }
    let triggered = started.elapsed();
    let drain_start = Instant::now();
    let worker = Worker::spawn(
        bench.engine.clone(),
        bench.env.id.clone(),
        behaviors(&[("noop", Behavior::NoOp)]),
        500,
    );
    wait_completed(&worker, n, Duration::from_secs(600)).await?;
    let drained = drain_start.elapsed();
    let total = started.elapsed();
    worker.stop().await;
    let mut report = Report::new("w1-burn-down", "sqlite", bench.durability.clone());
    report
        .metric("runs", n)
        .metric("trigger_runs_per_s", per_second(n, triggered))
        .metric("drain_runs_per_s", per_second(n, drained))
        .metric("total_runs_per_s", per_second(n, total))
        .metric("total_s", total.as_secs_f64());
    bench.finish().await;
    Ok(report)
}

/// W3: runs triggered one at a time on an idle system.
pub async fn latency(options: &Options) -> Result<Report, Error> {
    let n = options.count(1_000);
    let bench = Bench::start("w3", options, vec![], vec![noop_task("noop")]).await?;
    let worker =
        Worker::spawn(bench.engine.clone(), bench.env.id.clone(), behaviors(&[("noop", Behavior::NoOp)]), 10);
    let mut changes = bench.engine.subscribe();
    let (mut to_start, mut to_done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t0 = Instant::now();
        let run =
            bench.engine.trigger(&bench.env.id, request("noop", i, TriggerOptions::default())).await?.run;
        // Completion as a client sees it: the change feed reports the run finished.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline.into(), changes.recv()).await {
                Ok(Ok(c)) if c.run_id == run.id && c.status == RunStatus::Completed => break,
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                _ => return Err(Error::Failed(format!("run {} did not complete", run.id))),
            }
        }
        let done = t0.elapsed();
        let started = lock(&worker.observed.started).get(&run.id).copied();
        if let Some(s) = started {
            to_start.push(s.duration_since(t0).as_secs_f64() * 1000.0);
        }
        to_done.push(done.as_secs_f64() * 1000.0);
    }
    worker.stop().await;
    let mut report = Report::new("w3-latency", "sqlite", bench.durability.clone());
    report.metric("runs", n);
    if let Some(p) = Percentiles::of(&mut to_start) {
        report.metric("trigger_to_start", p.to_json());
    }
    if let Some(p) = Percentiles::of(&mut to_done) {
        report.metric("trigger_to_completed", p.to_json());
    }
    bench.finish().await;
    Ok(report)
}

/// W4: a parent batch-triggers 1,000 no-op children and waits for them.
pub async fn fan_out(options: &Options) -> Result<Report, Error> {
    let children = options.count(1_000).min(1000) as u32;
    let bench = Bench::start("w4", options, vec![], vec![noop_task("noop"), noop_task("parent")]).await?;
    let worker = Worker::spawn(
        bench.engine.clone(),
        bench.env.id.clone(),
        behaviors(&[("noop", Behavior::NoOp), ("parent", Behavior::FanOut(children))]),
        500,
    );
    let t0 = Instant::now();
    let parent =
        bench.engine.trigger(&bench.env.id, request("parent", 0, TriggerOptions::default())).await?.run;
    wait_completed(&worker, children as usize + 1, Duration::from_secs(120)).await?;
    let elapsed = lock(&worker.observed.completed).get(&parent.id).map(|t| t.duration_since(t0));
    worker.stop().await;
    let status = bench.engine.get_run(&bench.env.id, &parent.id).await?.run.status;
    if status != RunStatus::Completed {
        return Err(Error::Failed(format!("parent ended {status}")));
    }
    let mut report = Report::new("w4-fan-out", "sqlite", bench.durability.clone());
    report
        .metric("children", children)
        .metric("parent_trigger_to_done_s", elapsed.unwrap_or_default().as_secs_f64());
    bench.finish().await;
    Ok(report)
}

/// W5: many runs each waiting on a token; footprint while they wait, then the drain.
pub async fn waiting(options: &Options) -> Result<Report, Error> {
    let n = options.count(10_000);
    let bench = Bench::start("w5", options, vec![], vec![noop_task("waiter")]).await?;
    let worker = Worker::spawn(
        bench.engine.clone(),
        bench.env.id.clone(),
        behaviors(&[("waiter", Behavior::WaitOnToken)]),
        500,
    );
    for i in 0..n {
        bench.engine.trigger(&bench.env.id, request("waiter", i, TriggerOptions::default())).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while (worker.observed.waiting.load(Ordering::SeqCst) as usize) < n {
        if Instant::now() > deadline {
            return Err(Error::Failed("runs did not all reach their wait".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = rss_bytes().unwrap_or(0);
    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = match (cpu_before, cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) / 2.0,
        _ => f64::NAN,
    };
    let db_bytes = bench.database_bytes();
    let tokens: Vec<String> = lock(&worker.observed.tokens).clone();
    let t0 = Instant::now();
    let completions: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (engine, env, t) = (bench.engine.clone(), bench.env.id.clone(), t.clone());
            tokio::spawn(async move {
                engine.complete_token(Some(&env), &t, Packet::json(&serde_json::json!(true))).await
            })
        })
        .collect();
    for c in completions {
        c.await.map_err(|e| Error::Failed(e.to_string()))??;
    }
    wait_completed(&worker, n, Duration::from_secs(600)).await?;
    let drained = t0.elapsed();
    worker.stop().await;
    let mut report = Report::new("w5-waiting", "sqlite", bench.durability.clone());
    report
        .metric("waiting_runs", n)
        .metric("rss_mb_engine_and_worker", (rss as f64 / 1_048_576.0).round())
        .metric("database_mb", (db_bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0)
        .metric("idle_cpu_cores", (idle_cpu * 1000.0).round() / 1000.0)
        .metric("drain_runs_per_s", per_second(n, drained));
    bench.finish().await;
    Ok(report)
}

/// W6: many runs delayed to the same instant; how late do they start?
pub async fn delayed_herd(options: &Options) -> Result<Report, Error> {
    let n = options.count(10_000);
    let bench = Bench::start("w6", options, vec![], vec![noop_task("noop")]).await?;
    let lead = Duration::from_millis(2_000 + (n as u64 / 10));
    let at_ms = bench.engine.now() + lead.as_millis() as i64;
    let at = Instant::now() + lead;
    let triggers: Vec<_> = (0..n)
        .map(|i| {
            let (engine, env) = (bench.engine.clone(), bench.env.id.clone());
            tokio::spawn(async move {
                engine
                    .trigger(
                        &env,
                        request("noop", i, TriggerOptions { delay_until: Some(at_ms), ..Default::default() }),
                    )
                    .await
            })
        })
        .collect();
    for t in triggers {
        t.await.map_err(|e| Error::Failed(e.to_string()))??;
    }
    if Instant::now() > at {
        return Err(Error::Failed("triggering took longer than the delay".into()));
    }
    let worker = Worker::spawn(
        bench.engine.clone(),
        bench.env.id.clone(),
        behaviors(&[("noop", Behavior::NoOp)]),
        500,
    );
    wait_completed(&worker, n, Duration::from_secs(600)).await?;
    let observed = worker.observed.clone();
    worker.stop().await;
    let mut lateness: Vec<f64> = lock(&observed.started)
        .values()
        .map(|s| s.saturating_duration_since(at).as_secs_f64() * 1000.0)
        .collect();
    let mut report = Report::new("w6-delayed-herd", "sqlite", bench.durability.clone());
    report.metric("runs", n);
    if let Some(p) = Percentiles::of(&mut lateness) {
        report.metric("start_lateness", p.to_json());
    }
    bench.finish().await;
    Ok(report)
}

/// W7: a queue with limit 10 and 100 concurrency keys; one key floods while the others
/// trickle. Measures the others' wait and the highest concurrency seen.
pub async fn fairness(options: &Options) -> Result<Report, Error> {
    let flood = options.count(10_000);
    let others = 99usize;
    let queue = QueueManifest { name: "fair".into(), concurrency_limit: Some(10) };
    let task = TaskManifest { queue_name: Some("fair".into()), ..noop_task("work") };
    let bench = Bench::start("w7", options, vec![queue], vec![task]).await?;
    let worker = Worker::spawn(
        bench.engine.clone(),
        bench.env.id.clone(),
        behaviors(&[("work", Behavior::Sleep(Duration::from_millis(1)))]),
        1000,
    );
    let keyed = |key: String| TriggerOptions { concurrency_key: Some(key), ..Default::default() };
    for i in 0..flood {
        bench.engine.trigger(&bench.env.id, request("work", i, keyed("hot".into()))).await?;
    }
    let mut trickle = Vec::new();
    for round in 0..5 {
        for k in 0..others {
            let t0 = Instant::now();
            let run = bench
                .engine
                .trigger(&bench.env.id, request("work", round * others + k, keyed(format!("k{k}"))))
                .await?
                .run;
            trickle.push((run.id, t0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_completed(&worker, flood + trickle.len(), Duration::from_secs(600)).await?;
    let observed = worker.observed.clone();
    worker.stop().await;
    let started = lock(&observed.started).clone();
    let mut waits: Vec<f64> = trickle
        .iter()
        .filter_map(|(id, t0)| started.get(id).map(|s| s.duration_since(*t0).as_secs_f64() * 1000.0))
        .collect();
    let max_concurrency = observed.max_executing.load(Ordering::SeqCst);
    let mut report = Report::new("w7-fairness", "sqlite", bench.durability.clone());
    report.metric("flood_runs", flood).metric("trickle_runs", trickle.len());
    if let Some(p) = Percentiles::of(&mut waits) {
        report.metric("trickle_wait", p.to_json());
    }
    // The queue allows 10 per key; the hot key alone may use 10 and each other key 1 at a
    // time, so this is the highest the worker ever ran at once.
    report.metric("max_concurrent_runs", max_concurrency);
    bench.finish().await;
    Ok(report)
}
