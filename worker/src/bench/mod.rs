//! `culm bench`: measures the hot path in its own Redis key namespace (deleted after).
//! Scenarios: baseline (raw pipelined Redis list operations), throughput (enqueue and
//! drain of N no-op jobs), latency (enqueue→start at a steady rate into an idle worker,
//! enqueued through the store in-process and through `POST /v1/jobs` from a child
//! process), isolation (critical latency while a batch backlog drains in the same
//! process), priority (high jobs overtaking a backlog in one queue), http (admin API
//! enqueue rates), backlog (1,000,000 pending jobs), memory (RSS of a child `culm run`),
//! compression, and batch (100,000 jobs in one tracked batch: callback latency after the
//! last settles). The draining scenarios also report CPU per job of the worker and of
//! Redis. `--runs N` repeats the latency, isolation and priority scenarios and sums up
//! the spread of their p99.
mod client;
mod scenarios;

pub use client::{BenchClientArgs, client};

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
    future::Future,
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
    /// Jobs for the throughput and memory scenarios.
    #[arg(long, default_value_t = 200_000)]
    pub jobs: usize,
    /// Worker pool size of the benchmark queue.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds each latency variant (500 and 5,000 jobs/s, through the store and over
    /// HTTP from another process) runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Runs of each latency, isolation and priority variant; with more than one, each
    /// variant's run lines are followed by a summary line: every run's p99, their median
    /// and the worst.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
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

/// How the latency scenario's jobs are enqueued.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `Store::enqueue` in the bench process.
    Store,
    /// `POST /v1/jobs` from a child process ([`client`]).
    Http,
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

/// `POST`s the JSON `body` to the admin API at `url` with the bearer header `auth`.
async fn post_json(
    client: reqwest::Client,
    url: String,
    auth: String,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The interval timer's period and the jobs sent per tick for `rate` jobs/s: ticks of
/// at least 1 ms, since a finer interval is not kept by the timer.
fn pacing(rate: u64) -> (Duration, usize) {
    let rate = rate.max(1);
    let tick = Duration::from_millis((1000 / rate).max(1));
    let per_tick = ((rate as f64) * tick.as_secs_f64()).round().max(1.0) as usize;
    (tick, per_tick)
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

/// Runs each variant `runs` times and prints each run's line. The runs are interleaved
/// (every variant once, then again), so drift of a shared machine spreads over all the
/// variants instead of landing on one. With more than one run, one summary line per
/// variant follows ([`spread`]).
async fn repeat<V: Copy, F, Fut>(runs: u32, variants: &[V], as_json: bool, mut one: F) -> Result<()>
where
    F: FnMut(V) -> Fut,
    Fut: Future<Output = Result<Value>>,
{
    let mut lines: Vec<Vec<Value>> = vec![Vec::new(); variants.len()];
    for _ in 0..runs {
        for (&v, of_v) in variants.iter().zip(&mut lines) {
            let line = one(v).await?;
            print(&line, as_json);
            of_v.push(line);
        }
    }
    if runs > 1 {
        for of_v in &lines {
            print(&spread(of_v), as_json);
        }
    }
    Ok(())
}

/// The summary line of one variant's runs: the fields that name the variant, each run's
/// p99 in run order, their median and the worst. A run without a p99 (nothing observed)
/// shows as `null` and counts as the worst.
fn spread(lines: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(first) = lines.first().and_then(Value::as_object) {
        for k in ["scenario", "via", "rate_per_s", "batch_job_ms"] {
            if let Some(v) = first.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
    }
    let p99: Vec<f64> = lines
        .iter()
        .map(|l| l.get("p99_ms").and_then(Value::as_f64).unwrap_or(f64::NAN))
        .collect();
    let mut sorted = p99.clone();
    // NaN sorts last: an unmeasured run is never hidden as the best.
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => ((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 * 1e4).round() / 1e4,
    };
    out.insert("runs".into(), serde_json::json!(lines.len()));
    out.insert("p99_ms_runs".into(), serde_json::json!(p99));
    out.insert("p99_ms_median".into(), serde_json::json!(median));
    out.insert(
        "p99_ms_worst".into(),
        serde_json::json!(sorted.last().copied().unwrap_or(f64::NAN)),
    );
    Value::Object(out)
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
            let variants = [
                (Via::Store, 500),
                (Via::Store, 5000),
                (Via::Http, 500),
                (Via::Http, 5000),
            ];
            repeat(args.runs, &variants, args.json, |(via, rate)| {
                bench.latency(via, rate, args.seconds)
            })
            .await?;
        }
        if wants("isolation") {
            repeat(args.runs, &[1, 50], args.json, |batch_ms| bench.isolation(batch_ms)).await?;
        }
        if wants("priority") {
            repeat(args.runs, &[1, 50], args.json, |batch_ms| bench.priority(batch_ms)).await?;
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

#[cfg(test)]
mod tests {
    use super::{pacing, spread};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn spread_names_the_variant_and_takes_median_and_worst() {
        let runs = [3.0, 1.0, 2.0, 10.0]
            .map(|p99| json!({"scenario": "latency", "via": "http", "rate_per_s": 500, "jobs": 5000, "p99_ms": p99}));
        assert_eq!(
            spread(&runs),
            json!({
                "scenario": "latency", "via": "http", "rate_per_s": 500, "runs": 4,
                "p99_ms_runs": [3.0, 1.0, 2.0, 10.0], "p99_ms_median": 2.5, "p99_ms_worst": 10.0,
            })
        );
        let odd = [
            json!({"scenario": "isolation", "batch_job_ms": 1, "p99_ms": 4.0}),
            json!({"p99_ms": 2.0}),
            json!({"p99_ms": 3.0}),
        ];
        let s = spread(&odd);
        assert_eq!(s["p99_ms_median"], json!(3.0));
        assert_eq!(s["batch_job_ms"], json!(1));
    }

    #[test]
    fn a_run_without_p99_is_the_worst() {
        let runs = [
            json!({"scenario": "priority", "p99_ms": 1.0}),
            json!({"scenario": "priority", "p99_ms": null}),
        ];
        let s = spread(&runs);
        assert_eq!(s["p99_ms_runs"], json!([1.0, null]));
        assert_eq!(s["p99_ms_worst"], json!(null));
    }

    #[test]
    fn pacing_keeps_ticks_of_at_least_a_millisecond() {
        assert_eq!(pacing(500), (Duration::from_millis(2), 1));
        assert_eq!(pacing(5000), (Duration::from_millis(1), 5));
        assert_eq!(pacing(0), (Duration::from_secs(1), 1));
    }
}
