//! One queue's pool in this process: the fetcher (leases as many jobs as there are free
//! slots, sleeps until a push wakes it), the acker (writes settlements in batches), and
//! lease upkeep (extends running jobs' leases, finds expired ones for the settle step).
use super::{
    inflight::Inflight,
    settle::{self, JobEvent, Recorder, Settlement, Source},
};
use crate::{
    config::{QueueSettings, WorkerConfig},
    db::ledger::Ledger,
    store::{Ack, AckBatch, Delivery, Store, Waited},
    telemetry,
};
use apalis_core::task::Task;
use culm_core::now_ms;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Notify, mpsc, watch};

/// State shared by a pool's tasks.
pub struct PoolShared {
    pub(super) queue: Arc<str>,
    pub(super) settings: Arc<QueueSettings>,
    pub(super) store: Store,
    pub(super) worker: WorkerConfig,
    /// Leases this process holds, and so the pool's free slots. A lease stays held (and
    /// extended) until its settlement is written, so a busy replica never over-leases.
    inflight: Inflight,
    slot_freed: Notify,
    pub(super) wake: Arc<Notify>,
    ack_tx: mpsc::UnboundedSender<Settlement>,
    /// Where settlements are recorded (ledger, events, metrics).
    pub(super) recorder: Recorder,
}

impl PoolShared {
    /// The cancellation signal of the run holding `token`, for its `JobContext`.
    pub(super) fn cancellation(&self, token: u64) -> culm_core::Cancellation {
        self.inflight.cancellation(token)
    }

    /// Leases this pool holds (its busy slots), for the replica's heartbeat.
    pub(super) fn busy(&self) -> u32 {
        u32::try_from((self.settings.concurrency as usize).saturating_sub(self.inflight.free())).unwrap_or(u32::MAX)
    }

    pub(super) fn new(
        settings: Arc<QueueSettings>,
        store: Store,
        worker: WorkerConfig,
        wake: Arc<Notify>,
        events: crate::events::Events<JobEvent>,
        ledger: Option<Ledger>,
        worker_id: Arc<str>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Settlement>) {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(PoolShared {
            queue: Arc::from(settings.name.as_str()),
            inflight: Inflight::new(settings.concurrency as usize),
            store,
            worker,
            slot_freed: Notify::new(),
            wake,
            ack_tx,
            recorder: Recorder {
                queue: Arc::from(settings.name.as_str()),
                settings: settings.clone(),
                events,
                ledger,
                worker_id,
                metrics: telemetry::RunMetrics::new(&settings.name, settings.tier.as_str()),
            },
            settings,
        });
        (shared, ack_rx)
    }

    /// Queues a settlement for the acker.
    pub(super) fn complete(&self, p: Settlement) {
        if p.source == Source::Run {
            self.inflight.finished(p.ack.token);
        }
        if let Err(mpsc::error::SendError(p)) = self.ack_tx.send(p) {
            // The acker is gone (hard shutdown): the lease will expire and the job rerun.
            tracing::warn!(job_id = %p.ack.id, "acknowledgement dropped at shutdown; the job will be delivered again");
        }
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
        // Register for a freed slot before looking, so one freed in between is not missed.
        let slot = shared.slot_freed.notified();
        tokio::pin!(slot);
        slot.as_mut().enable();
        let want = shared.inflight.free();
        if want == 0 {
            tokio::select! {
                _ = slot => continue,
                _ = stop.changed() => return,
            }
        }
        // Register for wake-ups before fetching, so a push between an empty fetch and the
        // wait is not missed.
        let wake = shared.wake.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match shared.store.fetch(&shared.queue, want, lease_ttl).await {
            Ok(f) if !f.jobs.is_empty() || !f.corrupt.is_empty() => {
                error_backoff = Duration::from_millis(50);
                shared.inflight.hold(
                    f.jobs
                        .iter()
                        .map(|d| (d.id.clone(), d.token))
                        .chain(f.corrupt.iter().map(|c| (c.id.clone(), c.token))),
                );
                for c in f.corrupt {
                    tracing::error!(queue = %shared.queue, job_id = %c.id, "{}", c.error);
                    shared.complete(Settlement::corrupt(c));
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
                // Paused or at the queue's global cap, a due job cannot be taken either:
                // the wake-up of a resume or of a freed permit ends the wait.
                let mut wait = shared.worker.idle_poll_interval;
                if let Some(due) = f.next_due.filter(|_| !f.paused && !f.full) {
                    wait = wait.min(Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0).max(1)));
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                // The reply may have been lost after Redis leased jobs: those leases are
                // never confirmed by an extend, so when they expire the settle step
                // hands them back without spending an attempt.
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

/// Writes settlements in batches: whatever accumulated while the previous batch was in
/// flight goes in the next round trip. Once `finish` is set (the worker has stopped), it
/// writes what is left and ends; `abort` makes it give up retrying a failed write.
pub(super) async fn ack_loop(
    shared: Arc<PoolShared>,
    mut rx: mpsc::UnboundedReceiver<Settlement>,
    mut finish: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    let max = shared.worker.ack_batch_max;
    let mut batch: Vec<Settlement> = Vec::with_capacity(max);
    let mut acks: Vec<Ack> = Vec::with_capacity(max);
    let mut name = AckBatch::first();
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
        // A resend after a lost reply carries the same name, so it answers with the first
        // write's result instead of finding every run fenced off by that write.
        name = name.next();
        let waited = batch
            .iter()
            .filter_map(|p| p.wait_ms)
            .fold(Waited::default(), |w, ms| Waited {
                total_ms: w.total_ms + ms,
                runs: w.runs + 1,
            });
        let mut backoff = Duration::from_millis(50);
        let applied = loop {
            match shared.store.ack_waited(&shared.queue, &name, &acks, waited).await {
                Ok(r) => {
                    fire_completed(&shared, &r.completed).await;
                    break r.applied;
                }
                Err(e) if !e.is_transient() => {
                    // The script itself refused the batch: retrying it whole would fail
                    // forever and hold the pool's slots. Settle each run alone; a run that
                    // still fails is dropped, and its lease expires and it runs again.
                    telemetry::store_error(&shared.queue, "ack");
                    tracing::error!(queue = %shared.queue, "acknowledging {} jobs was refused, settling them one by one: {e}", acks.len());
                    break ack_one_by_one(&shared, &mut name, &acks).await;
                }
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
        };
        settle::record(&shared.recorder, &mut batch, &applied);
        let freed = shared
            .inflight
            .forget(batch.iter().filter(|p| p.source == Source::Run).map(|p| p.ack.token));
        if freed > 0 {
            shared.slot_freed.notify_one();
        }
        batch.clear();
    }
}

/// Enqueues the callbacks of the tracked batches an acknowledgement completed. A failure
/// is only logged: the batch stays in its queue's `firing` set, and upkeep fires it.
async fn fire_completed(shared: &PoolShared, completed: &[String]) {
    for bid in completed {
        if let Err(e) = shared.store.fire_batch(&shared.queue, bid).await {
            telemetry::store_error(&shared.queue, "fire_batch");
            tracing::warn!(queue = %shared.queue, batch = %bid, "firing the batch's callbacks failed; upkeep will retry: {e}");
        }
    }
}

/// Settles each ack in its own call after a batch was refused; says which applied.
async fn ack_one_by_one(shared: &PoolShared, name: &mut AckBatch, acks: &[Ack]) -> Vec<bool> {
    let mut applied = Vec::with_capacity(acks.len());
    for a in acks {
        *name = name.next();
        match shared
            .store
            .ack_waited(&shared.queue, name, std::slice::from_ref(a), Waited::default())
            .await
        {
            Ok(r) => {
                applied.push(r.applied.first().copied().unwrap_or(false));
                // A run that completed its batch fires the callbacks now, not at the
                // next upkeep pass.
                fire_completed(shared, &r.completed).await;
            }
            Err(e) => {
                telemetry::store_error(&shared.queue, "ack");
                tracing::error!(queue = %shared.queue, job_id = %a.id, token = a.token, "settling this run failed; its lease will expire and it runs again: {e}");
                applied.push(false);
            }
        }
    }
    applied
}

/// Extends the leases of running jobs and hands expired leases to the settle step. Runs
/// until the runtime aborts it, after the pool's last hand-back.
pub(super) async fn upkeep_loop(shared: Arc<PoolShared>, mut stop: watch::Receiver<bool>) {
    let w = shared.worker.clone();
    let mut extend = tokio::time::interval(w.lease_extend_interval);
    let mut reap = tokio::time::interval(w.reap_interval);
    extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once an extend fails (Redis unreachable), this process extends what it holds before
    // its own reaper looks again, so it never takes back its own live jobs.
    let mut extended = true;
    // Once stopping, the pool keeps extending what it holds (jobs finishing within the
    // drain timeout, settlements still being written) until the runtime ends this task
    // after the hand-back, but no longer reaps: its acker is going away.
    let mut stopping = false;
    loop {
        tokio::select! {
            r = stop.changed(), if !stopping => {
                // The runtime was dropped without a shutdown: its leases are left to expire.
                if r.is_err() {
                    return;
                }
                stopping = true;
            }
            _ = extend.tick() => extended = extend_held(&shared).await,
            _ = reap.tick() => {
                if stopping {
                    continue;
                }
                if !extended {
                    extended = extend_held(&shared).await;
                    if !extended {
                        continue;
                    }
                }
                reap_expired(&shared).await;
            }
        }
    }
}

/// Extends every lease this process holds; false if Redis could not be reached.
async fn extend_held(shared: &PoolShared) -> bool {
    let held = shared.inflight.held();
    match shared
        .store
        .extend_leases(&shared.queue, &held, shared.worker.lease_ttl)
        .await
    {
        Ok(crate::store::Extended { lost, cancel }) => {
            if !cancel.is_empty() && shared.inflight.cancel(&cancel) > 0 {
                tracing::info!(queue = %shared.queue, jobs = %cancel.join(","), "cancellation requested: handlers told");
            }
            for (id, token) in held.iter().filter(|(id, _)| lost.contains(id)) {
                if shared.inflight.running(*token) {
                    tracing::warn!(queue = %shared.queue, job_id = %id, token, "lease lost: the job may be running elsewhere; this run's result will be ignored");
                }
            }
            true
        }
        Err(e) => {
            telemetry::store_error(&shared.queue, "extend");
            tracing::warn!(queue = %shared.queue, "extending leases failed: {e}");
            false
        }
    }
}

/// Finds expired leases and queues their settlements.
async fn reap_expired(shared: &PoolShared) {
    let w = &shared.worker;
    // An outage this long could have let a lease that was extended on time expire.
    let outage = w.lease_ttl.saturating_sub(w.lease_extend_interval);
    match shared.store.reap(&shared.queue, outage, w.lease_ttl).await {
        Ok(r) if r.held => {
            tracing::info!(queue = %shared.queue, "Redis was unreachable for longer than a lease: reaping waits one lease so live workers extend first");
        }
        Ok(r) => {
            if !r.expired.is_empty() {
                tracing::warn!(queue = %shared.queue, "found {} leases whose worker stopped responding", r.expired.len());
            }
            for e in r.expired {
                shared.complete(settle::expired(&shared.settings, e));
            }
        }
        Err(e) => {
            telemetry::store_error(&shared.queue, "reap");
            tracing::warn!(queue = %shared.queue, "looking for expired leases failed: {e}");
        }
    }
    // Completed batches whose acker died before firing their callbacks.
    match shared
        .store
        .refire_batches(&shared.queue, crate::store::REFIRE_AFTER_MS)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(queue = %shared.queue, "fired the callbacks of {n} completed batches left unfired"),
        Err(e) => {
            telemetry::store_error(&shared.queue, "fire_batch");
            tracing::warn!(queue = %shared.queue, "firing the callbacks of completed batches failed: {e}");
        }
    }
}

/// Hands back every job this process still holds (after the drain timeout, or jobs
/// fetched but never started). Returns how many went back.
pub(super) async fn release_held(shared: &PoolShared) -> usize {
    let held = shared.inflight.held();
    if held.is_empty() {
        return 0;
    }
    match shared.store.release(&shared.queue, &held).await {
        Ok(n) => {
            shared.inflight.forget(held.into_iter().map(|(_, token)| token));
            n
        }
        Err(e) => {
            tracing::warn!(queue = %shared.queue, "handing back {} jobs failed ({e}); they return when their lease expires", held.len());
            0
        }
    }
}
