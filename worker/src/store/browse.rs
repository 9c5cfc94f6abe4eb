//! Listing a queue's jobs by state, one page at a time (`GET /v1/jobs`, `culm jobs list`,
//! the dashboard's queue page). A page reads only itself, never a whole structure, so it
//! costs the same with 1M pending jobs as with ten:
//!
//! - pending: `LRANGE` on the ready lists (high, normal, low, as one sequence) from a
//!   position (Redis finds a position by walking the list's nodes, not its entries);
//! - scheduled, running, dead, done and cancelled: a score range of `scheduled`,
//!   `leases`, `dead` or `done`, resumed after the last score returned
//!   (`ZRANGE … BYSCORE … LIMIT`), so jobs that are popped or added meanwhile do not shift
//!   the next page;
//! - then the page's bodies, attempts and errors, one `HMGET` each.
//!
//! With a `job` filter, one page examines at most [`SCAN_BUDGET`] entries and may hold
//! fewer than the limit; its cursor continues where the examination stopped.
use super::{Envelope, ErrorRecord, Fields, Finished, JobState, JobStatus, Store, StoreError, parse_errors};
use culm_core::Priority;

/// Most entries one page examines when a `job` filter skips entries.
pub const SCAN_BUDGET: usize = 5_000;

/// Where a page starts. Opaque to callers (`JobPage::next_cursor` hands it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Pending: a position in `ready`.
    At(usize),
    /// Zsets: after `skip` entries with score `score` (entries sharing a score are taken
    /// in Redis's order, by member).
    After { score: i64, skip: usize },
}

impl Cursor {
    /// The cursor's text form.
    pub fn encode(self) -> String {
        match self {
            Cursor::At(n) => format!("p{n}"),
            Cursor::After { score, skip } => format!("s{score}.{skip}"),
        }
    }

    /// Parses a cursor from [`Cursor::encode`]; `None` when it is not one.
    pub fn decode(s: &str) -> Option<Cursor> {
        if let Some(n) = s.strip_prefix('p') {
            return n.parse().ok().map(Cursor::At);
        }
        let (score, skip) = s.strip_prefix('s')?.split_once('.')?;
        Some(Cursor::After {
            score: score.parse().ok()?,
            skip: skip.parse().ok()?,
        })
    }
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs, in the state's order: pending FIFO, scheduled by due time, running by
    /// lease deadline, dead, done and cancelled newest first.
    pub jobs: Vec<JobStatus>,
    /// Where the next page starts; `None` at the end.
    pub next_cursor: Option<Cursor>,
}

/// A listing request.
#[derive(Debug, Clone)]
pub struct ListJobs<'a> {
    pub queue: &'a str,
    pub state: JobState,
    /// Only this job type.
    pub job: Option<&'a str>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// What the dashboard's job page shows beyond `JobStatus`: the stored body and the lease.
#[derive(Debug, Clone)]
pub struct JobBody {
    /// The payload, as stored (absent once the job is done: its body is deleted).
    pub payload: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    /// The current lease's token while it runs (`s` suffix dropped).
    pub token: Option<u64>,
    /// The tracked batch the job is a member or the callback of.
    pub batch: Option<String>,
}

impl Store {
    /// The body and lease token of job `id` in `queue` (two `HGET`s).
    pub async fn job_body(&self, queue: &str, id: &str) -> Result<JobBody, StoreError> {
        self.settings(queue)?;
        let keys = self.keys(queue);
        let mut conn = self.inner.conn.clone();
        let (body, token): (Option<String>, Option<String>) = redis::pipe()
            .hget(keys.jobs(), id)
            .hget(keys.attempts(), format!("{id}:t"))
            .query_async(&mut conn)
            .await?;
        let env = body.as_deref().and_then(|b| serde_json::from_str::<Envelope>(b).ok());
        Ok(JobBody {
            payload: env.as_ref().and_then(|e| serde_json::from_str(e.payload.get()).ok()),
            batch: env
                .as_ref()
                .and_then(|e| e.batch.clone().or_else(|| e.callback_of.clone())),
            idempotency_key: env.and_then(|e| e.idempotency_key),
            token: token.and_then(|t| t.trim_end_matches('s').parse().ok()),
        })
    }

    /// The jobs `parent` enqueued as follow-ups (`Outcome::then`) or fan-outs, found by
    /// the idempotency keys culm gives them (`<parent>:then:<i>`, `<parent>:fan:<i>`), at
    /// most `max` of each kind, while those keys last (`worker.idempotency_ttl`). Returns
    /// (queue, id) pairs in index order. Follow-ups enqueued with a key of their own are
    /// not found this way.
    pub async fn follow_ups(&self, parent: &str, max: usize) -> Result<Vec<(String, String)>, StoreError> {
        let queues: Vec<&String> = self.inner.routing.queues.keys().collect();
        let mut pipe = redis::pipe();
        for kind in ["then", "fan"] {
            for i in 0..max {
                for q in &queues {
                    pipe.get(self.keys(q).idem(&format!("{parent}:{kind}:{i}")));
                }
            }
        }
        let mut conn = self.inner.conn.clone();
        let ids: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .chunks(queues.len().max(1))
            .flat_map(|per_queue| {
                per_queue
                    .iter()
                    .zip(&queues)
                    .filter_map(|(id, q)| id.clone().map(|id| ((*q).clone(), id)))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// One page of a queue's jobs in one state.
    pub async fn list_jobs(&self, q: &ListJobs<'_>) -> Result<JobPage, StoreError> {
        self.settings(q.queue)?;
        let limit = q.limit.max(1);
        let mut jobs = Vec::new();
        let mut cursor = q.cursor;
        let mut examined = 0;
        // Without a filter one read fills the page; with one, read on until the page is
        // full, the structure ends or the budget is spent.
        let chunk = if q.job.is_some() { limit.max(200) } else { limit };
        loop {
            let want = chunk.min(SCAN_BUDGET - examined).max(1);
            let (entries, next) = self.entries(q.queue, q.state, cursor, want).await?;
            let at_end = next.is_none();
            let mut page = self.load(q.queue, q.state, &entries).await?;
            examined += entries.len();
            let mut consumed = entries.len();
            if let Some(job) = q.job {
                let mut kept = Vec::new();
                for (i, s) in page.into_iter().enumerate() {
                    if s.job.as_deref() == Some(job) {
                        if jobs.len() + kept.len() == limit {
                            consumed = i;
                            break;
                        }
                        kept.push(s);
                    }
                }
                page = kept;
            }
            jobs.extend(page);
            cursor = if consumed == entries.len() {
                next
            } else {
                advance(q.state, cursor, &entries[..consumed])
            };
            if at_end && consumed == entries.len() {
                return Ok(JobPage {
                    jobs,
                    next_cursor: None,
                });
            }
            if jobs.len() >= limit || examined >= SCAN_BUDGET {
                return Ok(JobPage {
                    jobs,
                    next_cursor: cursor,
                });
            }
        }
    }

    /// Up to `n` (id, score) entries from `cursor`, and the cursor after them (`None` when
    /// the structure ended).
    async fn entries(
        &self,
        queue: &str,
        state: JobState,
        cursor: Option<Cursor>,
        n: usize,
    ) -> Result<(Vec<(String, i64)>, Option<Cursor>), StoreError> {
        let keys = self.keys(queue);
        let mut conn = self.inner.conn.clone();
        if state == JobState::Pending {
            let from = match cursor {
                Some(Cursor::At(p)) => p,
                _ => 0,
            };
            // The ready lists in the order a fetch takes them, as one sequence: the
            // cursor is a position in it, and each page reads only its own part.
            let lists = Priority::ALL.map(|p| keys.ready_at(p));
            let lens: Vec<usize> = lists
                .iter()
                .fold(&mut redis::pipe(), |pipe, k| pipe.llen(k))
                .query_async(&mut conn)
                .await?;
            let mut pipe = redis::pipe();
            let (mut start, mut want) = (0, n);
            for (key, len) in lists.iter().zip(&lens) {
                let end = start + len;
                if want > 0 && from + (n - want) < end {
                    let at = from + (n - want) - start;
                    let take = want.min(len - at);
                    pipe.lrange(key, at as isize, (at + take - 1) as isize);
                    want -= take;
                }
                start = end;
            }
            let ids: Vec<String> = if want == n {
                // The position is past the last pending job: nothing to read.
                Vec::new()
            } else {
                let parts: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
                parts.into_iter().flatten().collect()
            };
            let next = (ids.len() == n).then_some(Cursor::At(from + n));
            return Ok((ids.into_iter().map(|id| (id, 0)).collect(), next));
        }
        let (key, newest_first) = match state {
            JobState::Scheduled => (keys.scheduled(), false),
            JobState::Running => (keys.leases(), false),
            JobState::Dead => (keys.dead(), true),
            _ => (keys.done(), true),
        };
        let (bound, skip) = match cursor {
            Some(Cursor::After { score, skip }) => (Some(score), skip),
            _ => (None, 0),
        };
        // Read one more than asked to know whether the structure goes on.
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&key);
        if newest_first {
            cmd.arg(bound.map_or("+inf".to_owned(), |s| s.to_string())).arg("-inf");
        } else {
            // Exclusive: `leases` holds a pin member scored +inf (store/lua/common.lua)
            // that is not a lease.
            cmd.arg(bound.map_or("-inf".to_owned(), |s| s.to_string())).arg("(+inf");
        }
        cmd.arg("BYSCORE");
        if newest_first {
            cmd.arg("REV");
        }
        cmd.arg("LIMIT").arg(skip).arg(n + 1).arg("WITHSCORES");
        let mut got: Vec<(String, f64)> = cmd.query_async(&mut conn).await?;
        let more = got.len() > n;
        got.truncate(n);
        let entries: Vec<(String, i64)> = got.into_iter().map(|(id, s)| (id, s as i64)).collect();
        let next = if more { advance(state, cursor, &entries) } else { None };
        Ok((entries, next))
    }

    /// The statuses of `entries`, read with one `HMGET` per hash. Entries whose job is
    /// gone by now (settled between the two reads) are left out; in `done`, only jobs
    /// of the asked state (done or cancelled) are kept.
    async fn load(
        &self,
        queue: &str,
        state: JobState,
        entries: &[(String, i64)],
    ) -> Result<Vec<JobStatus>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(queue);
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let mut conn = self.inner.conn.clone();
        let finished = matches!(state, JobState::Done | JobState::Cancelled);
        let body_key = if finished { keys.finished() } else { keys.jobs() };
        let (bodies, attempts, errors): (Fields, Vec<Option<u32>>, Fields) = redis::pipe()
            .cmd("HMGET")
            .arg(body_key)
            .arg(&ids)
            .cmd("HMGET")
            .arg(keys.attempts())
            .arg(&ids)
            .cmd("HMGET")
            .arg(keys.errors())
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (id, score)) in entries.iter().enumerate() {
            let body = bodies.get(i).cloned().flatten();
            let errs: Vec<ErrorRecord> = errors
                .get(i)
                .cloned()
                .flatten()
                .map(|e| parse_errors(&e))
                .unwrap_or_default();
            let mut s = JobStatus {
                id: id.clone(),
                queue: queue.to_owned(),
                state,
                job: None,
                attempts: attempts.get(i).copied().flatten().unwrap_or(0),
                enqueued_at: None,
                run_at: (state == JobState::Scheduled).then_some(*score),
                lease_expires_at: (state == JobState::Running).then_some(*score),
                finished_at: state.is_final().then_some(*score),
                last_error: errs.last().map(|e| e.error.clone()),
                errors: errs,
                result: None,
                priority: None,
            };
            if finished {
                // A done id whose `finished` entry is gone (trimmed) is still listed.
                let fin = body.and_then(|b| serde_json::from_str::<Finished>(&b).ok());
                let cancelled = fin.as_ref().is_some_and(|f| f.cancelled);
                if cancelled != (state == JobState::Cancelled) {
                    continue;
                }
                if let Some(f) = fin {
                    s.job = Some(f.job);
                    s.attempts = f.attempts;
                    s.enqueued_at = Some(f.enqueued_at);
                    s.result = f.result.and_then(|r| serde_json::from_str(r.get()).ok());
                }
            } else {
                // Pending ids left in `ready` by a cancel have no body: not a job any more.
                let Some(body) = body else { continue };
                match serde_json::from_str::<Envelope>(&body) {
                    Ok(env) => {
                        s.job = Some(env.job);
                        s.enqueued_at = Some(env.enqueued_at);
                        s.priority = Some(env.priority);
                        if state == JobState::Pending {
                            s.run_at = None;
                        }
                    }
                    Err(_) => s.job = Some("unknown".to_owned()),
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// The cursor after `entries`, read from `from`.
fn advance(state: JobState, from: Option<Cursor>, entries: &[(String, i64)]) -> Option<Cursor> {
    if state == JobState::Pending {
        let start = match from {
            Some(Cursor::At(p)) => p,
            _ => 0,
        };
        return Some(Cursor::At(start + entries.len()));
    }
    let Some((_, last)) = entries.last() else {
        return from;
    };
    let same = entries.iter().rev().take_while(|(_, s)| s == last).count();
    // If every entry shares the cursor's score, the skip grows from the cursor's own.
    let skip = match from {
        Some(Cursor::After { score, skip }) if score == *last && same == entries.len() => skip + same,
        _ => same,
    };
    Some(Cursor::After { score: *last, skip })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        for c in [
            Cursor::At(0),
            Cursor::At(42),
            Cursor::After {
                score: 1_700_000_000_000,
                skip: 3,
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        for junk in ["", "p", "px", "s1", "s1.x", "q3", "s.1"] {
            assert_eq!(Cursor::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_cursor_after_entries_sharing_a_score_skips_them() {
        let e = |v: &[(&str, i64)]| v.iter().map(|(i, s)| ((*i).to_owned(), *s)).collect::<Vec<_>>();
        assert_eq!(
            advance(JobState::Scheduled, None, &e(&[("a", 1), ("b", 2), ("c", 2)])),
            Some(Cursor::After { score: 2, skip: 2 })
        );
        assert_eq!(
            advance(
                JobState::Scheduled,
                Some(Cursor::After { score: 2, skip: 2 }),
                &e(&[("d", 2), ("e", 2)])
            ),
            Some(Cursor::After { score: 2, skip: 4 })
        );
        assert_eq!(
            advance(JobState::Pending, Some(Cursor::At(10)), &e(&[("a", 0)])),
            Some(Cursor::At(11))
        );
    }
}
