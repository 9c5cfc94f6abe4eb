//! Metric names and the helpers that record them. Every `culm_*` metric is defined here,
//! except the `culm_integration_*` ones: culm-jobs records those and cannot depend on this
//! crate, so they are defined in `jobs/src/http/metrics.rs` and re-exported here, which
//! keeps every name listed in this file. Counters end in `_total`, durations are in seconds.
use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
};

/// Jobs stored (`queue`, `job`).
pub const JOBS_ENQUEUED: &str = "culm_jobs_enqueued_total";
/// Enqueues answered with an earlier job because their idempotency key (or id) was
/// already stored (`queue`): the idempotency keys' use, next to their `idempotency_ttl`.
pub const JOBS_DEDUPLICATED: &str = "culm_jobs_deduplicated_total";
/// Schedules whose state was deleted because they left the catalog.
pub const SCHEDULES_FORGOTTEN: &str = "culm_schedules_forgotten_total";
/// Runs started (`queue`, `job`).
pub const JOBS_STARTED: &str = "culm_jobs_started_total";
/// Runs that succeeded (`queue`, `job`).
pub const JOBS_SUCCEEDED: &str = "culm_jobs_succeeded_total";
/// Runs that failed, whatever happened next (`queue`, `job`).
pub const JOBS_FAILED: &str = "culm_jobs_failed_total";
/// Failed runs scheduled for another attempt (`queue`, `job`).
pub const JOBS_RETRIED: &str = "culm_jobs_retried_total";
/// Runs deferred without spending an attempt (`queue`, `job`).
pub const JOBS_DEFERRED: &str = "culm_jobs_deferred_total";
/// Jobs not run because their `expires_at` had passed (`queue`, `job`).
pub const JOBS_EXPIRED: &str = "culm_jobs_expired_total";
/// Counter: runs whose handler stopped on an operator's cancellation.
pub const JOBS_CANCELLED: &str = "culm_jobs_cancelled_total";
/// Jobs moved to the dead letters (`queue`, `job`).
pub const JOBS_DEAD: &str = "culm_jobs_dead_lettered_total";
/// Run time of a job (`queue`, `job`).
pub const JOB_DURATION: &str = "culm_job_duration_seconds";
/// Time from due (enqueue or run_at) to start (`queue`, `tier`).
pub const JOB_WAIT: &str = "culm_job_wait_seconds";
/// Jobs currently running in this process (`queue`).
pub const WORKERS_BUSY: &str = "culm_workers_busy";
/// Leases returned to the queue by the reaper (`queue`).
pub const LEASES_REAPED: &str = "culm_leases_reaped_total";
/// Dead jobs deleted from Redis past `worker.dead_retention` (`queue`).
pub const DEAD_TRIMMED: &str = "culm_dead_trimmed_total";
/// Redis errors on the hot path (`queue`, `op`).
pub const STORE_ERRORS: &str = "culm_store_errors_total";

/// Jobs in a queue by state: pending, scheduled, running, dead (`queue`, `tier`, `state`).
pub const QUEUE_JOBS: &str = "culm_queue_jobs";
/// Age of the oldest due job waiting for a worker (`queue`, `tier`).
pub const QUEUE_OLDEST_AGE: &str = "culm_queue_oldest_pending_age_seconds";
/// 1 while a queue is paused (`queue`).
pub const QUEUE_PAUSED: &str = "culm_queue_paused";
/// Pool size of each queue running in this process (`queue`, `tier`).
pub const WORKERS_CAPACITY: &str = "culm_workers_capacity";
/// Admin API requests (`route`, `method`, `status`).
pub const ADMIN_REQUESTS: &str = "culm_admin_requests_total";
/// Admin API request latency (`route`, `method`, `status`).
pub const ADMIN_DURATION: &str = "culm_admin_request_duration_seconds";

/// Histogram buckets for every `_seconds` histogram: 1 ms to 1 h.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle) and registers metric descriptions.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    SECONDS_BUCKETS,
                )
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (e.g. by an embedding test);
            // the handle then renders nothing, which is better than refusing to start.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            describe_scheduler();
            describe_traces();
            culm_jobs::http::metrics::describe();
            describe_postgres();
            // The recorder keeps every histogram sample until `run_upkeep` folds it into
            // the buckets. Only scrapes did that, so a process nobody scraped grew by two
            // samples per run. A thread rather than a task: `install` may run outside a
            // runtime.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("culm-metrics-upkeep".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("metrics upkeep thread not started ({e}); histograms are folded only when scraped");
            }
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The pool of `queue` runs `n` workers in this process.
pub fn capacity(queue: &str, tier: &'static str, n: u32) {
    gauge!(WORKERS_CAPACITY, "queue" => queue.to_owned(), "tier" => tier).set(f64::from(n));
}

/// One admin request was answered.
pub fn admin_request(route: String, method: String, status: u16, secs: f64) {
    let status = status.to_string();
    counter!(ADMIN_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status.clone())
        .increment(1);
    histogram!(ADMIN_DURATION, "route" => route, "method" => method, "status" => status).record(secs);
}

/// Registers descriptions for the exporter.
pub fn describe() {
    describe_gauge!(QUEUE_JOBS, "Jobs in a queue by state (refreshed on an interval).");
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest due job waiting for a worker."
    );
    describe_gauge!(QUEUE_PAUSED, "1 while the queue is paused.");
    describe_gauge!(WORKERS_CAPACITY, "Pool size of each queue running in this process.");
    describe_counter!(ADMIN_REQUESTS, "Admin API requests.");
    describe_histogram!(ADMIN_DURATION, metrics::Unit::Seconds, "Admin API request latency.");
    describe_counter!(JOBS_ENQUEUED, "Jobs stored.");
    describe_counter!(
        JOBS_DEDUPLICATED,
        "Enqueues answered with an earlier job (idempotency key or id already stored)."
    );
    describe_counter!(
        SCHEDULES_FORGOTTEN,
        "Schedules whose Redis state was deleted because they left the catalog."
    );
    describe_counter!(JOBS_STARTED, "Job runs started.");
    describe_counter!(JOBS_SUCCEEDED, "Job runs that succeeded.");
    describe_counter!(JOBS_FAILED, "Job runs that failed.");
    describe_counter!(JOBS_RETRIED, "Failed runs scheduled for another attempt.");
    describe_counter!(JOBS_DEFERRED, "Runs deferred without spending an attempt.");
    describe_counter!(JOBS_EXPIRED, "Jobs not run because their expires_at had passed.");
    describe_counter!(
        JOBS_CANCELLED,
        "Runs whose handler stopped on an operator's cancellation."
    );
    describe_counter!(JOBS_DEAD, "Jobs moved to the dead letters.");
    describe_histogram!(JOB_DURATION, metrics::Unit::Seconds, "Job run time.");
    describe_histogram!(JOB_WAIT, metrics::Unit::Seconds, "Time from due to start.");
    describe_gauge!(WORKERS_BUSY, "Jobs running in this process.");
    describe_counter!(
        LEASES_REAPED,
        "Expired leases settled by the reaper (returned to their queue or dead-lettered)."
    );
    describe_counter!(STORE_ERRORS, "Redis errors on the hot path.");
    describe_counter!(
        DEAD_TRIMMED,
        "Dead jobs deleted from Redis because they died longer than worker.dead_retention ago."
    );
}

/// An enqueue was answered with an earlier job.
pub fn deduplicated(queue: &str) {
    counter!(JOBS_DEDUPLICATED, "queue" => queue.to_owned()).increment(1);
}

/// Schedules left the catalog and their state was deleted.
pub fn schedules_forgotten(n: usize) {
    counter!(SCHEDULES_FORGOTTEN).increment(n as u64);
}

/// A job was stored.
pub fn enqueued(queue: &str, job: &str) {
    counter!(JOBS_ENQUEUED, "queue" => queue.to_owned(), "job" => job.to_owned()).increment(1);
}

/// One pool's run metrics. Each job type's handles are registered on its first run and
/// kept: building a labelled key and finding it in the recorder's registry on every run
/// cost about 7 % of the worker's CPU per job in a drain. An outcome's series is
/// registered only when it first happens, so /metrics shows what `started` and
/// `finished` always showed.
pub struct RunMetrics {
    queue: Arc<str>,
    tier: &'static str,
    /// Registered on the first run: an idle pool registers nothing, as before.
    shared: OnceLock<(Gauge, Histogram)>,
    jobs: RwLock<HashMap<String, Arc<JobMetrics>>>,
}

/// The handles of one job type in one queue.
struct JobMetrics {
    started: Counter,
    duration: Histogram,
    outcomes: [OnceLock<Counter>; 6],
}

impl RunMetrics {
    /// The metrics of `queue` (of `tier`).
    pub fn new(queue: &str, tier: &'static str) -> Self {
        RunMetrics {
            queue: Arc::from(queue),
            tier,
            shared: OnceLock::new(),
            jobs: RwLock::default(),
        }
    }

    /// The queue's busy gauge and wait histogram.
    fn shared(&self) -> &(Gauge, Histogram) {
        self.shared.get_or_init(|| {
            (
                gauge!(WORKERS_BUSY, "queue" => self.queue.to_string()),
                histogram!(JOB_WAIT, "queue" => self.queue.to_string(), "tier" => self.tier),
            )
        })
    }

    fn job(&self, job: &str) -> Arc<JobMetrics> {
        let read = self.jobs.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = read.get(job) {
            return m.clone();
        }
        drop(read);
        let mut write = self.jobs.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        write
            .entry(job.to_owned())
            .or_insert_with(|| {
                Arc::new(JobMetrics {
                    started: counter!(JOBS_STARTED, "queue" => self.queue.to_string(), "job" => job.to_owned()),
                    duration: histogram!(JOB_DURATION, "queue" => self.queue.to_string(), "job" => job.to_owned()),
                    outcomes: Default::default(),
                })
            })
            .clone()
    }

    fn outcome(&self, m: &JobMetrics, job: &str, i: usize, name: &'static str) {
        m.outcomes[i]
            .get_or_init(|| counter!(name, "queue" => self.queue.to_string(), "job" => job.to_owned()))
            .increment(1);
    }

    /// A run of `job` started after waiting `wait_s`.
    pub fn started(&self, job: &str, wait_s: f64) {
        self.job(job).started.increment(1);
        let (busy, wait) = self.shared();
        wait.record(wait_s);
        busy.increment(1.0);
    }

    /// A run of `job` ended after `secs`; `ended` is how it counts, `None` when its
    /// outcome was not applied (its lease had been taken over).
    pub fn finished(&self, job: &str, ended: Option<Ended>, secs: f64) {
        let m = self.job(job);
        self.shared().0.decrement(1.0);
        m.duration.record(secs);
        match ended {
            None => {}
            Some(Ended::Succeeded) => self.outcome(&m, job, 0, JOBS_SUCCEEDED),
            Some(Ended::Deferred) => self.outcome(&m, job, 1, JOBS_DEFERRED),
            Some(Ended::Cancelled) => self.outcome(&m, job, 2, JOBS_CANCELLED),
            Some(Ended::Retried) => {
                self.outcome(&m, job, 3, JOBS_FAILED);
                self.outcome(&m, job, 4, JOBS_RETRIED);
            }
            Some(Ended::Dead) => {
                self.outcome(&m, job, 3, JOBS_FAILED);
                self.outcome(&m, job, 5, JOBS_DEAD);
            }
        }
    }
}

/// How a run ended, for counting.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    Succeeded,
    /// Failed, will retry.
    Retried,
    /// Not run now, without spending an attempt.
    Deferred,
    /// Failed for good.
    Dead,
    /// Stopped on an operator's cancellation.
    Cancelled,
}

/// A job was not run because its `expires_at` had passed.
pub fn expired(queue: &str, job: &str) {
    counter!(JOBS_EXPIRED, "queue" => queue.to_owned(), "job" => job.to_owned()).increment(1);
}

/// A job was dead-lettered without running (unknown type, corrupt body).
pub fn dead_without_run(queue: &str, job: &str) {
    counter!(JOBS_DEAD, "queue" => queue.to_owned(), "job" => job.to_owned()).increment(1);
}

/// A hot-path Redis call failed.
pub fn store_error(queue: &str, op: &'static str) {
    counter!(STORE_ERRORS, "queue" => queue.to_owned(), "op" => op).increment(1);
}

/// The reaper deleted `n` dead jobs of `queue` past their retention.
pub fn dead_trimmed(queue: &str, n: u64) {
    counter!(DEAD_TRIMMED, "queue" => queue.to_owned()).increment(n);
}

/// The reaper settled an expired lease; `dead` when that was the job's last attempt.
pub fn reaped(queue: &str, job: &str, dead: bool) {
    counter!(LEASES_REAPED, "queue" => queue.to_owned()).increment(1);
    if dead {
        counter!(JOBS_DEAD, "queue" => queue.to_owned(), "job" => job.to_owned()).increment(1);
    }
}

// --- Scheduler --------------------------------------------------------------------------

/// Ticks decided by this replica (`schedule`, `outcome`): `fired`, `caught_up`,
/// `triggered`, `skipped_overlap`, `claimed_elsewhere`, `stale`, `paused`, `missed`,
/// `error`. Summed over replicas, `fired` counts each tick once.
pub const SCHEDULE_FIRES: &str = "culm_schedule_fires_total";
/// Fire lag: when the job was enqueued minus the tick's intended time (`schedule`).
pub const SCHEDULE_LAG: &str = "culm_schedule_lag_seconds";
/// Unix time at which this replica last enqueued a job for the schedule (`schedule`).
pub const SCHEDULE_LAST_FIRE: &str = "culm_schedule_last_fire_timestamp_seconds";

/// Registers descriptions of the scheduler's metrics.
pub fn describe_scheduler() {
    describe_counter!(SCHEDULE_FIRES, "Schedule ticks decided by this replica, by outcome.");
    describe_histogram!(
        SCHEDULE_LAG,
        metrics::Unit::Seconds,
        "Enqueue time minus intended tick time."
    );
    describe_gauge!(SCHEDULE_LAST_FIRE, "Unix time this replica last fired the schedule.");
}

/// A schedule's tick was decided with `outcome`; `(lag_s, fired_at_s)` when a job was enqueued.
pub fn schedule_tick(schedule: &str, outcome: &'static str, fired: Option<(f64, f64)>) {
    counter!(SCHEDULE_FIRES, "schedule" => schedule.to_owned(), "outcome" => outcome).increment(1);
    if let Some((lag_s, fired_at_s)) = fired {
        histogram!(SCHEDULE_LAG, "schedule" => schedule.to_owned()).record(lag_s);
        gauge!(SCHEDULE_LAST_FIRE, "schedule" => schedule.to_owned()).set(fired_at_s);
    }
}

// --- Integrations -----------------------------------------------------------------------
// Recorded by culm-jobs' client stack (which cannot depend on this crate), so the names
// are defined there and re-exported here; `install` registers their descriptions.

/// Calls deferred because the breaker was open (`integration`).
pub use culm_jobs::http::metrics::BREAKER_REJECTED as INTEGRATION_BREAKER_REJECTED;
/// Breaker state, 0 closed / 1 half-open / 2 open (`integration`).
pub use culm_jobs::http::metrics::BREAKER_STATE as INTEGRATION_BREAKER_STATE;
/// Breaker transitions (`integration`, `to`).
pub use culm_jobs::http::metrics::BREAKER_TRANSITIONS as INTEGRATION_BREAKER_TRANSITIONS;
/// Latency of one upstream attempt (`integration`, `endpoint`).
pub use culm_jobs::http::metrics::DURATION as INTEGRATION_DURATION;
/// An endpoint's rate in force, requests per second (`integration`, `endpoint`).
pub use culm_jobs::http::metrics::EFFECTIVE_RATE as INTEGRATION_EFFECTIVE_RATE;
/// Rate-limit waits, deferrals and upstream push-backs (`integration`, `endpoint`, `action`).
pub use culm_jobs::http::metrics::RATE_LIMITED as INTEGRATION_RATE_LIMITED;
/// Upstream responses (`integration`, `endpoint`, `status` or `transport`/`timeout`).
pub use culm_jobs::http::metrics::REQUESTS as INTEGRATION_REQUESTS;
// --- PostgreSQL: ledger and outbox ------------------------------------------------------

/// Ledger rows inserted into PostgreSQL, including replayed spills.
pub const LEDGER_WRITTEN: &str = "culm_ledger_rows_written_total";
/// Ledger rows spilled to the Redis stream while PostgreSQL was unavailable.
pub const LEDGER_SPILLED: &str = "culm_ledger_rows_spilled_total";
/// Spilled ledger rows replayed into PostgreSQL.
pub const LEDGER_REPLAYED: &str = "culm_ledger_rows_replayed_total";
/// Ledger rows dropped (`reason`: buffer_full, overflow, shutdown, writer_stopped, spill_full,
/// unreadable_full (in entries)); each drop is also logged.
pub const LEDGER_DROPPED: &str = "culm_ledger_rows_dropped_total";
/// Time of one ledger batch insert.
pub const LEDGER_FLUSH: &str = "culm_ledger_flush_seconds";
/// Outbox rows relayed to Redis (`result`: enqueued, rejected).
pub const OUTBOX_RELAYED: &str = "culm_outbox_rows_total";
/// Failed outbox relay steps (rolled back and retried).
pub const OUTBOX_ERRORS: &str = "culm_outbox_errors_total";

/// Registers descriptions of the PostgreSQL metrics.
pub fn describe_postgres() {
    describe_counter!(LEDGER_WRITTEN, "Ledger rows inserted into PostgreSQL.");
    describe_counter!(
        LEDGER_SPILLED,
        "Ledger rows spilled to Redis while PostgreSQL was unavailable."
    );
    describe_counter!(LEDGER_REPLAYED, "Spilled ledger rows replayed into PostgreSQL.");
    describe_counter!(LEDGER_DROPPED, "Ledger rows dropped, by reason (each drop is logged).");
    describe_histogram!(LEDGER_FLUSH, metrics::Unit::Seconds, "Ledger batch insert time.");
    describe_counter!(OUTBOX_RELAYED, "Outbox rows relayed, by result.");
    describe_counter!(OUTBOX_ERRORS, "Failed outbox relay steps.");
}

/// `n` ledger rows were inserted in `secs`.
pub fn ledger_written(n: u64, secs: f64) {
    counter!(LEDGER_WRITTEN).increment(n);
    histogram!(LEDGER_FLUSH).record(secs);
}

/// `n` ledger rows were spilled.
pub fn ledger_spilled(n: u64) {
    counter!(LEDGER_SPILLED).increment(n);
}

/// `n` spilled rows were replayed.
pub fn ledger_replayed(n: u64) {
    counter!(LEDGER_REPLAYED).increment(n);
}

/// `n` ledger rows were dropped for `reason`.
pub fn ledger_dropped(reason: &'static str, n: u64) {
    counter!(LEDGER_DROPPED, "reason" => reason).increment(n);
}

/// An outbox step moved `enqueued` rows and rejected `rejected`.
pub fn outbox_relayed(enqueued: u64, rejected: u64) {
    counter!(OUTBOX_RELAYED, "result" => "enqueued").increment(enqueued);
    if rejected > 0 {
        counter!(OUTBOX_RELAYED, "result" => "rejected").increment(rejected);
    }
}

/// An outbox relay step failed.
pub fn outbox_error() {
    counter!(OUTBOX_ERRORS).increment(1);
}

/// Spans sent to the OTLP collector.
pub const TRACE_SPANS_EXPORTED: &str = "culm_trace_spans_exported_total";
/// Spans never sent (`reason`: `queue_full`, the export queue was full; `export_failed`,
/// the collector refused or could not be reached; `stopped`, ended after shutdown).
pub const TRACE_SPANS_DROPPED: &str = "culm_trace_spans_dropped_total";

fn describe_traces() {
    describe_counter!(TRACE_SPANS_EXPORTED, "Spans sent to the OTLP collector");
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans never sent, by reason (queue_full, export_failed, stopped)"
    );
}

/// `n` spans were exported.
pub fn trace_spans_exported(n: u64) {
    counter!(TRACE_SPANS_EXPORTED).increment(n);
}

/// `n` spans were dropped for `reason`.
pub fn trace_spans_dropped(reason: &'static str, n: u64) {
    counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(n);
}
