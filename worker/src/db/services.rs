//! The PostgreSQL tasks of a `culm run` process: [`start`] checks or applies the
//! migrations and starts the ledger writer, the outbox relay and retention;
//! [`Services::shutdown`] stops them after the worker pools drained.
use super::{Db, ledger, outbox};
use crate::{config::Config, store::Store};
use anyhow::{Context, Result};
use std::time::Duration;
use tokio::{sync::watch, task::JoinHandle};

/// Connects for a command that reads PostgreSQL (dead letters, job status); `None` when
/// no database is configured.
pub async fn connect_optional(config: &Config) -> Result<Option<Db>> {
    if !config.database.enabled() {
        return Ok(None);
    }
    Ok(Some(Db::connect(&config.database).await?))
}

/// PostgreSQL tasks of a `culm run` process.
pub struct Services {
    /// The pool (the admin API reads the ledger and archive through it).
    pub db: Db,
    /// The ledger's producer side, for `Runtime::with_ledger`.
    pub ledger: Option<ledger::Ledger>,
    writer: Option<ledger::LedgerWriter>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Connects, checks or applies migrations, and starts the ledger writer, the outbox
/// relay and retention. `None` without a database.
pub async fn start(config: &Config, store: &Store) -> Result<Option<Services>> {
    let d = &config.database;
    if !d.enabled() {
        return Ok(None);
    }
    if d.migrate_on_start {
        Db::ensure_database(d).await?;
    }
    let db = Db::connect(d).await?;
    db.prepare(d.migrate_on_start).await.context("refusing to start")?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut writer = None;
    let mut producer = None;
    if d.ledger.enabled {
        let (l, w) = ledger::start(
            db.clone(),
            store.connection(),
            &config.redis.key_prefix,
            d.ledger.clone(),
        );
        producer = Some(l);
        writer = Some(w);
        tasks.push(tokio::spawn(super::retention::housekeeping_loop(
            db.clone(),
            d.ledger.clone(),
            stop_rx.clone(),
        )));
    }
    if d.outbox.enabled {
        tasks.push(outbox::start(db.clone(), store.clone(), d.outbox.clone(), stop_rx));
    }
    tracing::info!(
        ledger = d.ledger.enabled,
        outbox = d.outbox.enabled,
        "PostgreSQL ready (schema version {})",
        super::latest_version()
    );
    Ok(Some(Services {
        db,
        ledger: producer,
        writer,
        stop,
        tasks,
    }))
}

impl Services {
    /// After the worker pools drained: writes the last ledger rows, stops the relay.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(w) = self.writer {
            w.shutdown(Duration::from_secs(10)).await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
