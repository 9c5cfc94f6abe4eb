//! The dead-letter archive, `culm_dead_jobs`: written by the ledger writer in the same
//! transaction as a dead run's ledger row; read by `culm dead` and `/v1/dead*` when
//! PostgreSQL is configured. Re-drive works from here even after Redis let the job go.
use super::{Db, DbError};
use crate::store::{DeadFilter, DeadJob, ErrorRecord, Store};
use chrono::{DateTime, Utc};
use culm_core::EnqueueRequest;
use serde_json::value::RawValue;
use sqlx::{Postgres, Row, Transaction, postgres::PgRow};

/// What the archive keeps of a job's fatal attempt. The ledger writer builds these from
/// its dead runs; the archive does not depend on the ledger's row format.
pub(super) struct DeadRun<'a> {
    pub job_id: &'a str,
    pub job: &'a str,
    pub queue: &'a str,
    pub tier: &'a str,
    pub payload: &'a RawValue,
    pub idempotency_key: Option<&'a str>,
    /// The fatal attempt's number, which is also the number of attempts made.
    pub attempts: u32,
    pub last_error: Option<&'a str>,
    pub enqueued_at_ms: Option<i64>,
    /// When the fatal attempt's outcome was recorded, µs: the archive's `died_at`.
    pub died_at_us: i64,
}

/// Upserts the archive rows of `dead` runs. The error history is every failed attempt in
/// the ledger, which this transaction has just extended.
///
/// The archive only moves forward: a death older than the archived one changes nothing
/// (replays of spilled rows arrive late and in any order), and a re-drive is cleared only
/// by a death after both the archived death and the re-drive, so replaying a death the
/// operator already re-drove leaves `redriven_at` set.
pub(super) async fn archive(tx: &mut Transaction<'_, Postgres>, dead: &[DeadRun<'_>]) -> Result<(), sqlx::Error> {
    let ms = |v: Option<i64>| v.and_then(DateTime::<Utc>::from_timestamp_millis);
    sqlx::query(
        "INSERT INTO culm_dead_jobs (job_id, job, queue, tier, payload, idempotency_key, attempts, last_error, \
         errors, enqueued_at, died_at) \
         SELECT d.job_id, d.job, d.queue, d.tier, d.payload::jsonb, d.idem, d.attempt, d.error, \
           COALESCE((SELECT jsonb_agg(jsonb_build_object('attempt', r.attempt, \
                       'at', (extract(epoch FROM r.finished_at) * 1000)::bigint, 'error', r.error) \
                     ORDER BY r.finished_at, r.attempt) \
                     FROM culm_job_runs r \
                     WHERE r.job_id = d.job_id AND r.outcome IN ('failed_will_retry', 'dead') \
                       AND r.finished_at <= d.died_at), '[]'::jsonb), \
           d.enqueued_at, d.died_at \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], \
           $8::text[], $9::timestamptz[], $10::timestamptz[]) \
           AS d(job_id, job, queue, tier, payload, idem, attempt, error, enqueued_at, died_at) \
         ON CONFLICT (job_id) DO UPDATE SET job = EXCLUDED.job, queue = EXCLUDED.queue, tier = EXCLUDED.tier, \
           payload = EXCLUDED.payload, idempotency_key = EXCLUDED.idempotency_key, attempts = EXCLUDED.attempts, \
           last_error = EXCLUDED.last_error, errors = EXCLUDED.errors, enqueued_at = EXCLUDED.enqueued_at, \
           died_at = EXCLUDED.died_at, \
           redriven_at = CASE WHEN EXCLUDED.died_at > GREATEST(culm_dead_jobs.died_at, culm_dead_jobs.redriven_at) \
             THEN NULL ELSE culm_dead_jobs.redriven_at END, \
           redriven_as = CASE WHEN EXCLUDED.died_at > GREATEST(culm_dead_jobs.died_at, culm_dead_jobs.redriven_at) \
             THEN NULL ELSE culm_dead_jobs.redriven_as END \
         WHERE culm_dead_jobs.died_at <= EXCLUDED.died_at",
    )
    .bind(dead.iter().map(|d| d.job_id).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.job).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.queue).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.tier).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.payload.get()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.idempotency_key).collect::<Vec<_>>())
    .bind(
        dead.iter()
            .map(|d| i32::try_from(d.attempts).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(dead.iter().map(|d| d.last_error).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| ms(d.enqueued_at_ms)).collect::<Vec<_>>())
    .bind(
        dead.iter()
            .map(|d| DateTime::<Utc>::from_timestamp_micros(d.died_at_us).unwrap_or_else(Utc::now))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const COLUMNS: &str = "job_id, job, queue, payload, attempts, last_error, errors, enqueued_at, died_at";

fn dead_job(r: &PgRow) -> Result<DeadJob, sqlx::Error> {
    let errors: serde_json::Value = r.try_get("errors")?;
    let errors: Vec<ErrorRecord> = serde_json::from_value(errors).unwrap_or_default();
    let enqueued: Option<DateTime<Utc>> = r.try_get("enqueued_at")?;
    let died: DateTime<Utc> = r.try_get("died_at")?;
    Ok(DeadJob {
        id: r.try_get("job_id")?,
        queue: r.try_get("queue")?,
        job: r.try_get("job")?,
        payload: r.try_get("payload")?,
        attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
        died_at: died.timestamp_millis(),
        enqueued_at: enqueued.map(|t| t.timestamp_millis()).unwrap_or(0),
        last_error: r.try_get("last_error")?,
        errors,
    })
}

impl Db {
    /// Archived dead jobs not yet re-driven, newest first; `queue` narrows, `limit` caps.
    pub async fn dead_list(&self, queue: Option<&str>, limit: usize) -> Result<Vec<DeadJob>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM culm_dead_jobs WHERE redriven_at IS NULL AND ($1::text IS NULL OR queue = $1) \
             ORDER BY died_at DESC LIMIT $2"
        ))
        .bind(queue)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(dead_job).collect::<Result<_, _>>()?)
    }

    /// Archived dead jobs not yet re-driven that match `filter`, newest first, skipping
    /// the first `offset`; at most `limit`. The error text is matched with `strpos`, so
    /// `%` and `_` in it are plain characters.
    pub async fn dead_list_filtered(
        &self,
        filter: &DeadFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadJob>, DbError> {
        let ms = |v: Option<i64>| v.and_then(DateTime::<Utc>::from_timestamp_millis);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM culm_dead_jobs WHERE redriven_at IS NULL \
             AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR job = $2) \
             AND ($3::text IS NULL OR strpos(lower(coalesce(last_error, '')), lower($3)) > 0) \
             AND ($4::timestamptz IS NULL OR died_at >= $4) AND ($5::timestamptz IS NULL OR died_at < $5) \
             ORDER BY died_at DESC, job_id DESC OFFSET $6 LIMIT $7"
        ))
        .bind(filter.queue.as_deref())
        .bind(filter.job.as_deref())
        .bind(filter.error.as_deref())
        .bind(ms(filter.window.after))
        .bind(ms(filter.window.before))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(dead_job).collect::<Result<_, _>>()?)
    }

    /// One archived dead job (re-driven or not).
    pub async fn dead_get(&self, id: &str) -> Result<Option<DeadJob>, DbError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM culm_dead_jobs WHERE job_id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(dead_job).transpose()?)
    }

    /// Re-drives an archived dead job. If Redis still holds it, it goes back on its queue
    /// under the same id with a fresh attempt budget; if Redis has let it go, a new job is
    /// enqueued from the archived payload (idempotency key `redrive:<origin>:<died_at ms>`,
    /// `culm_core::redrive_key`; its handler's upstream idempotency key is the origin's).
    /// Returns the queue and the id that will run, or `None` when the archive has no such
    /// job awaiting re-drive.
    ///
    /// At most one live copy results, however many calls race or are retried: the archive
    /// row is locked for the whole re-drive, so a second call waits and then finds it
    /// re-driven; a Redis error fails the call instead of being read as "Redis has let it
    /// go"; and a job Redis still knows in any other state is not copied.
    pub async fn dead_redrive(&self, store: &Store, id: &str) -> Result<Option<(String, String)>, DbError> {
        let redis = |e: crate::store::StoreError| DbError::Sql(sqlx::Error::Protocol(format!("re-drive of {id}: {e}")));
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "SELECT job, queue, payload, idempotency_key, died_at FROM culm_dead_jobs WHERE job_id = $1 AND redriven_at IS NULL FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            // Dead only in Redis (before PostgreSQL was configured, or not flushed yet).
            let queue = store.dead_queue_of(id).await.map_err(redis)?;
            if let Some(q) = queue
                && store.dead_retry(&q, &[id.to_owned()]).await.map_err(redis)? > 0
            {
                return Ok(Some((q, id.to_owned())));
            }
            return Ok(None);
        };
        let queue: String = row.try_get("queue")?;
        let job: String = row.try_get("job")?;
        let payload: serde_json::Value = row.try_get("payload")?;
        let died: DateTime<Utc> = row.try_get("died_at")?;
        let declared = store.routing().queues.contains_key(&queue);
        let runs_as = if declared && store.dead_retry(&queue, &[id.to_owned()]).await.map_err(redis)? > 0 {
            id.to_owned()
        } else if declared
            && store
                .status(id)
                .await
                .map_err(redis)?
                .is_some_and(|s| s.state.is_live())
        {
            // Already back on its queue (re-driven from Redis directly, say).
            id.to_owned()
        } else {
            let mut req = EnqueueRequest::raw(job, payload).queue(queue.clone());
            // The upstream key survives: a re-drive of a re-drive keeps the first job's id.
            let key: Option<String> = row.try_get("idempotency_key")?;
            let origin = key.as_deref().and_then(culm_core::redrive_origin).unwrap_or(id);
            req.idempotency_key = Some(culm_core::redrive_key(origin, died.timestamp_millis()));
            let e = store
                .enqueue(vec![req])
                .await
                .map_err(|e| DbError::Sql(sqlx::Error::Protocol(format!("re-drive of {id}: {e}"))))?;
            e.into_iter().next().map(|e| e.id).ok_or_else(|| {
                DbError::Sql(sqlx::Error::Protocol(format!(
                    "re-drive of {id}: the store stored nothing"
                )))
            })?
        };
        sqlx::query("UPDATE culm_dead_jobs SET redriven_at = now(), redriven_as = $2 WHERE job_id = $1")
            .bind(id)
            .bind(&runs_as)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((queue, runs_as)))
    }

    /// Deletes archived dead jobs for good; returns the ids that were archived.
    pub async fn dead_purge(&self, ids: &[String]) -> Result<Vec<String>, DbError> {
        Ok(
            sqlx::query_scalar("DELETE FROM culm_dead_jobs WHERE job_id = ANY($1) RETURNING job_id")
                .bind(ids)
                .fetch_all(self.pool())
                .await?,
        )
    }
}
