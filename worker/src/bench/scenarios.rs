//! The scenarios: each measures one thing and returns one JSON line (BENCHMARKS.md holds
//! the results and the exact command).
use super::{
    BULK_1MS, BULK_50MS, Bench, CRIT, QUEUE, Via,
    client::{ClientReport, TOKEN_ENV},
    now_us, pacing, percentile, post_json,
};
use crate::store::{AckKind, Store};
use anyhow::{Context, Result};
use culm_core::EnqueueRequest;
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

impl Bench {
    /// Throughput with the job ledger on: the same drain with every run recorded
    /// in PostgreSQL; the ledger's rows are deleted afterwards.
    pub(super) async fn throughput_ledger(&self, jobs: usize) -> Result<Value> {
        let d = &self.config.database;
        crate::db::Db::ensure_database(d).await?;
        let db = crate::db::Db::connect(d).await?;
        db.migrate().await?;
        let since = chrono::Utc::now();
        let (ledger, writer) =
            crate::db::ledger::start(db.clone(), self.store.connection(), &self.prefix, d.ledger.clone());
        let counters = ledger.counters().clone();
        let pg_before = postgres_cpu_s();
        let mut v = self.throughput_with(jobs, Some(ledger)).await?;
        let start = Instant::now();
        writer.shutdown(Duration::from_secs(60)).await;
        let flush_s = start.elapsed().as_secs_f64();
        let pg_s = postgres_cpu_s() - pg_before;
        let deleted = sqlx::query("DELETE FROM culm_job_runs WHERE queue = $1 AND finished_at >= $2")
            .bind(QUEUE)
            .bind(since)
            .execute(db.pool())
            .await?
            .rows_affected();
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(o) = v.as_object_mut() {
            o.insert("ledger_rows".into(), json!(deleted));
            o.insert("ledger_spilled".into(), json!(counters.spilled.load(Relaxed)));
            o.insert("ledger_dropped".into(), json!(counters.dropped.load(Relaxed)));
            o.insert(
                "ledger_final_flush_s".into(),
                json!((flush_s * 1000.0).round() / 1000.0),
            );
            // Only where PostgreSQL runs on this machine (its processes are visible).
            if pg_s > 0.0 {
                o.insert(
                    "postgres_cpu_us_per_job".into(),
                    json!((pg_s * 1e6 / jobs.max(1) as f64 * 100.0).round() / 100.0),
                );
            }
        }
        Ok(v)
    }

    pub(super) async fn throughput(&self, jobs: usize) -> Result<Value> {
        self.throughput_with(jobs, None).await
    }

    async fn throughput_with(&self, jobs: usize, ledger: Option<crate::db::ledger::Ledger>) -> Result<Value> {
        let with_ledger = ledger.is_some();
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
        let cpu = self.cpu_mark(Worker::ThisProcess).await?;
        let start = Instant::now();
        let mut rt = self.runtime();
        if let Some(l) = ledger {
            rt = rt.with_ledger(l);
        }
        let running = rt.start(&[QUEUE.to_owned()])?;
        self.drained(QUEUE).await?;
        let drain_s = start.elapsed().as_secs_f64();
        let cpu = self.cpu_per_job(cpu, jobs, "drain").await?;
        running.shutdown().await;
        Ok(with_fields(
            json!({
                "scenario": "throughput", "ledger": with_ledger, "jobs": jobs,
                "enqueue_jobs_per_s": (jobs as f64 / enqueue_s).round(),
                "drain_jobs_per_s": (jobs as f64 / drain_s).round(),
            }),
            cpu,
        ))
    }

    /// Starts measuring CPU: reads the worker's and Redis's CPU clocks and Redis's
    /// script counters. [`Bench::cpu_per_job`] reports what was spent since.
    async fn cpu_mark(&self, worker: Worker) -> Result<CpuMark> {
        Ok(CpuMark {
            scripts: self.script_counters().await?,
            redis_s: self.redis_cpu().await?,
            worker_s: worker.cpu_s()?,
            worker,
        })
    }

    /// The CPU spent since `mark`, per job of `jobs`: `worker_cpu_us_per_job` (the
    /// worker process: user + system), `redis_cpu_us_per_job` (the whole Redis server),
    /// `redis_scripts` (calls and µs per call of each script command) and `cpu_window`,
    /// which names what the stretch covered (`drain`, or `create_and_drain` where the
    /// jobs are stored while they drain).
    async fn cpu_per_job(&self, mark: CpuMark, jobs: usize, window: &str) -> Result<serde_json::Map<String, Value>> {
        let worker_s = mark.worker.cpu_s()? - mark.worker_s;
        let redis_s = self.redis_cpu().await? - mark.redis_s;
        let scripts = self.script_counters().await?;
        let per_job_us = |s: f64| (s * 1e6 / jobs.max(1) as f64 * 100.0).round() / 100.0;
        let mut by_command = serde_json::Map::new();
        for (name, (calls, usec)) in scripts {
            let (calls_before, usec_before) = mark.scripts.get(&name).copied().unwrap_or_default();
            let calls = calls.saturating_sub(calls_before);
            if calls == 0 {
                continue;
            }
            let usec = usec.saturating_sub(usec_before);
            by_command.insert(
                name,
                json!({"calls": calls, "usec_per_call": (usec as f64 / calls as f64 * 100.0).round() / 100.0}),
            );
        }
        let mut out = serde_json::Map::new();
        out.insert("worker_cpu_us_per_job".into(), json!(per_job_us(worker_s)));
        out.insert("redis_cpu_us_per_job".into(), json!(per_job_us(redis_s)));
        out.insert("redis_scripts".into(), Value::Object(by_command));
        out.insert("cpu_window".into(), json!(window));
        Ok(out)
    }

    /// Redis's CPU seconds so far (user + system), from `INFO cpu`.
    async fn redis_cpu(&self) -> Result<f64> {
        let mut conn = self.store.connection();
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        Ok(info
            .lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_sys:")
                    .or_else(|| l.strip_prefix("used_cpu_user:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum())
    }

    /// Calls and total µs so far of each script command (`evalsha` covers every culm
    /// script), from `INFO commandstats`. Read before and after rather than reset with
    /// `CONFIG RESETSTAT`: the Redis server may be shared, and its statistics are not
    /// the bench's to clear.
    async fn script_counters(&self) -> Result<HashMap<String, (u64, u64)>> {
        let mut conn = self.store.connection();
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
        let mut out = HashMap::new();
        for line in info.lines() {
            let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            if !matches!(name, "evalsha" | "eval") {
                continue;
            }
            let field = |k: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.insert(name.to_owned(), (field("calls"), field("usec")));
        }
        Ok(out)
    }

    /// Latency of jobs enqueued `via` the store or the admin API.
    pub(super) async fn latency(&self, via: Via, rate: u64, seconds: u64) -> Result<Value> {
        match via {
            Via::Store => self.latency_store(rate, seconds).await,
            Via::Http => self.latency_http(rate, seconds).await,
        }
    }

    /// Enqueue→start latency of no-op jobs enqueued through the store in this process at
    /// `rate` jobs/s (one enqueue call per tick), from just before the enqueue call to
    /// the runtime's start of each job (its `JobEvent`).
    async fn latency_store(&self, rate: u64, seconds: u64) -> Result<Value> {
        let rt = self.runtime();
        let mut events = rt.events();
        let running = rt.start(&[QUEUE.to_owned()])?;
        // Let the idle worker settle into waiting before the first job.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (tick, per_tick) = pacing(rate);
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
                .caller
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
            "scenario": "latency", "via": "store", "rate_per_s": rate, "jobs": total, "observed": lat.len(),
            "p50_ms": percentile(&lat, 50.0), "p95_ms": percentile(&lat, 95.0),
            "p99_ms": percentile(&lat, 99.0), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        }))
    }

    /// Enqueue→start latency of `bench.stamp` jobs posted to `POST /v1/jobs` by a child
    /// process (`culm bench-client`) at `rate` requests/s, one job each, while this
    /// process serves the admin API and runs the worker: from just before the client
    /// sends a request (`sent_us`, in the payload) to the start of the job's handler (it
    /// records into `stamps`). Both clocks are this machine's wall clock.
    async fn latency_http(&self, rate: u64, seconds: u64) -> Result<Value> {
        let api = self.admin_api().await?;
        let running = self.runtime().start(&[QUEUE.to_owned()])?;
        // Let the idle worker settle into waiting before the first job.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stamps.take();
        let total = (rate * seconds) as usize;
        let out = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench-client", "--url", &api.jobs_url])
            .args(["--rate", &rate.to_string(), "--seconds", &seconds.to_string()])
            .env(TOKEN_ENV, &api.secret)
            .env("CULM_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .output()
            .await
            .context("running culm bench-client")?;
        anyhow::ensure!(out.status.success(), "culm bench-client failed ({})", out.status);
        let report: ClientReport = serde_json::from_slice(&out.stdout).context("reading culm bench-client's report")?;
        // Every accepted job records its start; wait for the last, within the same bound
        // as the store variant's collector.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (self.stamps.len() as u64) < report.sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        running.shutdown().await;
        api.stop().await;
        let mut lat = self.stamps.take();
        lat.sort_by(|a, b| a.total_cmp(b));
        let mut line = json!({
            "scenario": "latency", "via": "http", "rate_per_s": rate, "jobs": total, "observed": lat.len(),
            "p50_ms": percentile(&lat, 50.0), "p95_ms": percentile(&lat, 95.0),
            "p99_ms": percentile(&lat, 99.0), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        });
        // Only a failed request adds fields: normally the line has the store variant's.
        if report.failed > 0
            && let Some(o) = line.as_object_mut()
        {
            o.insert("requests_failed".into(), json!(report.failed));
            o.insert("first_error".into(), json!(report.first_error));
        }
        Ok(line)
    }

    /// The admin API on a loopback port for this bench's store, with one enqueue token
    /// whose secret is made up for the run.
    async fn admin_api(&self) -> Result<AdminApi> {
        let secret = ulid::Ulid::new().to_string();
        let token = crate::admin::Token::new("bench", &secret, vec![crate::config::Scope::Enqueue]);
        let (router, _) = crate::admin::router(crate::admin::AdminState::new(
            &self.config,
            self.store.clone(),
            vec![token],
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let jobs_url = format!("http://{}/v1/jobs", listener.local_addr()?);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::admin::serve(listener, router, stop_rx));
        Ok(AdminApi {
            jobs_url,
            secret,
            stop,
            server,
        })
    }

    /// 200 critical jobs at 20 ms intervals while a 100,000-job batch backlog of
    /// `batch_ms` jobs drains at full concurrency in the same process.
    pub(super) async fn isolation(&self, batch_ms: u64) -> Result<Value> {
        let bulk = self.backlog_of(batch_ms).await?;
        let running = self.runtime().start(&[CRIT.to_owned(), bulk.to_owned()])?;
        self.probe(bulk, || {
            EnqueueRequest::raw("bench.stamp", json!({ "sent_us": now_us() })).queue(CRIT)
        })
        .await?;
        self.drained(CRIT).await?;
        let batch_left = self.store.stats(bulk).await?.pending;
        running.shutdown().await;
        Ok(probe_result(
            "isolation",
            "critical_jobs",
            batch_ms,
            batch_left,
            self.stamps.take(),
        ))
    }

    /// Fills the batch queue for `batch_ms` jobs (emptied first: whatever an earlier
    /// scenario left in it would drain first) with a 100,000-job backlog; returns it.
    async fn backlog_of(&self, batch_ms: u64) -> Result<&'static str> {
        let bulk = if batch_ms <= 1 { BULK_1MS } else { BULK_50MS };
        self.purge(bulk).await?;
        self.fill(100_000, || {
            EnqueueRequest::raw("platform.sleep", json!({ "ms": batch_ms })).queue(bulk)
        })
        .await?;
        Ok(bulk)
    }

    /// Once `bulk`'s pool is saturated, sends 200 probe jobs (`bench.stamp`, built by
    /// `probe`) at 20 ms intervals; their start latencies collect in `stamps`.
    async fn probe(&self, bulk: &str, probe: impl Fn() -> EnqueueRequest) -> Result<()> {
        while self.store.stats(bulk).await?.running == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stamps.take();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..200 {
            tick.tick().await;
            self.caller.enqueue(vec![probe()]).await?;
        }
        Ok(())
    }

    /// Priority within one queue: 200 `high` jobs at 20 ms intervals into the batch queue
    /// while a 100,000-job backlog of `batch_ms` normal jobs drains from it at full
    /// concurrency. Without priorities each would wait for the whole backlog.
    pub(super) async fn priority(&self, batch_ms: u64) -> Result<Value> {
        let bulk = self.backlog_of(batch_ms).await?;
        let running = self.runtime().start(&[bulk.to_owned()])?;
        self.probe(bulk, || {
            EnqueueRequest::raw("bench.stamp", json!({ "sent_us": now_us() }))
                .queue(bulk)
                .priority(culm_core::Priority::High)
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.stamps.len() < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let batch_left = self.store.stats(bulk).await?.pending;
        running.shutdown().await;
        self.purge(bulk).await?;
        Ok(probe_result(
            "priority",
            "high_jobs",
            batch_ms,
            batch_left,
            self.stamps.take(),
        ))
    }

    /// The admin API's enqueue: single-job requests/s from 64 concurrent clients, p99 at a
    /// paced 1,000 rps, and jobs/s through the batch endpoint (1,000 jobs per request).
    pub(super) async fn http(&self, seconds: u64) -> Result<Value> {
        let api = self.admin_api().await?;
        let (url, secret) = (api.jobs_url.clone(), api.secret.clone());
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        let body = json!({ "job": "platform.noop", "queue": QUEUE }).to_string();
        let post = |url: String, body: String| {
            let c = client.clone();
            let auth = format!("Bearer {secret}");
            async move {
                let t = Instant::now();
                let r = post_json(c, url, auth, body).await;
                let ok = matches!(&r, Ok(r) if r.status().is_success());
                (ok, t.elapsed().as_secs_f64() * 1000.0)
            }
        };

        // Saturation: 64 clients in closed loops.
        let deadline = Instant::now() + Duration::from_secs(seconds.min(5));
        let workers = (0..64).map(|_| {
            let (url, body, post) = (url.clone(), body.clone(), &post);
            async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match post(url.clone(), body.clone()).await {
                        (true, _) => ok += 1,
                        (false, _) => failed += 1,
                    }
                }
                (ok, failed)
            }
        });
        let start = Instant::now();
        let results = futures::future::join_all(workers).await;
        let secs = start.elapsed().as_secs_f64();
        let ok: u64 = results.iter().map(|r| r.0).sum();
        let failed: u64 = results.iter().map(|r| r.1).sum();

        // Paced: 1,000 requests/s, each its own task, latency measured by the client.
        let total = 1000 * seconds as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total);
        for _ in 0..total {
            tick.tick().await;
            tasks.push(tokio::spawn(post(url.clone(), body.clone())));
        }
        let mut lat = Vec::with_capacity(total);
        let mut paced_failed = 0;
        for t in tasks {
            match t.await {
                Ok((true, ms)) => lat.push(ms),
                _ => paced_failed += 1,
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));

        // Batch endpoint: 1,000 jobs per request, 4 in flight.
        let batch_url = format!("{url}/batch");
        let batch_body = json!({ "jobs": vec![json!({ "job": "platform.noop", "queue": QUEUE }); 1000] }).to_string();
        let start = Instant::now();
        let batches = stream::iter((0..100).map(|_| post(batch_url.clone(), batch_body.clone())))
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        let batch_secs = start.elapsed().as_secs_f64();
        let batch_ok = batches.iter().filter(|b| b.0).count();
        api.stop().await;
        self.purge(QUEUE).await?;
        Ok(json!({
            "scenario": "http", "clients": 64,
            "single_req_per_s": (ok as f64 / secs).round(), "single_failed": failed,
            "paced_rps": 1000, "paced_requests": total, "paced_failed": paced_failed,
            "p50_ms": percentile(&lat, 50.0), "p95_ms": percentile(&lat, 95.0),
            "p99_ms": percentile(&lat, 99.0), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
            "batch_jobs_per_s": ((batch_ok * 1000) as f64 / batch_secs).round(),
        }))
    }

    /// `n` pending jobs in one queue: enqueue, Redis memory per job, drain without error.
    pub(super) async fn backlog(&self, n: usize) -> Result<Value> {
        let before = used_memory(&self.store).await?;
        let enqueue_s = self
            .fill(n, || EnqueueRequest::raw("platform.noop", json!({})).queue(QUEUE))
            .await?;
        let after = used_memory(&self.store).await?;
        let pending = self.store.stats(QUEUE).await?.pending;
        let cpu = self.cpu_mark(Worker::ThisProcess).await?;
        let start = Instant::now();
        let running = self.runtime().start(&[QUEUE.to_owned()])?;
        self.drained(QUEUE).await?;
        let drain_s = start.elapsed().as_secs_f64();
        let cpu = self.cpu_per_job(cpu, n, "drain").await?;
        running.shutdown().await;
        let dead = self.store.stats(QUEUE).await?.dead;
        Ok(with_fields(
            json!({
                "scenario": "backlog", "jobs": n, "pending_before_drain": pending, "dead_after": dead,
                "enqueue_jobs_per_s": (n as f64 / enqueue_s).round(),
                "drain_jobs_per_s": (n as f64 / drain_s).round(),
                "redis_bytes_per_pending_job": ((after.saturating_sub(before)) as f64 / n as f64).round(),
            }),
            cpu,
        ))
    }

    /// RSS of a child `culm run` (every shipped queue, no admin API, no scheduler) idle,
    /// and its peak while it drains `jobs` no-op jobs from the `platform` queue. The queue
    /// is paused while it fills, so the drain, and the child's and Redis's CPU, are
    /// measured without the enqueue, as in the throughput scenario.
    pub(super) async fn memory(&self, jobs: usize) -> Result<Value> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(["run", "--no-admin", "--no-scheduler"])
            .env("CULM_REDIS_URL", &self.config.redis.url)
            .env("CULM__REDIS__KEY_PREFIX", &self.prefix)
            .env("CULM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("child pid")?;
        // Idle means: started and settled; there is no readiness signal without the API.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = proc_status_kb(pid, "VmRSS:")?;
        self.store.pause("platform").await?;
        self.fill(jobs, || {
            EnqueueRequest::raw("platform.noop", json!({})).queue("platform")
        })
        .await?;
        let cpu = self.cpu_mark(Worker::Child(pid)).await?;
        let start = Instant::now();
        self.store.resume("platform").await?;
        self.drained("platform").await?;
        let drain_s = start.elapsed().as_secs_f64();
        let cpu = self.cpu_per_job(cpu, jobs, "drain").await?;
        let peak = proc_status_kb(pid, "VmHWM:")?;
        let _ = child.start_kill();
        let _ = child.wait().await;
        Ok(with_fields(
            json!({
                "scenario": "memory", "queues": "all shipped", "jobs": jobs,
                "idle_rss_mb": (idle as f64 / 1024.0 * 10.0).round() / 10.0,
                "peak_rss_mb": (peak as f64 / 1024.0 * 10.0).round() / 10.0,
                "drain_jobs_per_s": (jobs as f64 / drain_s).round(),
            }),
            cpu,
        ))
    }

    /// Redis memory of `jobs` statement-like payloads (~16 KB of JSON each: a month of
    /// card transactions) stored as is and compressed (`worker.compress_above`), with
    /// the enqueue rate of each; both copies are deleted afterwards.
    pub(super) async fn compression(&self, jobs: usize) -> Result<Value> {
        let lines: Vec<Value> = (0..150)
            .map(|i| {
                const MERCHANTS: [&str; 4] = [
                    "AMAZON MKTPLACE PMTS",
                    "UBER *TRIP",
                    "STARBUCKS STORE 01234",
                    "SHELL OIL 5744",
                ];
                const MCCS: [&str; 4] = ["5942", "4121", "5814", "5541"];
                json!({
                    "posted_at": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60),
                    "merchant": MERCHANTS[i % 4],
                    "mcc": MCCS[i % 4],
                    "amount_cents": (i * 137) % 9_000 + 99,
                    "currency": "USD",
                    "auth_code": format!("{:06}", (i * 7919) % 1_000_000),
                    "status": "settled",
                })
            })
            .collect();
        let payload = json!({"value": {"account_id": "acct_000042", "period": "2026-11", "lines": lines}});
        let payload_bytes = payload.to_string().len();
        let mut out = json!({
            "scenario": "compression", "jobs": jobs, "payload_bytes": payload_bytes,
            "compress_above": self.config.worker.compress_above,
        });
        for (label, above) in [("plain", 0), ("compressed", self.config.worker.compress_above.max(1))] {
            let mut config = self.config.clone();
            config.worker.compress_above = above;
            let store = Store::connect(&config, self.store.registry().clone()).await?;
            let req = || EnqueueRequest::raw("platform.echo", payload.clone()).queue(QUEUE);
            let start = Instant::now();
            for from in (0..jobs).step_by(100) {
                let n = (jobs - from).min(100);
                store.enqueue((0..n).map(|_| req()).collect()).await?;
            }
            let secs = start.elapsed().as_secs_f64();
            let mut c = store.connection();
            let bytes: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(store.keys(QUEUE).jobs())
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut c)
                .await?;
            self.purge(QUEUE).await?;
            if let Some(o) = out.as_object_mut() {
                o.insert(
                    format!("{label}_mb"),
                    json!((bytes as f64 / 1e6 * 100.0).round() / 100.0),
                );
                o.insert(format!("{label}_bytes_per_job"), json!(bytes / jobs.max(1) as u64));
                o.insert(format!("{label}_enqueue_per_s"), json!((jobs as f64 / secs).round()));
            }
        }
        Ok(out)
    }

    pub(super) async fn baseline(&self, n: usize) -> Result<Value> {
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

/// The JSON line of a probe scenario: the probes' start latencies, ms.
fn probe_result(scenario: &str, probes: &str, batch_ms: u64, batch_left: u64, mut lat: Vec<f64>) -> Value {
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({
        "scenario": scenario, "batch_job_ms": batch_ms, "batch_backlog": 100_000,
        "batch_pending_after": batch_left, probes: lat.len(),
        "p50_ms": percentile(&lat, 50.0), "p95_ms": percentile(&lat, 95.0),
        "p99_ms": percentile(&lat, 99.0), "max_ms": lat.last().copied().unwrap_or(f64::NAN),
    })
}

async fn used_memory(store: &Store) -> Result<u64> {
    let mut c = store.connection();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))
}

/// The process whose CPU time counts as the worker's in a scenario's figures.
#[derive(Debug, Clone, Copy)]
enum Worker {
    /// This process: the runtime runs in the bench.
    ThisProcess,
    /// A child process, by pid (the memory scenario's `culm run`).
    Child(u32),
}

impl Worker {
    /// The process's CPU seconds so far (user + system, every thread), from
    /// `/proc/<pid>/stat`. This process counts 0 where that file does not exist (no
    /// procfs); a child whose file is gone has exited, which is an error.
    fn cpu_s(self) -> Result<f64> {
        let path = match self {
            Worker::ThisProcess => "/proc/self/stat".to_owned(),
            Worker::Child(pid) => format!("/proc/{pid}/stat"),
        };
        match (std::fs::read_to_string(&path), self) {
            (Ok(stat), _) => Ok(stat_cpu_s(&stat)),
            (Err(_), Worker::ThisProcess) => Ok(0.0),
            (Err(e), Worker::Child(pid)) => Err(e).with_context(|| format!("reading the CPU time of pid {pid}")),
        }
    }
}

/// User + system CPU seconds from a `/proc/<pid>/stat` line.
fn stat_cpu_s(stat: &str) -> f64 {
    // Fields after the command name (which may contain spaces) start after ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // Linux reports these in USER_HZ, which is 100 on every platform culm runs on.
    ticks / 100.0
}

/// CPU seconds of every PostgreSQL server process visible in `/proc` (0 where there is
/// none: PostgreSQL on another machine, or no procfs). Processes that exit between two
/// readings take their CPU with them; the ledger's connections stay open for the run.
fn postgres_cpu_s() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == "postgres"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .map(|stat| stat_cpu_s(&stat))
        .sum()
}

/// Where a measured stretch started: see [`Bench::cpu_mark`].
struct CpuMark {
    worker: Worker,
    worker_s: f64,
    redis_s: f64,
    /// Calls and total µs of each script command.
    scripts: HashMap<String, (u64, u64)>,
}

/// `line` (a JSON object) with `fields` added.
fn with_fields(mut line: Value, fields: serde_json::Map<String, Value>) -> Value {
    if let Some(o) = line.as_object_mut() {
        o.extend(fields);
    }
    line
}

/// The admin API a scenario serves: see [`Bench::admin_api`].
struct AdminApi {
    /// `http://127.0.0.1:<port>/v1/jobs`.
    jobs_url: String,
    /// The bearer token's secret.
    secret: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminApi {
    /// Stops serving, once the open requests are answered.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}

impl Bench {
    /// One tracked batch of `jobs` no-op jobs drained by this process, with an
    /// `on_complete` callback: how long the batch took, and the callback latency (from the
    /// settlement of the last member, the batch's `completed_at` on Redis's clock, to the
    /// callback's start). Every settle updates the batch's counters in the same script
    /// call; nothing per batch is read whole. The CPU figures cover the creation too:
    /// the jobs drain while the batch is created, in this same process.
    pub(super) async fn batch(&self, jobs: usize) -> Result<Value> {
        let noop = || EnqueueRequest::raw("platform.noop", json!({})).queue(QUEUE);
        // The callback records its start time (ms since the epoch: `sent_us` 0).
        let callback = EnqueueRequest::raw("bench.stamp", json!({ "sent_us": 0 })).queue(QUEUE);
        self.stamps.take();
        let running = self.runtime().start(&[QUEUE.to_owned()])?;
        let cpu = self.cpu_mark(Worker::ThisProcess).await?;
        let start = Instant::now();
        let created = self
            .store
            .create_batch(crate::store::NewBatch {
                jobs: (0..jobs).map(|_| noop()).collect(),
                on_complete: Some(callback),
                description: Some("bench".into()),
                ..crate::store::NewBatch::default()
            })
            .await?;
        let create_s = start.elapsed().as_secs_f64();
        // A callback that never fires ends the scenario with an error, not a hang.
        let deadline = Instant::now() + Duration::from_secs(600);
        let started_ms = loop {
            if let Some(&at) = self.stamps.0.lock().ok().and_then(|v| v.first().copied()).as_ref() {
                break at;
            }
            if Instant::now() > deadline {
                anyhow::bail!("the batch's callback did not run within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let total_s = start.elapsed().as_secs_f64();
        let cpu = self.cpu_per_job(cpu, jobs, "create_and_drain").await?;
        let status = self.store.batch(&created.id).await?.context("the batch is gone")?;
        running.shutdown().await;
        let completed_at = status.completed_at.context("the batch did not complete")?;
        Ok(with_fields(
            json!({
                "scenario": "batch", "jobs": jobs,
                "create_s": (create_s * 100.0).round() / 100.0,
                "batch_s": (total_s * 100.0).round() / 100.0,
                "jobs_per_s": (jobs as f64 / total_s).round(),
                "succeeded": status.succeeded,
                "callback_latency_ms": ((started_ms - completed_at as f64) * 100.0).round() / 100.0,
            }),
            cpu,
        ))
    }
}
