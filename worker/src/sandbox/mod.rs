//! `culm sandbox`: fake versions of every third-party API culm calls, on loopback, so
//! `culm run` works on a fresh clone without credentials. Owns the routes under each
//! integration's prefix (`/<integration>/...`), Bamboo's real rate limits, failure
//! injection, and the request log at `/_sandbox/requests`. See docs/sandbox.md.

mod answer;
pub mod bodies;
pub mod limits;

use answer::{Answer, Limited, Order, Request};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::Response,
    routing::{get, post},
};
use limits::SlidingWindow;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// The integrations the sandbox serves, each under `/<name>/`: the ones culm has clients for.
pub use culm_jobs::http::config::INTEGRATIONS;

/// Header that makes the sandbox answer with the given status.
pub const FAIL_HEADER: &str = "x-sandbox-fail";
/// Header that adds the given milliseconds of latency.
pub const DELAY_HEADER: &str = "x-sandbox-delay-ms";
/// Longest latency a request may ask for (keeps shutdown bounded).
const MAX_DELAY_MS: u64 = 60_000;
/// Most requests kept in the log; the oldest are dropped beyond it.
const LOG_CAPACITY: usize = 200_000;
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Most idempotent answers remembered for replay.
const REPLAY_CAPACITY: usize = 100_000;

/// How the sandbox behaves.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Typical latency of an answer; each request takes between half and one and a half
    /// times this. Zero answers at once.
    pub latency: Duration,
    /// Fraction of requests (0.0 to 1.0) answered `503` with `Retry-After: 1`.
    pub fail_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            fail_rate: 0.0,
        }
    }
}

impl Options {
    /// No latency, no random failures: what tests want.
    pub fn instant() -> Self {
        Self {
            latency: Duration::ZERO,
            fail_rate: 0.0,
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (sandbox.listen / --listen): {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        source: std::io::Error,
    },
    /// The failure rate is not a fraction.
    #[error("sandbox.fail_rate / --fail-rate must be between 0.0 and 1.0, got {0}")]
    FailRate(f64),
}

/// One request as the sandbox received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// The integration prefix (first path segment).
    pub integration: String,
    pub method: String,
    /// The full request path, prefix included (`/bamboo/orders`).
    pub path: String,
    /// The query string, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The status the sandbox answered.
    pub status: u16,
    /// Arrival time, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// The `Idempotency-Key` header, if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Request headers; credentials are replaced by `***`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body: JSON as sent, other bodies as text, absent when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The sandbox's millisecond clock: wall time at start plus monotonic time since, so
/// logged times never go backwards and rate limits see the same times the log shows.
struct Clock {
    wall0_ms: i64,
    mono0: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            wall0_ms: chrono::Utc::now().timestamp_millis(),
            mono0: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.wall0_ms + i64::try_from(self.mono0.elapsed().as_millis()).unwrap_or(i64::MAX / 2)
    }
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Default)]
struct Inner {
    log: VecDeque<RecordedRequest>,
    limits: HashMap<Limited, SlidingWindow>,
    orders: HashMap<String, Order>,
    replays: HashMap<String, (u16, Value)>,
    outage: Option<Outage>,
    inflight: BTreeMap<String, Inflight>,
}

/// Requests of one integration being answered (arrived, answer not yet sent, latency
/// included): how many now, and the most at once since the last reset. What a partner
/// sees of a global concurrency cap.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inflight {
    pub now: u32,
    pub peak: u32,
}

/// Counts one request in flight until dropped, so an answer abandoned because its client
/// went away (a SIGKILLed worker) is counted out as well.
struct InflightGuard {
    shared: Arc<Shared>,
    integration: String,
}

impl InflightGuard {
    fn enter(shared: &Arc<Shared>, inner: &mut Inner, integration: &str) -> Self {
        let c = inner.inflight.entry(integration.to_owned()).or_default();
        c.now += 1;
        c.peak = c.peak.max(c.now);
        InflightGuard {
            shared: shared.clone(),
            integration: integration.to_owned(),
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = inner.inflight.get_mut(&self.integration) {
            c.now = c.now.saturating_sub(1);
        }
    }
}

/// `POST /_sandbox/outage`: the integration answers `status` (with `Retry-After: 1`) to
/// every request for `ms` milliseconds, e.g. Bamboo refusing everything with 429 for 10 s.
#[derive(Debug, Clone, Deserialize)]
pub struct Outage {
    /// The integration that is down (its path prefix).
    pub integration: String,
    /// The status it answers, e.g. 429 or 503.
    pub status: u16,
    /// How long, from now, in ms.
    pub ms: i64,
    #[serde(skip)]
    until_ms: i64,
}

struct Shared {
    options: Options,
    clock: Clock,
    inner: Mutex<Inner>,
}

/// The sandbox's routes (serve with [`Sandbox::start`], or nest in another router).
pub fn router(options: Options) -> Router {
    let shared = Arc::new(Shared {
        options,
        clock: Clock::new(),
        inner: Mutex::new(Inner::default()),
    });
    Router::new()
        .route("/_sandbox/requests", get(list_requests).delete(clear_requests))
        .route("/_sandbox/reset", post(reset))
        .route("/_sandbox/outage", post(outage))
        .route("/_sandbox/inflight", get(list_inflight).delete(reset_inflight))
        .fallback(handle)
        // File uploads (sftp) and bulk payloads (mailer) exceed axum's 2 MB default.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// A running sandbox server.
pub struct Sandbox {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sandbox {
    /// Binds `addr` (e.g. `127.0.0.1:8900`) and serves.
    pub async fn bind(addr: &str, options: Options) -> Result<Sandbox, SandboxError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| SandboxError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        Self::start(listener, options)
    }

    /// Serves on an already bound listener (tests bind `127.0.0.1:0`).
    pub fn start(listener: TcpListener, options: Options) -> Result<Sandbox, SandboxError> {
        if !(0.0..=1.0).contains(&options.fail_rate) {
            return Err(SandboxError::FailRate(options.fail_rate));
        }
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: "listener".to_owned(),
            source,
        })?;
        let (stop, mut stop_rx) = watch::channel(false);
        let app = router(options);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("sandbox stopped: {e}");
            }
        });
        tracing::info!(
            %addr,
            latency_ms = options.latency.as_millis() as u64,
            fail_rate = options.fail_rate,
            "sandbox listening: integrations at http://{addr}/<integration>, request log at /_sandbox/requests"
        );
        Ok(Sandbox { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/<integration>`: the base URL a client of that integration uses.
    pub fn base_url(&self, integration: &str) -> String {
        format!("http://{}/{integration}", self.addr)
    }

    /// Stops accepting, lets answers in flight finish (for at most 5 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
        }
    }
}

#[derive(Debug, Deserialize)]
struct LogFilter {
    integration: Option<String>,
}

async fn list_requests(State(s): State<Arc<Shared>>, Query(filter): Query<LogFilter>) -> Json<Vec<RecordedRequest>> {
    let inner = s.inner.lock().unwrap_or_else(PoisonError::into_inner);
    Json(
        inner
            .log
            .iter()
            .filter(|r| filter.integration.as_ref().is_none_or(|i| *i == r.integration))
            .cloned()
            .collect(),
    )
}

async fn clear_requests(State(s): State<Arc<Shared>>) -> StatusCode {
    s.inner.lock().unwrap_or_else(PoisonError::into_inner).log.clear();
    StatusCode::NO_CONTENT
}

/// Clears the log, the rate-limit windows, Bamboo orders and idempotent replays, and
/// restarts the in-flight peaks from the requests being answered now.
async fn reset(State(s): State<Arc<Shared>>) -> StatusCode {
    let mut inner = s.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let inflight = std::mem::take(&mut inner.inflight);
    *inner = Inner::default();
    inner.inflight = inflight;
    restart_peaks(&mut inner);
    StatusCode::NO_CONTENT
}

/// `GET /_sandbox/inflight`: requests being answered per integration, and the peak.
async fn list_inflight(State(s): State<Arc<Shared>>) -> Json<BTreeMap<String, Inflight>> {
    Json(s.inner.lock().unwrap_or_else(PoisonError::into_inner).inflight.clone())
}

/// `DELETE /_sandbox/inflight`: every peak restarts from the requests in flight now.
async fn reset_inflight(State(s): State<Arc<Shared>>) -> StatusCode {
    restart_peaks(&mut s.inner.lock().unwrap_or_else(PoisonError::into_inner));
    StatusCode::NO_CONTENT
}

fn restart_peaks(inner: &mut Inner) {
    for c in inner.inflight.values_mut() {
        c.peak = c.now;
    }
}

async fn outage(State(s): State<Arc<Shared>>, Json(mut o): Json<Outage>) -> StatusCode {
    if !(100..=599).contains(&o.status) || o.ms < 0 {
        return StatusCode::BAD_REQUEST;
    }
    o.until_ms = s.clock.now_ms() + o.ms;
    s.inner.lock().unwrap_or_else(PoisonError::into_inner).outage = Some(o);
    StatusCode::NO_CONTENT
}

/// Headers whose values are credentials: recorded as `***`.
fn is_secret(name: &str) -> bool {
    if name == "idempotency-key" {
        return false;
    }
    ["auth", "token", "secret", "key", "cookie", "password", "signature"]
        .iter()
        .any(|s| name.contains(s))
}

fn recorded_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().to_owned();
            let value = if is_secret(&name) {
                "***".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name, value)
        })
        .collect()
}

fn parse_body(body: &Bytes) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        Value::String(text)
    }))
}

/// Every request under an integration prefix.
async fn handle(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let trimmed = path.trim_start_matches('/');
    let (integration, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let integration = integration.to_owned();
    let rest = format!("/{}", rest.trim_end_matches('/'));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let idempotency_key = header("idempotency-key").map(str::to_owned);
    let request_body = parse_body(&body);

    let mut delay = match header(DELAY_HEADER).map(str::parse::<u64>) {
        None => Ok(0),
        Some(Ok(ms)) => Ok(ms.min(MAX_DELAY_MS)),
        Some(Err(_)) => Err(()),
    };

    // Decide and record atomically, so the log's order and times match the limits.
    let (answer, _inflight) = {
        let mut inner = s.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inflight = INTEGRATIONS
            .contains(&integration.as_str())
            .then(|| InflightGuard::enter(&s, &mut inner, &integration));
        let now_ms = s.clock.now_ms();
        let answer = if !INTEGRATIONS.contains(&integration.as_str()) {
            Answer::error(
                404,
                format!(
                    "unknown integration `{integration}`; the sandbox serves /<integration>/... for: {}",
                    INTEGRATIONS.join(", ")
                ),
            )
        } else if delay.is_err() {
            delay = Ok(0);
            Answer::error(400, format!("{DELAY_HEADER} must be a whole number of milliseconds"))
        } else if let Some(o) = inner
            .outage
            .as_ref()
            .filter(|o| o.integration == integration && now_ms < o.until_ms)
        {
            Answer::error(o.status, format!("sandbox outage (/_sandbox/outage): {}", o.status)).header("retry-after", 1)
        } else if let Some(fail) = header(FAIL_HEADER) {
            injected(fail)
        } else if s.options.fail_rate > 0.0 && rand::random::<f64>() < s.options.fail_rate {
            Answer::error(503, "injected failure (sandbox --fail-rate)").header("retry-after", 1)
        } else {
            let request = Request {
                integration: &integration,
                method: &method,
                path: &path,
                rest: &rest,
                body: request_body.as_ref(),
                idempotency_key: idempotency_key.as_deref(),
                now_ms,
            };
            inner.answer(&request)
        };
        if inner.log.len() >= LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(RecordedRequest {
            integration: integration.clone(),
            method: method.as_str().to_owned(),
            path: path.clone(),
            query: uri.query().map(str::to_owned),
            status: answer.status,
            at: rfc3339_ms(now_ms),
            idempotency_key: idempotency_key.clone(),
            headers: recorded_headers(&headers),
            body: request_body.clone(),
        });
        (answer, inflight)
    };

    let latency = jittered(s.options.latency) + Duration::from_millis(delay.unwrap_or(0));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    answer.into_response()
}

fn injected(value: &str) -> Answer {
    match value.parse::<u16>() {
        Ok(status @ 100..=599) => {
            let answer = Answer::new(
                status,
                json!({"ok": status < 400, "error": format!("injected failure ({FAIL_HEADER}: {status})")}),
            );
            if status == 429 || status == 503 {
                answer.header("retry-after", 1)
            } else {
                answer
            }
        }
        _ => Answer::error(
            400,
            format!("{FAIL_HEADER} must be an HTTP status between 100 and 599, got `{value}`"),
        ),
    }
}

/// Uniform in [latency / 2, latency * 3 / 2].
fn jittered(latency: Duration) -> Duration {
    if latency.is_zero() {
        return latency;
    }
    latency.mul_f64(0.5 + rand::random::<f64>())
}
