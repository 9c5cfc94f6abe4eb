//! `culm queues`, `culm workers`, `culm integrations`, `culm pause` and `culm resume`.
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

/// `culm integrations [--json]`: per integration its breaker, then one line per endpoint.
pub(super) async fn integrations(config: &crate::config::Config, store: Store, json: bool) -> Result<ExitCode> {
    let settings =
        culm_jobs::http::config::IntegrationSettings::all(&config.integrations, &config.integration_defaults);
    let all = store.integrations(&settings).await?;
    if json {
        // The shape `GET /v1/integrations` answers, fields in their documented order.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            integrations: &'a [crate::store::IntegrationStatus],
        }
        println!("{}", serde_json::to_string_pretty(&Out { integrations: &all })?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in &all {
        let b = &i.breaker;
        let until = b
            .until
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| format!(" until {}", t.to_rfc3339()))
            .unwrap_or_default();
        println!("{}  breaker {} ({} failures){until}", i.name, b.state, b.failures);
        for e in &i.endpoints {
            let (limit, rate) = match &e.limit {
                Some(l) => (
                    format!("{}/{}", l.rate, l.per),
                    format!("{}/{}", e.effective_rate.unwrap_or(l.rate), l.per),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let latency = e
                .mean_latency_ms
                .map(|ms| format!("{ms:.1}ms"))
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "  {:<24} limit {:<10} in force {:<10} 1h: {} requests, {} 429, {} failed, {} deferred (limiter), {} deferred (breaker), mean {latency}",
                e.endpoint, limit, rate, e.requests, e.rate_limited, e.failed, e.deferred_limiter, e.deferred_breaker
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm queues [--json]`: one line per queue, or the stats as JSON.
pub(super) async fn list(store: Store, json: bool) -> Result<ExitCode> {
    let stats = store.all_stats().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "{:<16} {:<12} {:>6} {:>6} {:>10} {:>20} {:>10} {:>8} {:>8}  PAUSED",
            "QUEUE", "TIER", "CONC", "CAP", "PENDING", "HIGH/NORMAL/LOW", "SCHEDULED", "RUNNING", "DEAD"
        );
        for s in stats {
            let p = s.pending_by_priority;
            println!(
                "{:<16} {:<12} {:>6} {:>6} {:>10} {:>20} {:>10} {:>8} {:>8}  {}",
                s.name,
                s.tier.as_str(),
                s.concurrency,
                s.max_in_flight.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                s.pending,
                format!("{}/{}/{}", p.high, p.normal, p.low),
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
