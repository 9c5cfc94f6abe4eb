//! `culm bench-client` (hidden from `--help`): the other process of the latency
//! scenario's HTTP variant. It posts `bench.stamp` jobs to the bench's admin API, one
//! request per job at a steady rate, each stamped with the wall clock just before its
//! request is sent, and prints one JSON line ([`ClientReport`]) once every answer is in.
//! A separate process, so the client's work does not run on the server's runtime and the
//! request crosses a real socket between processes, as a caller's does.
use super::{QUEUE, now_us, pacing, post_json};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;

/// The environment variable that carries the bench's API token to the client: not its
/// command line, which any local user can read from `/proc/<pid>/cmdline`.
pub(super) const TOKEN_ENV: &str = "CULM_BENCH_TOKEN";

/// Options of `culm bench-client`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchClientArgs {
    /// The `POST /v1/jobs` URL of the bench's admin API.
    #[arg(long)]
    pub url: String,
    /// Requests (one job each) per second.
    #[arg(long)]
    pub rate: u64,
    /// Seconds to send for.
    #[arg(long)]
    pub seconds: u64,
}

/// What the client prints when it is done: requests the API accepted, requests that
/// failed, and the first failure's description.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ClientReport {
    pub sent: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Runs the client (the token comes from [`TOKEN_ENV`]) on a runtime of one thread of
/// its own. The client is the measuring instrument, sharing this machine's cores with the
/// server it measures, which a caller on another machine would not: one thread keeps
/// what it takes from them small (the process's default runtime would add a second
/// thread competing for a core at 5,000 requests/s), and those threads idle meanwhile.
pub async fn client(args: BenchClientArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the client's runtime")?
            .block_on(send_all(args))
    })
    .await
    .context("the client's thread")?
}

async fn send_all(args: BenchClientArgs) -> Result<()> {
    let secret = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    let auth = format!("Bearer {secret}");
    // One client for the whole run: its pool keeps the connections alive, so a request
    // opens a connection only while fewer are idle than are in flight.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (tick, per_tick) = pacing(args.rate);
    let total = usize::try_from(args.rate.saturating_mul(args.seconds)).context("too many requests")?;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Each request is its own task: a slow answer must not delay the next send, or the
    // rate would follow the server instead of the clock.
    let mut requests = Vec::with_capacity(total);
    while requests.len() < total {
        ticker.tick().await;
        for _ in 0..per_tick.min(total - requests.len()) {
            let (client, url, auth) = (client.clone(), args.url.clone(), auth.clone());
            requests.push(tokio::spawn(async move {
                let body = json!({
                    "job": "bench.stamp", "queue": QUEUE, "payload": { "sent_us": now_us() },
                })
                .to_string();
                match post_json(client, url, auth, body).await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }));
        }
    }
    let mut report = ClientReport {
        sent: 0,
        failed: 0,
        first_error: None,
    };
    for r in requests {
        match r.await {
            Ok(Ok(())) => report.sent += 1,
            Ok(Err(e)) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
