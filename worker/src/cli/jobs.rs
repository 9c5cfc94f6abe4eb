//! `culm enqueue` and `culm jobs show|list|cancel`.
use crate::{
    config::Config,
    db::services::connect_optional,
    store::{Cancelled, Cursor, JobState, ListJobs, Store},
};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use culm_core::EnqueueRequest;
use std::{process::ExitCode, time::Duration};

/// `culm enqueue`
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job type, e.g. platform.noop.
    pub job: String,
    /// The job's payload as JSON; validated against the job type.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Queue instead of the routed one; must belong to a tier the job type allows.
    #[arg(long)]
    pub queue: Option<String>,
    /// Run after this delay (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Run at this time (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    /// A key repeated within worker.idempotency_ttl returns the first job's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// high, normal or low: within its queue, the job is taken after every waiting job
    /// of a higher priority.
    #[arg(long)]
    pub priority: Option<culm_core::Priority>,
}

/// `culm jobs`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Show one job's state.
    Show {
        /// The id `culm enqueue` printed.
        id: String,
    },
    /// List a queue's jobs in one state, a page at a time.
    List {
        /// The queue.
        #[arg(long)]
        queue: String,
        /// pending, scheduled, running, dead, done or cancelled.
        #[arg(long, default_value = "pending")]
        state: JobState,
        /// Only this job type.
        #[arg(long)]
        job: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue from the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON (`{"jobs": [...], "next_cursor": ...}`).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a pending or scheduled one will not run; a running one's handler is
    /// asked to stop.
    Cancel {
        /// The job's id.
        id: String,
    },
}

/// `culm jobs [--json]`: every job type with its queue, tiers, batch size, policy and payload schema.
pub(super) fn list(config: &Config, registry: &culm_core::Registry, json: bool) -> Result<ExitCode> {
    let types = crate::store::Routing::from_config(config, registry).job_types(registry);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "job_types": types }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for t in &types {
        // A batch job type's batch size (`x50`: up to 50 jobs per handler call).
        let batch = t.max_batch.map(|n| format!("x{n}")).unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<34} {:<16} {:<24} {:<5} {}",
            t.name,
            t.queue,
            t.tiers.join(","),
            batch,
            t.description
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm enqueue`: prints the new job's id (or the existing one, for a repeated key).
pub(super) async fn enqueue(store: Store, args: EnqueueArgs) -> Result<ExitCode> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let mut req = EnqueueRequest::raw(args.job, payload);
    req.queue = args.queue;
    req.idempotency_key = args.idempotency_key;
    req.priority = args.priority;
    if let Some(d) = args.delay {
        req = req.delay(d);
    }
    if let Some(at) = args.at {
        let t = chrono::DateTime::parse_from_rfc3339(&at)
            .context("--at must be an RFC 3339 time, e.g. 2026-01-31T09:00:00-05:00")?;
        req = req.at_ms(t.timestamp_millis());
    }
    let out = store.enqueue(vec![req]).await?;
    for e in out {
        println!("{}", e.id);
        if !e.created {
            eprintln!(
                "idempotency key already used: returning the existing job in queue {}",
                e.queue
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm jobs show ID`: the job's state as JSON.
pub(super) async fn show(config: &Config, store: Store, id: &str) -> Result<ExitCode> {
    let mut status = store.status(id).await?;
    // Redis forgets finished jobs after worker.done_retention; the ledger keeps every run.
    if status.is_none()
        && let Some(db) = connect_optional(config).await?
    {
        status = db.job_status(id).await?;
    }
    match status {
        Some(s) => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            bail!("no job `{id}` in any queue (finished jobs are remembered for worker.done_retention runs)")
        }
    }
}

/// `culm jobs list`: one page; the cursor of the next one goes to stderr (or into the JSON).
pub(super) async fn list_jobs(store: Store, command: JobsCommand) -> Result<ExitCode> {
    let JobsCommand::List {
        queue,
        state,
        job,
        limit,
        cursor,
        json,
    } = command
    else {
        bail!("not `culm jobs list`");
    };
    let cursor = match cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Cursor::decode(c)
                .with_context(|| format!("--cursor `{c}` is not a cursor; pass the one the previous page printed"))?,
        ),
    };
    let page = store
        .list_jobs(&ListJobs {
            queue: &queue,
            state,
            job: job.as_deref(),
            limit: limit.max(1),
            cursor,
        })
        .await?;
    let next = page.next_cursor.map(Cursor::encode);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "jobs": page.jobs, "next_cursor": next }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for j in &page.jobs {
        let at = j.run_at.or(j.lease_expires_at).or(j.finished_at).or(j.enqueued_at);
        let at = at
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{}  {:<10} {:<28} attempts={} {}  {}",
            j.id,
            j.state,
            j.job.as_deref().unwrap_or("?"),
            j.attempts,
            at,
            j.last_error.as_deref().unwrap_or("")
        );
    }
    match next {
        Some(c) => eprintln!("{} job(s); next page: --cursor {c}", page.jobs.len()),
        None => eprintln!("{} job(s); end of list", page.jobs.len()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm jobs cancel ID`.
pub(super) async fn cancel(store: Store, id: &str) -> Result<ExitCode> {
    match store.cancel(id).await? {
        Cancelled::Cancelled { queue } => println!("{id} cancelled on {queue}"),
        Cancelled::Requested { queue } => println!(
            "{id} is running on {queue}: its handler is asked to stop (it ends cancelled if it does, or finishes normally if it ignores the request)"
        ),
        Cancelled::Refused { queue, state } => {
            bail!("job `{id}` on {queue} is {state}; only pending, scheduled and running jobs can be cancelled")
        }
        Cancelled::Unknown => bail!("no job `{id}` in any queue"),
    }
    Ok(ExitCode::SUCCESS)
}
