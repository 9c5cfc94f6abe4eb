//! The PostgreSQL parts of the `culm` subcommands (issue 6): `culm migrate`, the start-up
//! and shutdown of the ledger writer, outbox relay and retention in `culm run`, and the
//! archive-backed `culm dead`. Kept here so `cli.rs` only calls in.
use super::{Db, ledger, outbox};
use crate::{cli::DeadCommand, config::Config, store::Store};
use anyhow::{Context, Result, bail};
use std::{process::ExitCode, time::Duration};
use tokio::{sync::watch, task::JoinHandle};

/// `culm migrate`: creates the database when missing (and allowed), applies migrations.
pub async fn migrate(config: &Config) -> Result<ExitCode> {
    if !config.database.enabled() {
        bail!("no database configured: set CULM_DATABASE_URL (or database.url)");
    }
    if Db::ensure_database(&config.database).await? {
        println!("created the database");
    }
    let db = Db::connect(&config.database).await?;
    let applied = db.migrate().await?;
    if applied.is_empty() {
        println!("schema is up to date (version {})", super::latest_version());
    } else {
        println!(
            "applied migration(s) {:?}; schema is at version {}",
            applied,
            super::latest_version()
        );
    }
    Ok(ExitCode::SUCCESS)
}

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
        tasks.push(tokio::spawn(ledger::housekeeping_loop(
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

/// `culm dead …` served from the archive.
pub async fn dead(store: Store, db: Db, command: DeadCommand) -> Result<ExitCode> {
    match command {
        DeadCommand::List { queue, limit, json } => {
            let all = db.dead_list_merged(&store, queue.as_deref(), limit).await?;
            crate::cli::print_dead(&all, json, "dead job(s) in the archive")?;
        }
        DeadCommand::Retry { ids } => {
            for id in ids {
                match db.dead_redrive(&store, &id).await? {
                    Some((q, runs_as)) if runs_as == id => println!("{id} requeued on {q}"),
                    Some((q, runs_as)) => println!("{id} re-driven from the archive as {runs_as} on {q}"),
                    None => bail!("no archived dead job `{id}` awaiting re-drive"),
                }
            }
        }
        DeadCommand::Purge { ids, all, queue } => {
            let ids: Vec<String> = if all {
                let q = queue.context("--all needs --queue")?;
                let mut ids: Vec<String> = db
                    .dead_list(Some(&q), 100_000)
                    .await?
                    .into_iter()
                    .map(|d| d.id)
                    .collect();
                ids.extend(store.dead_list(&q, 100_000).await?.into_iter().map(|d| d.id));
                ids.sort();
                ids.dedup();
                ids
            } else {
                if ids.is_empty() {
                    bail!("give job ids, or --all --queue Q");
                }
                ids
            };
            let mut n = 0;
            for id in &ids {
                let in_archive = db.dead_purge(std::slice::from_ref(id)).await? > 0;
                let in_redis = match store.dead_queue_of(id).await? {
                    Some(q) => store.dead_purge(&q, std::slice::from_ref(id)).await? > 0,
                    None => false,
                };
                if in_archive || in_redis {
                    n += 1;
                } else if !all {
                    bail!("no dead job `{id}`");
                }
            }
            println!("purged {n} dead job(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
