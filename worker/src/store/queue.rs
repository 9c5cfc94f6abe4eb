//! The hot path of a queue: validate and push jobs, lease them to workers, settle their
//! runs, extend and hand back leases, and find leases that expired.
//!
//! Every lease carries a token from the queue's counter (`…:seq`). The token, not the
//! attempt number, fences every write that finishes, extends or hands back a run, so a
//! stale or replayed acknowledgement can never touch a newer run. Lease deadlines are on
//! Redis's clock (`TIME` inside the scripts), never a worker's.
use super::{
    Store, StoreError,
    keys::{ACK, EXTEND, FETCH, PUSH, REAP, RELEASE},
    text,
};
use crate::{config::QueueSettings, telemetry};
use culm_core::{EnqueueError, EnqueueRequest, Enqueued, Priority, TraceContext, now_ms};
use futures::future::try_join_all;
use redis::Value;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Jobs per push script call; keeps a single script's run time short.
const PUSH_CHUNK: usize = 1000;
/// Scheduled jobs promoted per fetch.
const PROMOTE_CHUNK: usize = 1000;
/// Expired leases returned per reap call.
const REAP_CHUNK: usize = 1000;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// How a job is stored in the `jobs` hash (what [`Envelope`] reads back); the scheduler
/// writes the same shape when it fires a tick. Serialize it with [`NewEnvelope::to_json`].
#[derive(Serialize, Clone, Default)]
pub(crate) struct NewEnvelope<'a> {
    pub(crate) job: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<&'a serde_json::Value>,
    /// A payload over `compress_above` bytes, compressed (set by `to_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload_z: Option<String>,
    pub(crate) enqueued_at: i64,
    pub(crate) run_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<i64>,
    /// Payloads larger than this (bytes of JSON) are stored compressed; 0 never.
    #[serde(skip)]
    pub(crate) compress_above: usize,
    /// Only jobs that carry a trace context store one: no field, no bytes, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<&'a TraceContext>,
    /// Stored only when not normal (the scripts keep their own copy in `attempts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<Priority>,
    /// The tracked batch the job is a member of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<&'a str>,
    /// The tracked batch whose callback this job is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) callback_of: Option<&'a str>,
}

impl NewEnvelope<'_> {
    /// The stored JSON: as is, or with a payload over `compress_above` bytes compressed
    /// into `payload_z`. A small job pays one length comparison.
    pub(crate) fn to_json(&self) -> Result<String, String> {
        let plain = serde_json::to_string(self).map_err(|e| e.to_string())?;
        if self.compress_above == 0 || plain.len() <= self.compress_above {
            return Ok(plain);
        }
        let payload = serde_json::to_string(&self.payload).map_err(|e| e.to_string())?;
        if payload.len() <= self.compress_above {
            return Ok(plain);
        }
        let packed = NewEnvelope {
            payload: None,
            payload_z: Some(super::compress::compress(&payload)?),
            ..self.clone()
        };
        serde_json::to_string(&packed).map_err(|e| e.to_string())
    }
}

/// An envelope as stored: the payload either as JSON or compressed.
#[derive(Deserialize)]
struct StoredEnvelope {
    job: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_z: Option<String>,
    enqueued_at: i64,
    run_at: i64,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    trace: Option<TraceContext>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    callback_of: Option<String>,
}

impl TryFrom<StoredEnvelope> for Envelope {
    type Error = String;

    fn try_from(s: StoredEnvelope) -> Result<Self, String> {
        let payload = match (s.payload, s.payload_z) {
            (Some(p), None) => p,
            (None, Some(z)) => super::compress::decompress(&z)?,
            (Some(_), Some(_)) => return Err("both `payload` and `payload_z`".into()),
            (None, None) => return Err("missing field `payload`".into()),
        };
        Ok(Envelope {
            job: s.job,
            payload,
            enqueued_at: s.enqueued_at,
            run_at: s.run_at,
            idempotency_key: s.idempotency_key,
            expires_at: s.expires_at,
            trace: s.trace,
            priority: s.priority.unwrap_or_default(),
            batch: s.batch,
            callback_of: s.callback_of,
        })
    }
}

/// A stored job as read back (a compressed payload already decompressed).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "StoredEnvelope")]
pub struct Envelope {
    pub job: String,
    /// Raw JSON payload, deserialized by the handler's registration when it runs.
    pub payload: Box<RawValue>,
    /// Enqueue time, ms.
    pub enqueued_at: i64,
    /// Earliest run time, ms.
    pub run_at: i64,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Not started by then (ms), the job is not run: it ends `expired`.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The W3C trace context of whatever enqueued the job; each attempt continues it.
    #[serde(default)]
    pub trace: Option<TraceContext>,
    /// Its priority within the queue.
    #[serde(default)]
    pub priority: Priority,
    /// The tracked batch this job is a member of: its final state counts there.
    #[serde(default)]
    pub batch: Option<String>,
    /// The tracked batch whose callback (`on_complete` / `on_success`) this job is.
    #[serde(default)]
    pub callback_of: Option<String>,
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub queue: Arc<str>,
    /// Attempt number from 1: what the retry budget has spent, including this run.
    pub attempt: u32,
    /// The lease's fencing token, unique within the queue and never reused.
    pub token: u64,
    pub envelope: Envelope,
    /// When the worker fetched it, ms on this process's clock (for wait-time metrics).
    pub fetched_at: i64,
}

/// A leased job whose stored body cannot be read: it can never run, so the worker
/// settles it as dead like any other run.
#[derive(Debug, Clone)]
pub struct Corrupt {
    pub id: String,
    pub attempt: u32,
    pub token: u64,
    /// Why the body could not be read.
    pub error: String,
}

/// The result of one fetch call.
#[derive(Debug, Default)]
pub struct Fetched {
    pub jobs: Vec<Delivery>,
    /// Leased jobs whose body is unreadable.
    pub corrupt: Vec<Corrupt>,
    /// The queue is paused: nothing was leased.
    pub paused: bool,
    /// The queue's `max_in_flight` jobs are leased already: nothing was leased. An
    /// acknowledgement that frees a permit while jobs wait publishes a wake-up.
    pub full: bool,
    /// When the earliest scheduled job falls due, ms.
    pub next_due: Option<i64>,
}

/// What happens to a job after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    Done,
    /// Failed; run again at `at` (ms), spending an attempt.
    Retry {
        at: i64,
    },
    /// Not run now; run again at `at` (ms) without spending an attempt.
    Defer {
        at: i64,
    },
    Dead,
    /// Its handler returned after seeing an operator's cancellation: final, like done
    /// (its `finished` entry is marked cancelled), without its follow-ups.
    Cancelled,
    /// Not run: its `expires_at` passed before this attempt could start. Final.
    Expired,
}

/// The wait times of a batch's runs (from when each was due to when it started), summed
/// for the queue's per-minute history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited {
    pub total_ms: u64,
    pub runs: u64,
}

/// What extending a pool's leases found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extended {
    /// Ids whose lease was lost (taken over, settled or purged).
    pub lost: Vec<String>,
    /// Ids still held here that an operator asked to cancel.
    pub cancel: Vec<String>,
}

/// One acknowledgement, fenced by the token of the lease it settles.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: String,
    pub token: u64,
    pub kind: AckKind,
    /// Error text (retry, defer and dead).
    pub error: String,
    /// The reaper settles a lease it found expired: apply only if the lease is still
    /// expired, so a holder that extended it meanwhile keeps its run.
    pub expired_only: bool,
    /// Done runs: what status readers see once the body is gone ([`Finished`], as JSON),
    /// kept in the queue's `finished` hash for `result_ttl`.
    pub finished: Option<String>,
    /// The tracked batch the job is a member of (from its envelope): a final settlement
    /// that applies counts there, in the same script call.
    pub batch: Option<Arc<str>>,
}

/// What an acknowledgement call wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckResult {
    /// Per ack, whether it applied.
    pub applied: Vec<bool>,
    /// Tracked batches this call completed: their callbacks are to be fired
    /// ([`Store::fire_batch`]).
    pub completed: Vec<String>,
}

/// What a done (or cancelled) job leaves for status readers once its body is deleted:
/// stored as JSON in the queue's `finished` hash, one `HSET` per acknowledged batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "StoredFinished")]
pub struct Finished {
    pub job: String,
    pub attempts: u32,
    pub enqueued_at: i64,
    /// The handler's result, already bounded by `worker.result_max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// A result over `worker.compress_above` bytes, compressed, instead of `result`
    /// (always `None` once read back: reading decompresses it into `result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_z: Option<String>,
    /// Cancelled before it ran (`POST /v1/jobs/{id}/cancel`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    /// Not run: its `expires_at` passed before an attempt could start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

#[derive(Deserialize)]
struct StoredFinished {
    job: String,
    attempts: u32,
    enqueued_at: i64,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    result_z: Option<String>,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    expired: bool,
}

impl TryFrom<StoredFinished> for Finished {
    type Error = String;

    fn try_from(s: StoredFinished) -> Result<Self, String> {
        let result = match s.result_z {
            Some(z) => Some(super::compress::decompress(&z)?),
            None => s.result,
        };
        Ok(Finished {
            job: s.job,
            attempts: s.attempts,
            enqueued_at: s.enqueued_at,
            result,
            result_z: None,
            cancelled: s.cancelled,
            expired: s.expired,
        })
    }
}

/// Where pushed jobs are placed besides their queue: as members of a tracked batch
/// (its id and the TTL its open keys get, s), or as a batch's callback.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Placement<'a> {
    pub(super) batch: Option<(&'a str, u64)>,
    pub(super) callback_of: Option<&'a str>,
}

/// Names one batch of acknowledgements: the pool instance that sends it and a number
/// that rises with each batch. Resending a batch with the same name (after its reply was
/// lost) answers with the first write's result and writes nothing.
#[derive(Debug, Clone)]
pub struct AckBatch {
    pub acker: Arc<str>,
    pub seq: u64,
}

impl AckBatch {
    /// The first batch of a new acker.
    pub fn first() -> Self {
        AckBatch {
            acker: Arc::from(ulid::Ulid::new().to_string()),
            seq: 1,
        }
    }

    /// The batch after this one, from the same acker.
    pub fn next(&self) -> Self {
        AckBatch {
            acker: self.acker.clone(),
            seq: self.seq + 1,
        }
    }
}

/// A lease the reaper found expired; the worker's settle step decides its fate.
#[derive(Debug, Clone)]
pub struct Expired {
    pub id: String,
    /// Attempts started, including the expired one.
    pub attempt: u32,
    pub token: u64,
    /// Its holder extended it at least once, so it had the job.
    pub confirmed: bool,
    /// Earlier leases of this job that expired unconfirmed (and were refunded).
    pub orphaned: u32,
    pub envelope: Option<Envelope>,
}

/// What the reaper found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Reaping waits: Redis was unreachable for longer than a lease, so live holders get
    /// one lease to extend before anything is taken from them.
    pub held: bool,
    /// Dead jobs deleted because they died longer than `worker.dead_retention` ago.
    pub trimmed: u64,
    pub expired: Vec<Expired>,
}

impl Store {
    /// Validates a request and returns the queue it goes to. Writes nothing.
    pub fn resolve(&self, req: &EnqueueRequest) -> Result<&QueueSettings, EnqueueError> {
        let spec = self
            .inner
            .registry
            .get(&req.job)
            .ok_or_else(|| EnqueueError::UnknownJob { job: req.job.clone() })?;
        let routing = &self.inner.routing;
        let queue = req
            .queue
            .as_deref()
            .or_else(|| routing.routes.get(&req.job).map(String::as_str))
            .unwrap_or(spec.queue);
        let q = routing.queues.get(queue).ok_or_else(|| EnqueueError::UnknownQueue {
            queue: queue.to_owned(),
        })?;
        if !spec.allows(q.tier) {
            return Err(EnqueueError::TierNotAllowed {
                job: req.job.clone(),
                queue: queue.to_owned(),
                tier: q.tier,
                allowed: spec.allowed_tiers(),
            });
        }
        if let Some(k) = &req.idempotency_key {
            culm_core::check_idempotency_key(k)?;
        }
        if let Some(k) = &req.unique_key
            && !culm_core::valid_idempotency_key(k)
        {
            return Err(EnqueueError::InvalidRequest {
                field: "unique_key".into(),
                message: "must be 1 to 200 printable ASCII characters, without spaces or braces".into(),
            });
        }
        // Redis refuses an expiry beyond its range, and a refused `SET … PX` would stop
        // the push script halfway through a batch: out-of-range values never reach it.
        if let Some(ms) = req.unique_for_ms
            && !(1..=culm_core::MAX_UNIQUE_FOR_MS).contains(&ms)
        {
            return Err(EnqueueError::InvalidRequest {
                field: "unique_for_ms".into(),
                message: format!("must be between 1 and {} (a year)", culm_core::MAX_UNIQUE_FOR_MS),
            });
        }
        if let Some(expires) = req.expires_at_ms {
            // A job that could never start is refused rather than stored to expire.
            let earliest = req.run_at_ms.unwrap_or(0).max(now_ms());
            if expires <= earliest {
                return Err(EnqueueError::InvalidRequest {
                    field: "expires_at".into(),
                    message: "the job would expire before it may run".into(),
                });
            }
        }
        spec.validate(&req.payload)?;
        Ok(q)
    }

    /// Validates every request, then stores them. On a validation error nothing is
    /// written. On standalone and Sentinel, a batch of up to 1,000 jobs is one script
    /// call: stored whole or not at all. In Cluster mode, where queues live in different
    /// slots, it is one call per queue (per 1,000 jobs), all pipelined: each queue's part
    /// is whole, but one part can fail while another is stored.
    pub async fn enqueue(&self, reqs: Vec<EnqueueRequest>) -> Result<Vec<Enqueued>, EnqueueError> {
        self.push(reqs, Placement::default()).await
    }

    /// [`Store::enqueue`] with the jobs placed in a tracked batch or marked as a batch's
    /// callback (store/batch.rs decides when).
    pub(super) async fn push(
        &self,
        reqs: Vec<EnqueueRequest>,
        place: Placement<'_>,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate() {
            groups.entry(self.resolve(r)?.name.as_str()).or_default().push(i);
        }
        let now = now_ms();
        // Each call: the (queue, jobs) groups it stores.
        let one_slot_per_call = matches!(self.inner.conn, super::RedisConn::Cluster(_));
        let calls: Vec<Vec<(&str, &[usize])>> = if !one_slot_per_call && reqs.len() <= PUSH_CHUNK {
            vec![groups.iter().map(|(q, idx)| (*q, idx.as_slice())).collect()]
        } else {
            groups
                .iter()
                .flat_map(|(q, idx)| idx.chunks(PUSH_CHUNK).map(move |c| vec![(*q, c)]))
                .collect()
        };
        let mut pending = Vec::with_capacity(calls.len());
        for call in calls {
            let mut inv = PUSH.prepare_invoke();
            inv.arg(now)
                .arg(self.inner.idempotency_ttl_s)
                .arg(place.batch.map_or(0, |(_, ttl_s)| ttl_s));
            for (queue, idx) in &call {
                // The queue's keys, then the idempotency keys of its jobs, in job order.
                let keys = self.keys(queue);
                keys.declare(&mut inv);
                inv.arg(idx.len());
                for &i in *idx {
                    let r = &reqs[i];
                    if let Some(k) = &r.idempotency_key {
                        inv.key(keys.idem(k));
                    }
                    let unique = self.uniqueness(r);
                    if let Some((k, _)) = &unique {
                        inv.key(keys.unique(k));
                    }
                    let run_at = r.run_at_ms.unwrap_or(now);
                    let env = NewEnvelope {
                        job: &r.job,
                        payload: Some(&r.payload),
                        enqueued_at: now,
                        run_at: run_at.max(now),
                        idempotency_key: r.idempotency_key.as_deref(),
                        expires_at: r.expires_at_ms,
                        trace: r.trace.as_ref(),
                        compress_above: self.inner.compress_above,
                        priority: r.priority.filter(|p| *p != Priority::Normal),
                        batch: place.batch.map(|(bid, _)| bid),
                        callback_of: place.callback_of,
                        ..NewEnvelope::default()
                    }
                    .to_json()
                    .map_err(EnqueueError::Storage)?;
                    inv.arg(ulid::Ulid::new().to_string())
                        .arg(run_at)
                        .arg(env)
                        .arg(r.idempotency_key.as_deref().unwrap_or(""))
                        .arg(unique.map_or(0, |(_, ttl_ms)| ttl_ms))
                        .arg(priority_code(r.priority.unwrap_or_default()));
                }
            }
            // A batch's members are one queue's (the caller checked): its keys go last.
            if let (Some((bid, _)), Some((queue, _))) = (place.batch, call.first()) {
                let keys = self.keys(queue);
                inv.key(keys.batch(bid)).key(keys.batch_jobs(bid));
            }
            let mut conn = self.inner.conn.clone();
            pending.push(async move {
                let v: Vec<Value> = inv.invoke_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((call, v))
            });
        }
        let results = try_join_all(pending).await.map_err(|e| {
            if e.code() == Some("BATCHDONE") {
                EnqueueError::InvalidRequest {
                    field: "batch".into(),
                    message: "the batch is complete: no job can be added to it".into(),
                }
            } else {
                EnqueueError::Storage(e.to_string())
            }
        })?;
        let mut out: Vec<Option<Enqueued>> = vec![None; reqs.len()];
        for (call, v) in results {
            let mut replies = v.chunks_exact(2);
            for (queue, idx) in call {
                for &i in idx {
                    let Some([id, created]) = replies.next() else { break };
                    let created = text(created) == "1";
                    if created {
                        telemetry::enqueued(queue, &reqs[i].job);
                    } else {
                        telemetry::deduplicated(queue);
                    }
                    out[i] = Some(Enqueued {
                        id: text(id),
                        queue: queue.to_owned(),
                        created,
                    });
                }
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| EnqueueError::Storage("push script returned too few results".into())))
            .collect()
    }

    /// Promotes due scheduled jobs and leases up to `count` ready ones for `lease_ttl`.
    pub async fn fetch(&self, queue: &Arc<str>, count: usize, lease_ttl: Duration) -> Result<Fetched, StoreError> {
        let now = now_ms();
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = self
            .keys(queue)
            .invoke(&FETCH)
            .arg(count)
            .arg(millis(lease_ttl))
            .arg(PROMOTE_CHUNK)
            .arg(self.max_in_flight(queue))
            .invoke_async(&mut conn)
            .await?;
        let status = v.first().map(text);
        let mut out = Fetched {
            paused: status.as_deref() == Some("paused"),
            full: status.as_deref() == Some("full"),
            next_due: v.get(1).map(text).and_then(|s| s.parse::<f64>().ok()).map(|f| f as i64),
            jobs: Vec::with_capacity(v.len().saturating_sub(2) / 4),
            corrupt: Vec::new(),
        };
        for lease in v.get(2..).unwrap_or_default().chunks_exact(4) {
            let id = text(&lease[0]);
            let attempt = text(&lease[1]).parse::<u32>().unwrap_or(1);
            let token = parse_token(&lease[2], &id)?;
            match serde_json::from_str::<Envelope>(&text(&lease[3])) {
                Ok(envelope) => out.jobs.push(Delivery {
                    id,
                    queue: queue.clone(),
                    attempt,
                    token,
                    envelope,
                    fetched_at: now,
                }),
                Err(e) => out.corrupt.push(Corrupt {
                    id,
                    attempt,
                    token,
                    error: format!("stored envelope is corrupt: {e}"),
                }),
            }
        }
        Ok(out)
    }

    /// The uniqueness key of a request and how long it holds at most (ms), if it asks
    /// for uniqueness or its job type does. Without a `unique_key` the key is the job
    /// type and a SHA-256 of the payload with its object keys sorted, so two payloads
    /// that differ only in key order are the same job.
    fn uniqueness(&self, r: &EnqueueRequest) -> Option<(String, u64)> {
        let by_type = self.inner.registry.get(&r.job).and_then(|s| s.unique_for);
        if r.unique_key.is_none() && r.unique_for_ms.is_none() && by_type.is_none() {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ttl = r
            .unique_for_ms
            .or(by_type.map(ms))
            .unwrap_or(self.inner.idempotency_ttl_s.saturating_mul(1000));
        let key = r.unique_key.clone().unwrap_or_else(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(canonical_json(&r.payload).as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}:{hex}", r.job)
        });
        Some((key, ttl.max(1)))
    }

    /// The queue's cap on jobs leased at once across processes; 0 for none.
    fn max_in_flight(&self, queue: &str) -> u32 {
        self.settings(queue).ok().and_then(|s| s.max_in_flight).unwrap_or(0)
    }

    /// Applies a batch of acknowledgements in one round trip. Says, per ack, whether it
    /// applied; one that did not was fenced off (its lease had moved on, or it was a
    /// replay of an ack already applied).
    pub async fn ack(&self, queue: &str, batch: &AckBatch, acks: &[Ack]) -> Result<Vec<bool>, StoreError> {
        Ok(self.ack_waited(queue, batch, acks, Waited::default()).await?.applied)
    }

    /// [`Store::ack`], adding the batch's wait times to the queue's per-minute history
    /// (processed and failed runs are counted by the script, from what applied).
    pub async fn ack_waited(
        &self,
        queue: &str,
        batch: &AckBatch,
        acks: &[Ack],
        waited: Waited,
    ) -> Result<AckResult, StoreError> {
        if acks.is_empty() {
            return Ok(AckResult::default());
        }
        let keys = self.keys(queue);
        let mut inv = keys.invoke(&ACK);
        inv.key(keys.acker(&batch.acker))
            .key(keys.history(now_ms().div_euclid(3_600_000)))
            .arg(self.inner.done_retention)
            .arg(batch.seq)
            .arg(waited.total_ms)
            .arg(waited.runs)
            .arg(u8::from(self.max_in_flight(queue) > 0));
        // The tracked batches of the runs: their keys follow (after the queue's firing
        // set), and each run names its batch by position. No member, no extra keys.
        let mut batches: Vec<&str> = Vec::new();
        for b in acks.iter().filter_map(|a| a.batch.as_deref()) {
            if !batches.contains(&b) {
                batches.push(b);
            }
        }
        if !batches.is_empty() {
            inv.key(keys.batches_firing());
            for b in &batches {
                inv.key(keys.batch(b)).key(keys.batch_jobs(b));
            }
        }
        // Retry and defer times go as delays from now, so the script places them on
        // Redis's clock and a worker's clock skew cannot stretch or shrink a backoff.
        let now = now_ms();
        for a in acks {
            let (kind, delay) = match a.kind {
                // An expired or cancelled run is written like a done one; its `finished`
                // entry says which.
                AckKind::Done | AckKind::Expired | AckKind::Cancelled => ("done", 0),
                AckKind::Retry { at } => ("retry", (at - now).max(0)),
                AckKind::Defer { at } => ("defer", (at - now).max(0)),
                AckKind::Dead => ("dead", 0),
            };
            let kind = if a.expired_only {
                match kind {
                    "retry" => "xretry",
                    "defer" => "xdefer",
                    "dead" => "xdead",
                    _ => "xdone",
                }
            } else {
                kind
            };
            inv.arg(&a.id)
                .arg(a.token)
                .arg(kind)
                .arg(delay)
                .arg(&a.error)
                .arg(a.finished.as_deref().unwrap_or(""));
            match a.batch.as_deref().and_then(|b| batches.iter().position(|x| *x == b)) {
                Some(n) => {
                    let outcome = match a.kind {
                        AckKind::Done => 's',
                        AckKind::Cancelled => 'c',
                        AckKind::Expired => 'e',
                        AckKind::Dead => 'd',
                        AckKind::Retry { .. } | AckKind::Defer { .. } => 'r',
                    };
                    inv.arg(format!("{}{outcome}", n + 1))
                }
                None => inv.arg(""),
            };
        }
        let mut conn = self.inner.conn.clone();
        let answer: String = inv.invoke_async(&mut conn).await?;
        let (applied, completed) = answer.split_once('|').unwrap_or((answer.as_str(), ""));
        if applied.len() != acks.len() {
            return Err(StoreError::Corrupt {
                key: keys.acker(&batch.acker),
                message: format!("ack script answered for {} of {} runs", applied.len(), acks.len()),
            });
        }
        Ok(AckResult {
            applied: applied.bytes().map(|b| b == b'1').collect(),
            completed: completed
                .split(',')
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Extends (and so confirms) leases; returns the ids whose lease was lost.
    pub async fn extend(
        &self,
        queue: &str,
        held: &[(String, u64)],
        lease_ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.extend_leases(queue, held, lease_ttl).await?.lost)
    }

    /// [`Store::extend`], also reporting the held jobs an operator asked to cancel.
    pub async fn extend_leases(
        &self,
        queue: &str,
        held: &[(String, u64)],
        lease_ttl: Duration,
    ) -> Result<Extended, StoreError> {
        if held.is_empty() {
            return Ok(Extended::default());
        }
        let mut inv = self.keys(queue).invoke(&EXTEND);
        inv.arg(millis(lease_ttl));
        for (id, token) in held {
            inv.arg(id).arg(*token);
        }
        let mut conn = self.inner.conn.clone();
        let (lost, cancel): (Vec<String>, Vec<String>) = inv.invoke_async(&mut conn).await?;
        Ok(Extended { lost, cancel })
    }

    /// Finds up to 1,000 expired leases of `queue` without changing them. Reaping holds
    /// off for one lease after Redis was unreachable for longer than `outage`. Also
    /// deletes up to 1,000 dead jobs older than `worker.dead_retention`, and forgets up to
    /// 1,000 done jobs older than the queue's `result_ttl`.
    pub async fn reap(&self, queue: &str, outage: Duration, lease_ttl: Duration) -> Result<Reaped, StoreError> {
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = self
            .keys(queue)
            .invoke(&REAP)
            .arg(REAP_CHUNK)
            .arg(millis(outage))
            .arg(millis(lease_ttl))
            .arg(millis(self.inner.dead_retention))
            .arg(millis(self.settings(queue)?.result_ttl))
            .invoke_async(&mut conn)
            .await?;
        let trimmed = v.get(1).map(text).and_then(|n| n.parse().ok()).unwrap_or(0);
        if trimmed > 0 {
            telemetry::dead_trimmed(queue, trimmed);
        }
        if v.first().map(text).as_deref() == Some("held") {
            return Ok(Reaped {
                held: true,
                trimmed,
                expired: Vec::new(),
            });
        }
        let mut expired = Vec::new();
        for r in v.get(2..).unwrap_or_default().chunks_exact(6) {
            let id = text(&r[0]);
            expired.push(Expired {
                attempt: text(&r[1]).parse().unwrap_or(0),
                token: parse_token(&r[2], &id)?,
                confirmed: text(&r[3]) == "1",
                orphaned: text(&r[4]).parse().unwrap_or(0),
                envelope: serde_json::from_str(&text(&r[5])).ok(),
                id,
            });
        }
        Ok(Reaped {
            held: false,
            trimmed,
            expired,
        })
    }

    /// Hands leased jobs back to the front of the queue, refunding the attempt.
    pub async fn release(&self, queue: &str, held: &[(String, u64)]) -> Result<usize, StoreError> {
        if held.is_empty() {
            return Ok(0);
        }
        let mut inv = self.keys(queue).invoke(&RELEASE);
        for (id, token) in held {
            inv.arg(id).arg(*token);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }
}

/// How the scripts name a priority (`<id>:p` in `attempts`, push.lua's argument):
/// nothing is stored for normal.
fn priority_code(p: Priority) -> &'static str {
    match p {
        Priority::High => "h",
        Priority::Normal => "",
        Priority::Low => "l",
    }
}

fn parse_token(v: &Value, id: &str) -> Result<u64, StoreError> {
    text(v).parse().map_err(|_| StoreError::Corrupt {
        key: id.to_owned(),
        message: format!("lease token `{}` is not a number", text(v)),
    })
}

/// Prefixes of the idempotency keys culm derives itself (the outbox relay's `outbox:<row
/// id>`, a re-drive's `redrive:<id>:<died at>`, a batch's `batch:<header>:<index>`, a
/// tracked batch's members `batchm:<batch>:…` and callbacks `batchcb:<batch>:<which>`).
/// Callers' keys may not start with them: a predictable derived key taken first by a
/// caller would make culm's own enqueue resolve to the caller's job.
pub const RESERVED_KEY_PREFIXES: [&str; 5] = ["outbox:", "redrive:", "batch:", "batchm:", "batchcb:"];

/// A caller's idempotency key that uses a prefix culm reserves for its own keys.
pub fn reserved_idempotency_key(k: &str) -> bool {
    RESERVED_KEY_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// `v` as JSON with every object's keys sorted, whatever order it was built in.
fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}
