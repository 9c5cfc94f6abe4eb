//! `culm queues`, `culm workers`, `culm pause` and `culm resume`.
use crate::store::Store;
use anyhow::{Result, bail};
use std::process::ExitCode;

/// `culm workers [--json]`: the live `culm run` replicas.
pub(super) async fn workers(store: Store, json: bool) -> Result<ExitCode> {
    let all = store.workers().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    for w in &all {
        let queues: Vec<String> = w
            .queues
            .iter()
            .map(|q| format!("{}({}/{})", q.queue, q.busy, q.capacity))
            .collect();
        println!(
            "{}  {} v{}  busy {}/{}  started {}  heartbeat {}  {}",
            w.id,
            w.host,
            w.version,
            w.busy,
            w.capacity,
            when(w.started_at),
            when(w.last_heartbeat),
            queues.join(" ")
        );
    }
    eprintln!("{} live replica(s)", all.len());
    Ok(ExitCode::SUCCESS)
}

/// `culm queues [--json]`: one line per queue, or the stats as JSON.
pub(super) async fn list(store: Store, json: bool) -> Result<ExitCode> {
    let stats = store.all_stats().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "{:<16} {:<12} {:>6} {:>6} {:>10} {:>10} {:>8} {:>8}  PAUSED",
            "QUEUE", "TIER", "CONC", "CAP", "PENDING", "SCHEDULED", "RUNNING", "DEAD"
        );
        for s in stats {
            println!(
                "{:<16} {:<12} {:>6} {:>6} {:>10} {:>10} {:>8} {:>8}  {}",
                s.name,
                s.tier.as_str(),
                s.concurrency,
                s.max_in_flight.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                s.pending,
                s.scheduled,
                s.running,
                s.dead,
                if s.paused { "yes" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn declared(store: &Store, queue: &str) -> Result<()> {
    if !store.routing().queues.contains_key(queue) {
        bail!("no queue named `{queue}` is declared");
    }
    Ok(())
}

/// `culm pause QUEUE`
pub(super) async fn pause(store: Store, queue: &str) -> Result<ExitCode> {
    declared(&store, queue)?;
    store.pause(queue).await?;
    println!("{queue}: paused (jobs are accepted; no worker fetches until `culm resume {queue}`)");
    Ok(ExitCode::SUCCESS)
}

/// `culm resume QUEUE`
pub(super) async fn resume(store: Store, queue: &str) -> Result<ExitCode> {
    declared(&store, queue)?;
    store.resume(queue).await?;
    println!("{queue}: resumed");
    Ok(ExitCode::SUCCESS)
}
