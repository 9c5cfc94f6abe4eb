//! Tracked batches: jobs counted together, with callback jobs (`on_complete`,
//! `on_success`) enqueued once when every member has reached a final state.
//!
//! A batch lives in its home queue's slot: every member resolves to that queue, so the
//! counters are updated by the same `ack.lua` (or `cancel.lua`, `dead.lua`) call that
//! settles each member, on Cluster too. The hash `…:batch:<bid>` holds the counters, the
//! member list `…:batch:<bid>:jobs` the ids, `…:batches` the newest batches for listing,
//! and `…:batches:firing` the completed batches whose callbacks are not confirmed
//! enqueued yet. Completion is decided once, in a script (common.lua); firing is an
//! enqueue with derived idempotency keys (`batchcb:<bid>:complete|success`) followed by
//! `batch.lua fired`, so the acker that completed the batch and every replica's upkeep
//! (which re-fires entries left in `firing`) may all try: one callback job each.
use super::{
    Store, StoreError,
    keys::{BATCH, STATUS},
    queue::{Envelope, Finished, Placement},
    text,
};
use crate::store::JobState;
use culm_core::{EnqueueError, EnqueueRequest, Enqueued, now_ms};
use futures::future::try_join_all;
use redis::Value;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How long an open or running batch's keys live, refreshed by every add (s). A batch
/// whose members take longer to settle than this loses its counters.
pub const BATCH_OPEN_TTL_S: u64 = 30 * 24 * 3600;
/// Batches listed per home queue (`…:batches`); older ones stay readable by id.
pub const RECENT_BATCHES: u64 = 1000;
/// Members per page of `GET /v1/batches/{id}/jobs`.
pub const MEMBER_PAGE_MAX: usize = 200;
/// How old an entry of `firing` must be before upkeep re-fires it: the acker that
/// completed the batch fires it at once, so only a crash leaves one this long.
pub const REFIRE_AFTER_MS: i64 = 10_000;
/// Entries of `firing` re-fired per upkeep pass.
const REFIRE_CHUNK: isize = 100;

/// A batch to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewBatch {
    /// The batch id; `None` makes a new one. Handlers derive it from their job id, so a
    /// retried handler finds its batch instead of making a second one.
    pub id: Option<String>,
    /// The home queue; by default the queue of the first job. Every job must resolve to it.
    pub queue: Option<String>,
    pub jobs: Vec<EnqueueRequest>,
    /// Enqueued once every member reached a final state.
    pub on_complete: Option<EnqueueRequest>,
    /// Enqueued once every member succeeded.
    pub on_success: Option<EnqueueRequest>,
    pub description: Option<String>,
    /// Keep the creator's hold: the batch does not complete until `close_batch`.
    pub open: bool,
    /// Members without an idempotency key get `batchm:<bid>:<base>:<index>`, so a
    /// retried creation stores each member once.
    pub member_keys: Option<String>,
}

/// What creating (or adding to) a batch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchCreated {
    /// Batch id.
    pub id: String,
    /// The home queue.
    pub queue: String,
    /// The jobs, in request order.
    pub jobs: Vec<Enqueued>,
}

/// Why a batch operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A request field is invalid; `at` is its path (`jobs[3]`, `on_success`).
    #[error("{at}: {error}")]
    Invalid { at: String, error: EnqueueError },
    #[error("no batch `{0}`")]
    NotFound(String),
    #[error("batch `{0}` is complete: no job can be added to it")]
    Complete(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Storage(e.to_string())
    }
}

fn invalid(at: &str, field: &str, message: impl Into<String>) -> BatchError {
    BatchError::Invalid {
        at: at.to_owned(),
        error: EnqueueError::InvalidRequest {
            field: field.to_owned(),
            message: message.into(),
        },
    }
}

/// A batch id: 1 to 64 letters, digits, `-` or `_` (it is part of key names and URLs).
pub fn valid_batch_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A callback of a batch, as `GET /v1/batches/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BatchCallback {
    /// Job type.
    pub job: String,
    /// The callback job's id once enqueued.
    pub id: Option<String>,
    /// `waiting` (batch not complete), `enqueued`, `skipped` (on_success of a batch
    /// where not every job succeeded), or `failed` (could not be enqueued: `error`).
    pub state: String,
    /// Why a `failed` callback could not be enqueued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The callbacks of a batch.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BatchCallbacks {
    pub on_complete: Option<BatchCallback>,
    pub on_success: Option<BatchCallback>,
}

/// A batch's counters and callbacks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BatchStatus {
    /// Batch id.
    pub id: String,
    /// The home queue (every member's).
    pub queue: String,
    /// `open` (the creator may still add jobs), `running`, or `complete`.
    pub state: String,
    /// Members added.
    pub total: u64,
    /// Members not in a final state yet.
    pub pending: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// When it was created (RFC 3339).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// When its last member reached a final state.
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<i64>,
    pub description: Option<String>,
    pub callbacks: BatchCallbacks,
}

/// One member of a batch.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct BatchMember {
    /// Job id.
    pub id: String,
    /// Its state; `unknown` once the queue forgot it (past `result_ttl`).
    pub state: String,
    /// The handler's result, while the queue keeps it.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// A page of a batch's members.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct BatchPage {
    pub jobs: Vec<BatchMember>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// What the callbacks field of a batch hash records once they were enqueued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Fired {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_complete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_success: Option<String>,
    /// Why the callbacks could not be enqueued (a job type no longer registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn status_from(id: &str, queue: &str, h: &HashMap<String, String>) -> BatchStatus {
    let n = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
    let completed_at = h.get("completed_at").and_then(|v| v.parse().ok());
    let fired: Option<Fired> = h.get("callbacks").and_then(|v| serde_json::from_str(v).ok());
    let succeeded_all = n("succeeded") == n("total");
    let callback = |which: &str, id: Option<&String>| -> Option<BatchCallback> {
        let req: EnqueueRequest = serde_json::from_str(h.get(which)?).ok()?;
        let state = match (&fired, id) {
            (_, Some(_)) => "enqueued",
            (Some(f), None) if f.error.is_some() && (which == "on_complete" || succeeded_all) => "failed",
            (Some(_), None) => "skipped",
            (None, _) if completed_at.is_some() && which == "on_success" && !succeeded_all => "skipped",
            (None, _) => "waiting",
        };
        Some(BatchCallback {
            job: req.job,
            id: id.cloned(),
            error: fired
                .as_ref()
                .and_then(|f| f.error.clone())
                .filter(|_| state == "failed"),
            state: state.to_owned(),
        })
    };
    let fired_ref = fired.as_ref();
    BatchStatus {
        id: id.to_owned(),
        queue: queue.to_owned(),
        state: if completed_at.is_some() {
            "complete"
        } else if h.get("open").map(String::as_str) == Some("1") {
            "open"
        } else {
            "running"
        }
        .to_owned(),
        total: n("total"),
        pending: n("pending"),
        succeeded: n("succeeded"),
        dead: n("dead"),
        cancelled: n("cancelled"),
        expired: n("expired"),
        created_at: n("created_at") as i64,
        completed_at,
        description: h.get("description").cloned(),
        callbacks: BatchCallbacks {
            on_complete: callback("on_complete", fired_ref.and_then(|f| f.on_complete.as_ref())),
            on_success: callback("on_success", fired_ref.and_then(|f| f.on_success.as_ref())),
        },
    }
}

impl Store {
    /// Creates a tracked batch: validates every job and callback (errors name the field,
    /// e.g. `jobs[3].queue`), opens the batch with the creator's hold, adds the jobs (up to
    /// 1,000 per script call, counting only jobs actually created) and, unless `open`,
    /// closes it. Creating a batch whose id exists (a retried handler) adds only what is
    /// missing.
    pub async fn create_batch(&self, b: NewBatch) -> Result<BatchCreated, BatchError> {
        let mut home = b.queue.clone();
        if let Some(q) = &home {
            self.settings(q).map_err(|_| BatchError::Invalid {
                at: "queue".into(),
                error: EnqueueError::UnknownQueue { queue: q.clone() },
            })?;
        }
        for (i, r) in b.jobs.iter().enumerate() {
            let at = format!("jobs[{i}]");
            let q = &self
                .resolve(r)
                .map_err(|error| BatchError::Invalid { at: at.clone(), error })?
                .name;
            if let Some(h) = home.as_deref().filter(|h| *h != q) {
                return Err(invalid(
                    &at,
                    "queue",
                    format!(
                        "goes to queue `{q}`, but this batch's jobs go to `{h}`: every job of a batch must go to one queue"
                    ),
                ));
            }
            if home.is_none() {
                home = Some(q.clone());
            }
        }
        for (name, cb) in [("on_complete", &b.on_complete), ("on_success", &b.on_success)] {
            if let Some(r) = cb {
                self.resolve(r)
                    .map_err(|error| BatchError::Invalid { at: name.into(), error })?;
            }
        }
        let home = home.ok_or_else(|| invalid("jobs", "jobs", "a batch without jobs needs `queue`, its home queue"))?;
        let id = b.id.clone().unwrap_or_else(|| ulid::Ulid::new().to_string());
        if !valid_batch_id(&id) {
            return Err(invalid("id", "id", "must be 1 to 64 letters, digits, `-` or `_`"));
        }
        if b.description.as_ref().is_some_and(|d| d.len() > 1000) {
            return Err(invalid("description", "description", "at most 1,000 bytes"));
        }
        let json = |r: &Option<EnqueueRequest>| -> Result<String, BatchError> {
            r.as_ref().map_or(Ok(String::new()), |r| {
                serde_json::to_string(r).map_err(|e| BatchError::Storage(e.to_string()))
            })
        };
        let keys = self.keys(&home);
        let mut conn = self.inner.conn.clone();
        let _: String = keys
            .invoke(&BATCH)
            .key(keys.batch(&id))
            .key(keys.batch_jobs(&id))
            .key(keys.batches_firing())
            .key(keys.batches())
            .arg("open")
            .arg(BATCH_OPEN_TTL_S)
            .arg(self.inner.batch_retention.as_secs().max(1))
            .arg(RECENT_BATCHES)
            .arg(json(&b.on_complete)?)
            .arg(json(&b.on_success)?)
            .arg(b.description.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let jobs = match self.push_members(&home, &id, b.jobs, b.member_keys.as_deref()).await {
            Ok(jobs) => jobs,
            // A retried creation of a batch that completed meanwhile: nothing to add.
            Err(BatchError::Complete(_)) if b.member_keys.is_some() => Vec::new(),
            Err(e) => return Err(e),
        };
        if !b.open {
            self.close_in(&home, &id).await?;
        }
        Ok(BatchCreated { id, queue: home, jobs })
    }

    /// Adds jobs to an open or running batch (refused once it is complete). `member_keys`
    /// as in [`NewBatch`]: a handler adding to its own batch passes its job id and call
    /// index, so a retried handler adds each job once.
    pub async fn add_to_batch(
        &self,
        id: &str,
        jobs: Vec<EnqueueRequest>,
        member_keys: Option<&str>,
    ) -> Result<BatchCreated, BatchError> {
        let status = self
            .batch(id)
            .await?
            .ok_or_else(|| BatchError::NotFound(id.to_owned()))?;
        if status.completed_at.is_some() {
            return Err(BatchError::Complete(id.to_owned()));
        }
        for (i, r) in jobs.iter().enumerate() {
            let at = format!("jobs[{i}]");
            let q = self
                .resolve(r)
                .map_err(|error| BatchError::Invalid { at: at.clone(), error })?;
            if q.name != status.queue {
                return Err(invalid(
                    &at,
                    "queue",
                    format!(
                        "goes to queue `{}`, but batch `{id}`'s jobs go to `{}`: every job of a batch must go to one queue",
                        q.name, status.queue
                    ),
                ));
            }
        }
        let jobs = self.push_members(&status.queue, id, jobs, member_keys).await?;
        Ok(BatchCreated {
            id: id.to_owned(),
            queue: status.queue,
            jobs,
        })
    }

    async fn push_members(
        &self,
        queue: &str,
        id: &str,
        mut jobs: Vec<EnqueueRequest>,
        member_keys: Option<&str>,
    ) -> Result<Vec<Enqueued>, BatchError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(base) = member_keys {
            for (i, r) in jobs.iter_mut().enumerate() {
                if r.idempotency_key.is_none() {
                    r.idempotency_key = Some(format!("batchm:{id}:{base}:{i}"));
                }
            }
        }
        let place = Placement {
            batch: Some((id, BATCH_OPEN_TTL_S)),
            callback_of: None,
        };
        match self.push(jobs, place).await {
            Ok(done) => Ok(done),
            Err(EnqueueError::InvalidRequest { field, .. }) if field == "batch" => {
                Err(BatchError::Complete(id.to_owned()))
            }
            Err(EnqueueError::Storage(m)) => Err(BatchError::Storage(m)),
            Err(error) => Err(BatchError::Invalid {
                at: format!("batch `{id}` in queue `{queue}`"),
                error,
            }),
        }
    }

    /// Drops the creator's hold; a batch with nothing pending completes (and fires).
    pub async fn close_batch(&self, id: &str) -> Result<BatchStatus, BatchError> {
        let status = self
            .batch(id)
            .await?
            .ok_or_else(|| BatchError::NotFound(id.to_owned()))?;
        self.close_in(&status.queue, id).await?;
        self.batch(id).await?.ok_or_else(|| BatchError::NotFound(id.to_owned()))
    }

    async fn close_in(&self, queue: &str, id: &str) -> Result<(), BatchError> {
        let keys = self.keys(queue);
        let mut conn = self.inner.conn.clone();
        let answer: String = keys
            .invoke(&BATCH)
            .key(keys.batch(id))
            .key(keys.batch_jobs(id))
            .key(keys.batches_firing())
            .key(keys.batches())
            .arg("close")
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match answer.as_str() {
            "" => Err(BatchError::NotFound(id.to_owned())),
            "completed" => {
                // If this fails, upkeep fires it from `firing`.
                if let Err(e) = self.fire_batch(queue, id).await {
                    tracing::warn!(batch = %id, "firing the batch's callbacks failed; upkeep will retry: {e}");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A batch's counters and callbacks, found by id alone: every declared queue's slot
    /// is asked (all lookups at once).
    pub async fn batch(&self, id: &str) -> Result<Option<BatchStatus>, StoreError> {
        if !valid_batch_id(id) {
            return Ok(None);
        }
        let lookups = self.inner.routing.queues.keys().map(|q| {
            let mut conn = self.inner.conn.clone();
            let key = self.keys(q).batch(id);
            async move {
                let h: HashMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(&mut conn).await?;
                Ok::<_, StoreError>((q, h))
            }
        });
        Ok(try_join_all(lookups)
            .await?
            .into_iter()
            .find(|(_, h)| !h.is_empty())
            .map(|(q, h)| status_from(id, q, &h)))
    }

    /// The newest batches of every queue, newest first (at most `limit`, 1 to 100).
    pub async fn list_batches(&self, limit: usize) -> Result<Vec<BatchStatus>, StoreError> {
        let limit = limit.clamp(1, 100);
        let lookups = self.inner.routing.queues.keys().map(|q| {
            let mut conn = self.inner.conn.clone();
            let key = self.keys(q).batches();
            async move {
                let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(limit - 1)
                    .arg("REV")
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, StoreError>(ids.into_iter().map(|(id, at)| (at, id, q.clone())).collect::<Vec<_>>())
            }
        });
        let mut all: Vec<(f64, String, String)> = try_join_all(lookups).await?.into_iter().flatten().collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.truncate(limit);
        let reads = all.into_iter().map(|(_, id, q)| {
            let mut conn = self.inner.conn.clone();
            let key = self.keys(&q).batch(&id);
            async move {
                let h: HashMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(&mut conn).await?;
                Ok::<_, StoreError>((!h.is_empty()).then(|| status_from(&id, &q, &h)))
            }
        });
        // A listed batch whose keys expired (past its retention) is left out.
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// A page of a batch's members with their state and result, in the order they were
    /// added; `cursor` is the position to start at (from the previous page's
    /// `next_cursor`). Reads only the page.
    pub async fn batch_members(&self, id: &str, cursor: u64, limit: usize) -> Result<Option<BatchPage>, StoreError> {
        let Some(status) = self.batch(id).await? else {
            return Ok(None);
        };
        let limit = limit.clamp(1, MEMBER_PAGE_MAX);
        let keys = self.keys(&status.queue);
        let mut conn = self.inner.conn.clone();
        let start = isize::try_from(cursor).unwrap_or(isize::MAX);
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.batch_jobs(id))
            .arg(start)
            .arg(start.saturating_add(limit as isize - 1))
            .query_async(&mut conn)
            .await?;
        let reads = ids.iter().map(|job| {
            let mut conn = self.inner.conn.clone();
            let keys = keys.clone();
            async move {
                let v: Vec<Value> = keys.invoke(&STATUS).arg(job).invoke_async(&mut conn).await?;
                Ok::<_, StoreError>(member(job, &v))
            }
        });
        let jobs = try_join_all(reads).await?;
        let next_cursor = (jobs.len() == limit).then(|| (cursor + limit as u64).to_string());
        Ok(Some(BatchPage { jobs, next_cursor }))
    }

    /// Enqueues the callbacks of a completed batch (once: derived idempotency keys), then
    /// records their ids and takes the batch out of `firing`. Safe to call any number of
    /// times, from any replica. Returns the callback job ids.
    pub async fn fire_batch(&self, queue: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let keys = self.keys(queue);
        let mut conn = self.inner.conn.clone();
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys.batch(id))
            .arg(
                &[
                    "on_complete",
                    "on_success",
                    "total",
                    "succeeded",
                    "completed_at",
                    "callbacks",
                    "created_at",
                ][..],
            )
            .query_async(&mut conn)
            .await?;
        let field = |i: usize| f.get(i).cloned().flatten();
        let mut fired = Fired::default();
        if field(4).is_none() && field(2).is_some() {
            // Not complete (a stale `firing` entry cannot exist; nothing to do).
            return Ok(Vec::new());
        }
        if let Some(done) = field(5) {
            // Enqueued before; only the `firing` entry was left.
            fired = serde_json::from_str(&done).unwrap_or_default();
        } else if field(2).is_some() {
            let all_succeeded = field(2) == field(3);
            let mut reqs = Vec::new();
            let mut which = Vec::new();
            for (i, name, suffix, wanted) in [
                (0, "on_complete", "complete", true),
                (1, "on_success", "success", all_succeeded),
            ] {
                let Some(raw) = field(i).filter(|_| wanted) else {
                    continue;
                };
                match serde_json::from_str::<EnqueueRequest>(&raw) {
                    Ok(mut r) => {
                        // A callback's delay and expiry were made absolute when the batch
                        // was created; they count from its completion instead, so an
                        // `expires_in` shorter than the batch's run does not refuse it.
                        let created = field(6).and_then(|c| c.parse::<i64>().ok());
                        if let Some(shift) = created.map(|c| now_ms() - c).filter(|s| *s > 0) {
                            r.run_at_ms = r.run_at_ms.map(|t| t.saturating_add(shift));
                            r.expires_at_ms = r.expires_at_ms.map(|t| t.saturating_add(shift));
                        }
                        r.idempotency_key = Some(format!("batchcb:{id}:{suffix}"));
                        reqs.push(r);
                        which.push(name);
                    }
                    Err(e) => fired.error = Some(format!("{name} is unreadable: {e}")),
                }
            }
            let place = Placement {
                batch: None,
                callback_of: Some(id),
            };
            match self.push(reqs, place).await {
                Ok(done) => {
                    for (name, e) in which.into_iter().zip(done) {
                        if name == "on_complete" {
                            fired.on_complete = Some(e.id);
                        } else {
                            fired.on_success = Some(e.id);
                        }
                    }
                }
                Err(EnqueueError::Storage(m)) => {
                    return Err(StoreError::Corrupt {
                        key: keys.batch(id),
                        message: format!("enqueueing the callbacks failed: {m}"),
                    });
                }
                // Never valid again (a job type or queue no longer exists): recorded, so
                // the batch stops firing.
                Err(e) => {
                    tracing::error!(batch = %id, "the batch's callbacks cannot be enqueued: {e}");
                    fired.error = Some(e.to_string());
                }
            }
        }
        let json = serde_json::to_string(&fired).unwrap_or_else(|_| "{}".to_owned());
        let _: i64 = keys
            .invoke(&BATCH)
            .key(keys.batch(id))
            .key(keys.batch_jobs(id))
            .key(keys.batches_firing())
            .key(keys.batches())
            .arg("fired")
            .arg(json)
            .invoke_async(&mut conn)
            .await?;
        Ok(fired.on_complete.into_iter().chain(fired.on_success).collect())
    }

    /// Fires the batches of `queue` that completed more than `older_than_ms` ago and are
    /// still in `firing` (their completing acker died before firing them; upkeep passes
    /// [`REFIRE_AFTER_MS`]). Returns how many were fired.
    pub async fn refire_batches(&self, queue: &str, older_than_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys(queue).batches_firing())
            .arg("-inf")
            .arg(now_ms() - older_than_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(REFIRE_CHUNK)
            .query_async(&mut conn)
            .await?;
        // One batch that cannot be fired now (its callbacks' queue unreachable, say) must
        // not hold up the others: each is tried, and the first error is returned after.
        let mut first_error = None;
        for id in &ids {
            if let Err(e) = self.fire_batch(queue, id).await {
                tracing::warn!(queue, batch = %id, "re-firing the batch's callbacks failed: {e}");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(ids.len()),
        }
    }

    /// The tracked batches of the given jobs of `queue` (read from their envelopes), for
    /// scripts that must declare the batch keys they may touch.
    pub(super) async fn batches_of(&self, queue: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.inner.conn.clone();
        let envs: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys(queue).jobs())
            .arg(ids)
            .query_async(&mut conn)
            .await?;
        let mut out: Vec<String> = Vec::new();
        for env in envs.into_iter().flatten() {
            if let Some(b) = serde_json::from_str::<Envelope>(&env).ok().and_then(|e| e.batch)
                && !out.contains(&b)
            {
                out.push(b);
            }
        }
        Ok(out)
    }
}

/// A member's state from `status.lua`'s answer.
fn member(id: &str, v: &[Value]) -> BatchMember {
    let Some(state) = v.first().map(text) else {
        return BatchMember {
            id: id.to_owned(),
            state: "unknown".to_owned(),
            result: None,
        };
    };
    let fin = v.get(5).and_then(|f| serde_json::from_str::<Finished>(&text(f)).ok());
    let state = match &fin {
        Some(f) if f.cancelled => JobState::Cancelled.to_string(),
        Some(f) if f.expired => JobState::Expired.to_string(),
        _ => state,
    };
    BatchMember {
        id: id.to_owned(),
        state,
        result: fin
            .and_then(|f| f.result)
            .and_then(|r| serde_json::from_str(r.get()).ok()),
    }
}
