//! The job ledger: one `culm_job_runs` row per attempt, written off the hot path.
//!
//! Workers hand rows to [`Ledger::record`], which never waits: it puts the row on a bounded
//! channel. One [`LedgerWriter`] task per process drains the channel every
//! `flush_interval`, or as soon as `flush_batch` rows wait, and writes what it took in
//! batches of up to `flush_batch` rows, each with one multi-row
//! `INSERT … SELECT FROM UNNEST(…)`. Dead runs also upsert the
//! dead-letter archive (`culm_dead_jobs`) in the same transaction.
//!
//! When PostgreSQL fails or is slow, the batch is spilled (policy `redis`) to the stream
//! `{<prefix>}:ledger:spill`, shared by all replicas, and replayed by whichever replica
//! next reaches PostgreSQL. Rows carry a ULID `run_id` (the primary key), and replays
//! are inserted `ON CONFLICT DO NOTHING`, so a replay after a partial failure
//! never duplicates a row. Fresh rows are inserted plainly, which costs PostgreSQL less
//! per row; a fresh batch that meets a row already written (resent after a lost reply)
//! is written again the replay's way.
//! A row is dropped only when it fits nowhere (the channel is full, or PostgreSQL and the
//! spill both fail and `buffer_size` rows are already held) or falls off the spill's bound
//! (`spill_max_rows`: the stream and its `:unreadable` sibling keep their newest entries);
//! every drop is logged and counted in `culm_ledger_rows_dropped_total`.
mod writer;

use super::Db;
use crate::store::RedisConn;
use crate::{config::LedgerConfig, telemetry};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

/// What an attempt ended in, as stored in `culm_job_runs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The handler succeeded.
    Succeeded,
    /// It failed and another attempt is scheduled.
    FailedWillRetry,
    /// It failed for good and was dead-lettered.
    Dead,
    /// It asked to run later without spending an attempt.
    Deferred,
    /// Its handler stopped on an operator's cancellation.
    Cancelled,
    /// It finished, but its lease had expired and been taken over (the job was delivered
    /// again), so its outcome was not applied.
    Superseded,
    /// It was not run: its `expires_at` had passed when the attempt would have started.
    Expired,
}

impl RunOutcome {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::FailedWillRetry => "failed_will_retry",
            RunOutcome::Dead => "dead",
            RunOutcome::Deferred => "deferred",
            RunOutcome::Superseded => "superseded",
            RunOutcome::Expired => "expired",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// What the archive needs of a dead job besides its ledger row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadInfo {
    /// The job's payload.
    pub payload: Box<RawValue>,
    pub idempotency_key: Option<String>,
}

/// One attempt of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerRow {
    /// ULID of this run (the primary key; makes replays idempotent).
    pub run_id: String,
    pub job_id: String,
    pub job: String,
    pub queue: String,
    pub tier: String,
    pub attempt: u32,
    pub outcome: RunOutcome,
    /// Error text, for failures and deferrals.
    pub error: Option<String>,
    /// Enqueue time, ms.
    pub enqueued_at_ms: Option<i64>,
    /// Handler start, µs (absent when it never started).
    pub started_at_us: Option<i64>,
    /// When the run's outcome was recorded, µs.
    pub finished_at_us: i64,
    /// Handler run time, ms.
    pub duration_ms: f64,
    /// Retries and deferrals: the next attempt's due time, ms.
    pub next_run_at_ms: Option<i64>,
    /// `hostname-pid` of the process that ran it.
    pub worker_id: String,
    /// The handler's summary (bounded to 512 bytes by the dispatcher).
    pub summary: Option<String>,
    /// Set on dead runs: what the archive keeps.
    pub dead: Option<DeadInfo>,
}

/// Counters of a ledger writer (also exported as metrics).
#[derive(Debug, Default)]
pub struct LedgerCounters {
    /// Rows sent to PostgreSQL in committed inserts (including replays, and rows a
    /// replay found already there).
    pub written: AtomicU64,
    /// Rows spilled to Redis.
    pub spilled: AtomicU64,
    /// Rows dropped (never silently: each drop is logged too).
    pub dropped: AtomicU64,
}

/// The producer side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Ledger {
    tx: mpsc::Sender<LedgerRow>,
    counters: Arc<LedgerCounters>,
    /// Rows in the channel that make the writer write before its tick.
    batch: usize,
    /// Wakes the writer once the channel holds `batch` rows.
    full: Arc<Notify>,
    last_warn: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Ledger {
    /// Queues a row for the writer. If the buffer is full the row is dropped, counted and
    /// logged (at most one warning per 10 s).
    pub fn record(&self, row: LedgerRow) {
        let reason = match self.tx.try_send(row) {
            Ok(()) => {
                // The writer takes rows on its tick; a full batch should not wait for it
                // (nor a long flush_interval fill the channel). Below the threshold this
                // is one subtraction; above it, a permit the writer takes once.
                if self.tx.max_capacity() - self.tx.capacity() >= self.batch {
                    self.full.notify_one();
                }
                return;
            }
            Err(mpsc::error::TrySendError::Full(_)) => "buffer_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "writer_stopped",
        };
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        telemetry::ledger_dropped(reason, 1);
        if let Ok(mut last) = self.last_warn.lock()
            && last.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            *last = Some(Instant::now());
            tracing::error!(
                reason,
                "ledger row dropped (see culm_ledger_rows_dropped_total); raise database.ledger.buffer_size or check PostgreSQL"
            );
        }
    }

    /// The writer's counters.
    pub fn counters(&self) -> &Arc<LedgerCounters> {
        &self.counters
    }
}

/// The writer task; [`LedgerWriter::shutdown`] flushes what is buffered.
#[derive(Debug)]
pub struct LedgerWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LedgerWriter {
    /// Stops accepting rows, writes (or spills) what is buffered, and waits up to `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::error!(
                "ledger writer did not finish within {}; buffered rows are lost",
                humantime::format_duration(timeout)
            );
            task.abort();
        }
    }
}

/// The Redis stream rows are spilled to.
pub fn spill_key(prefix: &str) -> String {
    format!("{{{prefix}}}:ledger:spill")
}

/// Starts the writer. `redis` and `prefix` locate the spill stream.
pub fn start(db: Db, redis: RedisConn, prefix: &str, config: LedgerConfig) -> (Ledger, LedgerWriter) {
    let (tx, rx) = mpsc::channel(config.buffer_size);
    let (stop, stop_rx) = watch::channel(false);
    let counters = Arc::new(LedgerCounters::default());
    let full = Arc::new(Notify::new());
    let batch = config.flush_batch;
    let handoff = writer::Handoff { rx, full: full.clone() };
    let task = writer::spawn(db, redis, spill_key(prefix), config, counters.clone(), handoff, stop_rx);
    (
        Ledger {
            tx,
            counters,
            batch,
            full,
            last_warn: Arc::default(),
        },
        LedgerWriter { stop, task },
    )
}
