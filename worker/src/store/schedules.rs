//! The scheduler's Redis calls, typed: a tick's fire (claim, overlap check and push, in
//! the target queue's slot) and, in the scheduler's slot `{<prefix>}`, each schedule's
//! state, its pause flag and the registry of schedules with state (so the state of a
//! schedule removed from the catalog can be found and deleted). Key names come from
//! [`super::keys`].
use super::{
    Store,
    keys::{FIRE, RECORD},
};
use redis::{RedisError, Value};
use std::collections::HashMap;

/// What `fire.lua` decided about a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// This call claimed the tick and pushed the job (its id).
    Fired(String),
    /// The claim was already taken (its holder: a job id or `skipped:<id>`).
    Claimed(String),
    /// A later tick was already decided.
    Stale,
    /// The previous job has not finished (its id); the tick was claimed and skipped.
    Overlap(String),
}

/// One call of `fire.lua`.
#[derive(Debug, Clone)]
pub struct FireTick<'a> {
    pub schedule: &'a str,
    pub queue: &'a str,
    /// The tick, ms; `None` for a manual trigger.
    pub tick_ms: Option<i64>,
    /// The claim's name: `<name>:<tick_ms>` or `<name>:manual:<id>`.
    pub claim: &'a str,
    /// Skip the tick while the schedule's previous job is unfinished.
    pub skip_overlap: bool,
    pub claim_ttl_s: u64,
    pub id: &'a str,
    /// The job's stored form.
    pub envelope: &'a str,
}

/// How many ticks a schedule's history keeps.
pub const TICK_HISTORY: usize = 50;

/// One entry of a schedule's tick history, as `record.lua` stores it.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct TickRecord {
    /// The tick, ms; `None` for a manual trigger.
    #[serde(default)]
    pub tick: Option<i64>,
    /// What happened (`TickOutcome::as_str`).
    pub outcome: String,
    /// When it was recorded, ms.
    pub at: i64,
    /// The job it enqueued ('' when none).
    #[serde(default)]
    pub job: String,
    /// The error, for `error` ('' otherwise).
    #[serde(default)]
    pub error: String,
    /// Recording time minus tick time, ms.
    #[serde(default)]
    pub lag_ms: Option<i64>,
}

/// One call of `record.lua`: what happened to a tick of a schedule.
#[derive(Debug, Clone, Default)]
pub struct ScheduleRecord<'a> {
    pub schedule: &'a str,
    pub queue: &'a str,
    /// The tick handled (`None`: a manual trigger, or an error that does not count).
    pub tick_ms: Option<i64>,
    pub now_ms: i64,
    /// The outcome's name; empty to only advance the tick.
    pub outcome: &'a str,
    /// This replica decided the tick (weak records never overwrite a decision).
    pub strong: bool,
    /// The job fired, if any.
    pub job_id: Option<&'a str>,
    pub lag_ms: Option<i64>,
    pub error: &'a str,
    /// What this replica saw, for the tick history (`claimed_elsewhere` included); empty
    /// to leave the history alone.
    pub seen: &'a str,
}

/// What Redis holds about one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleState {
    /// Paused by an operator.
    pub paused: bool,
    /// The state hash (`tick`, `outcome`, `outcome_at`, `fired_at`, `job`, …).
    pub fields: HashMap<String, String>,
}

/// Registry entries read per `HSCAN` page when looking for removed schedules.
const SCAN_PAGE: usize = 100;

impl Store {
    /// Decides one tick of a schedule in its queue's slot (`fire.lua`).
    pub async fn schedule_fire(&self, t: &FireTick<'_>) -> Result<Fired, RedisError> {
        let keys = self.keys(t.queue);
        let mut inv = keys.invoke(&FIRE);
        inv.key(keys.schedule(t.schedule))
            .key(keys.tick(t.claim))
            .arg(t.tick_ms.map(|t| t.to_string()).unwrap_or_default())
            .arg(if t.skip_overlap { "skip" } else { "allow" })
            .arg(t.claim_ttl_s)
            .arg(t.id)
            .arg(t.envelope);
        let mut conn = self.inner.conn.clone();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await?;
        let detail = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("fired") => Fired::Fired(detail),
            // A resent call (its first reply was lost) finds its own claim: it fired.
            Some("claimed") if detail == t.id => Fired::Fired(detail),
            Some("overlap") => Fired::Overlap(detail),
            Some("stale") => Fired::Stale,
            _ => Fired::Claimed(detail),
        })
    }

    /// Records what happened to a tick (`record.lua`); registers the schedule as one with
    /// state.
    pub async fn schedule_record(&self, r: &ScheduleRecord<'_>) -> Result<(), RedisError> {
        let keys = self.scheduler_keys();
        let mut conn = self.inner.conn.clone();
        let _: i64 = RECORD
            .key(keys.state(r.schedule))
            .key(keys.names())
            .key(keys.ticks(r.schedule))
            .arg(r.tick_ms.map(|t| t.to_string()).unwrap_or_default())
            .arg(r.now_ms)
            .arg(r.outcome)
            .arg(if r.strong { "strong" } else { "weak" })
            .arg(r.job_id.unwrap_or(""))
            .arg(r.queue)
            .arg(r.lag_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(r.error)
            .arg(r.schedule)
            .arg(r.seen)
            .arg(TICK_HISTORY)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `schedule`'s last ticks, newest first (at most [`TICK_HISTORY`]).
    pub async fn schedule_ticks(&self, schedule: &str) -> Result<Vec<TickRecord>, RedisError> {
        let mut conn = self.inner.conn.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.scheduler_keys().ticks(schedule))
            .arg(0)
            .arg(TICK_HISTORY - 1)
            .query_async(&mut conn)
            .await?;
        Ok(raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect())
    }

    /// The latest tick any replica handled for `schedule`, ms.
    pub async fn schedule_handled_tick(&self, schedule: &str) -> Result<Option<i64>, RedisError> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("HGET")
            .arg(self.scheduler_keys().state(schedule))
            .arg("tick")
            .query_async(&mut conn)
            .await
    }

    /// Pause flag and state of each schedule, in order (one pipeline).
    pub async fn schedule_states(&self, schedules: &[&str]) -> Result<Vec<ScheduleState>, RedisError> {
        if schedules.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.scheduler_keys();
        let mut pipe = redis::pipe();
        for name in schedules {
            pipe.hexists(keys.paused(), *name).hgetall(keys.state(name));
        }
        let mut conn = self.inner.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        Ok(replies
            .chunks(2)
            .map(|r| ScheduleState {
                paused: matches!(r.first(), Some(Value::Int(1))),
                fields: r
                    .get(1)
                    .and_then(|v| redis::from_redis_value(v.clone()).ok())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Sets or clears a schedule's pause flag (`at_ms`: when it was paused).
    pub async fn schedule_set_paused(&self, schedule: &str, at_ms: Option<i64>) -> Result<(), RedisError> {
        let key = self.scheduler_keys().paused();
        let mut conn = self.inner.conn.clone();
        let cmd = match at_ms {
            Some(at) => redis::cmd("HSET").arg(key).arg(schedule).arg(at).clone(),
            None => redis::cmd("HDEL").arg(key).arg(schedule).clone(),
        };
        cmd.exec_async(&mut conn).await
    }

    /// Whether a schedule is paused.
    pub async fn schedule_paused(&self, schedule: &str) -> Result<bool, RedisError> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("HEXISTS")
            .arg(self.scheduler_keys().paused())
            .arg(schedule)
            .query_async(&mut conn)
            .await
    }

    /// Deletes what Redis holds about schedules for which `keep` is false: the state
    /// hash, the pause flag, the registry entry and the last-decided tick in the queue's
    /// slot (`…:schedule:<name>`; claims expire by themselves). Walks the registry and the
    /// pause flags page by page; returns the names deleted.
    pub async fn schedule_forget(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, RedisError> {
        let keys = self.scheduler_keys();
        let mut conn = self.inner.conn.clone();
        let mut gone: HashMap<String, String> = HashMap::new();
        for (hash, with_queue) in [(keys.names(), true), (keys.paused(), false)] {
            let mut cursor = 0u64;
            loop {
                let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&hash)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query_async(&mut conn)
                    .await?;
                for (name, value) in page {
                    if !keep(&name) {
                        let queue = if with_queue { value } else { String::new() };
                        let e = gone.entry(name).or_default();
                        if e.is_empty() {
                            *e = queue;
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        for (name, queue) in &gone {
            redis::pipe()
                .del(keys.state(name))
                .ignore()
                .del(keys.ticks(name))
                .ignore()
                .hdel(keys.paused(), name)
                .ignore()
                .hdel(keys.names(), name)
                .ignore()
                .exec_async(&mut conn)
                .await?;
            if !queue.is_empty() {
                redis::cmd("DEL")
                    .arg(self.keys(queue).schedule(name))
                    .exec_async(&mut conn)
                    .await?;
            }
        }
        Ok(gone.into_keys().collect())
    }
}
