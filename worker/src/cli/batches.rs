//! `culm batches`: tracked batches' counters, state and callbacks.
use crate::store::{BatchStatus, Store};
use anyhow::{Result, bail};
use clap::Subcommand;
use std::process::ExitCode;

/// `culm batches …`
#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    /// One batch: counts, state, callbacks and the first members.
    Show {
        /// Batch id.
        id: String,
        /// Print JSON (what `GET /v1/batches/{id}` answers).
        #[arg(long)]
        json: bool,
    },
    /// The newest batches across queues.
    List {
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON (what `GET /v1/batches` answers).
        #[arg(long)]
        json: bool,
    },
}

fn line(b: &BatchStatus) -> String {
    format!(
        "{:<30} {:<14} {:<9} total {:>7}  pending {:>7}  ok {:>7}  dead {:>5}  cancelled {:>5}  expired {:>5}  {}",
        b.id,
        b.queue,
        b.state,
        b.total,
        b.pending,
        b.succeeded,
        b.dead,
        b.cancelled,
        b.expired,
        b.description.as_deref().unwrap_or("")
    )
}

pub(super) async fn run(store: Store, command: BatchesCommand) -> Result<ExitCode> {
    match command {
        BatchesCommand::Show { id, json } => {
            let Some(b) = store.batch(&id).await? else {
                bail!("no batch `{id}` (a completed batch is kept for worker.batch_retention)");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", line(&b));
            println!(
                "created   {}",
                culm_core::time::to_rfc3339(b.created_at).unwrap_or_default()
            );
            if let Some(at) = b.completed_at {
                println!("completed {}", culm_core::time::to_rfc3339(at).unwrap_or_default());
            }
            for (name, cb) in [
                ("on_complete", &b.callbacks.on_complete),
                ("on_success", &b.callbacks.on_success),
            ] {
                if let Some(cb) = cb {
                    println!("{name:<11} {} {} {}", cb.job, cb.state, cb.id.as_deref().unwrap_or(""));
                }
            }
            if let Some(page) = store.batch_members(&id, 0, 20).await? {
                for m in &page.jobs {
                    println!("  {} {}", m.id, m.state);
                }
                if page.next_cursor.is_some() {
                    println!("  … (GET /v1/batches/{id}/jobs pages through every member)");
                }
            }
        }
        BatchesCommand::List { limit, json } => {
            if !(1..=100).contains(&limit) {
                bail!("--limit must be between 1 and 100");
            }
            let all = store.list_batches(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no batches");
            } else {
                for b in &all {
                    println!("{}", line(b));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
