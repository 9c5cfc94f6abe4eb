//! The long-running processes: `culm run` (worker pools, and by default the scheduler
//! and the admin API), `culm serve` (the admin API alone) and `culm scheduler`.
use super::{sandbox::sandbox_options, schedules::load_schedules, signals::shutdown_signal};
use crate::{
    config::Config,
    db::{Db, services::connect_optional},
    runtime::Runtime,
    scheduler::Scheduler,
    store::{Routing, Store},
};
use anyhow::{Context, Result, bail};
use clap::Args;
use culm_core::{Registry, Tier};
use std::{collections::BTreeSet, process::ExitCode, sync::Arc};
use tokio::{sync::watch, task::JoinHandle};

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

/// `culm run`: serves until SIGTERM/SIGINT, then drains.
pub(super) async fn run(config: Config, registry: Arc<Registry>, args: RunArgs) -> Result<ExitCode> {
    let problems = Routing::from_config(&config, &registry).problems(&registry);
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
    store.open_handler_connection(&config).await?;
    // Migrations or the schema check, then the ledger writer and outbox relay.
    let pg = crate::db::services::start(&config, &store).await?;
    // With --no-scheduler the catalog still backs the admin API's schedule endpoints.
    let start_scheduler = catalog.is_some();
    let scheduler = catalog
        .or_else(|| load_schedules(&config, store.registry()).ok())
        .map(|c| Scheduler::new(store.clone(), c, &config));
    let (stop_http, stop_http_rx) = watch::channel(false);
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
    db: Option<Db>,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
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

/// `culm serve`: the admin API alone, for a separate deployment.
pub(super) async fn serve(config: Config, registry: Arc<Registry>) -> Result<ExitCode> {
    crate::telemetry::install();
    let store = Store::connect(&config, registry).await?;
    let (stop, stop_rx) = watch::channel(false);
    // Not started: this process only answers schedule list/trigger/pause/resume calls.
    let scheduler = load_schedules(&config, store.registry())
        .ok()
        .map(|c| Scheduler::new(store.clone(), c, &config));
    let db = connect_optional(&config).await?;
    let http = start_http(&config, store, scheduler, db, stop_rx).await?;
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = http.await;
    Ok(ExitCode::SUCCESS)
}

/// `culm scheduler`: the scheduler alone.
pub(super) async fn scheduler_only(config: Config, registry: Arc<Registry>) -> Result<ExitCode> {
    let catalog = load_schedules(&config, &registry)?;
    crate::telemetry::describe_scheduler();
    let store = Store::connect(&config, registry).await?;
    let scheduler = Scheduler::new(store.clone(), catalog, &config);
    // Probes and /metrics (schedule lag) for orchestrators (deploy/kubernetes). A taken
    // port must not stop the scheduler: it only loses its probes and metrics.
    let (stop_http, stop_http_rx) = watch::channel(false);
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
