//! `culm examples`: every job type's example payload, and the smoke run that enqueues
//! one of each (`--enqueue`) and waits for them to finish (`--wait`). With the sandbox
//! running and local defaults, every example succeeds end to end without credentials.
use crate::{
    config::Config,
    store::{JobState, Store},
};
use anyhow::{Result, bail};
use clap::Args;
use culm_core::{EnqueueRequest, Registry};
use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};

/// `culm examples`
#[derive(Debug, Args)]
pub struct ExamplesArgs {
    /// Enqueue one job of every type (in one batch) and print the ids.
    #[arg(long)]
    pub enqueue: bool,
    /// After enqueueing, wait until every job is done or dead (exit 1 if any is dead).
    #[arg(long, requires = "enqueue", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Only job types whose name starts with one of these prefixes (e.g. `bamboo.,galileo.`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// One enqueue request per job type that has an example, filtered by `only` prefixes.
pub fn requests(registry: &Registry, only: &[String]) -> Vec<EnqueueRequest> {
    registry
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|p| s.name.starts_with(p.as_str())))
        .filter_map(|s| s.example.clone().map(|e| EnqueueRequest::raw(s.name, e)))
        .collect()
}

/// Runs `culm examples`.
pub async fn run(config: Config, registry: Arc<Registry>, args: ExamplesArgs) -> Result<ExitCode> {
    let reqs = requests(&registry, &args.only);
    if !args.enqueue {
        for r in &reqs {
            println!("{} {}", r.job, r.payload);
        }
        eprintln!(
            "{} job types with examples; `culm examples --enqueue --wait 60s` runs them",
            reqs.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if reqs.is_empty() {
        bail!("--only selects no job type");
    }
    let store = Store::connect(&config, registry).await?;
    let out = store.enqueue(reqs.clone()).await?;
    for (r, e) in reqs.iter().zip(&out) {
        println!("{}  {:<34} {}", e.id, r.job, e.queue);
    }
    let Some(timeout) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let start = std::time::Instant::now();
    let mut pending: BTreeMap<String, String> = out
        .iter()
        .zip(&reqs)
        .map(|(e, r)| (e.id.clone(), r.job.clone()))
        .collect();
    let mut dead = Vec::new();
    while !pending.is_empty() && start.elapsed() < timeout {
        let mut finished = Vec::new();
        for (id, job) in &pending {
            match store.status(id).await? {
                Some(s) if s.state == JobState::Done => finished.push(id.clone()),
                Some(s) if s.state == JobState::Dead => {
                    dead.push(format!("{job} ({id}): {}", s.last_error.unwrap_or_default()));
                    finished.push(id.clone());
                }
                _ => {}
            }
        }
        for id in finished {
            pending.remove(&id);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let ok = out.len() - pending.len() - dead.len();
    println!("{ok} done, {} dead, {} unfinished", dead.len(), pending.len());
    for d in &dead {
        println!("dead: {d}");
    }
    for (id, job) in &pending {
        // A deferred job (rate limit, open breaker) shows as `scheduled`.
        let why = match store.status(id).await? {
            Some(s) => format!(
                "{}{}",
                s.state,
                s.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
            None => "unknown".to_owned(),
        };
        println!("unfinished: {job} ({id}) {why}");
    }
    Ok(if dead.is_empty() && pending.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
