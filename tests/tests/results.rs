//! What callers read back: a done job's type, attempts, enqueue time and
//! result without PostgreSQL; `?wait=` long-polls woken by the job's completion;
//! cancelling a job that has not started, and a running one through its handler's
//! cancellation signal; the job-type catalog with payload schemas.
use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Tier};
use culm_tests::{TestEnv, culm_bin, eventually, is, next_event, queue};
use culm_worker::{
    admin::{AdminState, Token},
    config::Scope,
};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "t-results";

struct Api {
    base: String,
    http: Client,
    _stop: watch::Sender<bool>,
}

impl Api {
    async fn start(env: &TestEnv) -> Api {
        let tokens = vec![Token::new(
            "all",
            TOKEN,
            vec![Scope::Admin, Scope::Enqueue, Scope::Read],
        )];
        let (base, stop) = culm_tests::serve_admin(AdminState::new(&env.config, env.store.clone(), tokens)).await;
        Api {
            base,
            http: Client::new(),
            _stop: stop,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.bearer_auth(TOKEN).send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn enqueue(&self, body: Value) -> String {
        let (status, b) = self.post("/v1/jobs", body).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        b["id"].as_str().expect("id").to_owned()
    }
}

async fn env(adjust: impl FnOnce(&mut culm_worker::config::Config)) -> TestEnv {
    TestEnv::new(|c| {
        c.queues.insert("t_res".into(), queue("batch", 4, 5_000, 2));
        c.worker.idle_poll_interval = Duration::from_millis(50);
        adjust(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_shows_its_type_attempts_enqueue_time_and_result_without_postgres() {
    let env = env(|_| {}).await;
    let api = Api::start(&env).await;
    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let id = api
        .enqueue(json!({"job": "platform.echo", "queue": "t_res", "payload": {"value": {"n": 42}}}))
        .await;
    let done = eventually(WAIT, "job done", || async {
        let (_, b) = api.get(&format!("/v1/jobs/{id}")).await;
        (b["state"] == "done").then_some(b)
    })
    .await;
    assert_eq!(done["job"], "platform.echo", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert!(done["enqueued_at"].is_string(), "{done}");
    assert!(done["finished_at"].is_string(), "{done}");
    assert_eq!(done["result"], json!({"n": 42}), "{done}");
    // A job that returns nothing still shows what it was.
    let noop = api.enqueue(json!({"job": "platform.noop", "queue": "t_res"})).await;
    let (_, b) = api.get(&format!("/v1/jobs/{noop}?wait=10s")).await;
    assert_eq!(
        (b["state"].as_str(), b["job"].as_str()),
        (Some("done"), Some("platform.noop")),
        "{b}"
    );
    assert_eq!(b["result"], Value::Null);
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_is_dropped_and_the_job_is_still_done() {
    let env = env(|c| c.worker.result_max_bytes = 100).await;
    let api = Api::start(&env).await;
    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let big = "x".repeat(200);
    let id = api
        .enqueue(json!({"job": "platform.echo", "queue": "t_res", "payload": {"value": big}}))
        .await;
    let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(b["result"], Value::Null, "{b}");
    running.shutdown().await;
    env.cleanup().await;
}

/// A payload and a result over `worker.compress_above` are stored compressed (much
/// smaller in Redis) and read back unchanged: the handler gets the payload, status
/// readers the result, the dead-letter list the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_and_results_are_stored_compressed_and_read_back_unchanged() {
    let env = env(|c| c.worker.compress_above = 1024).await;
    let api = Api::start(&env).await;
    // A statement-like value: many similar lines.
    let lines: Vec<Value> = (0..400)
        .map(|i| json!({"date": "2026-11-20", "merchant": "AMAZON MKTPLACE", "amount_cents": i, "currency": "USD"}))
        .collect();
    let value = json!({"account": "acct-42", "lines": lines});
    let plain_len = value.to_string().len();
    let id = api
        .enqueue(json!({"job": "platform.echo", "queue": "t_res", "payload": {"value": value}}))
        .await;
    let mut conn = env.store.connection();
    let stored: String = redis::cmd("HGET")
        .arg(env.store.keys("t_res").jobs())
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("stored body");
    assert!(
        stored.contains("payload_z") && !stored.contains("AMAZON"),
        "{stored:.200}"
    );
    assert!(
        stored.len() * 5 < plain_len,
        "{} bytes stored for {plain_len}",
        stored.len()
    );

    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(
        b["result"], value,
        "the handler saw the payload, and the result reads back"
    );
    let finished: String = redis::cmd("HGET")
        .arg(env.store.keys("t_res").finished())
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("finished entry");
    assert!(
        finished.contains("result_z") && !finished.contains("AMAZON"),
        "{finished:.200}"
    );

    // A compressed job that dies keeps its payload readable in the dead letters.
    let fail = env
        .store
        .enqueue(vec![
            culm_core::EnqueueRequest::raw("platform.fail_permanently", json!({"reason": "x".repeat(3000)}))
                .queue("t_res"),
        ])
        .await
        .expect("enqueue")
        .remove(0);
    eventually(WAIT, "dead-lettered", || async {
        let dead = env.store.dead_list("t_res", 10).await.expect("dead list");
        dead.into_iter().find(|d| d.id == fail.id)
    })
    .await;
    let dead = env.store.dead_list("t_res", 10).await.expect("dead list");
    let payload = serde_json::to_value(&dead[0]).expect("json");
    assert_eq!(
        payload["payload"]["reason"].as_str().map(str::len),
        Some(3000),
        "{payload:.300}"
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_completion_and_otherwise_answers_when_the_wait_ends() {
    let env = env(|_| {}).await;
    let api = Api::start(&env).await;
    // No worker yet: the wait runs out and answers with the live state.
    let id = api
        .enqueue(json!({"job": "platform.sleep", "queue": "t_res", "payload": {"ms": 300}}))
        .await;
    let t = Instant::now();
    let (status, b) = api.get(&format!("/v1/jobs/{id}?wait=700ms")).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "pending", "{b}");
    assert!(
        t.elapsed() >= Duration::from_millis(650),
        "answered before the wait ended"
    );
    // With a worker, the same wait answers once the job is done, well before 20 s. The
    // admin API reads Redis only when woken, so this measures the completion wake-up.
    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let t = Instant::now();
    let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(b["state"], "done", "{b}");
    assert!(t.elapsed() < Duration::from_secs(5), "long-poll took {:?}", t.elapsed());
    // A failing job ends dead, which is final too.
    let dead = api
        .enqueue(json!({"job": "platform.fail_permanently", "queue": "t_res", "payload": {"reason": "no"}}))
        .await;
    let (_, b) = api.get(&format!("/v1/jobs/{dead}?wait=20s")).await;
    assert_eq!(b["state"], "dead", "{b}");
    // Bad waits name the field.
    let (status, b) = api.get(&format!("/v1/jobs/{id}?wait=2h")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"]["field"], "wait", "{b}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_or_scheduled_job_can_be_cancelled_and_never_runs() {
    let env = env(|_| {}).await;
    let api = Api::start(&env).await;
    let set = env.key("ran");
    let pending = api
        .enqueue(json!({"job": "platform.record", "queue": "t_res", "payload": {"set": set}}))
        .await;
    let scheduled = api
        .enqueue(json!({"job": "platform.record", "queue": "t_res", "payload": {"set": set}, "delay_ms": 300}))
        .await;
    for id in [&pending, &scheduled] {
        let (status, b) = api.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        assert_eq!(b["state"], "cancelled", "{b}");
        // Twice is fine.
        let (status, _) = api.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=1s")).await;
        assert_eq!(b["state"], "cancelled", "{b}");
        assert_eq!(b["job"], "platform.record", "{b}");
    }
    let witness = api
        .enqueue(json!({"job": "platform.record", "queue": "t_res", "payload": {"set": set, "tag": "witness"}, "delay_ms": 400}))
        .await;
    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let (_, b) = api.get(&format!("/v1/jobs/{witness}?wait=20s")).await;
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(
        env.members(&set).await,
        vec!["witness".to_owned()],
        "a cancelled job ran"
    );
    // Finished jobs cannot be cancelled; unknown ids are 404.
    let (status, b) = api.post(&format!("/v1/jobs/{witness}/cancel"), json!({})).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_cancellable")),
        "{b}"
    );
    let (status, _) = api.post("/v1/jobs/01NOSUCHJOB/cancel", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_is_forgotten_after_the_queues_result_ttl() {
    let env = env(|c| {
        if let Some(q) = c.queues.get_mut("t_res") {
            q.result_ttl = Some(Duration::from_millis(200));
        }
    })
    .await;
    let api = Api::start(&env).await;
    let running = env.runtime().start(&["t_res".into()]).expect("start");
    let id = api
        .enqueue(json!({"job": "platform.echo", "queue": "t_res", "payload": {"value": 1}}))
        .await;
    let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(b["result"], 1, "{b}");
    running.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.store
        .reap("t_res", Duration::from_secs(60), Duration::from_secs(5))
        .await
        .expect("reap");
    let (status, b) = api.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{b}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_types_list_every_type_with_its_policy_and_payload_schema_also_in_openapi() {
    let env = env(|_| {}).await;
    let api = Api::start(&env).await;
    let (status, b) = api.get("/v1/job-types").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let types = b["job_types"].as_array().expect("list");
    assert_eq!(types.len(), env.store.registry().len());
    let sleep = types
        .iter()
        .find(|t| t["name"] == "platform.sleep")
        .expect("platform.sleep");
    assert_eq!(sleep["queue"], "platform");
    assert!(
        sleep["retry"]["max_attempts"].as_u64().is_some_and(|n| n > 0),
        "{sleep}"
    );
    assert!(sleep["timeout_ms"].as_u64().is_some_and(|n| n > 0), "{sleep}");
    assert_eq!(
        sleep["payload_schema"]["properties"]["ms"]["type"], "integer",
        "{sleep}"
    );
    assert!(
        types.iter().all(|t| t["payload_schema"].is_object()),
        "a job type without a schema"
    );
    // A job type's own policy, and where it comes from.
    let upload = types
        .iter()
        .find(|t| t["name"] == "ftp.upload_file")
        .expect("ftp.upload_file");
    assert_eq!(upload["retry"]["backoff"], "fixed", "{upload}");
    assert_eq!(upload["retry"]["delays_ms"], serde_json::json!([30_000]), "{upload}");
    assert_eq!(upload["retry"]["source"], "job_type", "{upload}");
    assert_eq!(sleep["retry"]["source"], "queue_defaults", "{sleep}");
    // A batch job type shows how many jobs one handler call takes; others show none.
    let contacts = types
        .iter()
        .find(|t| t["name"] == "salesforce.sync_contact")
        .expect("salesforce.sync_contact");
    assert_eq!(contacts["max_batch"], 50, "{contacts}");
    assert!(sleep["max_batch"].is_null(), "{sleep}");
    let doc: Value = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let schemas = &doc["components"]["schemas"];
    // Every schema the document refers to is in it.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
        assert!(schemas[name].is_object(), "{r} is referred to but not defined");
    }
    assert!(
        schemas["JobType"]["properties"]["max_batch"].is_object(),
        "the batch size is documented: {}",
        schemas["JobType"]
    );
    assert!(
        schemas["payload.platform.sleep"]["properties"]["ms"].is_object(),
        "{schemas}"
    );
    for path in ["/v1/job-types", "/v1/jobs/{id}/cancel"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    env.cleanup().await;
}

#[test]
fn culm_jobs_json_lists_what_the_api_serves() {
    let out = std::process::Command::new(culm_bin())
        .args(["jobs", "--json"])
        .env_remove("CULM_CONFIG_DIR")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("culm jobs --json runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = doc["job_types"]
        .as_array()
        .expect("job_types")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let registry = culm_jobs::registry().expect("registry");
    let expected: Vec<&str> = registry.iter().map(|s| s.name).collect();
    assert_eq!(names, expected);
    let noop = &doc["job_types"][names.iter().position(|n| *n == "platform.noop").expect("noop")];
    assert_eq!(noop["payload_schema"]["type"], "object", "{noop}");
    assert!(noop["result_ttl_ms"].as_u64().is_some_and(|ms| ms > 0), "{noop}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_jobs_show_prints_a_done_jobs_result() {
    let env = env(|_| {}).await;
    let api = Api::start(&env).await;
    let running = env.runtime().start(&["platform".into()]).expect("start");
    let id = api
        .enqueue(json!({"job": "platform.echo", "payload": {"value": ["a", 1]}}))
        .await;
    let (_, b) = api.get(&format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(b["state"], "done", "{b}");
    running.shutdown().await;
    let out = tokio::process::Command::new(culm_bin())
        .args(["jobs", "show", &id])
        .env_remove("CULM_CONFIG_DIR")
        .env("CULM_REDIS_URL", &env.config.redis.url)
        .env("CULM__REDIS__KEY_PREFIX", &env.config.redis.key_prefix)
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("culm jobs show runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (&shown["job"], &shown["attempts"], &shown["result"]),
        (&json!("platform.echo"), &json!(1), &json!(["a", 1])),
        "{shown}"
    );
    env.cleanup().await;
}

/// Waits for an operator's cancellation, then returns an error, or success with a
/// follow-up: neither counts, since it stopped because of the cancellation.
#[derive(Serialize, Deserialize)]
struct Stoppable {
    ok: bool,
}

impl Job for Stoppable {
    const NAME: &'static str = "test.stoppable";
    const QUEUE: &'static str = "t_res";
    const TIERS: &'static [Tier] = &Tier::ALL;
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        tokio::select! {
            _ = ctx.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(60)) => return Ok(Outcome::done()),
        }
        if self.ok {
            Ok(Outcome::done().then(EnqueueRequest::raw("platform.noop", json!({})).queue("t_res")))
        } else {
            Err(JobError::retryable("stopped on request"))
        }
    }
}

/// Never looks at the cancellation signal: runs to the end.
#[derive(Serialize, Deserialize)]
struct Stubborn {
    ms: u64,
}

impl Job for Stubborn {
    const NAME: &'static str = "test.stubborn";
    const QUEUE: &'static str = "t_res";
    const TIERS: &'static [Tier] = &Tier::ALL;
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Outcome::done())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_told_to_stop_and_ends_cancelled_only_if_its_handler_does() {
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<Stoppable>().expect("register");
    registry.register::<Stubborn>().expect("register");
    let env = TestEnv::with_registry(registry, |c| {
        c.queues.insert("t_res".into(), queue("batch", 4, 30_000, 3));
        c.worker.idle_poll_interval = Duration::from_millis(50);
    })
    .await;
    let api = Api::start(&env).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_res".into()]).expect("start");
    let failing = api
        .enqueue(json!({"job": "test.stoppable", "queue": "t_res", "payload": {"ok": false}}))
        .await;
    let succeeding = api
        .enqueue(json!({"job": "test.stoppable", "queue": "t_res", "payload": {"ok": true}}))
        .await;
    let stubborn = api
        .enqueue(json!({"job": "test.stubborn", "queue": "t_res", "payload": {"ms": 2500}}))
        .await;
    for id in [&failing, &succeeding, &stubborn] {
        eventually(WAIT, "the job running", || async {
            let (_, b) = api.get(&format!("/v1/jobs/{id}")).await;
            (b["state"] == "running").then_some(())
        })
        .await;
        let (status, b) = api.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(
            (status, b["state"].as_str()),
            (StatusCode::ACCEPTED, Some("running")),
            "{b}"
        );
    }

    // Events arrive in any order: collect the final one of each job.
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 3 {
        let e = next_event(&mut events, WAIT, |e| {
            [&failing, &succeeding, &stubborn].contains(&&e.id) && !is("retry", e)
        })
        .await;
        ended.insert(e.id.clone(), e);
    }
    for id in [&failing, &succeeding] {
        assert!(
            is("cancelled", &ended[id]),
            "the handler saw the signal and stopped: {:?}",
            ended[id]
        );
        let (_, b) = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(
            (b["state"].as_str(), b["attempts"].as_u64()),
            (Some("cancelled"), Some(1)),
            "{b}"
        );
    }
    let (_, noops) = api.get("/v1/jobs?queue=t_res&state=done").await;
    let done: Vec<&str> = noops["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job"].as_str())
        .collect();
    assert!(!done.contains(&"platform.noop"), "no follow-up was enqueued: {noops}");
    let (_, pending) = api.get("/v1/jobs?queue=t_res").await;
    assert_eq!(
        pending["jobs"].as_array().map(Vec::len),
        Some(0),
        "no follow-up was enqueued: {pending}"
    );

    let e = &ended[&stubborn];
    assert!(
        is("done", e),
        "a handler that ignores the signal finishes normally: {e:?}"
    );
    let (_, b) = api.get(&format!("/v1/jobs/{stubborn}")).await;
    assert_eq!(b["state"], "done", "{b}");
    running.shutdown().await;
    env.cleanup().await;
}
