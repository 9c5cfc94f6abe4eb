//! The outbox relay: moves committed `culm_outbox` rows to Redis.
//!
//! Another service inserts a row in the same transaction as its business change, so the
//! job exists exactly when the change committed (docs/outbox.md). Each relay step takes a
//! batch with `SELECT … FOR UPDATE SKIP LOCKED` (replicas take disjoint batches), enqueues
//! it through the `Store`, deletes the rows and commits. Every row is enqueued with an
//! idempotency key (its own, or `outbox:<id>`), so a relay that dies after the push but
//! before the commit hands the row to the next relay, whose push is a no-op. Relays sleep
//! until a `NOTIFY culm_outbox` (sent by an insert trigger on commit) or `poll_interval`.
//! A row's optional `traceparent` is stored with its job, which continues the writer's trace.
use super::Db;
use crate::{config::OutboxConfig, store::Store, telemetry};
use chrono::{DateTime, Utc};
use culm_core::{EnqueueError, EnqueueRequest, TraceContext};
use sqlx::{Row, postgres::PgListener};
use std::time::Duration;
use tokio::{sync::watch, task::JoinHandle};

/// The NOTIFY channel of the insert trigger.
pub const CHANNEL: &str = "culm_outbox";

/// What one relay step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Rows handed to Redis (and deleted).
    pub enqueued: usize,
    /// Rows rejected (unknown job, bad payload...): kept with `rejected_at` and `last_error`.
    pub rejected: usize,
}

/// A relay failure (the batch's transaction is rolled back; its rows are retried).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
    /// Redis failed.
    #[error("enqueueing outbox rows failed: {0}")]
    Enqueue(String),
}

/// Moves up to `batch` committed rows to Redis in one transaction.
pub async fn relay_once(db: &Db, store: &Store, batch: usize) -> Result<Relayed, RelayError> {
    let mut tx = db.pool().begin().await?;
    let rows = sqlx::query(
        "SELECT id, job, payload, queue, run_at, idempotency_key, traceparent FROM culm_outbox \
         WHERE rejected_at IS NULL AND available_at <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::try_from(batch).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Relayed::default());
    }
    let mut good: Vec<(i64, EnqueueRequest)> = Vec::with_capacity(rows.len());
    let mut rejected: Vec<(i64, String)> = Vec::new();
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let run_at: Option<DateTime<Utc>> = r.try_get("run_at")?;
        let key: Option<String> = r.try_get("idempotency_key")?;
        let mut req = EnqueueRequest::raw(r.try_get::<String, _>("job")?, r.try_get("payload")?);
        req.queue = r.try_get("queue")?;
        req.run_at_ms = run_at.map(|t| t.timestamp_millis());
        // An invalid traceparent is ignored (the W3C rule), never a reason to reject the row.
        let traceparent: Option<String> = r.try_get("traceparent")?;
        req.trace = TraceContext::from_headers(traceparent.as_deref(), None, None);
        if let Some(k) = key.as_deref().filter(|k| crate::store::reserved_idempotency_key(k)) {
            rejected.push((
                id,
                format!("idempotency_key `{k}` uses a prefix culm reserves for its own keys"),
            ));
            continue;
        }
        // The row id makes a re-relayed row (relay crashed before commit) a no-op.
        req.idempotency_key = Some(key.unwrap_or_else(|| format!("outbox:{id}")));
        match store.resolve(&req) {
            Ok(_) => good.push((id, req)),
            Err(e) => rejected.push((id, e.to_string())),
        }
    }
    let ids: Vec<i64> = good.iter().map(|(id, _)| *id).collect();
    if !good.is_empty() {
        let reqs = good.into_iter().map(|(_, r)| r).collect();
        match store.enqueue(reqs).await {
            Ok(_) => {}
            Err(EnqueueError::Storage(e)) => return Err(RelayError::Enqueue(e)),
            // Validated above; a race with a config change is retried next round.
            Err(e) => return Err(RelayError::Enqueue(e.to_string())),
        }
        sqlx::query("DELETE FROM culm_outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    for (id, error) in &rejected {
        tracing::error!(outbox_id = id, "outbox row rejected and kept with its error: {error}");
        sqlx::query(
            "UPDATE culm_outbox SET rejected_at = now(), attempts = attempts + 1, last_error = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    telemetry::outbox_relayed(ids.len() as u64, rejected.len() as u64);
    Ok(Relayed {
        enqueued: ids.len(),
        rejected: rejected.len(),
    })
}

/// Relays until the outbox has no ready rows. Returns the total.
pub async fn drain(db: &Db, store: &Store, batch: usize) -> Result<Relayed, RelayError> {
    let mut total = Relayed::default();
    loop {
        let r = relay_once(db, store, batch).await?;
        total.enqueued += r.enqueued;
        total.rejected += r.rejected;
        if r.enqueued + r.rejected < batch {
            return Ok(total);
        }
    }
}

/// Starts a relay task that runs until `stop` fires.
pub fn start(db: Db, store: Store, config: OutboxConfig, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(relay_loop(db, store, config, stop))
}

async fn listen(db: &Db) -> Option<PgListener> {
    let mut l = PgListener::connect_with(db.pool()).await.ok()?;
    l.listen(CHANNEL).await.ok()?;
    Some(l)
}

async fn relay_loop(db: Db, store: Store, config: OutboxConfig, mut stop: watch::Receiver<bool>) {
    let mut listener: Option<PgListener> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        if listener.is_none() {
            listener = listen(&db).await;
        }
        let wait = match drain(&db, &store, config.batch).await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                config.poll_interval
            }
            Err(e) => {
                telemetry::outbox_error();
                tracing::warn!(
                    "outbox relay failed, retrying in {}: {e}",
                    humantime::format_duration(backoff)
                );
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                b
            }
        };
        // Wait for a commit's NOTIFY, or poll (the fallback when LISTEN is down).
        let notified = async {
            match listener.as_mut() {
                Some(l) => match l.recv().await {
                    Ok(_) => {
                        // Take every notification already queued: one drain covers them.
                        while l.next_buffered().is_some() {}
                    }
                    Err(_) => {
                        listener = None;
                        tokio::time::sleep(wait).await;
                    }
                },
                None => tokio::time::sleep(wait).await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
