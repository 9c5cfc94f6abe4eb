//! Integrations: the client stack against wiremock upstreams (success,
//! retryable and permanent failures, 429 with Retry-After, timeouts, the breaker,
//! idempotency and credentials) on the real Redis, which holds the shared limiter.
use culm_core::JobError;
use culm_jobs::http::{
    Client,
    breaker::BreakerState,
    config::{BreakerConfig, IntegrationSettings, LimitConfig},
    conn::Conn,
};
use culm_tests::TestEnv;
use std::time::Duration;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, header_exists, method, path},
};

/// The defaults of `integration`, pointed at `server`, adjusted by `adjust`.
fn settings(
    env: &TestEnv,
    integration: &str,
    server: &MockServer,
    adjust: impl FnOnce(&mut IntegrationSettings),
) -> IntegrationSettings {
    let c = &env.config;
    let mut s = IntegrationSettings::resolve(integration, &c.integrations[integration], &c.integration_defaults);
    s.base_url = format!("{}/{integration}", server.uri());
    s.transport_retries = 0;
    adjust(&mut s);
    s
}

fn client(env: &TestEnv, s: IntegrationSettings, api_key: Option<&str>) -> Client {
    Client::new(
        s,
        culm_worker::integrations::conn(&env.store),
        &env.prefix,
        api_key.map(str::to_owned),
    )
    .expect("client builds")
}

#[tokio::test]
async fn success_sends_credentials_and_parses_json() {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/galileo/cards/c1/load"))
        .and(header("authorization", "Bearer s3cret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "tx-1", "ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&env, settings(&env, "galileo", &server, |_| {}), Some("s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"), "the key never shows in Debug");
    let reply = c
        .post("load_card", "/cards/c1/load")
        .json(&serde_json::json!({"amount_cents": 500}))
        .send()
        .await
        .expect("2xx is a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.str("id"), Some("tx-1"));
    env.cleanup().await;
}

#[tokio::test]
async fn server_errors_are_retryable_and_client_errors_permanent() {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    for (p, status, body) in [
        ("/salesforce/a", 500, "boom"),
        ("/salesforce/b", 408, "slow"),
        ("/salesforce/c", 409, "in progress"),
        ("/salesforce/d", 422, r#"{"error":"email is not valid"}"#),
        ("/salesforce/e", 404, "no such contact"),
    ] {
        Mock::given(path(p))
            .respond_with(ResponseTemplate::new(status).set_body_string(body))
            .mount(&server)
            .await;
    }
    let c = client(&env, settings(&env, "salesforce", &server, |_| {}), None);
    for p in ["/a", "/b", "/c"] {
        let e = c.get("x", p).send().await.expect_err("fails");
        assert!(matches!(e, JobError::Retryable { .. }), "{p}: {e:?}");
    }
    let e = c.get("x", "/d").send().await.expect_err("fails");
    match e {
        JobError::Permanent(m) => {
            assert!(
                m.contains("HTTP 422") && m.contains("email is not valid"),
                "upstream message kept: {m}"
            )
        }
        other => panic!("422 must be permanent: {other:?}"),
    }
    let e = c.get("x", "/e").send().await.expect_err("fails");
    assert!(
        matches!(e, JobError::Permanent(ref m) if m.contains("no such contact")),
        "{e:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn retry_after_defers_and_slows_the_shared_limiter() {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(path("/bamboo/orders"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3"))
        .expect(1)
        .mount(&server)
        .await;
    let s = settings(&env, "bamboo", &server, |s| s.max_wait = Duration::from_millis(200));
    let first = client(&env, s.clone(), None);
    let e = first.post("place_order", "/orders").send().await.expect_err("429");
    assert!(
        matches!(e, JobError::Defer { after, .. } if after == Duration::from_secs(3)),
        "deferred by Retry-After: {e:?}"
    );
    // Another process (its own client and connection) does not call before the slot.
    let other = client(&env, s, None);
    let e = other.post("place_order", "/orders").send().await.expect_err("limited");
    assert!(
        matches!(e, JobError::Defer { after, .. } if after >= Duration::from_secs(2)),
        "the shared limiter was pushed back: {e:?}"
    );
    // 503 with Retry-After is push-back too; 503 without it is an ordinary retryable error.
    Mock::given(path("/kard/a"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "1"))
        .mount(&server)
        .await;
    Mock::given(path("/kard/b"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let kard = client(&env, settings(&env, "kard", &server, |_| {}), None);
    let e = kard.get("a", "/a").send().await.expect_err("503");
    assert!(
        matches!(e, JobError::Defer { after, .. } if after == Duration::from_secs(1)),
        "{e:?}"
    );
    let e = kard.get("b", "/b").send().await.expect_err("503");
    assert!(matches!(e, JobError::Retryable { .. }), "{e:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn timeouts_are_retried_inside_the_call_then_retryable() {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(path("/avalara/tax"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .expect(3)
        .mount(&server)
        .await;
    let s = settings(&env, "avalara", &server, |s| {
        s.timeout = Duration::from_millis(150);
        s.transport_retries = 2;
    });
    let c = client(&env, s, None);
    let e = c.post("calculate", "/tax").send().await.expect_err("times out");
    assert!(
        matches!(e, JobError::Retryable { ref message, .. } if message.contains("timed out")),
        "{e:?}"
    );
    server.verify().await;
    env.cleanup().await;
}

/// Unit21 answering its first two events with 500, and its settings with a breaker that
/// opens after 2 failures for `open_for`, with one half-open probe.
async fn failing_unit21(env: &TestEnv, open_for: Duration) -> (MockServer, IntegrationSettings) {
    let server = MockServer::start().await;
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    let s = settings(env, "unit21", &server, |s| {
        s.breaker = BreakerConfig {
            failure_threshold: 2,
            open_for,
            half_open_probes: 1,
        }
    });
    (server, s)
}

#[tokio::test]
async fn breaker_opens_defers_probes_and_closes() {
    let env = TestEnv::new(|_| {}).await;
    let (server, s) = failing_unit21(&env, Duration::from_millis(300)).await;
    let c = client(&env, s, None);
    for _ in 0..2 {
        let e = c.post("events", "/events").send().await.expect_err("500");
        assert!(matches!(e, JobError::Retryable { .. }), "{e:?}");
    }
    assert_eq!(c.breaker().state(), BreakerState::Open);
    let e = c.post("events", "/events").send().await.expect_err("open");
    assert!(
        matches!(e, JobError::Defer { after, .. } if after <= Duration::from_millis(400)),
        "open breaker defers without calling: {e:?}"
    );
    server.verify().await;
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    // After open_for a probe goes through, and its success closes the breaker.
    let reply = culm_tests::eventually(Duration::from_secs(3), "a half-open probe", || {
        let c = c.clone();
        async move { c.post("events", "/events").send().await.ok() }
    })
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(c.breaker().state(), BreakerState::Closed);
    env.cleanup().await;
}

#[tokio::test]
async fn idempotency_key_is_sent_when_asked() {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(path("/ding/topups"))
        .and(header("idempotency-key", "01JOB"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/ding/products"))
        .and(header_exists("idempotency-key"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(path("/ding/products"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let c = client(&env, settings(&env, "ding", &server, |_| {}), None);
    c.post("top_up", "/topups")
        .idempotency_key("01JOB")
        .send()
        .await
        .expect("sent with key");
    c.get("products", "/products").send().await.expect("reads carry no key");
    server.verify().await;
    env.cleanup().await;
}

/// A Bamboo client against a catalog endpoint that expects `calls` requests.
async fn catalog_upstream(calls: u64) -> (TestEnv, MockServer, Client) {
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(path("/bamboo/catalog"))
        .respond_with(ResponseTemplate::new(200))
        .expect(calls)
        .mount(&server)
        .await;
    let c = client(&env, settings(&env, "bamboo", &server, |_| {}), None);
    (env, server, c)
}

#[tokio::test]
async fn limiter_spaces_calls_and_defers_beyond_max_wait() {
    let (env, server, c) = catalog_upstream(2).await;
    assert_eq!(
        c.settings().limit("catalog"),
        Some(&LimitConfig {
            endpoint: "catalog".into(),
            rate: 2,
            per: Duration::from_secs(3600),
            burst: None
        })
    );
    // Bamboo allows 2 an hour, back to back if need be: both go at once.
    c.get("catalog", "/catalog").send().await.expect("first catalog call");
    c.get("catalog", "/catalog").send().await.expect("second catalog call");
    let mut conn = env.store.connection();
    let tat: Option<i64> = redis::cmd("LINDEX")
        .arg(format!("{}:integration:{{bamboo:catalog}}:slots", env.prefix))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("LINDEX");
    assert!(
        tat.is_some(),
        "the documented limiter key holds the sends of the window"
    );
    let e = c
        .get("catalog", "/catalog")
        .send()
        .await
        .expect_err("a third within the hour");
    assert!(
        matches!(e, JobError::Defer { after, .. } if after > Duration::from_secs(3500)),
        "2/hour: the next slot is an hour (plus the guard) after the first: {e:?}"
    );
    server.verify().await;
    env.cleanup().await;
}

// --- Job catalog through the worker runtime ---------------------------------------------

use culm_core::{EnqueueRequest, Job, Tier};
use culm_worker::{config::Config, runtime::Runtime, scheduler::catalog::Catalog, store::Routing, store::Store};
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};
use wiremock::matchers::any;

/// Points every integration at `uri`/<name>.
fn point_at(c: &mut Config, uri: &str) {
    for (name, i) in c.integrations.iter_mut() {
        i.base_url = format!("{uri}/{name}");
    }
}

/// Answers every request like the sandbox's catch-all: 200 `{"ok": true, "id": ...}`,
/// and Salesforce's contact collections upsert with one success per record.
async fn catch_all(server: &MockServer) {
    contact_upserts(server).await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true, "id": "up-1"})))
        .with_priority(u8::MAX)
        .mount(server)
        .await;
}

/// Salesforce's sObject Collections upsert (`salesforce.sync_contact`): one success per record.
async fn contact_upserts(server: &MockServer) {
    struct PerRecord;
    impl wiremock::Respond for PerRecord {
        fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let n = body["records"].as_array().map_or(0, Vec::len);
            let results: Vec<_> = (0..n)
                .map(|i| serde_json::json!({"id": format!("sf-{i}"), "success": true, "errors": []}))
                .collect();
            ResponseTemplate::new(200).set_body_json(results)
        }
    }
    Mock::given(method("PATCH"))
        .and(path(format!("/salesforce{}", culm_jobs::crm::CONTACT_UPSERT_PATH)))
        .respond_with(PerRecord)
        .mount(server)
        .await;
}

/// Records when each request arrived, and answers like Bamboo's order endpoint.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<Instant>>>);

impl Arrivals {
    fn times(&self) -> Vec<Instant> {
        self.0.lock().expect("arrivals lock").clone()
    }
}

impl wiremock::Respond for Arrivals {
    fn respond(&self, _req: &wiremock::Request) -> ResponseTemplate {
        self.0.lock().expect("arrivals lock").push(Instant::now());
        ResponseTemplate::new(202).set_body_json(serde_json::json!({"status": "pending"}))
    }
}

/// The acceptance test of the shared limiter: three independent worker pools, each with
/// its own Redis connections and clients, place 40 orders at 2/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pools_share_bamboos_two_per_second_limit() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .and(path("/bamboo/orders"))
        .respond_with(arrivals.clone())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "fulfilled", "cards": []})))
        .mount(&server)
        .await;
    let env = TestEnv::new(|c| point_at(c, &server.uri())).await;
    let registry = Arc::new(culm_jobs::registry().expect("registry"));
    let mut pools = Vec::new();
    for _ in 0..3 {
        let store = Store::connect(&env.config, registry.clone()).await.expect("connect");
        let deps = culm_worker::integrations::deps(&env.config, &store).expect("clients");
        let rt = Runtime::new(Arc::new(env.config.clone()), store, deps);
        pools.push(rt.start(&["bamboo_orders".into()]).expect("start"));
    }
    let orders: Vec<EnqueueRequest> = (0..40)
        .map(|i| {
            EnqueueRequest::raw(
                "bamboo.place_order",
                serde_json::json!({"order_id": format!("ord-{i}"), "sku": "AMAZON_US_25", "quantity": 1}),
            )
        })
        .collect();
    env.store.enqueue(orders).await.expect("enqueue");
    culm_tests::eventually(Duration::from_secs(60), "40 orders at Bamboo", || {
        let n = arrivals.times().len();
        async move { (n >= 40).then_some(()) }
    })
    .await;
    let mut t = arrivals.times();
    t.sort();
    assert_eq!(t.len(), 40, "each order placed once");
    for w in t.windows(3) {
        let gap = w[2] - w[0];
        assert!(
            gap >= Duration::from_secs(1),
            "three orders within one second ({gap:?}): the 2/s limit was broken"
        );
    }
    // With at most 2 in any 1 s window, 40 requests need at least 19 s between first and last.
    let span = t[39] - t[0];
    let minimum = Duration::from_secs(19);
    assert!(
        span <= minimum.mul_f64(1.2),
        "over-throttled: 40 orders took {span:?}, more than 20% above the {minimum:?} minimum"
    );
    for p in pools {
        p.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_defers_its_jobs_and_leaves_other_integrations_alone() {
    let server = MockServer::start().await;
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_millis(100)))
        .mount(&server)
        .await;
    contact_upserts(&server).await;
    let env = TestEnv::new(|c| {
        point_at(c, &server.uri());
        c.integrations.get_mut("unit21").expect("unit21").breaker = Some(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        });
    })
    .await;
    assert_eq!(env.config.queues["unit21"].tier, env.config.queues["salesforce"].tier);
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["unit21".into(), "salesforce".into()]).expect("start");
    let fraud: Vec<EnqueueRequest> = (0..10)
        .map(|i| {
            EnqueueRequest::raw(
                "unit21.send_event",
                serde_json::json!({"event_id": format!("e{i}"), "account_id": "a", "kind": "login"}),
            )
        })
        .collect();
    env.store.enqueue(fraud).await.expect("enqueue");
    culm_tests::next_event(&mut events, Duration::from_secs(20), |e| {
        e.job == "unit21.send_event" && culm_tests::is("defer", e) && e.error.contains("circuit breaker open")
    })
    .await;
    // Unit21 is down and its breaker open; Salesforce jobs on the same tier run as usual.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let start = Instant::now();
        let e = env
            .enqueue(EnqueueRequest::raw(
                "salesforce.sync_contact",
                serde_json::json!({"user_id": format!("u{i}"), "email": "a@example.com"}),
            ))
            .await;
        culm_tests::next_event(&mut events, Duration::from_secs(10), |ev| {
            ev.id == e.id && culm_tests::is("done", ev)
        })
        .await;
        latencies.push(start.elapsed());
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(500),
        "salesforce latency during the unit21 outage: {latencies:?}"
    );
    let stats = env.store.all_stats().await.expect("stats");
    let unit21 = stats.iter().find(|q| q.name == "unit21").expect("unit21 stats");
    assert_eq!(unit21.dead, 0, "deferred, not dead-lettered");
    assert_eq!(
        unit21.scheduled + unit21.pending + unit21.running,
        10,
        "all waiting for the breaker"
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[test]
fn the_catalog_covers_every_family_with_examples_and_banking_stays_critical() {
    let registry = culm_jobs::registry().expect("registry");
    let config = Config::defaults().expect("defaults");
    let problems = Routing::from_config(&config, &registry).problems(&registry);
    assert!(problems.is_empty(), "{problems:?}");
    for family in [
        "galileo.",
        "crossborder.",
        "ding.",
        "bamboo.",
        "salesforce.",
        "appsflyer.",
        "unit21.",
        "veriff.",
        "persona.",
        "kard.",
        "avalara.",
        "mail.",
        "ftp.",
        "reports.",
        "statements.",
        "health.",
    ] {
        assert!(registry.iter().any(|s| s.name.starts_with(family)), "{family}");
    }
    for s in registry.iter().filter(|s| !s.name.starts_with("platform.")) {
        assert!(s.example.is_some(), "{} has an example payload", s.name);
        assert!(!s.description.is_empty(), "{} is described", s.name);
        let banking = ["galileo.", "crossborder.", "ding."]
            .iter()
            .any(|p| s.name.starts_with(p));
        if banking {
            assert_eq!(s.tiers, &[Tier::Critical], "{} is banking: critical only", s.name);
        }
    }
    assert_eq!(culm_jobs::bamboo::PlaceOrder::NAME, "bamboo.place_order");
    // Every integration of the contract is configured, pointing at the sandbox by default.
    for name in culm_jobs::http::config::INTEGRATIONS {
        let i = config
            .integrations
            .get(name)
            .unwrap_or_else(|| panic!("[integrations.{name}]"));
        assert_eq!(i.base_url, format!("http://127.0.0.1:8900/{name}"));
    }
}

#[test]
fn the_shipped_schedules_validate_with_at_least_60_enabled() {
    let registry = culm_jobs::registry().expect("registry");
    let config = Config::defaults().expect("defaults");
    let catalog =
        Catalog::load("", &registry, &Routing::from_config(&config, &registry)).unwrap_or_else(|e| panic!("{e}"));
    let enabled = catalog.iter().filter(|s| s.enabled).count();
    assert!(enabled >= 60, "only {enabled} enabled schedules");
}

/// The smoke run of `culm examples --enqueue --wait`, in-process: one job of every type
/// against an upstream that answers like the sandbox's catch-all, on every queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_job_succeeds_against_a_sandbox_like_upstream() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let env = TestEnv::new(|c| point_at(c, &server.uri())).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let queues: Vec<String> = env.config.queues.keys().cloned().collect();
    let running = rt.start(&queues).expect("start");
    let registry = culm_jobs::registry().expect("registry");
    let reqs = culm_worker::examples::requests(&registry, &[]);
    assert!(reqs.len() >= 60, "{} example jobs", reqs.len());
    let out = env.store.enqueue(reqs.clone()).await.expect("every example is valid");
    let mut waiting: std::collections::BTreeMap<String, String> = out
        .iter()
        .zip(&reqs)
        .map(|(e, r)| (e.id.clone(), r.job.clone()))
        .collect();
    while !waiting.is_empty() {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap_or_else(|_| panic!("unfinished: {:?}", waiting.values().collect::<Vec<_>>()))
            .expect("events");
        if !waiting.contains_key(&e.id) {
            continue;
        }
        assert!(
            !culm_tests::is("dead", &e) && !culm_tests::is("retry", &e),
            "{} failed: {}",
            e.job,
            e.error
        );
        if culm_tests::is("done", &e) {
            waiting.remove(&e.id);
        }
    }
    running.shutdown().await;
    env.cleanup().await;
}

#[test]
fn bad_integration_settings_name_their_key() {
    use culm_worker::config::Loader;
    let load = |name: &str, value: &str| {
        Loader::new(None, None)
            .load_from(vec![(name.to_owned(), value.to_owned())])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = load("CULM__INTEGRATIONS__BAMBOO__GUARD", "5s").expect_err("a guard of seconds");
    assert!(e.contains("integrations.bamboo.guard"), "{e}");
    let e = load("CULM__INTEGRATIONS__GALILEO__BASE_URL", "ftp://x").expect_err("not http");
    assert!(e.contains("integrations.galileo.base_url"), "{e}");
    let e = load("CULM__INTEGRATIONS__KARD__API_KEY_ENV", "sk live 123").expect_err("a secret, not a name");
    assert!(e.contains("integrations.kard.api_key_env"), "{e}");
    let e = load("CULM__INTEGRATION_DEFAULTS__TIMEOUT", "0s").expect_err("zero timeout");
    assert!(e.contains("integration_defaults.timeout"), "{e}");
    load("CULM__INTEGRATIONS__DING__TIMEOUT", "5s").expect("an override loads");
}

/// `ctx.idempotency_key()` and `Call::idempotent()` are one key, and a re-drive
/// from the archive (a new job, enqueued with `culm_core::redrive_key` as `dead_redrive`
/// does) sends the original job's key, so a re-driven payment cannot pay twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_job_keeps_the_original_upstream_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ding/topups"))
        .and(header("idempotency-key", "culm-01ORIGINAL"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "up-1"})))
        .expect(2)
        .mount(&server)
        .await;
    let env = TestEnv::new(|c| point_at(c, &server.uri())).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["ding".into()]).expect("start");
    let registry = culm_jobs::registry().expect("registry");
    let example = registry
        .get("ding.top_up")
        .and_then(|s| s.example.clone())
        .expect("example");
    // A first re-drive of 01ORIGINAL, and a re-drive of that re-drive (same origin).
    for died_at in [1_000, 2_000] {
        let mut req = EnqueueRequest::raw("ding.top_up", example.clone());
        // The key `dead_redrive` enqueues with (`culm_core::redrive_key`).
        req.idempotency_key = Some(format!("redrive:01ORIGINAL:{died_at}"));
        let e = env.enqueue(req).await;
        assert_ne!(e.id, "01ORIGINAL");
        let ev = culm_tests::next_event(&mut events, Duration::from_secs(20), |ev| {
            ev.id == e.id && (culm_tests::is("done", ev) || culm_tests::is("dead", ev) || culm_tests::is("retry", ev))
        })
        .await;
        assert!(culm_tests::is("done", &ev), "sent with the original key: {}", ev.error);
    }
    running.shutdown().await;
    server.verify().await;
    env.cleanup().await;
}

/// The breaker is shared through Redis. One replica's failures open it for every
/// replica (the others defer without making their own failing calls), and half-open lets
/// one probe through in total, not one per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_failures_open_the_breaker_for_every_replica() {
    let env = TestEnv::new(|_| {}).await;
    let (server, s) = failing_unit21(&env, Duration::from_millis(500)).await;
    // Three replicas: each its own client, breaker and Redis connection.
    let replicas: Vec<Client> = (0..3).map(|_| client(&env, s.clone(), None)).collect();
    for _ in 0..2 {
        let e = replicas[0].post("events", "/events").send().await.expect_err("500");
        assert!(matches!(e, JobError::Retryable { .. }), "{e:?}");
    }
    for r in &replicas[1..] {
        let e = r.post("events", "/events").send().await.expect_err("open");
        assert!(
            matches!(e, JobError::Defer { ref reason, .. } if reason.contains("circuit breaker open")),
            "another replica defers without calling: {e:?}"
        );
        assert_eq!(r.breaker().state(), BreakerState::Open);
    }
    server.verify().await;
    // Half-open: the three call at once; one probe goes through (slowly), the others wait.
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    culm_tests::eventually(Duration::from_secs(5), "one half-open probe", || {
        let replicas = replicas.clone();
        async move {
            let calls = replicas.iter().map(|r| r.post("events", "/events").send());
            let answers = futures::future::join_all(calls).await;
            answers.into_iter().find_map(Result::ok)
        }
    })
    .await;
    server.verify().await;
    // The probe's success closed it for everyone: the shared state is gone (closed, no failures).
    let mut conn = env.store.connection();
    let key = replicas[0].breaker().key().expect("a shared breaker").to_owned();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!exists, "{key} still holds an open or half-open breaker");
    env.cleanup().await;
}

/// While Redis is unreachable the breaker is this process's own: its failures still open
/// it (the third call is deferred without reaching the upstream) though no other replica
/// hears of them. Once Redis answers again the shared state rules once more. The
/// endpoint has no configured limit, so the unreachable limiter does not stop the calls
/// (one with a limit is refused instead: see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_falls_back_to_the_process_while_redis_is_unreachable() {
    use culm_tests::faults::FaultProxy;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    let env = TestEnv::new(|_| {}).await;
    let (server, s) = failing_unit21(&env, Duration::from_secs(30)).await;
    let redis_addr = culm_tests::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(&redis_addr).await;
    let cut_off = {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let cm = ConnectionManager::new_with_config(redis::Client::open(proxy.url()).expect("url"), cfg)
            .await
            .expect("connects through the proxy");
        Client::new(s.clone(), Conn::Manager(cm), &env.prefix, None).expect("client builds")
    };
    let other = client(&env, s, None);
    proxy.cut();
    for _ in 0..2 {
        let e = cut_off.post("events", "/events").send().await.expect_err("500");
        assert!(matches!(e, JobError::Retryable { .. }), "{e:?}");
    }
    assert_eq!(cut_off.breaker().state(), BreakerState::Open);
    let e = cut_off.post("events", "/events").send().await.expect_err("open");
    assert!(
        matches!(e, JobError::Defer { ref reason, .. } if reason.contains("circuit breaker open")),
        "the process's own breaker defers without calling: {e:?}"
    );
    server.verify().await;
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    // The shared state never heard of those failures: a replica that reaches Redis calls.
    assert_eq!(
        other.post("events", "/events").send().await.expect("called").status,
        200
    );
    // Redis is back: the cut-off process follows the shared (closed) state again.
    proxy.restore();
    let reply = culm_tests::eventually(Duration::from_secs(10), "the shared breaker again", || {
        let c = cut_off.clone();
        async move { c.post("events", "/events").send().await.ok() }
    })
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(cut_off.breaker().state(), BreakerState::Closed);
    env.cleanup().await;
}

/// An endpoint with a configured limit is never called while the shared limiter cannot
/// be asked: the call fails retryable and the upstream sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_endpoint_is_not_called_while_redis_is_unreachable() {
    use culm_tests::faults::FaultProxy;
    let env = TestEnv::new(|_| {}).await;
    let server = MockServer::start().await;
    Mock::given(path("/bamboo/orders"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let s = settings(&env, "bamboo", &server, |_| {});
    let redis_addr = culm_tests::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(&redis_addr).await;
    let cm = redis::aio::ConnectionManager::new(redis::Client::open(proxy.url()).expect("url"))
        .await
        .expect("connects through the proxy");
    let c = Client::new(s, Conn::Manager(cm), &env.prefix, None).expect("client builds");
    proxy.cut();
    let e = c.post("place_order", "/orders").send().await.expect_err("refused");
    assert!(
        matches!(e, JobError::Retryable { ref message, .. } if message.contains("rate limiter unavailable")),
        "{e:?}"
    );
    server.verify().await;
    env.cleanup().await;
}

/// The catalog sync every 30 minutes fits Bamboo's 2 calls an hour and fires on
/// time. The two previous calls were 30 and 60 minutes ago (on Redis's clock): the next
/// slot is within `max_wait` (the window is an hour plus the guard), not deferred. With
/// GCRA and 10 % headroom it was 3 minutes away, and every run drifted.
#[tokio::test]
async fn the_half_hourly_catalog_sync_fits_two_per_hour_on_time() {
    let (env, _server, c) = catalog_upstream(1).await;
    let mut conn = env.store.connection();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.expect("TIME");
    let now = secs * 1000 + micros / 1000;
    let minute = 60_000;
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{}:integration:{{bamboo:catalog}}:slots", env.prefix))
        .arg(now - 30 * minute)
        .arg(now - 60 * minute)
        .query_async(&mut conn)
        .await
        .expect("RPUSH");
    // A slot beyond max_wait would be a `Defer`: success means it ran within max_wait.
    c.get("catalog", "/catalog")
        .send()
        .await
        .expect("the catalog call runs on time");
    env.cleanup().await;
}

/// `GET /v1/integrations` as the read token `reader` sees it, from an admin server over
/// `env`'s store and config.
async fn integrations_view(base: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/integrations"))
        .bearer_auth("integrations-reader")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

fn find<'a>(view: &'a serde_json::Value, integration: &str, endpoint: Option<&str>) -> &'a serde_json::Value {
    let i = view["integrations"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == integration))
        .unwrap_or_else(|| panic!("{integration} listed: {view}"));
    match endpoint {
        None => i,
        Some(e) => i["endpoints"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["endpoint"] == e))
            .unwrap_or_else(|| panic!("{integration} {e} listed: {i}")),
    }
}

#[tokio::test]
async fn the_integrations_api_shows_every_replicas_429s_rate_requests_latency_and_breaker() {
    use culm_worker::{
        admin::{AdminState, Token},
        config::Scope,
    };
    let env = TestEnv::new(|_| {}).await;
    let (base, _stop) = culm_tests::serve_admin(AdminState::new(
        &env.config,
        env.store.clone(),
        vec![Token::new("reader", "integrations-reader", vec![Scope::Read])],
    ))
    .await;
    let anonymous = reqwest::get(format!("{base}/v1/integrations")).await.expect("sent");
    assert_eq!(anonymous.status(), 401, "the read scope guards it");

    // Before any call: Bamboo's configured limits, at their configured rate, no traffic.
    let view = integrations_view(&base).await;
    let place = find(&view, "bamboo", Some("place_order"));
    assert_eq!(place["limit"]["rate"], 2);
    assert_eq!(place["limit"]["per"], "1s");
    assert_eq!(place["effective_rate"], 2);
    assert_eq!(place["requests"], 0);
    assert!(place["mean_latency_ms"].is_null());
    assert_eq!(find(&view, "bamboo", None)["breaker"]["state"], "closed");

    // Two replicas' clients: one meets a 429, the other a 200 (at the lowered rate).
    let server = MockServer::start().await;
    Mock::given(path("/bamboo/orders"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/bamboo/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "o-1"})))
        .expect(1)
        .mount(&server)
        .await;
    let s = settings(&env, "bamboo", &server, |_| {});
    let e = client(&env, s.clone(), None)
        .post("place_order", "/orders")
        .send()
        .await
        .expect_err("429");
    assert!(matches!(e, JobError::Defer { .. }), "{e:?}");
    let reply = client(&env, s, None)
        .post("place_order", "/orders")
        .send()
        .await
        .expect("200");
    assert_eq!(reply.status, 200);
    server.verify().await;

    // A breaker opened by failures, and a call it deferred.
    let (_unit21, s) = failing_unit21(&env, Duration::from_secs(120)).await;
    let c = client(&env, s, None);
    for _ in 0..2 {
        let e = c.post("events", "/events").send().await.expect_err("500");
        assert!(matches!(e, JobError::Retryable { .. }), "{e:?}");
    }
    let e = c.post("events", "/events").send().await.expect_err("open");
    assert!(matches!(e, JobError::Defer { .. }), "{e:?}");

    // The statistics are written after each call's result, without it waiting for them.
    let view = culm_tests::eventually(Duration::from_secs(10), "the calls' statistics", || {
        let base = base.clone();
        async move {
            let v = integrations_view(&base).await;
            let place = find(&v, "bamboo", Some("place_order")).clone();
            let events = find(&v, "unit21", Some("events")).clone();
            (place["requests"] == 2 && events["deferred_breaker"] == 1).then_some(v)
        }
    })
    .await;
    let place = find(&view, "bamboo", Some("place_order"));
    assert_eq!(place["rate_limited"], 1, "{place}");
    assert_eq!(place["effective_rate"], 1, "the 429 halved the shared rate: {place}");
    assert_eq!(place["deferred_limiter"], 0, "{place}");
    assert!(place["mean_latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{place}");
    let get_order = find(&view, "bamboo", Some("get_order"));
    assert_eq!(get_order["effective_rate"], 120, "other endpoints keep their rate");
    assert_eq!(get_order["requests"], 0);
    let unit21 = find(&view, "unit21", None);
    assert_eq!(unit21["breaker"]["state"], "open", "{unit21}");
    assert!(unit21["breaker"]["until"].is_string(), "{unit21}");
    let events = find(&view, "unit21", Some("events"));
    assert_eq!(events["requests"], 2, "{events}");
    assert_eq!(events["failed"], 2, "{events}");
    assert!(events["limit"].is_null(), "unit21 has no limit: {events}");
    assert_eq!(find(&view, "bamboo", None)["breaker"]["state"], "closed");
    env.cleanup().await;
}
