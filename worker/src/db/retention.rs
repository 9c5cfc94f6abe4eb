//! Retention: ledger rows and archived dead jobs past `database.ledger.retention` and
//! `dead_retention` are deleted in small batches, by one replica at a time.
use super::Db;
use crate::config::LedgerConfig;
use chrono::Utc;
use std::time::Duration;
use tokio::sync::watch;

/// Deletes ledger rows (and archived dead jobs) past their retention, in batches of
/// `batch`, so no statement holds locks for long. Returns (runs, dead jobs) deleted.
pub async fn housekeeping(db: &Db, config: &LedgerConfig, batch: i64) -> Result<(u64, u64), sqlx::Error> {
    let runs = delete_older_than(
        db,
        config.retention,
        batch,
        "DELETE FROM culm_job_runs WHERE run_id IN \
         (SELECT run_id FROM culm_job_runs WHERE finished_at < $1 LIMIT $2)",
    )
    .await?;
    let dead = delete_older_than(
        db,
        config.dead_retention,
        batch,
        "DELETE FROM culm_dead_jobs WHERE job_id IN \
         (SELECT job_id FROM culm_dead_jobs WHERE died_at < $1 LIMIT $2)",
    )
    .await?;
    Ok((runs, dead))
}

/// Runs `sql` (binding the cutoff `now - retention` and `batch`) until a batch deletes
/// fewer than `batch` rows. A zero retention keeps everything.
async fn delete_older_than(db: &Db, retention: Duration, batch: i64, sql: &str) -> Result<u64, sqlx::Error> {
    if retention.is_zero() {
        return Ok(0);
    }
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(cutoff)
            .bind(batch)
            .execute(db.pool())
            .await?
            .rows_affected();
        deleted += n;
        if n < batch as u64 {
            return Ok(deleted);
        }
    }
}

/// Runs [`housekeeping`] every `housekeeping_interval` until `stop`. Replicas take a
/// PostgreSQL advisory lock so only one deletes at a time.
pub async fn housekeeping_loop(db: Db, config: LedgerConfig, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(config.housekeeping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let run = async {
            let mut conn = db.pool().acquire().await?;
            // Key: "culm" in ASCII, an arbitrary constant shared by every replica.
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(1668640109)")
                .fetch_one(&mut *conn)
                .await?;
            if !got {
                return Ok((0, 0));
            }
            let r = housekeeping(&db, &config, 5000).await;
            let _ = sqlx::query("SELECT pg_advisory_unlock(1668640109)")
                .execute(&mut *conn)
                .await;
            r
        };
        match run.await {
            Ok((0, 0)) => {}
            Ok((runs, dead)) => tracing::info!(runs, dead, "ledger retention deleted old rows"),
            Err(e) => tracing::warn!("ledger retention failed: {e}"),
        }
    }
}
