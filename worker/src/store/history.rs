//! The per-minute history the dashboard charts: runs processed and failed and the
//! average wait per queue. `ack.lua` adds each acknowledged batch to the current hour's
//! hash (`QueueKeys::history`), so every replica contributes and the hot path pays a few
//! commands per batch, never per run; hashes expire 25 hours after their last write.
use super::{Store, StoreError};
use culm_core::now_ms;
use serde::Serialize;
use std::collections::HashMap;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// The longest window kept (the hashes expire after 25 h).
pub const MAX_HISTORY_MINUTES: u32 = 24 * 60;

/// One minute of a queue's history.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MinuteStats {
    /// The minute's (or bucket's) start, ms (RFC 3339 in JSON).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// Runs that ended done (or cancelled by their handler).
    pub processed: u64,
    /// Runs that failed (to be retried, or dead-lettered).
    pub failed: u64,
    /// Runs that started (what `wait_avg_ms` averages over).
    pub started: u64,
    /// Average time from due to start of the runs that started, ms.
    pub wait_avg_ms: Option<u64>,
}

impl MinuteStats {
    /// `points` merged into buckets of `per` consecutive entries (counts summed, waits
    /// averaged over the runs), each stamped with its first minute.
    pub fn bucket(points: &[MinuteStats], per: usize) -> Vec<MinuteStats> {
        points
            .chunks(per.max(1))
            .map(|c| {
                let started: u64 = c.iter().map(|p| p.started).sum();
                let wait: u64 = c.iter().map(|p| p.wait_avg_ms.unwrap_or(0) * p.started).sum();
                MinuteStats {
                    at: c[0].at,
                    processed: c.iter().map(|p| p.processed).sum(),
                    failed: c.iter().map(|p| p.failed).sum(),
                    started,
                    wait_avg_ms: (started > 0).then(|| wait / started),
                }
            })
            .collect()
    }
}

impl Store {
    /// The last `minutes` minutes of `queue` (at most a day), oldest first, one entry per
    /// minute (zeros where nothing happened).
    pub async fn history(&self, queue: &str, minutes: u32) -> Result<Vec<MinuteStats>, StoreError> {
        Ok(self.histories(&[queue.to_owned()], minutes).await?.remove(0))
    }

    /// [`Store::history`] of each of `queues`, in one round trip.
    pub async fn histories(&self, queues: &[String], minutes: u32) -> Result<Vec<Vec<MinuteStats>>, StoreError> {
        for q in queues {
            self.settings(q)?;
        }
        let minutes = i64::from(minutes.clamp(1, MAX_HISTORY_MINUTES));
        let last = now_ms().div_euclid(MINUTE_MS);
        let first = last - minutes + 1;
        // A field is named by Redis's minute but filed under the writer's hour: read one
        // hour more on each side.
        let hours = (first * MINUTE_MS).div_euclid(HOUR_MS) - 1..=(last * MINUTE_MS).div_euclid(HOUR_MS) + 1;
        let mut pipe = redis::pipe();
        for q in queues {
            let keys = self.keys(q);
            for h in hours.clone() {
                pipe.hgetall(keys.history(h));
            }
        }
        let mut conn = self.inner.conn.clone();
        let replies: Vec<HashMap<String, u64>> = pipe.query_async(&mut conn).await?;
        let per_queue = hours.count();
        Ok(replies
            .chunks(per_queue.max(1))
            .map(|hashes| {
                let mut out: Vec<MinuteStats> = (first..=last)
                    .map(|m| MinuteStats {
                        at: m * MINUTE_MS,
                        ..MinuteStats::default()
                    })
                    .collect();
                let mut wait_sum = vec![0u64; out.len()];
                let mut waited = vec![0u64; out.len()];
                for (field, v) in hashes.iter().flatten() {
                    let Some((m, kind)) = field.split_once(':') else {
                        continue;
                    };
                    let Some(i) = m
                        .parse::<i64>()
                        .ok()
                        .filter(|m| (first..=last).contains(m))
                        .and_then(|m| usize::try_from(m - first).ok())
                    else {
                        continue;
                    };
                    match kind {
                        "p" => out[i].processed += v,
                        "f" => out[i].failed += v,
                        "w" => wait_sum[i] += v,
                        "n" => waited[i] += v,
                        _ => {}
                    }
                }
                for (i, p) in out.iter_mut().enumerate() {
                    p.started = waited[i];
                    p.wait_avg_ms = (waited[i] > 0).then(|| wait_sum[i] / waited[i]);
                }
                out
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_counts_and_weigh_waits_by_runs() {
        let p = |at, processed, started, wait| MinuteStats {
            at,
            processed,
            failed: 1,
            started,
            wait_avg_ms: wait,
        };
        let b = MinuteStats::bucket(&[p(0, 2, 1, Some(100)), p(1, 3, 3, Some(500)), p(2, 0, 0, None)], 2);
        assert_eq!(
            b,
            vec![
                MinuteStats {
                    at: 0,
                    processed: 5,
                    failed: 2,
                    started: 4,
                    wait_avg_ms: Some(400)
                },
                MinuteStats {
                    at: 2,
                    processed: 0,
                    failed: 1,
                    started: 0,
                    wait_avg_ms: None
                },
            ]
        );
    }
}
