//! The writer task: drains the channel, inserts batches in one transaction with the
//! archive rows of dead runs, and spills to (and replays from) the Redis stream while
//! PostgreSQL is unavailable.
use super::{LedgerCounters, LedgerRow};
use crate::{
    config::{LedgerConfig, SpillPolicy},
    db::{
        Db,
        dead::{DeadRun, archive},
    },
    store::RedisConn,
    telemetry,
};
use chrono::{DateTime, Utc};
use redis::Script;
use std::{
    sync::{Arc, LazyLock, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

/// Starts the writer task over the producer side's channel.
pub(super) fn spawn(
    db: Db,
    redis: RedisConn,
    spill_key: String,
    config: LedgerConfig,
    counters: Arc<LedgerCounters>,
    handoff: Handoff,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let writer = Writer {
        db,
        redis,
        spill_key,
        config,
        counters,
        spill_pending: true, // a previous process may have left rows behind
        spill_checked: Instant::now(),
        pg_retry_at: None,
        pg_backoff: Duration::from_millis(200),
        last_error_log: None,
        last_drop_log: None,
    };
    tokio::spawn(writer.run(handoff, stop))
}

/// The writer's end of the channel from the workers, and the signal that it holds a
/// full batch.
pub(super) struct Handoff {
    pub(super) rx: mpsc::Receiver<LedgerRow>,
    pub(super) full: Arc<Notify>,
}

struct Writer {
    db: Db,
    redis: RedisConn,
    spill_key: String,
    config: LedgerConfig,
    counters: Arc<LedgerCounters>,
    /// The spill stream may hold rows (checked at start, after each spill, and every
    /// `SPILL_RECHECK`, since another replica may have spilled and stopped).
    spill_pending: bool,
    spill_checked: Instant,
    /// While PostgreSQL is failing: do not try it again before this.
    pg_retry_at: Option<Instant>,
    pg_backoff: Duration,
    last_error_log: Option<Instant>,
    /// Drops by the spill bound are logged at most once per `DROP_LOG_EVERY`.
    last_drop_log: Option<Instant>,
}

/// Appends ARGV[2..] to the stream KEYS[1], one entry each (field `rows`), then trims it
/// to its newest ARGV[1] entries; returns how many entries the trim removed. One script,
/// so no reader ever sees the stream above its bound and each trimmed entry is counted
/// once, whichever replica trimmed it.
static APPEND_BOUNDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'rows', ARGV[i]) end \
         return redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])",
    )
});
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Most spill entries one Redis call appends or reads, whatever `flush_batch` is.
const SPILL_CHUNK: usize = 1000;
/// How often a writer looks for rows other replicas spilled.
const SPILL_RECHECK: Duration = Duration::from_secs(30);

impl Writer {
    async fn run(mut self, handoff: Handoff, mut stop: watch::Receiver<bool>) {
        let Handoff { mut rx, full } = handoff;
        let batch = self.config.flush_batch;
        let mut buf: Vec<LedgerRow> = Vec::with_capacity(batch);
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when the last flush could neither write nor spill: wait for the next tick
        // instead of retrying at once, and keep taking rows up to `buffer_size`.
        let mut stalled = false;
        // Rows are taken from the channel on the tick, or once it holds a full batch, not
        // as they arrive: waking for every acknowledged batch slowed the workers (the
        // drain with the ledger on was 2-7 % slower; BENCHMARKS.md). A wake-up writes
        // what the channel holds, `flush_batch` rows per transaction.
        loop {
            let limit = if stalled { self.config.buffer_size } else { batch };
            if !take_ready(&mut rx, &mut buf, limit) {
                self.flush_all(&mut buf).await;
                return;
            }
            if stalled || buf.len() < batch {
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        // Take what the workers already handed over, then write it.
                        rx.close();
                        while let Some(r) = rx.recv().await {
                            buf.push(r);
                        }
                        self.flush_all(&mut buf).await;
                        return;
                    }
                    _ = tick.tick() => {}
                    // Stalled, retries wait for the tick however full the channel is.
                    _ = full.notified(), if !stalled => {}
                }
                if !take_ready(&mut rx, &mut buf, limit) {
                    self.flush_all(&mut buf).await;
                    return;
                }
            }
            // Even with nothing taken: the flush replays rows another process spilled.
            let before = buf.len();
            self.flush(&mut buf).await;
            stalled = !buf.is_empty() && buf.len() >= before;
        }
    }

    /// Final flush at shutdown: everything, batch by batch, with one attempt each.
    async fn flush_all(&mut self, buf: &mut Vec<LedgerRow>) {
        self.pg_retry_at = None;
        while !buf.is_empty() {
            let before = buf.len();
            self.flush(buf).await;
            if buf.len() >= before {
                let n = buf.len() as u64;
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                telemetry::ledger_dropped("shutdown", n);
                tracing::error!(
                    rows = n,
                    "ledger rows could not be written or spilled at shutdown; dropped"
                );
                buf.clear();
            }
        }
    }

    fn pg_available(&self) -> bool {
        self.pg_retry_at.is_none_or(|t| Instant::now() >= t)
    }

    fn pg_failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.pg_retry_at = Some(Instant::now() + self.pg_backoff);
        self.pg_backoff = (self.pg_backoff * 2).min(Duration::from_secs(5));
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.last_error_log = Some(Instant::now());
            tracing::warn!("ledger: {what} failed ({e}); spilling per database.ledger.spill until PostgreSQL is back");
        }
    }

    fn pg_ok(&mut self) {
        if self.pg_retry_at.take().is_some() {
            tracing::info!("ledger: PostgreSQL is reachable again");
        }
        self.pg_backoff = Duration::from_millis(200);
    }

    /// Writes up to one batch of `buf` (after replaying any spill), spilling on failure.
    async fn flush(&mut self, buf: &mut Vec<LedgerRow>) {
        if self.spill_checked.elapsed() >= SPILL_RECHECK {
            self.spill_checked = Instant::now();
            self.spill_pending = true;
        }
        if self.spill_pending && self.pg_available() {
            self.replay().await;
        }
        if buf.is_empty() {
            return;
        }
        let n = buf.len().min(self.config.flush_batch);
        // While spilled rows wait, new rows go behind them so the archive's error history
        // (read from earlier ledger rows) is complete when a dead row lands.
        if !self.spill_pending && self.pg_available() {
            match self.insert(&buf[..n], Origin::Fresh).await {
                Ok(()) => {
                    self.pg_ok();
                    buf.drain(..n);
                    return;
                }
                Err(e) => self.pg_failed("writing the ledger", &e),
            }
        }
        if self.config.spill == SpillPolicy::Redis {
            // In chunks: one script call appending a whole batch would hold Redis (and
            // every queue's fetches) for milliseconds.
            let mut spilled = 0;
            let mut failed = None;
            for chunk in buf[..n].chunks(SPILL_CHUNK) {
                match self.spill(chunk).await {
                    Ok(()) => spilled += chunk.len(),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            buf.drain(..spilled);
            match failed {
                None => return,
                Some(e) => tracing::error!(
                    "ledger: spilling {} rows to Redis failed ({e}); holding them in memory",
                    n - spilled
                ),
            }
        }
        // Held in memory: bounded by buffer_size.
        let cap = self.config.buffer_size;
        if buf.len() > cap {
            let excess = buf.len() - cap;
            buf.drain(..excess);
            self.counters.dropped.fetch_add(excess as u64, Ordering::Relaxed);
            telemetry::ledger_dropped("overflow", excess as u64);
            tracing::error!(
                rows = excess,
                "ledger rows dropped: PostgreSQL unavailable and the buffer is full"
            );
        }
    }

    async fn insert(&self, rows: &[LedgerRow], origin: Origin) -> Result<(), sqlx::Error> {
        let start = Instant::now();
        // A slow PostgreSQL must not stall the writer for the whole statement timeout.
        let limit = self.config.flush_interval.max(Duration::from_secs(2));
        let write = async {
            match insert_rows(&self.db, rows, origin).await {
                // A batch kept in memory after a write whose reply was lost may have been
                // committed after all: write it again, skipping what is there.
                Err(e) if origin == Origin::Fresh && already_written(&e) => {
                    insert_rows(&self.db, rows, Origin::MaybeWritten).await
                }
                r => r,
            }
        };
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        self.counters.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
        telemetry::ledger_written(rows.len() as u64, start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Appends `rows` to the spill stream, one entry per row so that `spill_max_rows`
    /// bounds rows exactly; the oldest rows beyond it are trimmed and counted as dropped.
    async fn spill(&mut self, rows: &[LedgerRow]) -> Result<(), redis::RedisError> {
        let entries = rows
            .iter()
            .map(|r| serde_json::to_string(std::slice::from_ref(r)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "serialize", e.to_string())))?;
        let key = self.spill_key.clone();
        self.append_bounded(&key, &entries, "spill_full").await?;
        self.spill_pending = true;
        self.counters.spilled.fetch_add(rows.len() as u64, Ordering::Relaxed);
        telemetry::ledger_spilled(rows.len() as u64);
        Ok(())
    }

    /// Appends `entries` to the stream `key`, keeping its newest `spill_max_rows`; what the
    /// bound trimmed is counted under `reason` and logged (at most every `DROP_LOG_EVERY`).
    async fn append_bounded(
        &mut self,
        key: &str,
        entries: &[String],
        reason: &'static str,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.clone();
        let mut invoke = APPEND_BOUNDED.prepare_invoke();
        invoke.key(key).arg(self.config.spill_max_rows);
        for e in entries {
            invoke.arg(e);
        }
        let trimmed: u64 = invoke.invoke_async(&mut conn).await?;
        if trimmed > 0 {
            self.counters.dropped.fetch_add(trimmed, Ordering::Relaxed);
            telemetry::ledger_dropped(reason, trimmed);
            if self.last_drop_log.is_none_or(|t| t.elapsed() > DROP_LOG_EVERY) {
                self.last_drop_log = Some(Instant::now());
                tracing::error!(
                    reason,
                    stream = key,
                    entries = trimmed,
                    max = self.config.spill_max_rows,
                    "ledger: oldest spilled entries trimmed at database.ledger.spill_max_rows and lost to the ledger \
                     (see culm_ledger_rows_dropped_total); PostgreSQL has been unavailable for long"
                );
            }
        }
        Ok(())
    }

    /// Moves spilled rows into PostgreSQL, oldest first, up to `flush_batch` rows per
    /// transaction, until the stream is empty or a write fails.
    async fn replay(&mut self) {
        let unreadable_key = format!("{}:unreadable", self.spill_key);
        loop {
            let mut conn = self.redis.clone();
            // [[id, [field, value, ...]], ...]; each entry has one field, `rows`.
            let entries: redis::RedisResult<Vec<(String, Vec<String>)>> = redis::cmd("XRANGE")
                .arg(&self.spill_key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(self.config.flush_batch.min(SPILL_CHUNK))
                .query_async(&mut conn)
                .await;
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("ledger: reading the spill stream failed: {e}");
                    return;
                }
            };
            if entries.is_empty() {
                self.spill_pending = false;
                return;
            }
            let (mut rows, mut ids, mut unreadable, mut unreadable_ids) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, fields) in entries {
                let raw = fields.get(1).map(String::as_str).unwrap_or("[]");
                match serde_json::from_str::<Vec<LedgerRow>>(raw) {
                    Ok(r) => {
                        rows.extend(r);
                        ids.push(id);
                    }
                    Err(e) => {
                        // Written by a culm whose row format differs: keep it for a human.
                        tracing::error!(entry = %id, "ledger: unreadable spill entry moved aside: {e}");
                        unreadable.push(raw.to_owned());
                        unreadable_ids.push(id);
                    }
                }
                // Entries of older culms hold a batch each.
                if rows.len() >= self.config.flush_batch {
                    break;
                }
            }
            if !unreadable.is_empty() {
                if let Err(e) = self
                    .append_bounded(&unreadable_key, &unreadable, "unreadable_full")
                    .await
                {
                    tracing::warn!("ledger: moving unreadable spill entries aside failed: {e}");
                    return;
                }
                xdel(&mut conn, &self.spill_key, &unreadable_ids).await;
            }
            if !rows.is_empty() {
                for chunk in rows.chunks(self.config.flush_batch) {
                    if let Err(e) = self.insert(chunk, Origin::MaybeWritten).await {
                        self.pg_failed("replaying spilled ledger rows", &e);
                        return;
                    }
                }
                self.pg_ok();
                telemetry::ledger_replayed(rows.len() as u64);
                xdel(&mut conn, &self.spill_key, &ids).await;
            }
        }
    }
}

/// Moves rows already in the channel into `buf`, up to `limit`, without waiting; false
/// once every sender is gone and the channel is empty.
fn take_ready(rx: &mut mpsc::Receiver<LedgerRow>, buf: &mut Vec<LedgerRow>, limit: usize) -> bool {
    while buf.len() < limit {
        match rx.try_recv() {
            Ok(r) => buf.push(r),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

async fn xdel(conn: &mut RedisConn, key: &str, ids: &[String]) {
    let done: redis::RedisResult<()> = redis::cmd("XDEL").arg(key).arg(ids).query_async(conn).await;
    if let Err(e) = done {
        // They stay and are replayed again, harmlessly (inserts are idempotent).
        tracing::warn!("ledger: removing replayed entries from {key} failed: {e}");
    }
}

fn ts_us(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

fn ts_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Where a batch of rows comes from, which decides how it is inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Rows handed over by workers and not yet sent to PostgreSQL: a plain `INSERT`.
    Fresh,
    /// Rows that may already be in the table (replayed from the spill, or resent after a
    /// write whose outcome was unknown): `ON CONFLICT (run_id) DO NOTHING`. Not the
    /// default because PostgreSQL then checks the primary key before every row and
    /// writes an extra WAL record for it (a speculative insert): about a third more work
    /// per row, measured in BENCHMARKS.md.
    MaybeWritten,
}

/// The ledger's insert; `ON CONFLICT` is appended for [`Origin::MaybeWritten`].
const INSERT_RUNS: &str = "INSERT INTO culm_job_runs (run_id, job_id, job, queue, tier, attempt, outcome, error, \
     enqueued_at, started_at, finished_at, duration_ms, next_run_at, worker_id, summary) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], \
     $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::float8[], $13::timestamptz[], \
     $14::text[], $15::text[])";
const SKIP_WRITTEN: &str = " ON CONFLICT (run_id) DO NOTHING";

/// A row of the batch is already in the table (its `run_id`, the primary key).
fn already_written(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.constraint() == Some("culm_job_runs_pkey"))
}

/// One transaction: the ledger rows, then the archive rows of dead runs.
async fn insert_rows(db: &Db, rows: &[LedgerRow], origin: Origin) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let sql = match origin {
        Origin::Fresh => std::borrow::Cow::Borrowed(INSERT_RUNS),
        Origin::MaybeWritten => std::borrow::Cow::Owned(format!("{INSERT_RUNS}{SKIP_WRITTEN}")),
    };
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.job.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.queue.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tier.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.enqueued_at_ms.and_then(ts_ms))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.started_at_us.and_then(ts_us)).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| ts_us(r.finished_at_us).unwrap_or_else(Utc::now))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.next_run_at_ms.and_then(ts_ms))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.worker_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.summary.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    // The latest death of each job in this batch (ON CONFLICT DO UPDATE may touch a row
    // once); a replayed batch may hold an older death after a newer one.
    let mut dead: Vec<DeadRun<'_>> = Vec::new();
    for (r, info) in rows.iter().filter_map(|r| Some((r, r.dead.as_ref()?))) {
        if dead
            .iter()
            .any(|d| d.job_id == r.job_id && d.died_at_us > r.finished_at_us)
        {
            continue;
        }
        dead.retain(|d| d.job_id != r.job_id);
        dead.push(DeadRun {
            job_id: &r.job_id,
            job: &r.job,
            queue: &r.queue,
            tier: &r.tier,
            payload: &info.payload,
            idempotency_key: info.idempotency_key.as_deref(),
            attempts: r.attempt,
            last_error: r.error.as_deref(),
            enqueued_at_ms: r.enqueued_at_ms,
            died_at_us: r.finished_at_us,
        });
    }
    if !dead.is_empty() {
        archive(&mut tx, &dead).await?;
    }
    tx.commit().await
}
