//! One queue's pool in this process: the fetcher (leases as many jobs as there are free
//! slots, sleeps until a push wakes it), the acker (writes acknowledgements in batches),
//! and lease upkeep (extends running jobs' leases, reaps expired ones).
use super::{JobEvent, dispatch::Completion};
use crate::{
    config::{QueueSettings, WorkerConfig},
    db::ledger::{DeadInfo, Ledger, LedgerRow, RunOutcome},
    store::{Ack, AckKind, Delivery, Store},
    telemetry,
};
use apalis_core::task::Task;
use culm_core::now_ms;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, broadcast, mpsc, watch};

/// A finished run waiting to be acknowledged.
#[derive(Debug)]
pub struct PendingAck {
    ack: Ack,
    job: String,
    started_at_us: i64,
    /// What the ledger records besides the ack (issue 6).
    ledger: LedgerExtra,
}

/// A run's details that only the ledger and the dead-letter archive need.
#[derive(Debug)]
struct LedgerExtra {
    enqueued_at_ms: i64,
    duration: Duration,
    summary: Option<String>,
    idempotency_key: Option<String>,
    payload: Option<Box<serde_json::value::RawValue>>,
}

impl From<Completion> for PendingAck {
    fn from(c: Completion) -> Self {
        PendingAck {
            ack: Ack {
                id: c.id,
                attempt: c.attempt,
                kind: c.kind,
                error: c.error,
            },
            job: c.job,
            started_at_us: c.started_at_us,
            ledger: LedgerExtra {
                enqueued_at_ms: c.enqueued_at_ms,
                duration: c.duration,
                summary: c.summary,
                idempotency_key: c.idempotency_key,
                payload: c.payload,
            },
        }
    }
}

/// State shared by a pool's tasks.
pub struct PoolShared {
    pub(super) queue: Arc<str>,
    pub(super) settings: Arc<QueueSettings>,
    pub(super) store: Store,
    pub(super) worker: WorkerConfig,
    /// Jobs leased by this process and not yet acknowledged: id → (attempt, finished).
    /// A finished job's lease is still extended until its acknowledgement lands, but its
    /// lease disappearing is expected (the ack may land first) and not worth a warning.
    inflight: Mutex<HashMap<String, (u32, bool)>>,
    /// Pool slots not holding a leased job.
    free: AtomicUsize,
    slot_freed: Notify,
    pub(super) wake: Arc<Notify>,
    ack_tx: mpsc::UnboundedSender<PendingAck>,
    events: broadcast::Sender<JobEvent>,
    /// The job ledger (issue 6), when PostgreSQL is configured.
    ledger: Option<Ledger>,
    worker_id: Arc<str>,
}

impl PoolShared {
    pub(super) fn new(
        settings: Arc<QueueSettings>,
        store: Store,
        worker: WorkerConfig,
        wake: Arc<Notify>,
        events: broadcast::Sender<JobEvent>,
        ledger: Option<Ledger>,
        worker_id: Arc<str>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<PendingAck>) {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(PoolShared {
            queue: Arc::from(settings.name.as_str()),
            free: AtomicUsize::new(settings.concurrency as usize),
            settings,
            store,
            worker,
            inflight: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            wake,
            ack_tx,
            events,
            ledger,
            worker_id,
        });
        (shared, ack_rx)
    }

    /// Queues a finished run for acknowledgement.
    pub(super) fn complete(&self, p: PendingAck) {
        if let Ok(mut m) = self.inflight.lock()
            && let Some(e) = m.get_mut(&p.ack.id)
        {
            e.1 = true;
        }
        if let Err(mpsc::error::SendError(p)) = self.ack_tx.send(p) {
            // The acker is gone (hard shutdown): the lease will expire and the job rerun.
            tracing::warn!(job_id = %p.ack.id, "acknowledgement dropped at shutdown; the job will be delivered again");
        }
    }

    /// Ids and attempts of every job this process holds.
    pub(super) fn held(&self) -> Vec<(String, u32)> {
        self.inflight
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.0)).collect())
            .unwrap_or_default()
    }

    /// Whether `id` is held and its handler is still running.
    fn running(&self, id: &str) -> bool {
        self.inflight
            .lock()
            .map(|m| m.get(id).is_some_and(|e| !e.1))
            .unwrap_or(false)
    }

    fn forget(&self, ids: impl Iterator<Item = String>) -> usize {
        let Ok(mut m) = self.inflight.lock() else { return 0 };
        ids.filter(|id| m.remove(id).is_some()).count()
    }
}

/// Sleeps for `d` unless `stop` fires first; returns false when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Leases jobs into the worker's channel whenever there are free slots.
pub(super) async fn fetch_loop(
    shared: Arc<PoolShared>,
    tx: mpsc::Sender<Task<Delivery>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut error_backoff = Duration::from_millis(50);
    let lease_ttl = shared.worker.lease_ttl;
    loop {
        if *stop.borrow() {
            return;
        }
        if shared.free.load(Ordering::Acquire) == 0 {
            tokio::select! {
                _ = shared.slot_freed.notified() => continue,
                _ = stop.changed() => return,
            }
        }
        // Register for wake-ups before fetching, so a push between an empty fetch and the
        // wait is not missed.
        let wake = shared.wake.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let want = shared.free.load(Ordering::Acquire);
        match shared.store.fetch(&shared.queue, want, lease_ttl).await {
            Ok(f) if !f.jobs.is_empty() => {
                error_backoff = Duration::from_millis(50);
                shared.free.fetch_sub(f.jobs.len(), Ordering::AcqRel);
                if let Ok(mut m) = shared.inflight.lock() {
                    m.extend(f.jobs.iter().map(|d| (d.id.clone(), (d.attempt, false))));
                }
                for d in f.jobs {
                    if tx.send(Task::new(d)).await.is_err() {
                        // The worker has stopped; the runtime hands back what we hold.
                        return;
                    }
                }
            }
            Ok(f) => {
                error_backoff = Duration::from_millis(50);
                let mut wait = shared.worker.idle_poll_interval;
                if let Some(due) = f.next_due.filter(|_| !f.paused) {
                    wait = wait.min(Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0).max(1)));
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                telemetry::store_error(&shared.queue, "fetch");
                tracing::warn!(queue = %shared.queue, "fetch failed, retrying in {}: {e}", humantime::format_duration(error_backoff));
                if !pause(error_backoff, &mut stop).await {
                    return;
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes acknowledgements in batches: whatever accumulated while the previous batch was
/// in flight goes in the next round trip. Once `finish` is set (the worker has stopped),
/// it writes what is left and ends; `abort` makes it give up retrying a failed write.
pub(super) async fn ack_loop(
    shared: Arc<PoolShared>,
    mut rx: mpsc::UnboundedReceiver<PendingAck>,
    mut finish: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    let max = shared.worker.ack_batch_max;
    let mut batch: Vec<PendingAck> = Vec::with_capacity(max);
    let mut acks: Vec<Ack> = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            biased;
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = finish.wait_for(|f| *f) => match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        acks.clear();
        acks.extend(batch.iter().map(|p| p.ack.clone()));
        let mut backoff = Duration::from_millis(50);
        loop {
            match shared.store.ack(&shared.queue, &acks).await {
                Ok(_) => break,
                Err(e) => {
                    telemetry::store_error(&shared.queue, "ack");
                    tracing::warn!(queue = %shared.queue, "acknowledging {} jobs failed, retrying: {e}", acks.len());
                    // On a hard shutdown, give up: the leases expire and the jobs run again.
                    if !pause(backoff, &mut abort).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(ledger) = &shared.ledger {
            record_runs(&shared, ledger, &mut batch);
        }
        let n = shared.forget(batch.iter().map(|p| p.ack.id.clone()));
        shared.free.fetch_add(n, Ordering::AcqRel);
        shared.slot_freed.notify_one();
        if shared.events.receiver_count() > 0 {
            for p in batch.drain(..) {
                let _ = shared.events.send(JobEvent {
                    id: p.ack.id,
                    queue: shared.queue.to_string(),
                    job: p.job,
                    attempt: p.ack.attempt,
                    kind: p.ack.kind,
                    error: p.ack.error,
                    started_at_us: p.started_at_us,
                });
            }
        }
        batch.clear();
    }
}

/// Hands the batch's runs to the ledger (never waits; see `db::ledger`).
fn record_runs(shared: &PoolShared, ledger: &Ledger, batch: &mut [PendingAck]) {
    let finished_at_us = chrono::Utc::now().timestamp_micros();
    let tier = shared.settings.tier.as_str();
    for p in batch {
        let (outcome, next_run_at_ms) = match p.ack.kind {
            AckKind::Done => (RunOutcome::Succeeded, None),
            AckKind::Retry { at } => (RunOutcome::FailedWillRetry, Some(at)),
            AckKind::Defer { at } => (RunOutcome::Deferred, Some(at)),
            AckKind::Dead => (RunOutcome::Dead, None),
        };
        let x = &mut p.ledger;
        let dead = (outcome == RunOutcome::Dead).then(|| DeadInfo {
            payload: x.payload.take().unwrap_or_default(),
            idempotency_key: x.idempotency_key.take(),
        });
        ledger.record(LedgerRow {
            run_id: ulid::Ulid::new().to_string(),
            job_id: p.ack.id.clone(),
            job: p.job.clone(),
            queue: shared.queue.to_string(),
            tier: tier.to_owned(),
            attempt: p.ack.attempt,
            outcome,
            error: (!p.ack.error.is_empty()).then(|| p.ack.error.clone()),
            enqueued_at_ms: Some(x.enqueued_at_ms),
            started_at_us: (p.started_at_us > 0).then_some(p.started_at_us),
            finished_at_us,
            duration_ms: x.duration.as_secs_f64() * 1000.0,
            next_run_at_ms,
            worker_id: shared.worker_id.to_string(),
            summary: x.summary.take(),
            dead,
        });
    }
}

/// Records the attempts whose worker stopped responding (the worker never could).
fn record_reaped(shared: &PoolShared, ledger: &Ledger, reaped: Vec<crate::store::Reaped>) {
    let now_us = chrono::Utc::now().timestamp_micros();
    for r in reaped {
        let error = format!(
            "lease expired: the worker running attempt {} stopped responding",
            r.attempt
        );
        let (job, enqueued_at_ms, dead) = match r.envelope {
            Some(e) => (
                e.job,
                Some(e.enqueued_at),
                r.dead.then_some(DeadInfo {
                    payload: e.payload,
                    idempotency_key: e.idempotency_key,
                }),
            ),
            None => ("unknown".to_owned(), None, None),
        };
        ledger.record(LedgerRow {
            run_id: ulid::Ulid::new().to_string(),
            job_id: r.id,
            job,
            queue: shared.queue.to_string(),
            tier: shared.settings.tier.as_str().to_owned(),
            attempt: r.attempt,
            outcome: if r.dead {
                RunOutcome::Dead
            } else {
                RunOutcome::FailedWillRetry
            },
            error: Some(error),
            enqueued_at_ms,
            started_at_us: None,
            finished_at_us: now_us,
            duration_ms: 0.0,
            next_run_at_ms: None,
            // The attempt ran elsewhere; this process only noticed it was lost.
            worker_id: format!("reaper:{}", shared.worker_id),
            summary: None,
            dead,
        });
    }
}

/// Extends the leases of running jobs and returns expired leases to the queue.
pub(super) async fn upkeep_loop(shared: Arc<PoolShared>, mut stop: watch::Receiver<bool>) {
    let w = shared.worker.clone();
    let mut extend = tokio::time::interval(w.lease_extend_interval);
    let mut reap = tokio::time::interval(w.reap_interval);
    extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = extend.tick() => {
                let held = shared.held();
                match shared.store.extend(&shared.queue, &held, w.lease_ttl).await {
                    Ok(lost) => for id in lost.into_iter().filter(|id| shared.running(id)) {
                        tracing::warn!(queue = %shared.queue, job_id = %id, "lease lost: the job may be running elsewhere; this run's result will be ignored");
                    },
                    Err(e) => {
                        telemetry::store_error(&shared.queue, "extend");
                        tracing::warn!(queue = %shared.queue, "extending leases failed: {e}");
                    }
                }
            }
            _ = reap.tick() => match shared.store.reap(&shared.queue).await {
                Ok(r) if r.is_empty() => {}
                Ok(r) => {
                    telemetry::reaped(&shared.queue, r.len());
                    tracing::warn!(queue = %shared.queue, "returned {} jobs whose worker stopped responding", r.len());
                    if let Some(ledger) = &shared.ledger {
                        record_reaped(&shared, ledger, r);
                    }
                }
                Err(e) => {
                    telemetry::store_error(&shared.queue, "reap");
                    tracing::warn!(queue = %shared.queue, "reaping expired leases failed: {e}");
                }
            }
        }
    }
}

/// Hands back every job this process still holds (after the drain timeout, or jobs
/// fetched but never started). Returns how many went back.
pub(super) async fn release_held(shared: &PoolShared) -> usize {
    let held = shared.held();
    if held.is_empty() {
        return 0;
    }
    match shared.store.release(&shared.queue, &held).await {
        Ok(n) => {
            shared.forget(held.into_iter().map(|(id, _)| id));
            n
        }
        Err(e) => {
            tracing::warn!(queue = %shared.queue, "handing back {} jobs failed ({e}); they return when their lease expires", held.len());
            0
        }
    }
}
