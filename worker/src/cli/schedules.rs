//! `culm check` and `culm schedules`, and the catalog loading every command shares.
use crate::{
    config::Config,
    scheduler::{
        Scheduler,
        catalog::{Catalog, CatalogError},
    },
    store::{Routing, Store},
};
use anyhow::Result;
use culm_core::Registry;
use std::{process::ExitCode, sync::Arc};

/// The schedule catalog `[scheduler] dir` names (or the embedded one), validated against
/// the registry and the routing.
pub(super) fn load_schedules(config: &Config, registry: &Registry) -> Result<Catalog, CatalogError> {
    Catalog::load(&config.scheduler.dir, registry, &Routing::from_config(config, registry))
}

/// `culm check`: routing and schedules; lists every problem, then fails.
pub(super) fn check(config: &Config, registry: &Registry) -> Result<ExitCode> {
    let mut problems = Routing::from_config(config, registry).problems(registry);
    // Every schedule file, schedule and key at fault is listed, not just the first.
    let schedules = match load_schedules(config, registry) {
        Ok(c) => c.len(),
        Err(CatalogError::Invalid(p)) => {
            problems.extend(p.iter().map(ToString::to_string));
            0
        }
        Err(e) => {
            problems.push(e.to_string());
            0
        }
    };
    if problems.is_empty() {
        println!(
            "ok: {} queues, {} job types, {} schedules, routing valid",
            config.queues.len(),
            registry.len(),
            schedules
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} problem(s):", problems.len());
    for p in &problems {
        eprintln!("  - {p}");
    }
    Ok(ExitCode::FAILURE)
}

/// `culm schedules [--json]`. Without Redis it still lists the catalog, minus pause
/// flags and last fires.
pub(super) async fn list(config: Config, registry: Arc<Registry>, json: bool) -> Result<ExitCode> {
    let catalog = load_schedules(&config, &registry)?;
    let list = match Store::connect(&config, registry).await {
        Ok(store) => Scheduler::new(store, catalog, &config).list().await?,
        Err(e) => {
            eprintln!("warning: {e}; showing schedules without their last fire");
            let now = chrono::Utc::now();
            catalog.iter().map(|s| crate::scheduler::describe(s, now)).collect()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for status in &list {
        let s = &status.schedule;
        let state = match (s.enabled, status.paused) {
            (false, _) => "disabled",
            (true, Some(true)) => "PAUSED",
            _ => "enabled",
        };
        println!("{}  [{state}]  {} ({})", s.name, s.cron, s.timezone);
        println!(
            "    {} -> queue {}   overlap={} missed={}",
            s.job,
            s.queue,
            s.overlap.as_str(),
            s.missed.as_str()
        );
        println!("    {}", s.description);
        for t in &status.next_fire_times {
            println!("    next  {}   {}", t.local, t.utc);
        }
        match (&status.last_fire, &status.last_outcome) {
            (None, None) => println!("    last  never fired"),
            (fire, outcome) => {
                if let Some(f) = fire {
                    println!("    last fire     {}  job {}", f.at, f.job_id);
                }
                if let Some(o) = outcome {
                    let err = o.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                    println!("    last outcome  {} at {}{err}", o.outcome, o.at);
                }
            }
        }
    }
    let enabled = list.iter().filter(|s| s.schedule.enabled).count();
    eprintln!("{} schedule(s), {enabled} enabled", list.len());
    Ok(ExitCode::SUCCESS)
}
