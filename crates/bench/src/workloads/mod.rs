//! The workloads, one function each. Each runs against a fresh [`Target`] in either mode.

mod footprint;
mod sustained;

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use trigger_engine::*;
use trigger_sdk::backend::SharedBackend;

pub use footprint::footprint;
pub use sustained::sustained;

use crate::stats::Percentiles;
use crate::target::{request, Target};
use crate::worker::{now_us, Behavior, Micros};
use crate::{Error, Mode, Options, Report};

fn noop_task(slug: &str) -> TaskManifest {
    TaskManifest::new(slug)
}

fn per_second(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64()).round()
}

fn ms(us: Micros) -> f64 {
    us as f64 / 1000.0
}

/// Calls in flight at once when a workload triggers many runs (or completes many tokens) one
/// by one: embedded they are cheap futures the engine groups into commits; over HTTP each is
/// a request on its own connection.
fn in_flight(mode: Mode) -> usize {
    match mode {
        Mode::Embedded => 1024,
        Mode::Http => 64,
    }
}

/// Triggers every request, a few at a time; returns the run ids in request order.
async fn trigger_all(
    mode: Mode,
    client: &SharedBackend,
    requests: Vec<TriggerRequest>,
) -> Result<Vec<String>, Error> {
    stream::iter(requests)
        .map(|r| {
            let client = client.clone();
            async move { Ok::<_, Error>(client.trigger(r).await?.run.id) }
        })
        .buffered(in_flight(mode))
        .try_collect()
        .await
}

/// Triggers `n` runs in batches of 1,000 (the batch endpoint over HTTP).
async fn trigger_batches(
    client: &SharedBackend,
    task: &str,
    n: usize,
    options: impl Fn(usize) -> TriggerOptions,
) -> Result<(), Error> {
    let mut index = 0;
    while index < n {
        let size = (n - index).min(1000);
        let (batch, _) =
            client.create_batch(CreateBatch { expected_count: size as u32, ..Default::default() }).await?;
        let items = (0..size)
            .map(|i| BatchItem { index: i as u32, request: request(task, index + i, options(index + i)) })
            .collect();
        client.add_batch_items(&batch.id, items).await?;
        index += size;
    }
    Ok(())
}

/// W1: N no-op runs triggered in batches of 1,000, then drained by one worker.
pub async fn burn_down(mode: Mode, options: &Options) -> Result<Report, Error> {
    let n = options.count(100_000);
    let target = Target::start("w1", mode, options, vec![], vec![noop_task("noop")]).await?;
    let started = Instant::now();
    trigger_batches(&target.client, "noop", n, |_| TriggerOptions::default()).await?;
    let triggered = started.elapsed();
    let drain_start = Instant::now();
    let worker = target.spawn_worker(&[("noop", Behavior::NoOp)], 500).await?;
    worker.observed().wait_completed(n, Duration::from_secs(900)).await?;
    let drained = drain_start.elapsed();
    let total = started.elapsed();
    worker.stop().await;
    let mut report = target.report("w1-burn-down");
    report
        .metric("runs", n)
        .metric("trigger_runs_per_s", per_second(n, triggered))
        .metric("drain_runs_per_s", per_second(n, drained))
        .metric("total_runs_per_s", per_second(n, total))
        .metric("total_s", total.as_secs_f64());
    target.finish().await?;
    Ok(report)
}

/// W3: runs triggered one at a time on an idle system.
pub async fn latency(mode: Mode, options: &Options) -> Result<Report, Error> {
    const WARM_UP: usize = 3;
    let n = options.count(1_000);
    let target = Target::start("w3", mode, options, vec![], vec![noop_task("noop")]).await?;
    let worker = target.spawn_worker(&[("noop", Behavior::NoOp)], 10).await?;
    let observed = worker.observed();
    let mut changes =
        target.client.subscribe().ok_or_else(|| Error::Failed("the backend pushes no run changes".into()))?;
    let mut runs = Vec::with_capacity(n);
    let (mut to_ack, mut to_done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // The first runs open connections (and, over HTTP, the change feed); they are not counted.
    for i in 0..n + WARM_UP {
        let t0 = now_us();
        let run = target.client.trigger(request("noop", i, TriggerOptions::default())).await?.run;
        let ack = now_us() - t0;
        // Completion as a client sees it: the change feed reports the run finished.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline.into(), changes.recv()).await {
                Ok(Ok(c)) if c.run_id == run.id && c.execution_status == ExecutionStatus::Finished => break,
                Ok(Ok(c)) if c.run_id.is_empty() => {
                    if target.client.get_run(&run.id).await?.run.status.is_final() {
                        break;
                    }
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                _ => return Err(Error::Failed(format!("run {} did not complete", run.id))),
            }
        }
        let done = now_us() - t0;
        if i >= WARM_UP {
            runs.push((run.id, t0));
            to_ack.push(ms(ack));
            to_done.push(ms(done));
        }
    }
    observed.wait_completed(n + WARM_UP, Duration::from_secs(30)).await?;
    let mut to_start: Vec<f64> =
        runs.iter().filter_map(|(id, t0)| observed.started_at(id).map(|s| ms(s - t0))).collect();
    worker.stop().await;
    let mut report = target.report("w3-latency");
    report.metric("runs", n);
    if let Some(p) = Percentiles::of(&mut to_ack) {
        report.metric("trigger_to_ack", p.to_json());
    }
    if let Some(p) = Percentiles::of(&mut to_start) {
        report.metric("trigger_to_start", p.to_json());
    }
    if let Some(p) = Percentiles::of(&mut to_done) {
        report.metric("trigger_to_completed", p.to_json());
    }
    target.finish().await?;
    Ok(report)
}

/// W4: a parent batch-triggers 1,000 no-op children and waits for them.
pub async fn fan_out(mode: Mode, options: &Options) -> Result<Report, Error> {
    let children = options.count(1_000).min(1000) as u32;
    let target =
        Target::start("w4", mode, options, vec![], vec![noop_task("noop"), noop_task("parent")]).await?;
    let worker =
        target.spawn_worker(&[("noop", Behavior::NoOp), ("parent", Behavior::FanOut(children))], 500).await?;
    let observed = worker.observed();
    let t0 = now_us();
    let parent = target.client.trigger(request("parent", 0, TriggerOptions::default())).await?.run;
    observed.wait_completed(children as usize + 1, Duration::from_secs(120)).await?;
    let elapsed = observed.completed_at(&parent.id).map(|t| t - t0).unwrap_or_default();
    worker.stop().await;
    let status = target.client.get_run(&parent.id).await?.run.status;
    if status != RunStatus::Completed {
        return Err(Error::Failed(format!("parent ended {status}")));
    }
    let mut report = target.report("w4-fan-out");
    report.metric("children", children).metric("parent_trigger_to_done_s", ms(elapsed) / 1000.0);
    target.finish().await?;
    Ok(report)
}

/// W5: many runs each waiting on a token; footprint while they wait, then the drain.
pub async fn waiting(mode: Mode, options: &Options) -> Result<Report, Error> {
    let n = options.count(10_000);
    let target = Target::start("w5", mode, options, vec![], vec![noop_task("waiter")]).await?;
    let worker = target.spawn_worker(&[("waiter", Behavior::WaitOnToken)], 500).await?;
    let observed = worker.observed();
    trigger_all(
        mode,
        &target.client,
        (0..n).map(|i| request("waiter", i, TriggerOptions::default())).collect(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while observed.waiting_now() < n as i64 {
        if Instant::now() > deadline {
            return Err(Error::Failed("runs did not all reach their wait".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (server_rss, worker_rss) = target.rss(&worker);
    let cpu_before = target.cpu_seconds(&worker);
    tokio::time::sleep(options.settle).await;
    let idle_cpu = (target.cpu_seconds(&worker) - cpu_before) / options.settle.as_secs_f64();
    let db_bytes = target.database_bytes().await?;
    let tokens = observed.tokens();
    let t0 = Instant::now();
    stream::iter(tokens)
        .map(|t: String| {
            let client = target.client.clone();
            async move { client.complete_token(&t, Packet::json(&serde_json::json!(true))).await }
        })
        .buffer_unordered(in_flight(mode))
        .try_collect::<Vec<_>>()
        .await?;
    observed.wait_completed(n, Duration::from_secs(600)).await?;
    let drained = t0.elapsed();
    worker.stop().await;
    let mb = |b: u64| (b as f64 / 1_048_576.0 * 10.0).round() / 10.0;
    let mut report = target.report("w5-waiting");
    report
        .metric("waiting_runs", n)
        .metric("rss_mb_server", mb(server_rss))
        .metric("rss_mb_worker", worker_rss.map(mb))
        .metric("rss_mb_total", mb(server_rss + worker_rss.unwrap_or(0)))
        .metric("database_mb", mb(db_bytes))
        .metric("idle_cpu_cores", (idle_cpu * 1000.0).round() / 1000.0)
        .metric("drain_runs_per_s", per_second(n, drained));
    target.finish().await?;
    Ok(report)
}

/// W6: many runs delayed to the same instant; how late do they start?
pub async fn delayed_herd(mode: Mode, options: &Options) -> Result<Report, Error> {
    let n = options.count(10_000);
    let target = Target::start("w6", mode, options, vec![], vec![noop_task("noop")]).await?;
    let worker = target.spawn_worker(&[("noop", Behavior::NoOp)], 500).await?;
    let observed = worker.observed();
    // Enough lead for the triggers to land before the instant (PostgreSQL and HTTP trigger
    // more slowly than embedded SQLite).
    let per_run_us = if mode == Mode::Embedded && target.backend_name() == "sqlite" { 300 } else { 1000 };
    let lead_ms = 500 + (n as i64 * per_run_us) / 1000;
    let at_ms = target.now_ms() + lead_ms;
    trigger_batches(&target.client, "noop", n, |_| TriggerOptions {
        delay_until: Some(at_ms),
        ..Default::default()
    })
    .await?;
    if now_us() / 1000 > at_ms {
        return Err(Error::Failed("triggering took longer than the delay".into()));
    }
    observed.wait_completed(n, Duration::from_secs(600)).await?;
    worker.stop().await;
    let mut lateness: Vec<f64> = observed.started().values().map(|s| ms((s - at_ms * 1000).max(0))).collect();
    let mut report = target.report("w6-delayed-herd");
    report.metric("runs", n);
    if let Some(p) = Percentiles::of(&mut lateness) {
        report.metric("start_lateness", p.to_json());
    }
    target.finish().await?;
    Ok(report)
}

/// W7: a queue with limit 10 and 100 concurrency keys; one key floods while the others
/// trickle. Measures the others' wait and the highest concurrency seen.
pub async fn fairness(mode: Mode, options: &Options) -> Result<Report, Error> {
    let flood = options.count(10_000);
    let others = 99usize;
    let queue = QueueManifest { name: "fair".into(), concurrency_limit: Some(10) };
    let task = TaskManifest { queue_name: Some("fair".into()), ..noop_task("work") };
    let target = Target::start("w7", mode, options, vec![queue], vec![task]).await?;
    let worker = target.spawn_worker(&[("work", Behavior::Sleep(Duration::from_millis(1)))], 1000).await?;
    let observed = worker.observed();
    let keyed = |key: String| TriggerOptions { concurrency_key: Some(key), ..Default::default() };
    trigger_all(mode, &target.client, (0..flood).map(|i| request("work", i, keyed("hot".into()))).collect())
        .await?;
    let mut trickle = Vec::new();
    for round in 0..5 {
        for k in 0..others {
            let t0 = now_us();
            let run =
                target.client.trigger(request("work", round * others + k, keyed(format!("k{k}")))).await?.run;
            trickle.push((run.id, t0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    observed.wait_completed(flood + trickle.len(), Duration::from_secs(600)).await?;
    worker.stop().await;
    let mut waits: Vec<f64> =
        trickle.iter().filter_map(|(id, t0)| observed.started_at(id).map(|s| ms(s - t0))).collect();
    let mut report = target.report("w7-fairness");
    report.metric("flood_runs", flood).metric("trickle_runs", trickle.len());
    if let Some(p) = Percentiles::of(&mut waits) {
        report.metric("trickle_wait", p.to_json());
    }
    // The queue allows 10 per key; the hot key alone may use 10 and each other key 1 at a
    // time, so this is the highest the worker ever ran at once.
    report.metric("max_concurrent_runs", observed.max_executing());
    target.finish().await?;
    Ok(report)
}
