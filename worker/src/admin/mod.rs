//! The admin HTTP API (axum): enqueue over HTTP, inspect and steer queues and dead
//! letters, health and readiness probes, Prometheus `/metrics` and the OpenAPI document;
//! and the dashboard under `/ui` (`ui`), served by the same listener over the same calls.
//! Owns bearer-token authentication, the one error shape every endpoint answers with,
//! and per-route request metrics. `openapi` holds the route table; the handlers live in
//! one file per resource (`jobs`, `queues`, `history`, `dead`, `schedules`, `workers`,
//! `integrations`, `probes`) and call the
//! `Store`, the `Scheduler` and the `Db`; `views` and `extract` are what they share.
mod auth;
mod batches;
mod dead;
mod error;
mod extract;
mod history;
mod integrations;
mod jobs;
mod openapi;
mod probes;
mod queues;
mod schedules;
mod ui;
mod views;
mod wait;
mod workers;

pub use auth::{Token, TokenError, tokens_from_config};
pub use error::ApiError;

use crate::{config::Config, store::Store, telemetry};
use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tokio::{net::TcpListener, sync::watch};
use utoipa::openapi::OpenApi;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    tokens: Vec<Token>,
    metrics: PrometheusHandle,
    max_body_bytes: usize,
    batch_max: usize,
    /// The OpenAPI document, rendered once when the router is built.
    openapi: std::sync::OnceLock<String>,
    /// The schedule catalog and its Redis state, when this process loaded one.
    scheduler: Option<crate::scheduler::Scheduler>,
    /// PostgreSQL, when configured: readiness, the ledger fallback of job status, the
    /// dead-letter archive.
    db: Option<crate::db::Db>,
    waiters: wait::Waiters,
    /// Signs and reads the dashboard's session cookies.
    sessions: ui::Sessions,
    /// Every configured integration, resolved: their limits, and which ones to show.
    integrations: Vec<culm_jobs::http::config::IntegrationSettings>,
}

impl AdminState {
    /// State for a server over `store`, authenticating with `tokens`.
    pub fn new(config: &Config, store: Store, tokens: Vec<Token>) -> Self {
        AdminState {
            inner: Arc::new(Inner {
                store,
                sessions: ui::Sessions::new(&tokens, config.admin.session_ttl),
                tokens,
                metrics: telemetry::install(),
                max_body_bytes: config.admin.max_body_bytes,
                batch_max: config.admin.batch_max,
                openapi: std::sync::OnceLock::new(),
                scheduler: None,
                db: None,
                waiters: wait::Waiters::default(),
                integrations: culm_jobs::http::config::IntegrationSettings::all(
                    &config.integrations,
                    &config.integration_defaults,
                ),
            }),
        }
    }

    /// Serves the schedule endpoints from `scheduler` (call before [`router`]).
    pub fn with_scheduler(mut self, scheduler: Option<crate::scheduler::Scheduler>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.scheduler = scheduler;
        }
        self
    }

    /// Serves readiness, job status and dead letters with PostgreSQL (call before [`router`]).
    pub fn with_database(mut self, db: Option<crate::db::Db>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.db = db;
        }
        self
    }

    fn db(&self) -> Option<&crate::db::Db> {
        self.inner.db.as_ref()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// The admin router and the OpenAPI document generated from the same route table.
pub fn router(state: AdminState) -> (Router, OpenApi) {
    let (router, api) = openapi::table(state.clone());
    let router = router
        .merge(ui::router())
        .fallback(probes::not_found)
        .method_not_allowed_fallback(probes::method_not_allowed)
        .layer(middleware::from_fn(record))
        .with_state(state);
    (router, api)
}

/// A router serving only `/metrics` (for a separate metrics listener).
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { probes::render_metrics(&h) }
        }),
    )
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is taken or not ours.
    #[error(
        "cannot listen on {addr} ({key}): {source}; set CULM__ADMIN__LISTEN or disable with CULM__ADMIN__ENABLED=false"
    )]
    Bind {
        addr: String,
        /// The config key that set `addr`, so the message names what to change.
        key: &'static str,
        source: std::io::Error,
    },
}

/// Binds `addr`; an error names the config key `key` that set it.
pub async fn bind(addr: &str, key: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        key,
        source,
    })
}

/// Serves `router` on `listener` until `stop` fires; in-flight requests finish first.
pub async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "admin API listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Counts and times every request by matched route (bounded cardinality: unknown paths
/// are one label).
async fn record(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    telemetry::admin_request(route, method, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// Guards a route group: the bearer token must carry `scope`.
async fn require(
    State((state, scope)): State<(AdminState, crate::config::Scope)>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    auth::authorize(&state.inner.tokens, req.headers(), scope)?;
    Ok(next.run(req).await)
}
