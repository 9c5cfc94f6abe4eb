//! The `culm` command line: argument parsing and the subcommands. Errors here are
//! `anyhow` (this is the binary's edge); everything below returns typed errors.
use crate::{
    config::{Config, Loader},
    runtime::Runtime,
    scheduler::{
        Scheduler,
        catalog::{Catalog, CatalogError},
    },
    store::{Routing, Store},
};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use culm_core::{EnqueueRequest, Registry, Tier};
use std::{collections::BTreeSet, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

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
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run worker pools (every queue unless --queues/--tiers narrow it).
    Run(RunArgs),
    /// Validate configuration and routing; lists every problem.
    Check,
    /// Enqueue one job and print its id.
    Enqueue(EnqueueArgs),
    /// Show queue counts.
    Queues {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, retry and purge dead-lettered jobs.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Measure the hot path (own key namespace; run on a release build).
    Bench(crate::bench::BenchArgs),
    /// Pause a queue on every replica: it keeps accepting jobs, workers fetch nothing.
    Pause {
        /// Queue name.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue name.
        queue: String,
    },
    /// Serve only the admin HTTP API and /metrics (no worker pools).
    Serve,
    /// Inspect jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
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

/// `culm run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Comma-separated queues to run.
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Comma-separated tiers to run (critical, third_party, batch, reporting).
    #[arg(long, value_delimiter = ',')]
    pub tiers: Vec<Tier>,
    /// Do not serve the admin HTTP API from this process.
    #[arg(long)]
    pub no_admin: bool,
    /// Do not fire schedules in this process (by default `culm run` also runs the scheduler).
    #[arg(long)]
    pub no_scheduler: bool,
    /// Also serve the integration sandbox on sandbox.listen (docs/sandbox.md).
    #[arg(long)]
    pub sandbox: bool,
}

/// `culm enqueue`
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job type, e.g. platform.noop.
    pub job: String,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Queue override.
    #[arg(long)]
    pub queue: Option<String>,
    /// Run after this delay (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Run at this time (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `culm dead`
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead jobs, newest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead jobs back on their queue with a fresh attempt budget.
    Retry {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete dead jobs for good.
    Purge {
        /// Job ids.
        ids: Vec<String>,
        /// Purge every dead job of --queue.
        #[arg(long, requires = "queue")]
        all: bool,
        /// Queue for --all.
        #[arg(long)]
        queue: Option<String>,
    },
}

/// `culm jobs`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Show one job's state.
    Show {
        /// Job id.
        id: String,
    },
}

/// Sets up logging, and logs panics as one error line instead of a stderr backtrace
/// (a panicking handler is an ordinary failed attempt).
pub fn init_logging(format: LogFormat) {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic: {}", info.payload_as_str().unwrap_or("non-string panic payload"));
    }));
    let filter = tracing_subscriber::EnvFilter::try_from_env("CULM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,apalis_core=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> Result<ExitCode> {
    let config = Loader::new(cli.config_dir.clone(), cli.env.clone()).load()?;
    let registry = Arc::new(culm_jobs::registry().context("building the job registry")?);
    match cli.command {
        Command::Check => check(&config, &registry),
        Command::Bench(args) => crate::bench::run(config, registry, args)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Run(args) => {
            listen_for_shutdown();
            run(config, registry, args).await
        }
        Command::Serve => {
            listen_for_shutdown();
            serve(config, registry).await
        }
        Command::Enqueue(args) => {
            let store = Store::connect(&config, registry).await?;
            let payload: serde_json::Value =
                serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
            let mut req = EnqueueRequest::raw(args.job, payload);
            req.queue = args.queue;
            req.idempotency_key = args.idempotency_key;
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
        Command::Queues { json } => {
            let store = Store::connect(&config, registry).await?;
            let stats = store.all_stats().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{:<16} {:<12} {:>6} {:>10} {:>10} {:>8} {:>8}  PAUSED",
                    "QUEUE", "TIER", "CONC", "PENDING", "SCHEDULED", "RUNNING", "DEAD"
                );
                for s in stats {
                    println!(
                        "{:<16} {:<12} {:>6} {:>10} {:>10} {:>8} {:>8}  {}",
                        s.name,
                        s.tier.as_str(),
                        s.concurrency,
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
        Command::Pause { queue } => pause(Store::connect(&config, registry).await?, &queue, true).await,
        Command::Resume { queue } => pause(Store::connect(&config, registry).await?, &queue, false).await,
        Command::Dead { command } => {
            let store = Store::connect(&config, registry).await?;
            match crate::db::cmd::connect_optional(&config).await? {
                Some(db) => crate::db::cmd::dead(store, db, command).await,
                None => dead(store, command).await,
            }
        }
        Command::Schedules { json } => schedules(config, registry, json).await,
        Command::Scheduler => {
            listen_for_shutdown();
            scheduler_only(config, registry).await
        }
        Command::Examples(args) => crate::examples::run(config, registry, args).await,
        Command::Migrate => crate::db::cmd::migrate(&config).await,
        Command::Sandbox(args) => sandbox(&config, args).await,
        Command::Jobs {
            command: JobsCommand::Show { id },
        } => {
            let store = Store::connect(&config, registry).await?;
            let mut status = store.status(&id).await?;
            // Issue 6: jobs Redis no longer holds are looked up in the ledger.
            if status.is_none()
                && let Some(db) = crate::db::cmd::connect_optional(&config).await?
            {
                status = db.job_status(&id).await?;
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
    }
}

fn check(config: &Config, registry: &Registry) -> Result<ExitCode> {
    let mut problems = Routing::from_config(config).problems(registry);
    // Schedules (issue 4): every file, schedule and key at fault is listed.
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

/// The queues `culm run` selects.
pub fn select_queues(config: &Config, queues: &[String], tiers: &[Tier]) -> Result<Vec<String>> {
    for q in queues {
        if !config.queues.contains_key(q) {
            bail!(
                "--queues names `{q}`, which is not declared under [queues] (declared: {})",
                config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let tiers: BTreeSet<Tier> = tiers.iter().copied().collect();
    let selected: Vec<String> = config
        .queues
        .iter()
        .filter(|(name, q)| {
            let by_queue = queues.is_empty() || queues.contains(name);
            let by_tier = tiers.is_empty() || tiers.contains(&q.tier);
            by_queue && by_tier
        })
        .map(|(name, _)| name.clone())
        .collect();
    if selected.is_empty() {
        bail!("--queues/--tiers select no queue");
    }
    Ok(selected)
}

async fn run(config: Config, registry: Arc<Registry>, args: RunArgs) -> Result<ExitCode> {
    let problems = Routing::from_config(&config).problems(&registry);
    if !problems.is_empty() {
        bail!(
            "refusing to start, routing is invalid:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let queues = select_queues(&config, &args.queues, &args.tiers)?;
    let catalog = if args.no_scheduler {
        None
    } else {
        Some(
            load_schedules(&config, &registry)
                .context("refusing to start the scheduler (use --no-scheduler to run without it)")?,
        )
    };
    crate::telemetry::install();
    // Before the pools, so the first jobs already find their integrations.
    let sandbox = match args.sandbox {
        true => Some(crate::sandbox::Sandbox::bind(&config.sandbox.listen, sandbox_options(&config.sandbox)).await?),
        false => None,
    };
    let store = Store::connect(&config, registry).await?;
    // Issue 6: migrations or the schema check, then the ledger writer and outbox relay.
    let pg = crate::db::cmd::start(&config, &store).await?;
    // With --no-scheduler the catalog still backs the admin API's schedule endpoints.
    let start_scheduler = catalog.is_some();
    let scheduler = catalog
        .or_else(|| load_schedules(&config, store.registry()).ok())
        .map(|c| Scheduler::new(store.clone(), c, &config));
    let (stop_http, stop_http_rx) = tokio::sync::watch::channel(false);
    let http = if config.admin.enabled && !args.no_admin {
        Some(
            start_http(
                &config,
                store.clone(),
                scheduler.clone(),
                pg.as_ref().map(|p| p.db.clone()),
                stop_http_rx,
            )
            .await?,
        )
    } else {
        tokio::spawn(crate::store::queue_gauges(
            store.clone(),
            config.admin.gauge_interval,
            stop_http_rx,
        ));
        None
    };
    let scheduler = scheduler.as_ref().filter(|_| start_scheduler).map(Scheduler::start);
    let deps = crate::integrations::deps(&config, &store)?;
    let mut runtime = Runtime::new(Arc::new(config), store, deps);
    if let Some(l) = pg.as_ref().and_then(|p| p.ledger.clone()) {
        runtime = runtime.with_ledger(l);
    }
    let running = runtime.start(&queues)?;
    shutdown_signal().await;
    tracing::info!("shutdown requested: draining");
    // Stop firing before draining, so no new scheduled job lands behind the drain.
    if let Some(s) = scheduler {
        s.shutdown().await;
    }
    let report = running.shutdown().await;
    if let Some(pg) = pg {
        pg.shutdown().await;
    }
    let _ = stop_http.send(true);
    if let Some(h) = http {
        let _ = h.await;
    }
    if let Some(s) = sandbox {
        s.shutdown().await;
    }
    tracing::info!(
        handed_back = report.handed_back,
        timed_out_pools = report.timed_out_pools,
        "bye"
    );
    Ok(ExitCode::SUCCESS)
}

/// Binds the admin listener (and the metrics listener, when separate) and serves them
/// until `stop`; also keeps the queue gauges fresh. Bind errors stop start-up.
async fn start_http(
    config: &Config,
    store: Store,
    scheduler: Option<Scheduler>,
    db: Option<crate::db::Db>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    use crate::admin;
    let tokens = admin::tokens_from_config(&config.admin)?;
    if tokens.is_empty() {
        tracing::warn!(
            "no admin tokens configured: /v1 endpoints answer 401; set CULM_ADMIN_TOKEN or [[admin.tokens]]"
        );
    }
    let listener = admin::bind(&config.admin.listen, "admin.listen").await?;
    let metrics_listener = if config.admin.metrics_listen.is_empty() {
        None
    } else {
        Some(admin::bind(&config.admin.metrics_listen, "admin.metrics_listen").await?)
    };
    let gauges = tokio::spawn(crate::store::queue_gauges(
        store.clone(),
        config.admin.gauge_interval,
        stop.clone(),
    ));
    let state = admin::AdminState::new(config, store, tokens)
        .with_scheduler(scheduler)
        .with_database(db);
    let (router, _) = admin::router(state);
    let metrics = metrics_listener.map(|l| {
        let r = admin::metrics_router(crate::telemetry::install());
        tokio::spawn(admin::serve(l, r, stop.clone()))
    });
    Ok(tokio::spawn(async move {
        if let Err(e) = admin::serve(listener, router, stop).await {
            tracing::error!("admin API stopped: {e}");
        }
        if let Some(m) = metrics {
            let _ = m.await;
        }
        let _ = gauges.await;
    }))
}

async fn pause(store: Store, queue: &str, pause: bool) -> Result<ExitCode> {
    if !store.routing().queues.contains_key(queue) {
        bail!("no queue named `{queue}` is declared");
    }
    if pause {
        store.pause(queue).await?;
        println!("{queue}: paused (jobs are accepted; no worker fetches until `culm resume {queue}`)");
    } else {
        store.resume(queue).await?;
        println!("{queue}: resumed");
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm serve`: the admin API alone, for a separate deployment.
async fn serve(config: Config, registry: Arc<Registry>) -> Result<ExitCode> {
    crate::telemetry::install();
    let store = Store::connect(&config, registry).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // Not started: this process only answers schedule list/trigger/pause/resume calls.
    let scheduler = load_schedules(&config, store.registry())
        .ok()
        .map(|c| Scheduler::new(store.clone(), c, &config));
    let db = crate::db::cmd::connect_optional(&config).await?;
    let http = start_http(&config, store, scheduler, db, stop_rx).await?;
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = http.await;
    Ok(ExitCode::SUCCESS)
}

// --- Schedules (issue 4) ----------------------------------------------------------------

fn load_schedules(config: &Config, registry: &Registry) -> Result<Catalog, CatalogError> {
    Catalog::load(&config.scheduler.dir, registry, &Routing::from_config(config))
}

/// `culm scheduler`: the scheduler alone.
async fn scheduler_only(config: Config, registry: Arc<Registry>) -> Result<ExitCode> {
    let catalog = load_schedules(&config, &registry)?;
    crate::telemetry::describe_scheduler();
    let store = Store::connect(&config, registry).await?;
    let scheduler = Scheduler::new(store.clone(), catalog, &config);
    // Probes and /metrics (schedule lag) for orchestrators (deploy/kubernetes). A taken
    // port must not stop the scheduler: it only loses its probes and metrics.
    let (stop_http, stop_http_rx) = tokio::sync::watch::channel(false);
    let http = if config.admin.enabled {
        start_http(&config, store, Some(scheduler.clone()), None, stop_http_rx)
            .await
            .map_err(|e| tracing::warn!("scheduler runs without its HTTP endpoints: {e:#}"))
            .ok()
    } else {
        None
    };
    let running = scheduler.start();
    shutdown_signal().await;
    tracing::info!("shutdown requested");
    running.shutdown().await;
    let _ = stop_http.send(true);
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `culm schedules [--json]`. Without Redis it still lists the catalog, minus pause
/// flags and last fires.
async fn schedules(config: Config, registry: Arc<Registry>, json: bool) -> Result<ExitCode> {
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
    for s in &list {
        let state = match (s.enabled, s.paused) {
            (false, _) => "disabled",
            (true, Some(true)) => "PAUSED",
            _ => "enabled",
        };
        println!("{}  [{state}]  {} ({})", s.name, s.cron, s.timezone);
        println!(
            "    {} -> queue {}   overlap={} missed={}",
            s.job, s.queue, s.overlap, s.missed
        );
        println!("    {}", s.description);
        for t in &s.next_fire_times {
            println!("    next  {}   {}", t.local, t.utc);
        }
        match (&s.last_fire, &s.last_outcome) {
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
    let enabled = list.iter().filter(|s| s.enabled).count();
    eprintln!("{} schedule(s), {enabled} enabled", list.len());
    Ok(ExitCode::SUCCESS)
}

/// The shutdown request of a long-running command, set once SIGTERM or SIGINT arrives.
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Starts listening for SIGTERM/SIGINT now. Called first by long-running commands, so a
/// signal that arrives during start-up (connecting, migrating) is held and answered with
/// a clean drain once the command is up, instead of the default action killing it.
fn listen_for_shutdown() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    if SHUTDOWN.set(rx).is_ok() {
        tokio::spawn(async move {
            os_signal().await;
            let _ = tx.send(true);
        });
    }
}

/// Waits for SIGTERM/SIGINT (received at any time since [`listen_for_shutdown`]).
async fn shutdown_signal() {
    listen_for_shutdown();
    if let Some(rx) = SHUTDOWN.get() {
        let _ = rx.clone().wait_for(|stop| *stop).await;
    }
}

async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints `culm dead list` output: JSON, or one line per job and a count on stderr.
pub(crate) fn print_dead(all: &[crate::store::DeadJob], json: bool, what: &str) -> Result<()> {
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

async fn dead(store: Store, command: DeadCommand) -> Result<ExitCode> {
    match command {
        DeadCommand::List { queue, limit, json } => {
            let queues: Vec<String> = match queue {
                Some(q) => vec![q],
                None => store.routing().queues.keys().cloned().collect(),
            };
            let mut all = Vec::new();
            for q in queues {
                all.extend(store.dead_list(&q, limit).await?);
            }
            print_dead(&all, json, "dead job(s)")?;
        }
        DeadCommand::Retry { ids } => {
            for id in ids {
                let q = store
                    .dead_queue_of(&id)
                    .await?
                    .with_context(|| format!("no dead job `{id}`"))?;
                store.dead_retry(&q, std::slice::from_ref(&id)).await?;
                println!("{id} requeued on {q}");
            }
        }
        DeadCommand::Purge { ids, all, queue } => {
            if all {
                let q = queue.context("--all needs --queue")?;
                let mut n = 0;
                loop {
                    let batch: Vec<String> = store.dead_list(&q, 1000).await?.into_iter().map(|d| d.id).collect();
                    if batch.is_empty() {
                        break;
                    }
                    n += store.dead_purge(&q, &batch).await?;
                }
                println!("purged {n} dead job(s) from {q}");
            } else {
                if ids.is_empty() {
                    bail!("give job ids, or --all --queue Q");
                }
                for id in ids {
                    let q = store
                        .dead_queue_of(&id)
                        .await?
                        .with_context(|| format!("no dead job `{id}`"))?;
                    store.dead_purge(&q, std::slice::from_ref(&id)).await?;
                    println!("{id} purged from {q}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// --- Sandbox (issue 5) ------------------------------------------------------------------

fn sandbox_options(c: &crate::config::SandboxConfig) -> crate::sandbox::Options {
    crate::sandbox::Options {
        latency: Duration::from_millis(c.latency_ms),
        fail_rate: c.fail_rate,
    }
}

/// `culm sandbox`: serves until SIGTERM/SIGINT.
async fn sandbox(config: &Config, args: SandboxArgs) -> Result<ExitCode> {
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
