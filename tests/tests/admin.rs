//! The admin HTTP API, served on an ephemeral port and driven by a real HTTP client:
//! enqueue and its errors, auth and scopes, job state, pause/resume seen by a running
//! worker, dead letters, readiness, /metrics and the OpenAPI document.
use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Tier};
use culm_tests::{TcpProxy, TestEnv, eventually, is, next_event, queue, redis_url};
use culm_worker::{
    admin::{AdminState, Token},
    config::Scope,
    scheduler::{Scheduler, catalog::Catalog},
    store::{Routing, Store},
};
use reqwest::{Client, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "t-admin";
const READER: &str = "t-reader";
const ENQUEUER: &str = "t-enqueuer";

/// A job type allowed only in the critical tier, to provoke 422s on a tier override.
#[derive(Serialize, Deserialize)]
struct CardLoad {
    account: String,
    amount_cents: u64,
}

impl Job for CardLoad {
    const NAME: &'static str = "test.card_load";
    const QUEUE: &'static str = "t_crit";
    const TIERS: &'static [Tier] = &[Tier::Critical];
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Ok(Outcome::done())
    }
}

struct Api {
    base: String,
    http: Client,
    _stop: watch::Sender<bool>,
}

impl Api {
    async fn start(env: &TestEnv) -> Api {
        Self::start_on(env, env.store.clone()).await
    }

    async fn start_on(env: &TestEnv, store: Store) -> Api {
        let tokens = vec![
            Token::new("admin", ADMIN, vec![Scope::Admin, Scope::Enqueue]),
            Token::new("reader", READER, vec![Scope::Read]),
            Token::new("enqueuer", ENQUEUER, vec![Scope::Enqueue]),
        ];
        let catalog = Catalog::load(
            "",
            env.store.registry(),
            &Routing::from_config(&env.config, env.store.registry()),
        )
        .expect("catalog");
        let scheduler = Scheduler::new(store.clone(), catalog, &env.config);
        let (base, stop) =
            culm_tests::serve_admin(AdminState::new(&env.config, store, tokens).with_scheduler(Some(scheduler))).await;
        Api {
            base,
            http: Client::new(),
            _stop: stop,
        }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(ADMIN), Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(READER), None).await
    }

    async fn raw_post(&self, path: &str, body: String) -> StatusCode {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
            .status()
    }
}

async fn env() -> TestEnv {
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<CardLoad>().expect("register test job");
    TestEnv::with_registry(registry, |c| {
        c.queues.insert("t_crit".into(), queue("critical", 4, 5_000, 3));
        c.queues.insert("t_batch".into(), queue("batch", 2, 5_000, 2));
        c.worker.idle_poll_interval = Duration::from_millis(50);
        c.admin.max_body_bytes = 4096;
        c.admin.batch_max = 5;
    })
    .await
}

fn error_code(body: &Value) -> (&str, Option<&str>) {
    (
        body["error"]["code"].as_str().unwrap_or("<no code>"),
        body["error"]["field"].as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_over_http_runs_and_reads_done_and_metrics_move() {
    let env = env().await;
    let api = Api::start(&env).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_batch".into()]).expect("start");

    let (status, body) = api
        .post("/v1/jobs", json!({"job": "platform.noop", "queue": "t_batch"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["queue"], "t_batch");
    let id = body["id"].as_str().expect("id").to_owned();
    next_event(&mut events, WAIT, |e| e.id == id && is("done", e)).await;
    let state = eventually(WAIT, "job reads done", || async {
        let (s, b) = api.get(&format!("/v1/jobs/{id}")).await;
        (s == StatusCode::OK && b["state"] == "done").then_some(b)
    })
    .await;
    assert_eq!(state["queue"], "t_batch");
    assert!(state["finished_at"].is_string(), "{state}");

    // A delayed job reads scheduled with its due time.
    let (_, body) = api
        .post(
            "/v1/jobs",
            json!({"job": "platform.noop", "queue": "t_batch", "delay_ms": 3_600_000}),
        )
        .await;
    let (_, later) = api.get(&format!("/v1/jobs/{}", body["id"].as_str().expect("id"))).await;
    assert_eq!(later["state"], "scheduled", "{later}");
    assert!(later["run_at"].is_string(), "{later}");
    let (status, body) = api.get("/v1/jobs/01NOSUCHJOB").await;
    assert_eq!((status, error_code(&body).0), (StatusCode::NOT_FOUND, "job_not_found"));

    // /metrics parses as Prometheus exposition and counts the run.
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("queue") == Some("t_batch"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    assert!(value("culm_jobs_succeeded_total") >= 1.0, "{text}");
    assert!(value("culm_jobs_enqueued_total") >= 2.0, "{text}");
    assert!(
        scrape.samples.iter().any(|s| s.metric == "culm_job_wait_seconds"
            && matches!(&s.value, prometheus_parse::Value::Histogram(b) if b.iter().any(|b| b.less_than == 0.001))),
        "wait-time histogram with buckets from 1 ms"
    );
    assert!(
        scrape.samples.iter().any(|s| s.metric == "culm_admin_requests_total"
            && s.labels.get("route") == Some("/v1/jobs")
            && s.labels.get("status") == Some("201")),
        "admin requests are counted by route and status"
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enqueues_get_the_right_status_and_name_the_field() {
    let env = env().await;
    let api = Api::start(&env).await;

    let cases = [
        (
            json!({"job": "nope.nothing"}),
            StatusCode::NOT_FOUND,
            "unknown_job",
            Some("job"),
        ),
        (
            json!({"job": "platform.sleep", "payload": {"ms": "soon"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payload",
            Some("payload.ms"),
        ),
        (
            json!({"job": "test.card_load", "payload": {"account": "a", "amount_cents": 5}, "queue": "t_batch"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tier_not_allowed",
            Some("queue"),
        ),
        (
            json!({"job": "platform.noop", "queue": "nowhere"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_queue",
            Some("queue"),
        ),
        (
            json!({"job": "platform.noop", "run_at": "tomorrow"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("run_at"),
        ),
        (
            json!({"job": "platform.noop", "unique_key": "has space"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("unique_key"),
        ),
        (
            json!({"job": "platform.noop", "unique_for_ms": u64::MAX}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("unique_for_ms"),
        ),
        (
            json!({"job": "platform.noop", "unique_for_ms": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("unique_for_ms"),
        ),
        (
            json!({"job": "platform.noop", "expires_at": "soon"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("expires_at"),
        ),
        (
            json!({"job": "platform.noop", "expires_at": "2020-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("expires_at"),
        ),
        (
            json!({"job": "platform.noop", "expires_at": "2099-01-01T00:00:00Z", "expires_in_ms": 1000}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("expires_at"),
        ),
        (
            json!({"job": "platform.noop", "delay_ms": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("delay_ms"),
        ),
        (
            json!({"payload": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("job"),
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, b) = api.post("/v1/jobs", body.clone()).await;
        assert_eq!((s, error_code(&b)), (status, (code, field)), "{body} -> {b}");
        assert!(b["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        api.raw_post("/v1/jobs", "{\"job\": ".into()).await,
        StatusCode::BAD_REQUEST
    );
    let huge = json!({"job": "platform.noop", "payload": {"pad": "x".repeat(10_000)}}).to_string();
    assert_eq!(api.raw_post("/v1/jobs", huge).await, StatusCode::PAYLOAD_TOO_LARGE);

    // Idempotency: the second enqueue returns the first id with 200.
    let body = json!({"job": "platform.noop", "queue": "t_batch", "idempotency_key": "order-7"});
    let (s1, first) = api.post("/v1/jobs", body.clone()).await;
    let (s2, second) = api.post("/v1/jobs", body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["created"], false);

    // Batches are all or nothing, and errors name the job's index.
    let before = env.store.stats("t_batch").await.expect("stats").pending;
    let (s, b) = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"job": "platform.noop", "queue": "t_batch"}, {"job": "platform.sleep", "queue": "t_batch"}]}),
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_payload", Some("jobs[1].payload.ms"))
        )
    );
    assert_eq!(
        env.store.stats("t_batch").await.expect("stats").pending,
        before,
        "nothing stored"
    );
    let jobs: Vec<Value> = (0..4)
        .map(|i| json!({"job": "platform.sleep", "payload": {"ms": i}, "queue": "t_batch"}))
        .collect();
    let (s, b) = api.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let ids: Vec<&str> = b["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(env.store.stats("t_batch").await.expect("stats").pending, before + 4);
    let too_many: Vec<Value> = (0..6).map(|_| json!({"job": "platform.noop"})).collect();
    let (s, b) = api.post("/v1/jobs/batch", json!({ "jobs": too_many })).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNPROCESSABLE_ENTITY, ("batch_too_large", Some("jobs")))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_guard_every_v1_route() {
    let env = env().await;
    let api = Api::start(&env).await;
    let job = json!({"job": "platform.noop", "queue": "t_batch"});

    let (s, b) = api.call(Method::POST, "/v1/jobs", None, Some(job.clone())).await;
    assert_eq!((s, error_code(&b).0), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = api.call(Method::GET, "/v1/queues", Some("wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = api
        .call(Method::POST, "/v1/jobs", Some(READER), Some(job.clone()))
        .await;
    assert_eq!((s, error_code(&b).0), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = api.call(Method::GET, "/v1/queues", Some(ENQUEUER), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(Method::POST, "/v1/queues/t_batch/pause", Some(READER), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.call(Method::POST, "/v1/jobs", Some(ENQUEUER), Some(job)).await;
    assert_eq!(s, StatusCode::CREATED);
    // Admin includes read.
    let (s, b) = api.call(Method::GET, "/v1/queues", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = b["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(names.contains(&"t_batch") && names.contains(&"galileo"), "{names:?}");
    // Probes need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (s, _) = api.call(Method::GET, path, None, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_accepts_jobs_but_its_running_worker_fetches_nothing_until_resumed() {
    let env = env().await;
    let api = Api::start(&env).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_batch".into()]).expect("start");

    let (s, q) = api.post("/v1/queues/t_batch/pause", json!({})).await;
    assert_eq!((s, q["paused"].clone()), (StatusCode::OK, json!(true)));
    let (s, body) = api
        .post("/v1/jobs", json!({"job": "platform.noop", "queue": "t_batch"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = body["id"].as_str().expect("id").to_owned();
    // A negative property cannot be awaited: watch for 20 idle polls (50 ms each), during
    // which the worker was also woken by the push itself.
    for _ in 0..20 {
        let (_, job) = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["state"], "pending", "a paused queue must not be fetched from");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, q) = api.get("/v1/queues/t_batch").await;
    assert_eq!((q["pending"].clone(), q["paused"].clone()), (json!(1), json!(true)));
    assert!(q["oldest_pending_age_ms"].as_i64().is_some_and(|a| a >= 0), "{q}");

    let (s, q) = api.post("/v1/queues/t_batch/resume", json!({})).await;
    assert_eq!((s, q["paused"].clone()), (StatusCode::OK, json!(false)));
    next_event(&mut events, WAIT, |e| e.id == id && is("done", e)).await;
    let (s, b) = api.post("/v1/queues/nowhere/pause", json!({})).await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "queue_not_found"));
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_purged_over_http() {
    let env = env().await;
    let api = Api::start(&env).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_batch".into()]).expect("start");
    let (_, body) = api
        .post(
            "/v1/jobs",
            json!({"job": "platform.fail_permanently", "payload": {"reason": "card closed"}, "queue": "t_batch"}),
        )
        .await;
    let id = body["id"].as_str().expect("id").to_owned();
    next_event(&mut events, WAIT, |e| e.id == id && is("dead", e)).await;

    let (s, list) = api.get("/v1/dead?queue=t_batch").await;
    assert_eq!(s, StatusCode::OK);
    let dead = &list["jobs"][0];
    assert_eq!(
        (dead["id"].as_str(), dead["job"].as_str()),
        (Some(id.as_str()), Some("platform.fail_permanently"))
    );
    assert!(
        dead["last_error"].as_str().is_some_and(|e| e.contains("card closed")),
        "{dead}"
    );
    assert_eq!(dead["payload"]["reason"], "card closed");
    let (_, job) = api.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "dead");

    let (s, _) = api.post(&format!("/v1/dead/{id}/retry"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    // It runs again (and, failing permanently, dies again with a fresh attempt count).
    let again = next_event(&mut events, WAIT, |e| e.id == id && is("dead", e)).await;
    assert_eq!(again.attempt, 1);

    let (s, _) = api
        .call(Method::DELETE, &format!("/v1/dead/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api
        .call(Method::DELETE, &format!("/v1/dead/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "dead_job_not_found"));
    let (s, b) = api.get("/v1/dead?limit=lots").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_counted_retried_and_purged_in_bulk_by_filter_or_selection() {
    let env = env().await;
    let api = Api::start(&env).await;
    let api = &api;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_batch".into(), "t_crit".into()]).expect("start");
    let before = chrono::Utc::now().to_rfc3339();
    let mut ids = Vec::new();
    for (queue, reason) in [
        ("t_batch", "Card Closed by issuer"),
        ("t_batch", "card closed"),
        ("t_batch", "upstream said no"),
        ("t_crit", "card closed"),
    ] {
        let (_, body) = api
            .post(
                "/v1/jobs",
                json!({"job": "platform.fail_permanently", "payload": {"reason": reason}, "queue": queue}),
            )
            .await;
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    // Deaths arrive in any order: wait until every id has died.
    let mut alive: std::collections::HashSet<String> = ids.iter().cloned().collect();
    while !alive.is_empty() {
        let e = next_event(&mut events, WAIT, |e| alive.contains(&e.id) && is("dead", e)).await;
        alive.remove(&e.id);
    }
    // Stopped, so what is re-driven stays pending where the test can see it.
    running.shutdown().await;

    let count = |q: String| async move {
        let (s, b) = api.get(&format!("/v1/dead/count?{q}")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["count"].as_u64().expect("count")
    };
    assert_eq!(count("queue=t_batch&error=CARD%20closed".into()).await, 2);
    assert_eq!(count("job=platform.fail_permanently&error=card".into()).await, 3);
    assert_eq!(count(format!("until={}", before.replace('+', "%2B"))).await, 0);
    assert_eq!(count("since=1h".into()).await, 4);
    let (s, listed) = api.get("/v1/dead?error=card&limit=2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2));
    let (s, b) = api.get("/v1/dead/count?since=last%20tuesday").await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, ("invalid_query", Some("since")))
    );
    let (s, b) = api.get("/v1/dead/count?queue=nope").await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "queue_not_found"));

    // An empty body acts on nothing; a reader may not act.
    let (s, b) = api.post("/v1/dead/retry", json!({})).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNPROCESSABLE_ENTITY, ("invalid_request", Some("ids")))
    );
    let filter = json!({"all": true, "queue": "t_batch", "error": "card closed"});
    let (s, _) = api
        .call(Method::POST, "/v1/dead/retry", Some(READER), Some(filter.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, b) = api.post("/v1/dead/retry", filter.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["matched"].as_u64(), b["applied"].as_u64()),
        (Some(2), Some(2)),
        "{b}"
    );
    let state = |id: String| async move { api.get(&format!("/v1/jobs/{id}")).await.1["state"].clone() };
    assert_eq!(
        [
            state(ids[0].clone()).await,
            state(ids[1].clone()).await,
            state(ids[2].clone()).await,
            state(ids[3].clone()).await
        ],
        [json!("pending"), json!("pending"), json!("dead"), json!("dead")]
    );
    let (_, again) = api.post("/v1/dead/retry", filter).await;
    assert_eq!(again["matched"].as_u64(), Some(0), "{again}");

    // A selection: unknown ids are counted as matched but not applied.
    let (s, b) = api
        .post("/v1/dead/purge", json!({"ids": [ids[3], "01NOSUCHJOB"]}))
        .await;
    assert_eq!(
        (s, b["matched"].as_u64(), b["applied"].as_u64()),
        (StatusCode::OK, Some(2), Some(1)),
        "{b}"
    );
    let (s, b) = api
        .post("/v1/dead/purge", json!({"ids": [ids[2]], "queue": "t_batch"}))
        .await;
    assert_eq!(
        (s, error_code(&b).1),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("ids")),
        "{b}"
    );
    let (s, b) = api.post("/v1/dead/purge", json!({"all": true})).await;
    assert_eq!((s, b["applied"].as_u64()), (StatusCode::OK, Some(1)), "{b}");
    assert_eq!(count(String::new()).await, 0);
    assert_eq!(state(ids[3].clone()).await, json!(null));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_jobs_are_listed_by_state_page_by_page_with_a_cursor() {
    let env = env().await;
    let api = Api::start(&env).await;
    let api = &api;
    let mut pending = Vec::new();
    for i in 0..7 {
        let job = if i % 3 == 0 {
            "platform.fail_permanently"
        } else {
            "platform.noop"
        };
        let payload = if i % 3 == 0 { json!({"reason": "x"}) } else { json!({}) };
        let (_, b) = api
            .post("/v1/jobs", json!({"job": job, "payload": payload, "queue": "t_batch"}))
            .await;
        pending.push(b["id"].as_str().expect("id").to_owned());
    }
    // Three scheduled jobs due at the same millisecond: paging must not lose or repeat one.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, b) = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [
                {"job": "platform.noop", "queue": "t_batch", "run_at": at},
                {"job": "platform.noop", "queue": "t_batch", "run_at": at},
                {"job": "platform.noop", "queue": "t_batch", "run_at": at},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let scheduled: Vec<String> = b["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect();

    // Follows cursors to the end; returns every id and how many pages it took.
    let walk = |query: String| async move {
        let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
        loop {
            let url = match &cursor {
                Some(c) => format!("/v1/jobs?{query}&cursor={c}"),
                None => format!("/v1/jobs?{query}"),
            };
            let (s, b) = api.get(&url).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            pages += 1;
            for j in b["jobs"].as_array().expect("jobs") {
                ids.push(j["id"].as_str().expect("id").to_owned());
            }
            match b["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return (ids, pages),
            }
        }
    };
    assert_eq!(walk("queue=t_batch&limit=3".into()).await, (pending.clone(), 3));
    let (got, _) = walk("queue=t_batch&state=scheduled&limit=2".into()).await;
    let mut sorted = got.clone();
    sorted.sort();
    let mut want = scheduled.clone();
    want.sort();
    assert_eq!(sorted, want, "each scheduled job listed once: {got:?}");
    let noops: Vec<String> = pending
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(walk("queue=t_batch&job=platform.noop&limit=2".into()).await.0, noops);

    let (_, first) = api.get("/v1/jobs?queue=t_batch&limit=1").await;
    let j = &first["jobs"][0];
    assert_eq!(
        (j["state"].as_str(), j["job"].as_str(), j["queue"].as_str()),
        (Some("pending"), Some("platform.fail_permanently"), Some("t_batch")),
        "{j}"
    );
    // A cancelled job leaves the pending list and shows among the cancelled.
    let (s, _) = api.post(&format!("/v1/jobs/{}/cancel", pending[1]), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (left, _) = walk("queue=t_batch".into()).await;
    assert!(!left.contains(&pending[1]) && left.len() == 6, "{left:?}");
    assert_eq!(
        walk("queue=t_batch&state=cancelled".into()).await.0,
        vec![pending[1].clone()]
    );

    for (query, status, field) in [
        ("state=pending", StatusCode::BAD_REQUEST, Some("queue")),
        ("queue=t_batch&state=sleeping", StatusCode::BAD_REQUEST, Some("state")),
        ("queue=t_batch&cursor=zzz", StatusCode::BAD_REQUEST, Some("cursor")),
        ("queue=t_batch&limit=many", StatusCode::BAD_REQUEST, Some("query")),
        ("queue=nope", StatusCode::NOT_FOUND, None),
    ] {
        let (s, b) = api.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!((s, error_code(&b).1), (status, field), "{query}: {b}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replicas_are_listed_with_their_load_and_leave_when_they_stop() {
    let env = env().await;
    let api = Api::start(&env).await;
    let (s, b) = api.get("/v1/workers").await;
    assert_eq!(
        (s, b["workers"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{b}"
    );
    let running = env
        .runtime()
        .start(&["t_batch".into(), "t_crit".into()])
        .expect("start");
    let w = eventually(WAIT, "the replica's heartbeat", || async {
        let (_, b) = api.get("/v1/workers").await;
        b["workers"].as_array().and_then(|w| w.first().cloned())
    })
    .await;
    assert_eq!((w["busy"].as_u64(), w["capacity"].as_u64()), (Some(0), Some(6)), "{w}");
    assert_eq!(w["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    let mut queues: Vec<&str> = w["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["queue"].as_str())
        .collect();
    queues.sort();
    assert_eq!(queues, ["t_batch", "t_crit"]);
    for field in ["id", "host", "started_at", "last_heartbeat"] {
        assert!(w[field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {w}");
    }
    running.shutdown().await;
    let (_, b) = api.get("/v1/workers").await;
    assert_eq!(
        b["workers"].as_array().map(Vec::len),
        Some(0),
        "a clean shutdown leaves at once: {b}"
    );

    // A replica that stops heartbeating (SIGKILL) leaves when its entry expires.
    let mut gone: culm_worker::store::WorkerInfo = serde_json::from_value(w).expect("worker info");
    gone.id = "killed-1".into();
    env.store
        .heartbeat(&gone, Duration::from_millis(300))
        .await
        .expect("heartbeat");
    assert_eq!(env.store.workers().await.expect("workers").len(), 1);
    eventually(WAIT, "the expired replica to leave", || async {
        env.store.workers().await.ok()?.is_empty().then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_adds_its_batches_to_the_per_minute_history() {
    let env = env().await;
    let api = Api::start(&env).await;
    let api = &api;
    // Two replicas of the same queue.
    let (a, b) = (env.runtime(), env.runtime());
    let mut events = a.events();
    let mut events_b = b.events();
    let runs = [
        a.start(&["t_batch".into()]).expect("a"),
        b.start(&["t_batch".into()]).expect("b"),
    ];
    let mut reqs: Vec<EnqueueRequest> = (0..20)
        .map(|_| EnqueueRequest::raw("platform.noop", json!({})).queue("t_batch"))
        .collect();
    reqs.extend(
        (0..3).map(|_| EnqueueRequest::raw("platform.fail_permanently", json!({"reason": "no"})).queue("t_batch")),
    );
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    let mut left: std::collections::HashSet<String> = ids.into_iter().collect();
    while !left.is_empty() {
        let e = tokio::select! {
            e = next_event(&mut events, WAIT, |e| left.contains(&e.id) && (is("done", e) || is("dead", e))) => e,
            e = next_event(&mut events_b, WAIT, |e| left.contains(&e.id) && (is("done", e) || is("dead", e))) => e,
        };
        left.remove(&e.id);
    }
    for r in runs {
        r.shutdown().await;
    }
    let sum = |b: &Value, field: &str| -> u64 {
        b["queues"][0]["points"]
            .as_array()
            .expect("points")
            .iter()
            .filter_map(|p| p[field].as_u64())
            .sum()
    };
    let (s, h) = api.get("/v1/history?window=1h&queue=t_batch").await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_eq!(
        (sum(&h, "processed"), sum(&h, "failed"), sum(&h, "started")),
        (20, 3, 23),
        "{h}"
    );
    assert_eq!(h["queues"][0]["points"].as_array().map(Vec::len), Some(60));
    let (_, all) = api.get("/v1/history?window=24h").await;
    assert_eq!(
        all["total"].as_array().map(Vec::len),
        Some(144),
        "a point per ten minutes"
    );
    let total: u64 = all["total"]
        .as_array()
        .expect("total")
        .iter()
        .filter_map(|p| p["processed"].as_u64())
        .sum();
    assert_eq!(total, 20);
    let (s, b) = api.get("/v1/history?window=2h").await;
    assert_eq!((s, error_code(&b).1), (StatusCode::BAD_REQUEST, Some("window")));
    // The history expires: its hash (this hour's, or the last if the hour just turned)
    // has a TTL of at most 25 hours.
    let mut c = env.store.connection();
    let hour = culm_core::now_ms().div_euclid(3_600_000);
    let mut ttls = Vec::new();
    for h in [hour - 1, hour] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(env.store.keys("t_batch").history(h))
            .query_async(&mut c)
            .await
            .expect("TTL");
        ttls.push(ttl);
    }
    assert!(
        ttls.iter().any(|t| (1..=90_000).contains(t)) && !ttls.contains(&-1),
        "{ttls:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_redis_when_it_is_unreachable() {
    let env = env().await;
    let target = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = TcpProxy::start(&target).await;
    let mut config = env.config.clone();
    config.redis.url = format!("redis://{}", proxy.addr);
    let store = Store::connect(&config, Arc::new(culm_jobs::registry().expect("registry")))
        .await
        .expect("connect through proxy");
    let api = Api::start_on(&env, store).await;
    let (s, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    proxy.cut();
    let body = eventually(WAIT, "readyz reports redis down", || async {
        let (s, b) = api.call(Method::GET, "/readyz", None, None).await;
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(b)
    })
    .await;
    assert_eq!(error_code(&body), ("dependency_unavailable", Some("redis")));
    assert!(
        !body.to_string().contains(&proxy.addr.to_string()),
        "no connection strings in errors"
    );
    let (s, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK, "liveness does not depend on Redis");
    proxy.restore();
    eventually(WAIT, "readyz recovers", || async {
        let (s, _) = api.call(Method::GET, "/readyz", None, None).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_served() {
    let env = env().await;
    let api = Api::start(&env).await;
    let (s, doc) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Every documented operation is served: the router answers it (whatever the
            // status), never with its not-found or method-not-allowed fallback.
            let name = if path.contains("schedules") {
                "platform.heartbeat"
            } else {
                "t_batch"
            };
            let concrete = path.replace("{id}", "01NOSUCHJOB").replace("{name}", name);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (s, b) = api.call(m, &concrete, Some(ADMIN), Some(json!({}))).await;
            assert_ne!(
                error_code(&b).0,
                "route_not_found",
                "{method} {path} is documented but not served"
            );
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    documented.sort();
    let mut expected = vec![
        "POST /v1/jobs",
        "GET /v1/jobs",
        "POST /v1/jobs/batch",
        "GET /v1/jobs/{id}",
        "POST /v1/jobs/{id}/cancel",
        "GET /v1/job-types",
        "GET /v1/queues",
        "GET /v1/queues/{name}",
        "POST /v1/queues/{name}/pause",
        "POST /v1/queues/{name}/resume",
        "GET /v1/dead",
        "GET /v1/dead/count",
        "POST /v1/dead/retry",
        "POST /v1/dead/purge",
        "POST /v1/dead/{id}/retry",
        "DELETE /v1/dead/{id}",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/schedules",
        "GET /v1/workers",
        "GET /v1/history",
        "GET /v1/integrations",
        "GET /v1/schedules/{name}",
        "GET /v1/schedules/{name}/ticks",
        "POST /v1/schedules/{name}/trigger",
        "POST /v1/schedules/{name}/pause",
        "POST /v1/schedules/{name}/resume",
        "POST /v1/batches",
        "GET /v1/batches",
        "GET /v1/batches/{id}",
        "POST /v1/batches/{id}/jobs",
        "POST /v1/batches/{id}/close",
        "GET /v1/batches/{id}/jobs",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    // And an undocumented path is not served.
    let (s, b) = api.call(Method::GET, "/v1/nothing", Some(ADMIN), None).await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "route_not_found"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_triggered_paused_and_resumed_over_http() {
    let env = env().await;
    let api = Api::start(&env).await;
    let (s, list) = api.get("/v1/schedules").await;
    assert_eq!(s, StatusCode::OK);
    let first = &list["schedules"][0];
    let name = first["name"].as_str().expect("a shipped schedule").to_owned();
    assert!(
        first["next_fire_times"].as_array().is_some_and(|t| t.len() == 3),
        "{first}"
    );

    let (s, fired) = api.post(&format!("/v1/schedules/{name}/trigger"), json!({})).await;
    assert_eq!(
        (s, fired["outcome"].as_str()),
        (StatusCode::OK, Some("triggered")),
        "{fired}"
    );
    let job_id = fired["job_id"].as_str().expect("job id");
    let (s, job) = api.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(
        (s, job["job"].clone()),
        (StatusCode::OK, first["job"].clone()),
        "the triggered job is stored"
    );
    let (s, ticks) = api.get(&format!("/v1/schedules/{name}/ticks")).await;
    assert_eq!(s, StatusCode::OK, "{ticks}");
    let last = &ticks["ticks"][0];
    assert_eq!(
        (last["outcome"].as_str(), last["job_id"].as_str(), last["tick"].clone()),
        (Some("triggered"), Some(job_id), Value::Null),
        "{ticks}"
    );
    let (s, b) = api.get("/v1/schedules/no.such/ticks").await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "schedule_not_found"));

    let (s, paused) = api.post(&format!("/v1/schedules/{name}/pause"), json!({})).await;
    assert_eq!((s, paused["paused"].clone()), (StatusCode::OK, json!(true)));
    let (_, read) = api.get(&format!("/v1/schedules/{name}")).await;
    assert_eq!(read["paused"], true);
    let (s, resumed) = api.post(&format!("/v1/schedules/{name}/resume"), json!({})).await;
    assert_eq!((s, resumed["paused"].clone()), (StatusCode::OK, json!(false)));
    let (s, b) = api.post("/v1/schedules/no.such/trigger", json!({})).await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "schedule_not_found"));
    let (s, _) = api
        .call(
            Method::POST,
            &format!("/v1/schedules/{name}/trigger"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_with_the_same_idempotency_key_stores_nothing_new() {
    let env = env().await;
    let api = Api::start(&env).await;
    let body = json!({ "jobs": [
        { "job": "platform.noop", "queue": "t_crit" },
        { "job": "platform.noop", "queue": "t_batch" },
        { "job": "platform.noop", "queue": "t_crit", "idempotency_key": "own-key" },
    ]});
    let send = |key: &'static str| {
        api.http
            .post(format!("{}/v1/jobs/batch", api.base))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    // The first try fails (one queue's write is refused) and the caller retries.
    let mut c = env.store.connection();
    let ready = format!("{}:ready", env.store.base_key("t_batch"));
    redis::cmd("SET")
        .arg(&ready)
        .arg("x")
        .exec_async(&mut c)
        .await
        .expect("SET");
    let first = send("order-batch-7").await.expect("sent");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    redis::cmd("DEL").arg(&ready).exec_async(&mut c).await.expect("DEL");

    let second = send("order-batch-7").await.expect("sent");
    assert_eq!(second.status(), StatusCode::CREATED);
    let second: Value = second.json().await.expect("json");
    // A retry of a request that succeeded (its reply was lost) answers with the same jobs.
    let third = send("order-batch-7").await.expect("sent");
    assert_eq!(third.status(), StatusCode::OK, "nothing new was stored");
    let third: Value = third.json().await.expect("json");
    let ids = |v: &Value| {
        v["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&second), ids(&third));
    let stored = env.store.stats("t_crit").await.expect("stats").pending
        + env.store.stats("t_batch").await.expect("stats").pending;
    assert_eq!(stored, 3, "each job of the batch is stored once");

    // A malformed key is a 4xx naming the header.
    let bad = send("has space").await.expect("sent");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad: Value = bad.json().await.expect("json");
    assert_eq!(error_code(&bad).1, Some("Idempotency-Key"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cannot_take_the_idempotency_keys_culm_derives() {
    let env = env().await;
    let api = Api::start(&env).await;
    // The outbox relay enqueues row 42 under `outbox:42`; a caller who took that key first
    // would make the real row resolve to the caller's job, and the row's job never run.
    for key in [
        "outbox:42",
        "redrive:01H:1",
        "batch:x:0",
        "batchcb:01B:complete",
        "batchm:01B:m:0",
    ] {
        let (s, b) = api
            .post(
                "/v1/jobs",
                json!({"job": "platform.noop", "queue": "t_batch", "idempotency_key": key}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{key}: {b}");
        assert_eq!(error_code(&b).1, Some("idempotency_key"), "{b}");
    }
    assert_eq!(env.store.stats("t_batch").await.expect("stats").pending, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_batch_over_http_counts_its_jobs_and_runs_its_callback() {
    let env = env().await;
    let api = Api::start(&env).await;
    // Jobs for two queues are refused, naming the first job that differs.
    let (s, b) = api
        .post(
            "/v1/batches",
            json!({"jobs": [{"job": "platform.noop", "queue": "t_batch"}, {"job": "platform.noop", "queue": "t_crit"}]}),
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("invalid_request", Some("jobs[1].queue"))
        ),
        "{b}"
    );
    let (s, b) = api
        .post(
            "/v1/batches",
            json!({"jobs": [{"job": "platform.noop", "queue": "t_batch"}, {"job": "platform.echo", "queue": "t_batch", "payload": {"value": 7}}],
                   "on_complete": {"job": "platform.noop", "queue": "t_crit"}, "description": "two"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().expect("batch id").to_owned();
    assert_eq!(b["jobs"].as_array().map(Vec::len), Some(2));
    let (s, got) = api
        .call(Method::GET, &format!("/v1/batches/{id}"), Some(READER), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (got["state"].as_str(), got["total"].as_u64(), got["pending"].as_u64()),
        (Some("running"), Some(2), Some(2))
    );
    // Reading needs no more than the read scope; writing needs enqueue.
    let (s, _) = api
        .call(Method::POST, "/v1/batches", Some(READER), Some(json!({"jobs": []})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let running = env
        .runtime()
        .start(&["t_batch".into(), "t_crit".into()])
        .expect("start");
    let done = eventually(WAIT, "the batch completes and fires", || async {
        let (_, b) = api
            .call(Method::GET, &format!("/v1/batches/{id}"), Some(READER), None)
            .await;
        b["callbacks"]["on_complete"]["id"].as_str().is_some().then_some(b)
    })
    .await;
    assert_eq!(
        (done["state"].as_str(), done["succeeded"].as_u64()),
        (Some("complete"), Some(2))
    );
    let (s, page) = api
        .call(
            Method::GET,
            &format!("/v1/batches/{id}/jobs?limit=1"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let cursor = page["next_cursor"].as_str().expect("a second page").to_owned();
    let (_, rest) = api
        .call(
            Method::GET,
            &format!("/v1/batches/{id}/jobs?cursor={cursor}"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(
        (rest["jobs"][0]["state"].as_str(), &rest["jobs"][0]["result"]),
        (Some("done"), &json!(7))
    );
    // A complete batch takes no more jobs.
    let (s, b) = api
        .post(
            &format!("/v1/batches/{id}/jobs"),
            json!({"jobs": [{"job": "platform.noop", "queue": "t_batch"}]}),
        )
        .await;
    assert_eq!((s, error_code(&b).0), (StatusCode::CONFLICT, "batch_complete"), "{b}");
    let (s, list) = api.call(Method::GET, "/v1/batches", Some(READER), None).await;
    assert_eq!(
        (s, list["batches"][0]["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (s, b) = api
        .call(Method::GET, "/v1/batches/01NOSUCHBATCH", Some(READER), None)
        .await;
    assert_eq!((s, error_code(&b).0), (StatusCode::NOT_FOUND, "batch_not_found"));
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_batch_retried_with_its_idempotency_key_is_created_once() {
    let env = env().await;
    let api = Api::start(&env).await;
    // A callback that may start only within 300 ms of its enqueue, on a batch that runs
    // longer than that: its expiry counts from the batch's completion.
    let body = json!({"jobs": [{"job": "platform.noop", "queue": "t_batch"}, {"job": "platform.noop", "queue": "t_batch"}],
                      "on_complete": {"job": "platform.noop", "queue": "t_crit", "expires_in_ms": 300}});
    let send = || {
        api.http
            .post(format!("{}/v1/batches", api.base))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", "statements-2026-11")
            .json(&body)
            .send()
    };
    let first: Value = send().await.expect("sent").json().await.expect("json");
    // The reply was lost; the caller sends the same request again.
    let second: Value = send().await.expect("sent").json().await.expect("json");
    assert_eq!(
        first["id"], second["id"],
        "a retry made a second batch: {first} {second}"
    );
    let id = first["id"].as_str().expect("batch id").to_owned();
    let (_, got) = api
        .call(Method::GET, &format!("/v1/batches/{id}"), Some(READER), None)
        .await;
    assert_eq!(got["total"].as_u64(), Some(2), "members stored twice: {got}");
    let created_at = culm_core::now_ms();
    eventually(WAIT, "the callback's expiry to pass since creation", || async {
        (culm_core::now_ms() > created_at + 500).then_some(())
    })
    .await;
    let running = env
        .runtime()
        .start(&["t_batch".into(), "t_crit".into()])
        .expect("start");
    let done = eventually(WAIT, "the batch completes and fires", || async {
        let (_, b) = api
            .call(Method::GET, &format!("/v1/batches/{id}"), Some(READER), None)
            .await;
        let cb = &b["callbacks"]["on_complete"];
        (cb["state"].as_str() != Some("waiting")).then(|| cb.clone())
    })
    .await;
    assert_eq!(done["state"].as_str(), Some("enqueued"), "{done}");
    running.shutdown().await;
    env.cleanup().await;
}
