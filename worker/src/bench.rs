//! `culm bench`: measures the hot path in its own Redis key namespace (deleted after).
//! Scenarios: throughput (enqueue and drain of N no-op jobs), latency (enqueue→start at
//! a steady rate into an idle worker), baseline (raw pipelined Redis list operations).
use crate::{
    config::{Config, QueueConfig},
    runtime::Runtime,
    store::{AckKind, Store},
};
use anyhow::{Context, Result};
use culm_core::{Deps, EnqueueRequest, Registry, Tier};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// Options of `culm bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Run one scenario: throughput, latency or baseline (default: all).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Jobs for the throughput scenario.
    #[arg(long, default_value_t = 200_000)]
    pub jobs: usize,
    /// Worker pool size of the benchmark queue.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds each latency rate runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Print one JSON object per scenario line.
    #[arg(long)]
    pub json: bool,
}

const QUEUE: &str = "bench";

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Bench {
    config: Config,
    store: Store,
    prefix: String,
}

impl Bench {
    async fn new(mut config: Config, registry: Arc<Registry>, concurrency: u32) -> Result<Bench> {
        let prefix = format!("culmbench-{}", ulid::Ulid::new().to_string().to_lowercase());
        config.redis.key_prefix = prefix.clone();
        config.queues.insert(
            QUEUE.into(),
            QueueConfig {
                tier: Tier::Batch,
                concurrency,
                timeout: Some(Duration::from_secs(60)),
                retry: None,
                description: "benchmark".into(),
            },
        );
        let store = Store::connect(&config, registry).await?;
        Ok(Bench { config, store, prefix })
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(
            Arc::new(self.config.clone()),
            self.store.clone(),
            Deps::default().with(self.store.connection()),
        )
    }

    async fn cleanup(&self) {
        let mut c = self.store.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}*", self.prefix))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
        }
    }

    async fn throughput(&self, jobs: usize) -> Result<Value> {
        let noop = || EnqueueRequest::raw("platform.noop", json!({})).queue(QUEUE);
        let start = Instant::now();
        let batches = stream::iter((0..jobs).step_by(1000).map(|from| {
            let n = (jobs - from).min(1000);
            self.store.enqueue((0..n).map(|_| noop()).collect())
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        for b in batches {
            b?;
        }
        let enqueue_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let running = self.runtime().start(&[QUEUE.to_owned()])?;
        loop {
            let s = self.store.stats(QUEUE).await?;
            if s.pending + s.scheduled + s.running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain_s = start.elapsed().as_secs_f64();
        running.shutdown().await;
        Ok(json!({
            "scenario": "throughput", "ledger": false, "jobs": jobs,
            "enqueue_jobs_per_s": (jobs as f64 / enqueue_s).round(),
            "drain_jobs_per_s": (jobs as f64 / drain_s).round(),
        }))
    }

    async fn latency(&self, rate: u64, seconds: u64) -> Result<Value> {
        let rt = self.runtime();
        let mut events = rt.events();
        let running = rt.start(&[QUEUE.to_owned()])?;
        // Let the idle worker settle into waiting before the first job.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let tick = Duration::from_millis((1000 / rate).max(1));
        let per_tick = ((rate as f64) * tick.as_secs_f64()).round().max(1.0) as usize;
        let total = (rate * seconds) as usize;
        let collector = tokio::spawn(async move {
            let mut started: HashMap<String, i64> = HashMap::with_capacity(total);
            while started.len() < total {
                match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                    Ok(Ok(e)) if e.kind == AckKind::Done => {
                        started.insert(e.id, e.started_at_us);
                    }
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    _ => break,
                }
            }
            started
        });
        let mut sent: HashMap<String, i64> = HashMap::with_capacity(total);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while sent.len() < total {
            ticker.tick().await;
            let n = per_tick.min(total - sent.len());
            let at = now_us();
            let out = self
                .store
                .enqueue(
                    (0..n)
                        .map(|_| EnqueueRequest::raw("platform.noop", json!({})).queue(QUEUE))
                        .collect(),
                )
                .await?;
            for e in out {
                sent.insert(e.id, at);
            }
        }
        let started = collector.await.context("collector")?;
        running.shutdown().await;
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(id, at)| started.get(id).map(|s| (s - at) as f64 / 1000.0))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        Ok(json!({
            "scenario": "latency", "rate_per_s": rate, "jobs": total, "observed": lat.len(),
            "p50_ms": percentile(&lat, 50.0), "p95_ms": percentile(&lat, 95.0),
            "p99_ms": percentile(&lat, 99.0), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        }))
    }

    async fn baseline(&self, n: usize) -> Result<Value> {
        let key = format!("{}:baseline", self.prefix);
        let mut c = self.store.connection();
        let start = Instant::now();
        for from in (0..n).step_by(1000) {
            let mut p = redis::pipe();
            for i in from..(from + 1000).min(n) {
                p.lpush(&key, i).ignore();
            }
            p.exec_async(&mut c).await?;
        }
        let push_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut p = redis::pipe();
        for _ in (0..n).step_by(1000) {
            for _ in 0..1000 {
                p.rpop(&key, None).ignore();
            }
            p.exec_async(&mut c).await?;
            p.clear();
        }
        let pop_s = start.elapsed().as_secs_f64();
        Ok(json!({
            "scenario": "baseline", "ops": n,
            "pipelined_lpush_per_s": (n as f64 / push_s).round(),
            "pipelined_rpop_per_s": (n as f64 / pop_s).round(),
        }))
    }
}

fn print(v: &Value, as_json: bool) {
    if as_json {
        println!("{v}");
    } else if let Some(o) = v.as_object() {
        let line: Vec<String> = o.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{}", line.join("  "));
    }
}

/// Runs the selected scenarios.
pub async fn run(config: Config, registry: Arc<Registry>, args: BenchArgs) -> Result<()> {
    let bench = Bench::new(config, registry, args.concurrency).await?;
    let wants = |s: &str| args.scenario.as_deref().is_none_or(|w| w == s);
    let result = async {
        if wants("baseline") {
            print(&bench.baseline(args.jobs).await?, args.json);
        }
        if wants("throughput") {
            print(&bench.throughput(args.jobs).await?, args.json);
        }
        if wants("latency") {
            for rate in [500, 5000] {
                print(&bench.latency(rate, args.seconds).await?, args.json);
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    bench.cleanup().await;
    result
}
