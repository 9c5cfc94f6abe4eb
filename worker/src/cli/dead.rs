//! `culm dead list|retry|purge`, from Redis's dead-letter sets, or from the PostgreSQL
//! archive (which outlives them) when a database is configured.
use crate::{
    db::Db,
    store::{DeadJob, Store},
};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::process::ExitCode;

/// `culm dead`
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead jobs, newest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead jobs back on their queue with a fresh attempt budget.
    Retry {
        /// The dead jobs' ids, as `culm dead list` prints them.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete dead jobs for good.
    Purge {
        /// The dead jobs' ids, as `culm dead list` prints them.
        ids: Vec<String>,
        /// Purge every dead job of --queue.
        #[arg(long, requires = "queue")]
        all: bool,
        /// Queue for --all.
        #[arg(long)]
        queue: Option<String>,
    },
}

/// Prints `culm dead list` output: JSON, or one line per job and a count on stderr.
fn print(all: &[DeadJob], json: bool, what: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(all)?);
        return Ok(());
    }
    for d in all {
        let when = chrono::DateTime::from_timestamp_millis(d.died_at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{}  {:<14} {:<28} attempts={} died={}  {}",
            d.id,
            d.queue,
            d.job,
            d.attempts,
            when,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    eprintln!("{} {what}", all.len());
    Ok(())
}

/// `culm dead …` without a database: Redis's dead-letter sets.
pub(super) async fn from_redis(store: Store, command: DeadCommand) -> Result<ExitCode> {
    match command {
        DeadCommand::List { queue, limit, json } => {
            let queues: Vec<String> = match queue {
                Some(q) => vec![q],
                None => store.routing().queues.keys().cloned().collect(),
            };
            let mut all = Vec::new();
            for q in queues {
                all.extend(store.dead_list(&q, limit).await?);
            }
            print(&all, json, "dead job(s)")?;
        }
        DeadCommand::Retry { ids } => {
            for id in ids {
                let q = store
                    .dead_queue_of(&id)
                    .await?
                    .with_context(|| format!("no dead job `{id}`"))?;
                store.dead_retry(&q, std::slice::from_ref(&id)).await?;
                println!("{id} requeued on {q}");
            }
        }
        DeadCommand::Purge { ids, all, queue } => {
            if all {
                let q = queue.context("--all needs --queue")?;
                let mut n = 0;
                loop {
                    let batch: Vec<String> = store.dead_list(&q, 1000).await?.into_iter().map(|d| d.id).collect();
                    if batch.is_empty() {
                        break;
                    }
                    n += store.dead_purge(&q, &batch).await?;
                }
                println!("purged {n} dead job(s) from {q}");
            } else {
                if ids.is_empty() {
                    bail!("give job ids, or --all --queue Q");
                }
                for id in ids {
                    let q = store
                        .dead_queue_of(&id)
                        .await?
                        .with_context(|| format!("no dead job `{id}`"))?;
                    store.dead_purge(&q, std::slice::from_ref(&id)).await?;
                    println!("{id} purged from {q}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm dead …` with a database: the archive, plus what only Redis still holds.
pub(super) async fn from_archive(store: Store, db: Db, command: DeadCommand) -> Result<ExitCode> {
    match command {
        DeadCommand::List { queue, limit, json } => {
            let all = db.dead_list_merged(&store, queue.as_deref(), limit).await?;
            print(&all, json, "dead job(s) in the archive")?;
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
