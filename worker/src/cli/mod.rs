//! The `culm` command line: argument parsing and the subcommands, one file per command
//! group. Errors here are `anyhow` (this is the binary's edge); everything below returns
//! typed errors.
mod batches;
mod dead;
mod jobs;
mod migrate;
mod queues;
mod run;
mod sandbox;
mod schedules;
pub mod signals;

pub use batches::BatchesCommand;
pub use dead::{DeadCommand, DeadFilterArgs};
pub use jobs::{EnqueueArgs, JobsCommand};
pub use run::{RunArgs, select_queues};
pub use sandbox::SandboxArgs;

use crate::{
    config::Loader,
    db::services::connect_optional,
    otel::{CarriedIds, Export, TraceSettings},
    store::Store,
};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use signals::listen_for_shutdown;
use std::{path::PathBuf, process::ExitCode, sync::Arc};

/// culm: priority-separated job queues on Redis.
#[derive(Debug, Parser)]
#[command(name = "culm", version, about)]
pub struct Cli {
    /// Configuration directory (default: ./config if it exists, else built-in defaults).
    #[arg(long, global = true, env = "CULM_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Environment file to layer over the defaults: config/<ENV>.toml.
    #[arg(long, global = true, env = "CULM_ENV")]
    pub env: Option<String>,
    /// Log format: human for a terminal, json for log collectors (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The `culm` subcommands; each variant's doc comment is its `--help` line.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run worker pools (every queue unless --queues/--tiers narrow it).
    Run(RunArgs),
    /// Validate configuration and routing; lists every problem.
    Check,
    /// Enqueue one job and print its id.
    Enqueue(EnqueueArgs),
    /// Show each queue's tier, concurrency and job counts.
    Queues {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the live `culm run` replicas: host, version, queues, busy/capacity, heartbeat.
    Workers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every integration across the replicas: limits, rate in force, the last hour's
    /// requests, 429s, deferrals and latency per endpoint; the breaker.
    Integrations {
        /// Print JSON (what `GET /v1/integrations` answers).
        #[arg(long)]
        json: bool,
    },
    /// Tracked batches: `culm batches show ID`, `culm batches list`.
    Batches {
        #[command(subcommand)]
        command: BatchesCommand,
    },
    /// Inspect, retry and purge dead-lettered jobs.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Measure the hot path (own key namespace; run on a release build).
    ///
    /// Prints one line per scenario run (one JSON object per line with --json). The
    /// latency scenario runs at 500 and 5,000 jobs/s, enqueued through the store in this
    /// process ("via": "store") and by `POST /v1/jobs` from a child process
    /// ("via": "http"). throughput, backlog, memory and batch report the worker's and
    /// Redis's CPU per job and Redis's script calls ("cpu_window" says what was
    /// measured). Results and the exact command: BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
    /// The HTTP client that `culm bench` runs as a child process (its token comes from
    /// the environment); not for direct use.
    #[command(hide = true)]
    BenchClient(crate::bench::BenchClientArgs),
    /// Pause a queue on every replica: it keeps accepting jobs, workers fetch nothing.
    Pause {
        /// A queue declared under [queues].
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// A queue declared under [queues].
        queue: String,
    },
    /// Serve only the admin HTTP API and /metrics (no worker pools).
    Serve,
    /// List job types (queue, tiers, retry policy, timeout, payload schema with --json);
    /// inspect one job (`culm jobs show ID`), list a queue's jobs (`culm jobs list`) or
    /// cancel one (`culm jobs cancel ID`).
    Jobs {
        /// Print JSON (what `GET /v1/job-types` answers).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<JobsCommand>,
    },
    /// List schedules: next three fire times (local and UTC), last fire and outcome.
    Schedules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run only the scheduler (no worker pools); stops on SIGTERM/SIGINT.
    Scheduler,
    /// Print every job type's example payload; `--enqueue --wait 60s` runs one of each (smoke test).
    Examples(crate::examples::ExamplesArgs),
    /// Create the PostgreSQL database if missing and apply culm's migrations (idempotent).
    Migrate,
    /// Serve fake versions of every integration's API on loopback (docs/sandbox.md).
    Sandbox(SandboxArgs),
}

/// Sets up logging (and span export when `[telemetry]` turns it on), and logs panics
/// as one error line instead of a stderr backtrace (a panicking handler is an ordinary
/// failed attempt). Returns the running export, to be shut down at exit.
pub fn init_logging(format: LogFormat, telemetry: &crate::config::TelemetryConfig) -> Result<Option<Export>> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic: {}", info.payload_as_str().unwrap_or("non-string panic payload"));
    }));
    let settings = TraceSettings::resolve(telemetry, |k| std::env::var(k).ok())?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CULM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,apalis_core=warn"));
    let export = match &settings {
        // Export off: the same subscriber as before tracing existed (one global filter,
        // static dispatch), so jobs pay nothing for it; JSON lines still carry a job's
        // stored trace ids.
        None => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match format {
                LogFormat::Json => builder
                    .json()
                    .event_format(crate::otel::json_lines())
                    .finish()
                    .with(CarriedIds)
                    .init(),
                LogFormat::Human => builder
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init(),
            }
            None
        }
        // Export on: the log filter applies to log lines only, so `CULM_LOG=warn` does
        // not switch off culm's spans; exported spans are culm's own, at info and above.
        Some(s) => {
            let (export, spans) = Export::start(s)?;
            let culm_spans = tracing_subscriber::filter::Targets::new()
                .with_target("culm_worker", tracing::Level::INFO)
                .with_target("culm_jobs", tracing::Level::INFO)
                .with_target("culm_core", tracing::Level::INFO);
            tracing_subscriber::registry()
                .with(spans.with_filter(culm_spans))
                .with(log_lines(format).with_filter(filter))
                .init();
            Some(export)
        }
    };
    if let Some(s) = &settings {
        tracing::info!(
            url = %crate::config::redact_url(&s.traces_url),
            sampler = %s.sampler.0,
            ratio = s.sampler.1,
            "exporting spans over OTLP/HTTP"
        );
    }
    Ok(export)
}

/// The log lines layer: human, or JSON led by the trace and span ids.
fn log_lines<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(crate::otel::json_lines())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Parses the command line's configuration, sets up logging and runs the command.
pub async fn start(cli: Cli) -> Result<ExitCode> {
    // The bench's client only posts to the URL it is given: it needs no configuration,
    // so a parent started with `--config-dir` does not have to pass it on.
    if let Command::BenchClient(args) = cli.command {
        return crate::bench::client(args).await.map(|_| ExitCode::SUCCESS);
    }
    let config = Loader::new(cli.config_dir.clone(), cli.env.clone()).load()?;
    let export = init_logging(cli.log_format, &config.telemetry)?;
    let result = main(cli, config).await;
    if let Some(export) = export {
        // Sending the last spans blocks (up to the export timeout): not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
    }
    result
}

/// Runs the parsed command line.
pub async fn main(cli: Cli, config: crate::config::Config) -> Result<ExitCode> {
    let registry = Arc::new(culm_jobs::registry().context("building the job registry")?);
    match cli.command {
        Command::Check => schedules::check(&config, &registry),
        Command::Bench(args) => crate::bench::run(config, registry, args)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::BenchClient(args) => crate::bench::client(args).await.map(|_| ExitCode::SUCCESS),
        Command::Run(args) => {
            listen_for_shutdown();
            run::run(config, registry, args).await
        }
        Command::Serve => {
            listen_for_shutdown();
            run::serve(config, registry).await
        }
        Command::Enqueue(args) => jobs::enqueue(Store::connect(&config, registry).await?, args).await,
        Command::Queues { json } => queues::list(Store::connect(&config, registry).await?, json).await,
        Command::Workers { json } => queues::workers(Store::connect(&config, registry).await?, json).await,
        Command::Integrations { json } => {
            queues::integrations(&config, Store::connect(&config, registry).await?, json).await
        }
        Command::Pause { queue } => queues::pause(Store::connect(&config, registry).await?, &queue).await,
        Command::Resume { queue } => queues::resume(Store::connect(&config, registry).await?, &queue).await,
        Command::Batches { command } => batches::run(Store::connect(&config, registry).await?, command).await,
        Command::Dead { command } => {
            let store = Store::connect(&config, registry).await?;
            let db = connect_optional(&config).await?;
            dead::run(crate::dead_letters::DeadLetters::new(store, db), command).await
        }
        Command::Schedules { json } => schedules::list(config, registry, json).await,
        Command::Scheduler => {
            listen_for_shutdown();
            run::scheduler_only(config, registry).await
        }
        Command::Examples(args) => crate::examples::run(config, registry, args).await,
        Command::Migrate => migrate::migrate(&config).await,
        Command::Sandbox(args) => sandbox::serve(&config, args).await,
        Command::Jobs {
            command: Some(JobsCommand::Show { id }),
            ..
        } => jobs::show(&config, Store::connect(&config, registry).await?, &id).await,
        Command::Jobs {
            command: Some(JobsCommand::Cancel { id }),
            ..
        } => jobs::cancel(Store::connect(&config, registry).await?, &id).await,
        Command::Jobs {
            command: Some(command @ JobsCommand::List { .. }),
            ..
        } => jobs::list_jobs(Store::connect(&config, registry).await?, command).await,
        Command::Jobs { command: None, json } => jobs::list(&config, &registry, json),
    }
}
