//! `culm sandbox`: fake integration APIs on loopback (docs/sandbox.md).
use super::signals::{listen_for_shutdown, shutdown_signal};
use crate::config::{Config, SandboxConfig};
use anyhow::Result;
use clap::Args;
use std::{process::ExitCode, time::Duration};

/// `culm sandbox`
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Listen address (default: sandbox.listen, 127.0.0.1:8900).
    #[arg(long)]
    pub listen: Option<String>,
    /// Fraction of requests answered 503 with Retry-After: 1 (default: sandbox.fail_rate).
    #[arg(long)]
    pub fail_rate: Option<f64>,
    /// Typical answer latency in ms (default: sandbox.latency_ms).
    #[arg(long)]
    pub latency_ms: Option<u64>,
}

pub(super) fn sandbox_options(c: &SandboxConfig) -> crate::sandbox::Options {
    crate::sandbox::Options {
        latency: Duration::from_millis(c.latency_ms),
        fail_rate: c.fail_rate,
    }
}

/// Serves until SIGTERM/SIGINT.
pub(super) async fn serve(config: &Config, args: SandboxArgs) -> Result<ExitCode> {
    let mut c = config.sandbox.clone();
    c.listen = args.listen.unwrap_or(c.listen);
    c.fail_rate = args.fail_rate.unwrap_or(c.fail_rate);
    c.latency_ms = args.latency_ms.unwrap_or(c.latency_ms);
    // Listen for SIGTERM before serving, so a client that saw an answer can stop us cleanly.
    listen_for_shutdown();
    let sandbox = crate::sandbox::Sandbox::bind(&c.listen, sandbox_options(&c)).await?;
    eprintln!(
        "sandbox listening on http://{0}: integrations at http://{0}/<name>, request log at http://{0}/_sandbox/requests",
        sandbox.addr()
    );
    shutdown_signal().await;
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
