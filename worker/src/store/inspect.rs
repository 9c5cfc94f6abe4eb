//! What SREs and support staff ask of a queue and the controls they use: counts, the
//! dead-letter set (list, re-drive, purge), one job's state, pause and resume, and the
//! queue-depth gauges refreshed from those counts.
use super::{
    DeadJob, Envelope, Fields, Finished, JobState, JobStatus, QueueStats, Store, StoreError,
    keys::{CANCEL, DEAD, STATS, STATUS},
    parse_errors, text,
};
use crate::telemetry;
use culm_core::now_ms;
use futures::future::try_join_all;
use metrics::gauge;
use redis::Value;

impl Store {
    /// Counts for one queue.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let s = self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = self.keys(queue).invoke(&STATS).invoke_async(&mut conn).await?;
        let n = |i: usize| v.get(i).map(text).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        // The oldest job waiting at any priority: each list's head is its oldest.
        let now = now_ms();
        let oldest = [6, 8, 10]
            .into_iter()
            .filter_map(|i| serde_json::from_str::<Envelope>(&v.get(i).map(text).unwrap_or_default()).ok())
            .map(|e| (now - e.run_at.max(e.enqueued_at)).max(0))
            .max();
        Ok(QueueStats {
            name: s.name.clone(),
            tier: s.tier,
            concurrency: s.concurrency,
            max_in_flight: s.max_in_flight,
            pending: n(0),
            pending_by_priority: super::PendingByPriority {
                high: n(5),
                normal: n(7),
                low: n(9),
            },
            scheduled: n(1),
            running: n(2),
            dead: n(3),
            paused: n(4) == 1,
            oldest_pending_age_ms: oldest,
        })
    }

    /// Stats for every declared queue, in name order.
    pub async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        try_join_all(self.inner.routing.queues.keys().map(|q| self.stats(q))).await
    }

    /// Pauses a queue: it keeps accepting jobs, but no worker on any replica fetches.
    pub async fn pause(&self, queue: &str) -> Result<(), StoreError> {
        self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        redis::cmd("SET")
            .arg(self.keys(queue).paused())
            .arg(now_ms())
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Resumes a paused queue and wakes its workers.
    pub async fn resume(&self, queue: &str) -> Result<(), StoreError> {
        self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        let keys = self.keys(queue);
        redis::pipe()
            .del(keys.paused())
            .ignore()
            .publish(keys.wake(), "1")
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Dead-lettered jobs of `queue`, newest first.
    pub async fn dead_list(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>, StoreError> {
        self.dead_page(queue, DeadWindow::default(), 0, limit).await
    }

    /// One page of `queue`'s dead-letter set, newest first: the jobs that died inside
    /// `window`, skipping the first `offset` of them. The window is a score range of the
    /// set, so only the page itself is read, never the whole set.
    pub async fn dead_page(
        &self,
        queue: &str,
        window: DeadWindow,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadJob>, StoreError> {
        self.settings(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.keys(queue);
        let mut conn = self.inner.conn.clone();
        let max = window.before.map_or("+inf".to_owned(), |t| format!("({t}"));
        let min = window.after.map_or("-inf".to_owned(), |t| t.to_string());
        let entries: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(keys.dead())
            .arg(max)
            .arg(min)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let (bodies, errors, attempts): (Fields, Fields, Vec<Option<u32>>) = redis::pipe()
            .cmd("HMGET")
            .arg(keys.jobs())
            .arg(&ids)
            .cmd("HMGET")
            .arg(keys.errors())
            .arg(&ids)
            .cmd("HMGET")
            .arg(keys.attempts())
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (id, died)) in entries.iter().enumerate() {
            let Some(body) = bodies.get(i).cloned().flatten() else {
                continue;
            };
            // An unreadable body is exactly what gets dead-lettered as corrupt: list it
            // (job `unknown`, the raw body as the payload) rather than fail the list.
            let (job, payload, enqueued_at) = match serde_json::from_str::<Envelope>(&body) {
                Ok(env) => (
                    env.job,
                    serde_json::from_str(env.payload.get()).unwrap_or(serde_json::Value::Null),
                    env.enqueued_at,
                ),
                Err(_) => ("unknown".to_owned(), serde_json::Value::String(body), 0),
            };
            let errs = errors
                .get(i)
                .cloned()
                .flatten()
                .map(|e| parse_errors(&e))
                .unwrap_or_default();
            out.push(DeadJob {
                id: id.clone(),
                queue: queue.to_owned(),
                job,
                payload,
                attempts: attempts.get(i).copied().flatten().unwrap_or(0),
                died_at: *died as i64,
                enqueued_at,
                last_error: errs.last().map(|e| e.error.clone()),
                errors: errs,
            });
        }
        Ok(out)
    }

    async fn dead_op(&self, op: &str, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.settings(queue)?;
        let keys = self.keys(queue);
        let mut inv = keys.invoke(&DEAD);
        // A re-driven member of a tracked batch counts as pending again: the script
        // declares the hashes of the batches the ids belong to.
        if op == "retry" {
            for b in self.batches_of(queue, ids).await? {
                inv.key(keys.batch(&b));
            }
        }
        inv.arg(op);
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Puts dead jobs back on their queue with a fresh attempt budget.
    pub async fn dead_retry(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.dead_op("retry", queue, ids).await
    }

    /// Deletes dead jobs for good.
    pub async fn dead_purge(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.dead_op("purge", queue, ids).await
    }

    /// Finds the queue whose dead-letter set holds `id`.
    pub async fn dead_queue_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        for q in self.inner.routing.queues.keys() {
            let mut conn = self.inner.conn.clone();
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(self.keys(q).dead())
                .arg(id)
                .query_async(&mut conn)
                .await?;
            if score.is_some() {
                return Ok(Some(q.clone()));
            }
        }
        Ok(None)
    }

    /// A job's state, searching every declared queue (all lookups pipelined).
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let lookups = self.inner.routing.queues.keys().map(|q| {
            let mut conn = self.inner.conn.clone();
            let keys = self.keys(q);
            async move {
                let v: Vec<Value> = keys.invoke(&STATUS).arg(id).invoke_async(&mut conn).await?;
                Ok::<_, StoreError>((q, v))
            }
        });
        for (queue, v) in try_join_all(lookups).await? {
            if v.is_empty() {
                continue;
            }
            let env = serde_json::from_str::<Envelope>(&text(&v[2])).ok();
            let errors = parse_errors(&text(&v[3]));
            let mut state: JobState = text(&v[0]).parse().map_err(|message| StoreError::Corrupt {
                key: id.to_owned(),
                message,
            })?;
            let at = text(&v[4]).parse::<f64>().ok().map(|f| f as i64);
            // A done job's body is gone; the `finished` hash keeps what callers ask for.
            let fin = v.get(5).and_then(|f| serde_json::from_str::<Finished>(&text(f)).ok());
            if fin.as_ref().is_some_and(|f| f.cancelled) {
                state = JobState::Cancelled;
            } else if fin.as_ref().is_some_and(|f| f.expired) {
                state = JobState::Expired;
            }
            let attempts = match &fin {
                Some(f) => f.attempts,
                None => text(&v[1]).parse().unwrap_or(0),
            };
            return Ok(Some(JobStatus {
                id: id.to_owned(),
                queue: queue.clone(),
                state,
                job: env
                    .as_ref()
                    .map(|e| e.job.clone())
                    .or_else(|| fin.as_ref().map(|f| f.job.clone())),
                attempts,
                enqueued_at: env
                    .as_ref()
                    .map(|e| e.enqueued_at)
                    .or_else(|| fin.as_ref().map(|f| f.enqueued_at)),
                result: fin
                    .and_then(|f| f.result)
                    .and_then(|r| serde_json::from_str(r.get()).ok()),
                priority: env.as_ref().map(|e| e.priority),
                run_at: at.filter(|_| state == JobState::Scheduled),
                lease_expires_at: at.filter(|_| state == JobState::Running),
                finished_at: at.filter(|_| state.is_final()),
                last_error: errors.last().map(|e| e.error.clone()),
                errors,
            }));
        }
        Ok(None)
    }
}

/// A range of death times, ms: `after` inclusive, `before` exclusive; open where `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadWindow {
    /// Died at or after this time.
    pub after: Option<i64>,
    /// Died before this time.
    pub before: Option<i64>,
}

/// Which dead letters an operator means: every field narrows, `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this job type.
    pub job: Option<String>,
    /// Only jobs whose last error contains this text (case-insensitive).
    pub error: Option<String>,
    /// Only jobs that died in this window.
    pub window: DeadWindow,
}

impl DeadFilter {
    /// Whether `d` matches. The queue and the window are also applied by the readers
    /// themselves (they choose the set and the score range); this checks everything.
    pub fn matches(&self, d: &DeadJob) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == d.queue)
            && self.job.as_ref().is_none_or(|j| *j == d.job)
            && self.error.as_ref().is_none_or(|needle| {
                d.last_error
                    .as_ref()
                    .is_some_and(|e| e.to_lowercase().contains(&needle.to_lowercase()))
            })
            && self.window.after.is_none_or(|t| d.died_at >= t)
            && self.window.before.is_none_or(|t| d.died_at < t)
    }
}

/// What `Store::cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was pending or scheduled and will not run.
    Cancelled { queue: String },
    /// The job is running: its handler is told through its cancellation signal (within
    /// one `lease_extend_interval`), and ends `cancelled` if it returns after seeing it.
    Requested { queue: String },
    /// Too late (or never possible): the job is in this state.
    Refused { queue: String, state: JobState },
    /// No queue knows the id.
    Unknown,
}

impl Store {
    /// Cancels a pending or scheduled job, or asks a running one's handler to stop: one
    /// `cancel.lua` call per queue (pipelined), O(1) each. A dead or finished job is
    /// refused with its state.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, StoreError> {
        let calls = self.inner.routing.queues.keys().map(|q| {
            let mut conn = self.inner.conn.clone();
            let keys = self.keys(q);
            async move {
                // A member of a tracked batch: the script counts its cancellation there,
                // so it declares the batch's keys (named in the job's envelope).
                let batch = self.batches_of(q, std::slice::from_ref(&id.to_owned())).await?;
                let mut inv = keys.invoke(&CANCEL);
                if let Some(b) = batch.first() {
                    inv.key(keys.batch(b))
                        .key(keys.batch_jobs(b))
                        .key(keys.batches_firing());
                }
                let v: String = inv.arg(id).invoke_async(&mut conn).await?;
                Ok::<_, StoreError>((q, v))
            }
        });
        for (queue, answer) in try_join_all(calls).await? {
            let queue = queue.clone();
            let answer = match answer.split_once('|') {
                Some((answer, completed)) => {
                    // The cancellation completed its batch: fire the callbacks now
                    // (upkeep retries if this fails).
                    if let Err(e) = self.fire_batch(&queue, completed).await {
                        tracing::warn!(batch = %completed, "firing the batch's callbacks failed; upkeep will retry: {e}");
                    }
                    answer.to_owned()
                }
                None => answer.clone(),
            };
            let state = match answer.as_str() {
                "" => continue,
                "cancelled" => return Ok(Cancelled::Cancelled { queue }),
                "cancelling" => return Ok(Cancelled::Requested { queue }),
                "dead" => JobState::Dead,
                _ => JobState::Done,
            };
            return Ok(Cancelled::Refused { queue, state });
        }
        Ok(Cancelled::Unknown)
    }
}

/// Keeps queue gauges fresh: every `interval`, reads each queue's counts from Redis and
/// sets the gauges, so a scrape never waits on Redis. Runs until `stop` fires.
pub async fn queue_gauges(store: Store, interval: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let handle = telemetry::install();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // Histograms are summarised lazily; upkeep bounds their memory.
        handle.run_upkeep();
        match store.all_stats().await {
            Ok(all) => {
                for q in all {
                    let tier = q.tier.as_str();
                    for (state, n) in [
                        ("pending", q.pending),
                        ("scheduled", q.scheduled),
                        ("running", q.running),
                        ("dead", q.dead),
                    ] {
                        gauge!(telemetry::QUEUE_JOBS, "queue" => q.name.clone(), "tier" => tier, "state" => state)
                            .set(n as f64);
                    }
                    let age = q.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0;
                    gauge!(telemetry::QUEUE_OLDEST_AGE, "queue" => q.name.clone(), "tier" => tier).set(age);
                    gauge!(telemetry::QUEUE_PAUSED, "queue" => q.name.clone()).set(if q.paused { 1.0 } else { 0.0 });
                }
            }
            Err(e) => tracing::warn!("refreshing queue gauges failed: {e}"),
        }
    }
}
