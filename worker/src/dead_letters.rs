//! Dead letters: the one place that decides where a dead job is read, re-driven and
//! purged. Without PostgreSQL that is Redis's per-queue dead-letter sets. With it, the
//! archive (`culm_dead_jobs`, which outlives them) plus the jobs only Redis holds (dead
//! before PostgreSQL was configured, or not flushed by the ledger writer yet). The admin
//! API, the CLI and the dashboard all call [`DeadLetters`]; none of them looks at Redis or
//! the archive for dead jobs itself.
//!
//! Bulk operations work on a [`DeadFilter`] (queue, job type, error text, time window) or
//! on a list of ids. They first collect the matching ids (at most [`BULK_MAX`]), then act
//! on each, so a job that dies while a bulk retry runs is not picked up half-way, and a
//! second bulk call finds what the first left.
use crate::{
    db::{Db, DbError},
    store::{DeadFilter, DeadJob, DeadWindow, Store, StoreError},
};
use std::collections::{BTreeMap, HashSet};

/// The most dead jobs one bulk retry or purge acts on; a second call takes the rest.
pub const BULK_MAX: usize = 100_000;
/// Dead letters read per Redis or PostgreSQL page while filtering.
const PAGE: usize = 500;
/// Ids per `dead.lua` call or `DELETE`.
const CHUNK: usize = 500;

/// A dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// The filter names a queue that is not declared.
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A dead job put back to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The dead job's id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The id that will run: the dead job's own, or a new one when the archive re-drove a
    /// job Redis no longer held.
    pub runs_as: String,
}

/// What a bulk retry or purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bulk {
    /// Dead jobs that matched (or ids given).
    pub matched: usize,
    /// Of those, the ones retried or purged; the others were gone by the time the
    /// operation reached them (retried or purged concurrently, or trimmed).
    pub applied: usize,
    /// With [`BULK_MAX`] matches there may be more: call again.
    pub truncated: bool,
}

/// A dead job found by a filter.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    queue: String,
}

/// Reads and steers dead letters from wherever they live.
#[derive(Clone)]
pub struct DeadLetters {
    store: Store,
    db: Option<Db>,
}

impl DeadLetters {
    /// Dead letters of `store`, with the archive when `db` is given.
    pub fn new(store: Store, db: Option<Db>) -> Self {
        DeadLetters { store, db }
    }

    /// Whether the archive is the source of truth (PostgreSQL is configured).
    pub fn archived(&self) -> bool {
        self.db.is_some()
    }

    fn queues(&self, filter: &DeadFilter) -> Result<Vec<String>, DeadError> {
        match &filter.queue {
            Some(q) if self.store.routing().queues.contains_key(q) => Ok(vec![q.clone()]),
            // A queue no longer declared may still have archived dead jobs.
            Some(_) if self.db.is_some() => Ok(Vec::new()),
            Some(q) => Err(DeadError::UnknownQueue(q.clone())),
            None => Ok(self.store.routing().queues.keys().cloned().collect()),
        }
    }

    /// Redis's dead jobs of `queue` that match `filter`, newest first, reading page by
    /// page until `want` matched or the window is exhausted.
    async fn redis_matching(
        &self,
        queue: &str,
        filter: &DeadFilter,
        want: usize,
    ) -> Result<(Vec<DeadJob>, bool), DeadError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.store.dead_page(queue, filter.window, offset, PAGE).await?;
            let exhausted = page.len() < PAGE;
            offset += PAGE;
            for d in page {
                if filter.matches(&d) {
                    if out.len() == want {
                        return Ok((out, true));
                    }
                    out.push(d);
                }
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    /// Dead jobs that match `filter`, newest first, skipping the first `offset`; at most
    /// `limit`.
    pub async fn list(&self, filter: &DeadFilter, offset: usize, limit: usize) -> Result<Vec<DeadJob>, DeadError> {
        let want = offset.saturating_add(limit);
        let mut all = match &self.db {
            Some(db) => db.dead_list_filtered(filter, 0, want).await?,
            None => Vec::new(),
        };
        let mut seen: HashSet<String> = all.iter().map(|d| d.id.clone()).collect();
        for q in self.queues(filter)? {
            let (from_redis, _) = self.redis_matching(&q, filter, want).await?;
            all.extend(from_redis.into_iter().filter(|d| seen.insert(d.id.clone())));
        }
        all.sort_by(|a, b| b.died_at.cmp(&a.died_at).then_with(|| b.id.cmp(&a.id)));
        Ok(all.into_iter().skip(offset).take(limit).collect())
    }

    /// The ids of every dead job that matches `filter` (at most [`BULK_MAX`]; `true` when
    /// there may be more).
    async fn matching(&self, filter: &DeadFilter) -> Result<(Vec<Found>, bool), DeadError> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut truncated = false;
        if let Some(db) = &self.db {
            let mut offset = 0;
            loop {
                let page = db.dead_list_filtered(filter, offset, PAGE).await?;
                let exhausted = page.len() < PAGE;
                offset += PAGE;
                for d in page {
                    if seen.insert(d.id.clone()) {
                        found.push(Found {
                            id: d.id,
                            queue: d.queue,
                        });
                    }
                }
                if found.len() >= BULK_MAX {
                    truncated = true;
                    break;
                }
                if exhausted {
                    break;
                }
            }
        }
        for q in self.queues(filter)? {
            let room = BULK_MAX.saturating_sub(found.len());
            let (from_redis, more) = self.redis_matching(&q, filter, room).await?;
            truncated |= more;
            for d in from_redis {
                if seen.insert(d.id.clone()) {
                    found.push(Found {
                        id: d.id,
                        queue: d.queue,
                    });
                }
            }
        }
        found.truncate(BULK_MAX);
        Ok((found, truncated))
    }

    /// How many dead jobs match `filter` (what a bulk operation would act on; the
    /// dashboard's confirmation shows it). At most [`BULK_MAX`].
    pub async fn count(&self, filter: &DeadFilter) -> Result<usize, DeadError> {
        Ok(self.matching(filter).await?.0.len())
    }

    /// Re-drives one dead job: back on its queue under its own id with a fresh attempt
    /// budget, or, when only the archive still has it, as a new job from the archived
    /// payload (see `Db::dead_redrive`). `None` when no dead job has this id.
    pub async fn retry(&self, id: &str) -> Result<Option<Redriven>, DeadError> {
        if let Some(db) = &self.db {
            return Ok(db
                .dead_redrive(&self.store, id)
                .await?
                .map(|(queue, runs_as)| Redriven {
                    id: id.to_owned(),
                    queue,
                    runs_as,
                }));
        }
        let Some(queue) = self.store.dead_queue_of(id).await? else {
            return Ok(None);
        };
        let n = self.store.dead_retry(&queue, &[id.to_owned()]).await?;
        Ok((n > 0).then(|| Redriven {
            id: id.to_owned(),
            queue,
            runs_as: id.to_owned(),
        }))
    }

    /// Deletes one dead job for good, from the archive and from Redis. `false` when no
    /// dead job has this id.
    pub async fn purge(&self, id: &str) -> Result<bool, DeadError> {
        let ids = [id.to_owned()];
        let archived = match &self.db {
            Some(db) => !db.dead_purge(&ids).await?.is_empty(),
            None => false,
        };
        let in_redis = match self.store.dead_queue_of(id).await? {
            Some(q) => self.store.dead_purge(&q, &ids).await? > 0,
            None => false,
        };
        Ok(archived || in_redis)
    }

    /// Re-drives each of `ids` (a selection); returns what was re-driven. Ids that are not
    /// dead are left out.
    pub async fn retry_ids(&self, ids: &[String]) -> Result<Vec<Redriven>, DeadError> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.retry(id).await?);
        }
        Ok(out)
    }

    /// Purges each of `ids` (a selection); returns how many were dead.
    pub async fn purge_ids(&self, ids: &[String]) -> Result<usize, DeadError> {
        let mut n = 0;
        for id in ids {
            n += usize::from(self.purge(id).await?);
        }
        Ok(n)
    }

    /// Re-drives every dead job that matches `filter`.
    pub async fn retry_matching(&self, filter: &DeadFilter) -> Result<Bulk, DeadError> {
        let (found, truncated) = self.matching(filter).await?;
        let mut applied = 0;
        if self.db.is_some() {
            // One archive transaction per job: each re-drive locks its row, so racing
            // bulk calls leave one live copy of each job.
            for f in &found {
                applied += usize::from(self.retry(&f.id).await?.is_some());
            }
        } else {
            for (queue, ids) in by_queue(&found) {
                for chunk in ids.chunks(CHUNK) {
                    applied += self.store.dead_retry(queue, chunk).await?;
                }
            }
        }
        Ok(Bulk {
            matched: found.len(),
            applied,
            truncated,
        })
    }

    /// Purges every dead job that matches `filter`, from the archive and from Redis.
    pub async fn purge_matching(&self, filter: &DeadFilter) -> Result<Bulk, DeadError> {
        let (found, truncated) = self.matching(filter).await?;
        let mut archived = HashSet::new();
        if let Some(db) = &self.db {
            let ids: Vec<String> = found.iter().map(|f| f.id.clone()).collect();
            for chunk in ids.chunks(CHUNK) {
                archived.extend(db.dead_purge(chunk).await?);
            }
        }
        let mut applied = archived.len();
        for (queue, ids) in by_queue(&found) {
            if !self.store.routing().queues.contains_key(queue) {
                continue;
            }
            // Jobs already counted from the archive are removed from Redis too, but
            // counted once.
            let (counted, fresh): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| archived.contains(id));
            for chunk in counted.chunks(CHUNK) {
                self.store.dead_purge(queue, chunk).await?;
            }
            for chunk in fresh.chunks(CHUNK) {
                applied += self.store.dead_purge(queue, chunk).await?;
            }
        }
        Ok(Bulk {
            matched: found.len(),
            applied,
            truncated,
        })
    }
}

fn by_queue(found: &[Found]) -> BTreeMap<&str, Vec<String>> {
    let mut m: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in found {
        m.entry(f.queue.as_str()).or_default().push(f.id.clone());
    }
    m
}

/// Parses a time bound for a filter: RFC 3339 (`2026-11-26T09:00:00Z`), or a duration
/// back from now (`90m`, `2h`, `7d`). The error names the accepted forms.
pub fn parse_time_bound(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-11-26T09:00:00Z) nor a duration back from now (90m, 2h, 7d)"
        )),
    }
}

/// A window from optional bounds, checking that it is not empty the wrong way round.
pub fn window(after: Option<i64>, before: Option<i64>) -> Result<DeadWindow, String> {
    if let (Some(a), Some(b)) = (after, before)
        && a >= b
    {
        return Err("the start of the time window must be before its end".to_owned());
    }
    Ok(DeadWindow { after, before })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_take_rfc3339_or_a_duration_back() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time_bound("2h", now), Ok(now - 7_200_000));
        assert_eq!(
            parse_time_bound("2026-11-26T09:00:00Z", now),
            Ok(chrono::DateTime::parse_from_rfc3339("2026-11-26T09:00:00Z")
                .expect("time")
                .timestamp_millis())
        );
        assert!(parse_time_bound("yesterday", now).is_err_and(|e| e.contains("RFC 3339")));
        assert!(window(Some(5), Some(5)).is_err());
        assert_eq!(
            window(Some(1), None),
            Ok(DeadWindow {
                after: Some(1),
                before: None
            })
        );
    }
}
