//! `culm bench`: measures the hot path in its own Redis key namespace (deleted after).
//! Scenarios: baseline (raw pipelined Redis list operations), throughput (enqueue and
//! drain of N no-op jobs), latency (enqueue→start at a steady rate into an idle worker),
//! isolation (critical latency while a batch backlog drains in the same process),
//! priority (high jobs overtaking a backlog in one queue), http (admin API enqueue
//! rates), backlog (1,000,000 pending jobs), memory (RSS of a child `culm run`),
//! compression, and batch (100,000 jobs in one tracked batch: callback latency after the
//! last settles).
mod scenarios;

use crate::{
    config::{Config, QueueConfig},
    runtime::Runtime,
    store::Store,
};
use anyhow::Result;
use culm_core::{EnqueueRequest, Registry, Tier};
use futures::{StreamExt, stream};
use serde_json::Value;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Options of `culm bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Run one scenario: baseline, throughput, latency, isolation, priority, http,
    /// backlog, memory, compression or batch
    /// (default: all).
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
    /// Jobs for the backlog scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog_jobs: usize,
    /// Jobs in the batch scenario's one tracked batch.
    #[arg(long, default_value_t = 100_000)]
    pub batch_jobs: usize,
}

/// A job that records how long after `sent_us` it started, into the in-process
/// [`Stamps`] dependency (so latency is measured without the event channel, which can
/// lag under a 30,000 jobs/s backlog).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stamp {
    sent_us: i64,
}

/// Start latencies of [`Stamp`] jobs, in milliseconds.
#[derive(Clone, Default)]
struct Stamps(Arc<std::sync::Mutex<Vec<f64>>>);

impl Stamps {
    fn take(&self) -> Vec<f64> {
        self.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }
}

impl culm_core::Job for Stamp {
    const NAME: &'static str = "bench.stamp";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Benchmark probe: records its enqueue-to-start latency.";
    async fn run(self, ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
        let lat = (now_us() - self.sent_us) as f64 / 1000.0;
        if let Some(s) = ctx.dep::<Stamps>()
            && let Ok(mut v) = s.0.lock()
        {
            v.push(lat);
        }
        Ok(culm_core::Outcome::done())
    }
}

const QUEUE: &str = "bench";
const CRIT: &str = "bench_critical";
const BULK_1MS: &str = "bench_batch_1ms";
const BULK_50MS: &str = "bench_batch_50ms";

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
    /// A caller's own connection, as a service enqueueing from another process has:
    /// probes sent on the worker's connection would queue behind its fetches and acks.
    caller: Store,
    prefix: String,
    stamps: Stamps,
}

impl Bench {
    async fn new(mut config: Config, concurrency: u32) -> Result<Bench> {
        let prefix = format!("culmbench-{}", ulid::Ulid::new().to_string().to_lowercase());
        config.redis.key_prefix = prefix.clone();
        config.queues.insert(
            QUEUE.into(),
            QueueConfig {
                tier: Tier::Batch,
                concurrency,
                max_in_flight: None,
                timeout: Some(Duration::from_secs(60)),
                retry: None,
                result_ttl: None,
                description: "benchmark".into(),
            },
        );
        for (name, tier, concurrency) in [
            (CRIT, Tier::Critical, 8),
            (BULK_1MS, Tier::Batch, concurrency),
            (BULK_50MS, Tier::Batch, concurrency),
        ] {
            config.queues.insert(
                name.into(),
                QueueConfig {
                    tier,
                    concurrency,
                    max_in_flight: None,
                    timeout: Some(Duration::from_secs(60)),
                    retry: None,
                    result_ttl: None,
                    description: "benchmark".into(),
                },
            );
        }
        // The bench adds its probe job type to the shipped catalog.
        let mut with_stamp = culm_jobs::registry()?;
        with_stamp.register::<Stamp>()?;
        let registry = Arc::new(with_stamp);
        let store = Store::connect(&config, registry.clone()).await?;
        let caller = Store::connect(&config, registry).await?;
        // As `culm run` does: handlers on their own connection.
        store.open_handler_connection(&config).await?;
        Ok(Bench {
            config,
            store,
            caller,
            prefix,
            stamps: Stamps::default(),
        })
    }

    fn runtime(&self) -> Runtime {
        let deps = self.store.handler_deps().with(self.stamps.clone());
        Runtime::new(Arc::new(self.config.clone()), self.store.clone(), deps)
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

    /// Enqueues `n` copies of `req` in batches of 1,000, 8 batches in flight.
    async fn fill(&self, n: usize, req: impl Fn() -> EnqueueRequest) -> Result<f64> {
        let start = Instant::now();
        let batches = stream::iter((0..n).step_by(1000).map(|from| {
            let k = (n - from).min(1000);
            self.store.enqueue((0..k).map(|_| req()).collect())
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        for b in batches {
            b?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// Deletes every key of `queue` (jobs left behind by a scenario).
    async fn purge(&self, queue: &str) -> Result<()> {
        let mut c = self.store.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.store.base_key(queue)))
            .query_async(&mut c)
            .await?;
        for chunk in keys.chunks(100) {
            redis::cmd("DEL").arg(chunk).exec_async(&mut c).await?;
        }
        Ok(())
    }

    /// Waits until `queue` holds nothing pending, scheduled or running.
    async fn drained(&self, queue: &str) -> Result<()> {
        loop {
            let s = self.store.stats(queue).await?;
            if s.pending + s.scheduled + s.running == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    let _ = registry;
    let bench = Bench::new(config, args.concurrency).await?;
    let wants = |s: &str| args.scenario.as_deref().is_none_or(|w| w == s);
    let result = async {
        if wants("baseline") {
            print(&bench.baseline(args.jobs).await?, args.json);
        }
        if wants("throughput") {
            print(&bench.throughput(args.jobs).await?, args.json);
            // What recording every run costs, measured only where a database is configured.
            if bench.config.database.enabled() && bench.config.database.ledger.enabled {
                print(&bench.throughput_ledger(args.jobs).await?, args.json);
            }
        }
        if wants("latency") {
            for rate in [500, 5000] {
                print(&bench.latency(rate, args.seconds).await?, args.json);
            }
        }
        if wants("isolation") {
            for batch_ms in [1, 50] {
                print(&bench.isolation(batch_ms).await?, args.json);
            }
        }
        if wants("priority") {
            for batch_ms in [1, 50] {
                print(&bench.priority(batch_ms).await?, args.json);
            }
        }
        if wants("http") {
            print(&bench.http(args.seconds).await?, args.json);
        }
        if wants("backlog") {
            print(&bench.backlog(args.backlog_jobs).await?, args.json);
        }
        if wants("memory") {
            print(&bench.memory(args.jobs).await?, args.json);
        }
        if wants("batch") {
            print(&bench.batch(args.batch_jobs).await?, args.json);
        }
        if wants("compression") {
            print(&bench.compression(args.jobs.min(10_000)).await?, args.json);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    bench.cleanup().await;
    result
}
