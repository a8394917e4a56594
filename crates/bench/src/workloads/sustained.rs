//! W2: a producer offers runs at a fixed rate while a worker drains them.
//!
//! The producer is open-loop: every 5 ms it sends the triggers the schedule says are due,
//! without waiting for earlier ones, up to [`MAX_IN_FLIGHT`] unanswered at once (past that
//! it falls behind, which the achieved offered rate shows), and stops when the duration is
//! up. The backlog (runs whose
//! trigger was answered but that have not started) is sampled every 250 ms; a flat backlog
//! means the system keeps up with the offered rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use trigger_engine::TriggerOptions;

use super::{ms, noop_task, per_second};
use crate::stats::Percentiles;
use crate::target::{request, Target};
use crate::worker::{lock, now_us, Behavior, Micros};
use crate::{Error, Mode, Options, Report};

/// Most triggers awaiting their answer at once.
const MAX_IN_FLIGHT: usize = 256;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// W2 at each offered rate of [`Options::rates`].
pub async fn sustained(mode: Mode, options: &Options) -> Result<Vec<Report>, Error> {
    let mut reports = Vec::new();
    for &rate in &options.rates {
        reports.push(at_rate(mode, options, rate.max(1)).await?);
    }
    Ok(reports)
}

async fn at_rate(mode: Mode, options: &Options, rate: u32) -> Result<Report, Error> {
    let target = Target::start(&format!("w2-{rate}"), mode, options, vec![], vec![noop_task("noop")]).await?;
    let worker = target.spawn_worker(&[("noop", Behavior::NoOp)], 500).await?;
    let observed = worker.observed();
    let total = ((rate as f64) * options.sustain.as_secs_f64()).round().max(1.0) as usize;

    // (run, trigger sent, trigger answered)
    let acked: Arc<Mutex<Vec<(String, Micros, Micros)>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut triggers = JoinSet::new();
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let backlog = || lock(&acked).len() as i64 - observed.started_count() as i64;

    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = Duration::ZERO;
    let mut sent = 0usize;
    // The producer stops when its time is up, whatever it managed to send.
    while sent < total && start.elapsed() < options.sustain {
        ticker.tick().await;
        let elapsed = start.elapsed();
        let due = ((elapsed.as_secs_f64() * rate as f64) as usize).min(total);
        while sent < due {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            let (client, acked, failed) = (target.client.clone(), acked.clone(), failed.clone());
            let i = sent;
            triggers.spawn(async move {
                let t0 = now_us();
                match client.trigger(request("noop", i, TriggerOptions::default())).await {
                    Ok(t) => lock(&acked).push((t.run.id, t0, now_us())),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
            sent += 1;
        }
        while let Some(done) = triggers.try_join_next() {
            done.map_err(|e| Error::Failed(e.to_string()))?;
        }
        if elapsed >= next_sample {
            samples.push((elapsed.as_secs_f64(), backlog().max(0)));
            next_sample += SAMPLE_EVERY;
        }
    }
    let producing = start.elapsed();
    while let Some(done) = triggers.join_next().await {
        done.map_err(|e| Error::Failed(e.to_string()))?;
    }
    let backlog_at_end = backlog().max(0);

    // Let the backlog drain, but not for ever when the rate was more than the system takes.
    let accepted = lock(&acked).len();
    let drain_limit = options.sustain.max(Duration::from_secs(10));
    let drained = observed.wait_completed(accepted, drain_limit).await.is_ok();
    let drain_after = start.elapsed().saturating_sub(producing);
    worker.stop().await;

    let (started, completed) = (observed.started(), observed.completed());
    let (mut to_start, mut to_done, mut to_ack) = (Vec::new(), Vec::new(), Vec::new());
    for (run, t0, ack) in lock(&acked).iter() {
        to_ack.push(ms(ack - t0));
        if let Some(s) = started.get(run) {
            to_start.push(ms(s - t0));
        }
        if let Some(c) = completed.get(run) {
            to_done.push(ms(c - t0));
        }
    }
    // The trend of the backlog over the second half of the offered period: the first half
    // includes the warm-up (connections, caches, the first claim).
    let steady: Vec<(f64, i64)> =
        samples.iter().copied().filter(|(t, _)| *t >= producing.as_secs_f64() / 2.0).collect();
    let slope = slope(&steady);
    let max_backlog = samples.iter().map(|s| s.1).chain([backlog_at_end]).max().unwrap_or(0);

    let mut report = target.report("w2-sustained");
    report
        .metric("offered_runs_per_s", rate)
        .metric("duration_s", options.sustain.as_secs_f64())
        .metric("achieved_offered_runs_per_s", per_second(sent, producing))
        .metric("accepted", accepted)
        .metric("rejected", failed.load(Ordering::Relaxed))
        .metric("completed", to_done.len())
        .metric("backlog_max", max_backlog)
        .metric("backlog_at_end", backlog_at_end)
        .metric("backlog_slope_runs_per_s", (slope * 10.0).round() / 10.0)
        // Flat: the backlog grew by less than 1% of the offered rate per second.
        .metric("backlog_flat", slope <= rate as f64 * 0.01)
        .metric("drained_s_after_producer", if drained { Some(drain_after.as_secs_f64()) } else { None });
    for (name, samples) in [
        ("trigger_to_ack", &mut to_ack),
        ("trigger_to_start", &mut to_start),
        ("trigger_to_finish", &mut to_done),
    ] {
        if let Some(p) = Percentiles::of(samples) {
            report.metric(name, p.to_json());
        }
    }
    target.finish().await?;
    Ok(report)
}

/// Least-squares slope of `(seconds, backlog)` samples, in runs per second.
fn slope(samples: &[(f64, i64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_b = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|(t, b)| (t - mean_t) * (*b as f64 - mean_b)).sum();
    let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_growing_and_a_flat_backlog() {
        let growing: Vec<(f64, i64)> = (0..10).map(|i| (i as f64 * 0.5, 100 * i)).collect();
        assert!((slope(&growing) - 200.0).abs() < 1e-9);
        let flat: Vec<(f64, i64)> = (0..10).map(|i| (i as f64, if i % 2 == 0 { 5 } else { 7 })).collect();
        assert!(slope(&flat).abs() < 0.5);
        assert_eq!(slope(&[(1.0, 3)]), 0.0);
    }
}
