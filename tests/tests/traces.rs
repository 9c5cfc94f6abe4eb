//! Traces end to end: a `culm run --sandbox` process exports spans over OTLP/HTTP to a
//! receiver in this test, which decodes the protobuf. A caller's `traceparent` must reach
//! every attempt, the follow-up, the partner calls (the sandbox's request log) and the
//! JSON log lines; a collector that cannot be reached must change nothing but a counter.
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use culm_tests::{KillOnDrop, TestEnv, culm_bin, eventually, faults::free_port};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value::Value as Any},
};
use prost::Message;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "trace-test-token";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One span as the collector received it; ids as lowercase hex.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
    attrs: BTreeMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or_default()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf) that keeps what it gets.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let c = Collector::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(c.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (c, base)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }
}

async fn receive(State(c): State<Collector>, body: Bytes) -> StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut out = c.spans.lock().expect("lock");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Received {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    service: service.clone(),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    StatusCode::OK
}

/// A `culm --log-format json run --sandbox` process exporting to `otlp`, with its admin
/// API and sandbox on free loopback ports and its log in a file.
struct Culm {
    _child: KillOnDrop,
    admin: String,
    sandbox: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Culm {
    async fn start(env: &TestEnv, queues: &str, otlp: &str, log_filter: &str) -> Culm {
        let (admin_port, sandbox_port) = (free_port(), free_port());
        let sandbox = format!("http://127.0.0.1:{sandbox_port}");
        let log = std::env::temp_dir().join(format!("{}-culm.log", env.prefix));
        let mut cmd = Command::new(culm_bin());
        cmd.current_dir(culm_tests::workspace_root())
            .args([
                "--log-format",
                "json",
                "run",
                "--queues",
                queues,
                "--no-scheduler",
                "--sandbox",
            ])
            .env("CULM_REDIS_URL", &env.config.redis.url)
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("CULM_ADMIN_TOKEN", TOKEN)
            .env("CULM__SANDBOX__LISTEN", format!("127.0.0.1:{sandbox_port}"))
            .env("CULM__SANDBOX__LATENCY_MS", "0")
            .env("CULM__INTEGRATIONS__GALILEO__BASE_URL", format!("{sandbox}/galileo"))
            .env("CULM__INTEGRATIONS__UNIT21__BASE_URL", format!("{sandbox}/unit21"))
            .env("CULM__TELEMETRY__EXPORT_INTERVAL", "100ms")
            .env("CULM__TELEMETRY__EXPORT_TIMEOUT", "2s")
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_SERVICE_NAME", "culm-under-test")
            .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            .env("CULM_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let culm = Culm {
            _child: KillOnDrop(Some(cmd.spawn().expect("culm starts"))),
            admin: format!("http://127.0.0.1:{admin_port}"),
            sandbox,
            log,
            http: reqwest::Client::new(),
        };
        eventually(WAIT, "culm serves /readyz and the sandbox", || async {
            let ready = culm.http.get(format!("{}/readyz", culm.admin)).send().await.ok()?;
            let sandbox = culm
                .http
                .get(format!("{}/_sandbox/requests", culm.sandbox))
                .send()
                .await
                .ok()?;
            (ready.status().is_success() && sandbox.status().is_success()).then_some(())
        })
        .await;
        culm
    }

    async fn enqueue(&self, body: Value, traceparent: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/jobs", self.admin))
            .bearer_auth(TOKEN)
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=opaque")
            .json(&body)
            .send()
            .await
            .expect("enqueue");
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.expect("json");
        v["id"].as_str().expect("id").to_owned()
    }

    async fn state(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/jobs/{id}?wait=5s", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("job status")
            .json()
            .await
            .expect("json")
    }

    async fn requests(&self, integration: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/_sandbox/requests?integration={integration}", self.sandbox))
            .send()
            .await
            .expect("request log")
            .json()
            .await
            .expect("json")
    }

    async fn outage(&self, integration: &str, ms: i64) {
        let resp = self
            .http
            .post(format!("{}/_sandbox/outage", self.sandbox))
            .json(&json!({ "integration": integration, "status": 503, "ms": ms }))
            .send()
            .await
            .expect("outage");
        assert!(resp.status().is_success());
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

#[tokio::test]
async fn a_callers_trace_runs_through_every_attempt_follow_up_and_partner_call() {
    let env = TestEnv::new(|_| {}).await;
    let (collector, otlp) = Collector::start().await;
    let culm = Culm::start(&env, "galileo,unit21", &otlp, "info").await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");

    // Galileo answers 503 (Retry-After: 1) until the first call has been refused, so the
    // job is deferred once and runs again: two attempt spans.
    culm.outage("galileo", 600_000).await;
    let id = culm
        .enqueue(
            json!({ "job": "galileo.process_authorization", "payload": {
                "authorization_id": "auth_trace", "account_id": "acc_1", "amount_cents": 100, "merchant": "Shop" } }),
            &caller,
        )
        .await;
    eventually(WAIT, "galileo refused the first call", || async {
        (!culm.requests("galileo").await.is_empty()).then_some(())
    })
    .await;
    culm.outage("galileo", 0).await;
    eventually(WAIT, "the job is done", || async {
        (culm.state(&id).await["state"] == "done").then_some(())
    })
    .await;

    // The follow-up (unit21.send_event) made its own partner call; wait for its span.
    let spans = eventually(WAIT, "the follow-up's attempt span is exported", || async {
        let spans = collector.spans();
        spans
            .iter()
            .any(|s| s.name == "culm.job" && s.attr("job") == "unit21.send_event" && s.attr("outcome") == "done")
            .then_some(spans)
    })
    .await;
    let galileo_calls = culm.requests("galileo").await;
    let unit21_calls = culm.requests("unit21").await;

    // One trace: the caller's.
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "spans outside the caller's trace: {spans:#?}"
    );
    assert!(spans.iter().all(|s| s.service == "culm-under-test"));

    // The enqueue span is the caller's child; every attempt of the job is the enqueue's.
    let enqueue: Vec<_> = spans.iter().filter(|s| s.name == "culm.enqueue").collect();
    assert_eq!(enqueue.len(), 1, "{spans:#?}");
    assert_eq!(enqueue[0].parent, CALLER_SPAN);
    assert_eq!(enqueue[0].attr("job_id"), id);
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "culm.job" && s.attr("job_id") == id)
        .collect();
    assert_eq!(
        attempts.len(),
        galileo_calls.len(),
        "one attempt span per run (each run called galileo once)"
    );
    assert!(attempts.len() >= 2, "deferred once, then done: {attempts:#?}");
    for a in &attempts {
        assert_eq!(a.parent, enqueue[0].span_id, "attempts hang off the enqueue span");
        assert_eq!(
            (a.attr("queue"), a.attr("tier"), a.attr("attempt")),
            ("galileo", "critical", "1")
        );
        assert!(a.attrs.contains_key("wait_ms") && a.attrs.contains_key("enqueued_at_ms"));
    }
    let mut tokens: Vec<&str> = attempts.iter().map(|a| a.attr("token")).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), attempts.len(), "each attempt its own lease");
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.attr("outcome")).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "done").count(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| *o == "done" || *o == "deferred"),
        "{outcomes:?}"
    );
    let done = attempts
        .iter()
        .find(|a| a.attr("outcome") == "done")
        .expect("done attempt");

    // The follow-up continues the attempt that enqueued it.
    let follow_up: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "culm.job" && s.attr("job") == "unit21.send_event")
        .collect();
    assert_eq!(follow_up.len(), 1, "{follow_up:#?}");
    assert_eq!(follow_up[0].parent, done.span_id);

    // A client span per partner call, under its attempt, with its status; the partner
    // received that span's context.
    let calls: Vec<_> = spans.iter().filter(|s| s.attrs.contains_key("integration")).collect();
    let galileo_spans: Vec<_> = calls.iter().filter(|s| s.attr("integration") == "galileo").collect();
    assert_eq!(galileo_spans.len(), galileo_calls.len(), "{calls:#?}");
    let mut statuses: Vec<&str> = galileo_spans
        .iter()
        .map(|s| s.attr("http.response.status_code"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses.first(), Some(&"200"));
    assert_eq!(statuses.last(), Some(&"503"));
    assert!(
        galileo_spans
            .iter()
            .any(|s| s.attr("deferred_by") == "upstream" && s.attr("outcome") == "deferred")
    );
    for s in &galileo_spans {
        assert_eq!(s.name, "galileo authorization");
        assert!(attempts.iter().any(|a| a.span_id == s.parent), "{s:#?}");
    }
    let unit21_span = calls
        .iter()
        .find(|s| s.attr("integration") == "unit21")
        .expect("unit21 call span");
    assert_eq!(unit21_span.parent, follow_up[0].span_id);
    for r in galileo_calls.iter().chain(&unit21_calls) {
        let tp = r["headers"]["traceparent"].as_str().expect("traceparent sent");
        assert_eq!(&tp[3..35], TRACE_ID, "{r}");
        assert!(
            calls.iter().any(|s| s.span_id == tp[36..52]),
            "sent as its client span: {r}"
        );
        assert_eq!(r["headers"]["tracestate"], "vendor=opaque", "{r}");
    }

    // Log lines inside a job name the trace.
    let log = std::fs::read_to_string(&culm.log).expect("log");
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{{\"trace_id\":\"{TRACE_ID}\",\"span_id\":"))),
        "{log}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_collector_changes_nothing_but_the_dropped_span_count() {
    let env = TestEnv::new(|_| {}).await;
    // Nothing listens there: every export fails at once.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let culm = Culm::start(&env, "platform", &nowhere, "info").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let tp = format!("00-{TRACE_ID}-{:016x}-01", i + 1);
        ids.push(culm.enqueue(json!({ "job": "platform.noop" }), &tp).await);
    }
    for id in &ids {
        let s = eventually(WAIT, "every job done", || async {
            let s = culm.state(id).await;
            (s["state"] == "done").then_some(s)
        })
        .await;
        assert_eq!(s["attempts"], 1, "{s}");
    }
    let dropped = eventually(WAIT, "the dropped spans are counted", || async {
        let text = culm.metrics().await;
        let n: f64 = text
            .lines()
            .filter(|l| l.starts_with("culm_trace_spans_dropped_total{") && l.contains("reason=\"export_failed\""))
            .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
            .sum();
        (n > 0.0).then_some(n)
    })
    .await;
    assert!(dropped >= 1.0);
    env.cleanup().await;
}

#[tokio::test]
async fn with_export_off_the_callers_context_is_stored_and_sent_unchanged() {
    use culm_worker::admin::{AdminState, Token};
    use culm_worker::config::Scope;
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    // This test process installs no exporter: the context passes through as sent.
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": "x" })))
        .mount(&upstream)
        .await;
    let env = TestEnv::new(|c| {
        for name in ["galileo", "unit21"] {
            let i = c.integrations.get_mut(name).expect("integration configured");
            i.base_url = format!("{}/{name}", upstream.uri());
        }
    })
    .await;
    let (base, _stop) = culm_tests::serve_admin(AdminState::new(
        &env.config,
        env.store.clone(),
        vec![Token::new("t", TOKEN, vec![Scope::Enqueue, Scope::Read])],
    ))
    .await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let http = reqwest::Client::new();
    let enqueue = |headers: Vec<(&'static str, String)>, authorization_id: &'static str| {
        let mut req = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(TOKEN)
            .json(&json!({ "job": "galileo.process_authorization", "payload": {
                "authorization_id": authorization_id, "account_id": "acc_1", "amount_cents": 100, "merchant": "Shop" } }));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let resp = req.send().await.expect("enqueue");
            assert_eq!(resp.status(), 201);
            let v: Value = resp.json().await.expect("json");
            v["id"].as_str().expect("id").to_owned()
        }
    };
    let traced = enqueue(
        vec![
            ("traceparent", caller.clone()),
            ("tracestate", "vendor=opaque".into()),
            ("baggage", "customer=c42".into()),
        ],
        "auth_traced",
    )
    .await;
    // An invalid traceparent is ignored (the W3C rule), never a reason to refuse the job.
    let untraced = enqueue(vec![("traceparent", "00-not-a-trace".into())], "auth_plain").await;

    // Stored only when present: the untraced job's envelope has no trace field at all.
    let body = |id: String| {
        let mut conn = env.store.connection();
        let key = format!("{{{}:galileo}}:jobs", env.prefix);
        async move {
            let v: String = redis::cmd("HGET")
                .arg(key)
                .arg(id)
                .query_async(&mut conn)
                .await
                .expect("envelope");
            serde_json::from_str::<Value>(&v).expect("json")
        }
    };
    let stored = body(traced.clone()).await;
    assert_eq!(
        stored["trace"],
        json!({ "traceparent": caller, "tracestate": "vendor=opaque", "baggage": "customer=c42" })
    );
    assert!(body(untraced.clone()).await.get("trace").is_none());

    let rt = env.runtime();
    let running = rt.start(&["galileo".to_owned(), "unit21".to_owned()]).expect("start");
    // Both jobs and their follow-ups (unit21.send_event) call the upstream.
    let requests = eventually(WAIT, "four upstream calls", || async {
        let r = upstream.received_requests().await.unwrap_or_default();
        (r.len() == 4).then_some(r)
    })
    .await;
    running.shutdown().await;
    let header =
        |r: &wiremock::Request, name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body_has = |r: &wiremock::Request, what: &str| String::from_utf8_lossy(&r.body).contains(what);
    for r in &requests {
        // The traced authorization and its follow-up (whose event id names it) carry the
        // caller's context exactly; the untraced pair carries none.
        if body_has(r, "auth_traced") {
            assert_eq!(header(r, "traceparent").as_deref(), Some(caller.as_str()), "{r:?}");
            assert_eq!(header(r, "tracestate").as_deref(), Some("vendor=opaque"));
            // Baggage is the caller's data: kept with the job, never sent to a partner.
            assert_eq!(header(r, "baggage"), None);
        } else {
            assert!(body_has(r, "auth_plain"), "{r:?}");
            assert_eq!(header(r, "traceparent"), None, "{r:?}");
        }
    }
    assert_eq!(requests.iter().filter(|r| body_has(r, "auth_traced")).count(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn a_schedule_tick_starts_a_new_trace_that_its_job_continues() {
    let env = TestEnv::new(|_| {}).await;
    let (collector, otlp) = Collector::start().await;
    // Spans do not depend on the log filter.
    let culm = Culm::start(&env, "platform", &otlp, "warn").await;
    let resp = culm
        .http
        .post(format!("{}/v1/schedules/platform.heartbeat/trigger", culm.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("trigger");
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let outcome: Value = resp.json().await.expect("json");
    let id = outcome["job_id"].as_str().expect("job id").to_owned();
    let spans = eventually(WAIT, "the tick's job ran and its span is exported", || async {
        let spans = collector.spans();
        spans
            .iter()
            .any(|s| s.name == "culm.job" && s.attr("job_id") == id)
            .then_some(spans)
    })
    .await;
    let tick = spans
        .iter()
        .find(|s| s.name == "culm.schedule" && s.attr("job_id") == id)
        .expect("tick span");
    assert_eq!(tick.parent, "", "a tick is the root of its trace");
    assert_eq!(tick.attr("schedule"), "platform.heartbeat");
    let run = spans
        .iter()
        .find(|s| s.name == "culm.job" && s.attr("job_id") == id)
        .expect("run span");
    assert_eq!(
        (run.trace_id.as_str(), run.parent.as_str()),
        (tick.trace_id.as_str(), tick.span_id.as_str())
    );
    env.cleanup().await;
}
