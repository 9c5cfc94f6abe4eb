//! `culm dead list|count|retry|purge`: one job, a few ids, or everything that matches a
//! filter. Where dead jobs live (Redis, or the PostgreSQL archive) is decided by
//! `dead_letters::DeadLetters`.
use crate::{
    dead_letters::{self, Bulk, DeadLetters},
    store::{DeadFilter, DeadJob},
};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// Which dead jobs a command means.
#[derive(Debug, Clone, Default, Args)]
pub struct DeadFilterArgs {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only this job type.
    #[arg(long)]
    pub job: Option<String>,
    /// Only jobs whose last error contains this text (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Only jobs that died at or after this time: RFC 3339, or a duration back (2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only jobs that died before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
}

impl DeadFilterArgs {
    fn is_empty(&self) -> bool {
        self.queue.is_none()
            && self.job.is_none()
            && self.error.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn filter(&self) -> Result<DeadFilter> {
        let now = culm_core::now_ms();
        let bound = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
            v.as_deref()
                .map(|s| dead_letters::parse_time_bound(s, now))
                .transpose()
                .map_err(|m| anyhow::anyhow!("{flag}: {m}"))
        };
        let window = dead_letters::window(bound("--since", &self.since)?, bound("--until", &self.until)?)
            .map_err(|m| anyhow::anyhow!("--since/--until: {m}"))?;
        Ok(DeadFilter {
            queue: self.queue.clone(),
            job: self.job.clone(),
            error: self.error.clone(),
            window,
        })
    }
}

/// `culm dead`
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead jobs, newest first.
    List {
        #[command(flatten)]
        filter: DeadFilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Count the dead jobs that match the filter (what --all would act on).
    Count {
        #[command(flatten)]
        filter: DeadFilterArgs,
    },
    /// Put dead jobs back on their queue with a fresh attempt budget: the ids given, or
    /// with --all every dead job that matches the filter.
    Retry {
        /// The dead jobs' ids, as `culm dead list` prints them.
        ids: Vec<String>,
        /// Every dead job that matches the filter (no filter: every dead job).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        filter: DeadFilterArgs,
    },
    /// Delete dead jobs for good: the ids given, or with --all every dead job that
    /// matches the filter.
    Purge {
        /// The dead jobs' ids, as `culm dead list` prints them.
        ids: Vec<String>,
        /// Every dead job that matches the filter (no filter: every dead job).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        filter: DeadFilterArgs,
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

/// Ids or `--all` with a filter; filters without `--all` would be silently ignored, so
/// they are refused.
fn check_selection(ids: &[String], all: bool, filter: &DeadFilterArgs) -> Result<()> {
    if !all && ids.is_empty() {
        bail!("give job ids, or --all (narrowed by --queue, --job, --error, --since, --until)");
    }
    if !all && !filter.is_empty() {
        bail!("--queue, --job, --error, --since and --until select with --all; with ids, give only the ids");
    }
    Ok(())
}

fn report(b: &Bulk, verb: &str) {
    println!("{verb} {} of {} matching dead job(s)", b.applied, b.matched);
    if b.truncated {
        println!(
            "more may match: one call acts on at most {}; run it again",
            dead_letters::BULK_MAX
        );
    }
}

/// Runs `culm dead …`.
pub(super) async fn run(dl: DeadLetters, command: DeadCommand) -> Result<ExitCode> {
    let what = if dl.archived() {
        "dead job(s) (archive and Redis)"
    } else {
        "dead job(s)"
    };
    match command {
        DeadCommand::List { filter, limit, json } => {
            let all = dl.list(&filter.filter()?, 0, limit).await?;
            print(&all, json, what)?;
        }
        DeadCommand::Count { filter } => {
            println!("{}", dl.count(&filter.filter()?).await?);
        }
        DeadCommand::Retry { ids, all, filter } => {
            check_selection(&ids, all, &filter)?;
            if all {
                report(&dl.retry_matching(&filter.filter()?).await?, "re-drove");
            } else {
                for id in ids {
                    match dl.retry(&id).await? {
                        Some(r) if r.runs_as == id => println!("{id} requeued on {}", r.queue),
                        Some(r) => println!("{id} re-driven from the archive as {} on {}", r.runs_as, r.queue),
                        None => bail!("no dead job `{id}`"),
                    }
                }
            }
        }
        DeadCommand::Purge { ids, all, filter } => {
            check_selection(&ids, all, &filter)?;
            if all {
                report(&dl.purge_matching(&filter.filter()?).await?, "purged");
            } else {
                for id in ids {
                    if !dl.purge(&id).await? {
                        bail!("no dead job `{id}`");
                    }
                    println!("{id} purged");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
