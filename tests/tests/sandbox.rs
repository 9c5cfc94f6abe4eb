//! The integration sandbox: Bamboo's real limits with 429 + Retry-After, the
//! request log with millisecond arrival times, failure injection, and clearing the log.
use culm_tests::{TestEnv, culm_bin, eventually, workspace_root};
use culm_worker::sandbox::{Inflight, Options, RecordedRequest, Sandbox, SandboxError};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

async fn start(options: Options) -> (Sandbox, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sandbox = Sandbox::start(listener, options).expect("sandbox starts");
    let base = format!("http://{}", sandbox.addr());
    (sandbox, base)
}

async fn log(client: &Client, base: &str) -> Vec<RecordedRequest> {
    client
        .get(format!("{base}/_sandbox/requests"))
        .send()
        .await
        .expect("log request")
        .json()
        .await
        .expect("log is JSON")
}

fn order(n: usize) -> Value {
    json!({"order_id": format!("o-{n}"), "sku": "AMZ-US-25", "quantity": 1})
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers().get("retry-after")?.to_str().ok()?.parse().ok()
}

fn at_ms(r: &RecordedRequest) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&r.at)
        .expect("`at` is RFC 3339")
        .timestamp_millis()
}

#[tokio::test]
async fn bamboo_place_order_is_held_to_two_per_second_with_retry_after() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    let url = format!("{base}/bamboo/orders");

    let burst = futures::future::join_all((0..6).map(|n| client.post(&url).json(&order(n)).send())).await;
    let mut accepted = 0;
    for r in burst {
        let r = r.expect("answered");
        match r.status() {
            StatusCode::ACCEPTED => {
                accepted += 1;
                let body: Value = r.json().await.expect("JSON");
                assert_eq!(body["status"], "pending");
                assert!(body["order_id"].as_str().is_some_and(|o| o.starts_with("o-")));
            }
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(retry_after(&r), Some(1), "429 carries Retry-After: 1"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 2, "exactly two of a burst of six are accepted");

    // Hammer for a little over two seconds: accepted requests never exceed 2 in any
    // 1-second window (closed), and the limit is not stricter than it has to be.
    let started = Instant::now();
    let mut n = 100;
    while started.elapsed() < Duration::from_millis(2_300) {
        n += 1;
        let r = client.post(&url).json(&order(n)).send().await.expect("answered");
        assert!(matches!(
            r.status(),
            StatusCode::ACCEPTED | StatusCode::TOO_MANY_REQUESTS
        ));
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&r).is_some_and(|s| s >= 1), "429 without Retry-After");
        }
    }
    let times: Vec<i64> = log(&client, &base)
        .await
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/bamboo/orders" && r.status == 202)
        .map(at_ms)
        .collect();
    for w in times.windows(3) {
        assert!(w[2] - w[0] > 1000, "three accepted orders within one second: {w:?}");
    }
    assert!(
        times.len() >= 6,
        "at least 2/s accepted over ~2.3 s, got {}",
        times.len()
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn bamboo_orders_fulfil_on_the_second_poll_and_polls_and_catalog_are_limited() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    let placed = client
        .post(format!("{base}/bamboo/orders"))
        .json(&json!({"order_id": "gc-1", "sku": "AMZ-US-25", "quantity": 2}))
        .send()
        .await
        .expect("answered");
    assert_eq!(placed.status(), StatusCode::ACCEPTED);

    let poll = || client.get(format!("{base}/bamboo/orders/gc-1")).send();
    let first: Value = poll().await.expect("answered").json().await.expect("JSON");
    assert_eq!(
        (first["status"].as_str(), first["cards"].as_array().map(Vec::len)),
        (Some("pending"), Some(0))
    );
    let second: Value = poll().await.expect("answered").json().await.expect("JSON");
    assert_eq!(second["status"], "fulfilled");
    assert_eq!(second["cards"].as_array().map(Vec::len), Some(2), "one card per unit");

    // 120 polls a minute: 118 more pass, the 121st is refused for up to a minute.
    for _ in 0..118 {
        assert_eq!(poll().await.expect("answered").status(), StatusCode::OK);
    }
    let refused = poll().await.expect("answered");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&refused).is_some_and(|s| (1..=60).contains(&s)));

    // 2 catalog reads an hour.
    for _ in 0..2 {
        let r = client
            .get(format!("{base}/bamboo/catalog"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("JSON");
        assert!(body["products"].as_array().is_some_and(|p| !p.is_empty()));
    }
    let refused = client
        .get(format!("{base}/bamboo/catalog"))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        retry_after(&refused).is_some_and(|s| s > 3_000 && s <= 3_600),
        "about an hour"
    );

    // A malformed order is refused naming the field, and not counted as placed.
    let bad = client
        .post(format!("{base}/bamboo/orders"))
        .json(&json!({"order_id": "gc-2", "quantity": 1}))
        .send()
        .await
        .expect("answered");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.expect("JSON");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("sku")), "{body}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn requests_are_recorded_with_millisecond_times_idempotency_keys_and_no_secrets() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    let transfer = || {
        client
            .post(format!("{base}/galileo/transfers"))
            .header("Idempotency-Key", "job-01")
            .header("Authorization", "Bearer s3cret")
            .json(&json!({"account": "A1", "amount": "10.00"}))
            .send()
    };
    let first: Value = transfer().await.expect("answered").json().await.expect("JSON");
    assert_eq!(
        (first["ok"].as_bool(), first["integration"].as_str()),
        (Some(true), Some("galileo"))
    );
    let txn = first["transaction_id"]
        .as_str()
        .expect("galileo answers a transaction id")
        .to_owned();
    // The same idempotency key is answered with the first transaction, not a new one.
    let again = transfer().await.expect("answered");
    assert_eq!(
        again.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["transaction_id"].as_str(), Some(txn.as_str()));

    let generic: Value = client
        .put(format!("{base}/salesforce/sobjects/Contact/42"))
        .json(&json!({"Email": "a@example.com"}))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(generic["method"], "PUT");
    assert_eq!(generic["path"], "/salesforce/sobjects/Contact/42");
    assert!(generic["id"].as_str().is_some_and(|i| !i.is_empty()));
    let unknown = client.get(format!("{base}/nobody/x")).send().await.expect("answered");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let entries = log(&client, &base).await;
    assert_eq!(entries.len(), 4, "every request is recorded: {entries:?}");
    let e = &entries[0];
    assert_eq!(
        (e.integration.as_str(), e.method.as_str(), e.path.as_str(), e.status),
        ("galileo", "POST", "/galileo/transfers", 200)
    );
    assert_eq!(e.idempotency_key.as_deref(), Some("job-01"));
    assert_eq!(e.headers.get("authorization").map(String::as_str), Some("***"));
    assert_eq!(e.body.as_ref().and_then(|b| b["amount"].as_str()), Some("10.00"));
    for e in &entries {
        // e.g. 2026-11-23T13:00:41.123Z
        let frac = e.at.rsplit_once('.').map(|(_, f)| f).unwrap_or("");
        assert!(
            frac.len() == 4 && frac.ends_with('Z') && frac[..3].bytes().all(|b| b.is_ascii_digit()),
            "{}",
            e.at
        );
        at_ms(e);
    }
    assert!(
        entries.windows(2).all(|w| at_ms(&w[0]) <= at_ms(&w[1])),
        "in arrival order"
    );
    assert_eq!((entries[3].integration.as_str(), entries[3].status), ("nobody", 404));

    let only: Vec<RecordedRequest> = client
        .get(format!("{base}/_sandbox/requests?integration=salesforce"))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(only.len(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn failure_injection_headers_and_the_default_fail_rate() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    let url = format!("{base}/ding/topups");
    for (status, retry) in [(503, Some(1)), (429, Some(1)), (500, None), (400, None)] {
        let r = client
            .post(&url)
            .header("X-Sandbox-Fail", status.to_string())
            .json(&json!({}))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(retry_after(&r), retry, "Retry-After for {status}");
    }
    let bad = client
        .get(&url)
        .header("X-Sandbox-Fail", "boom")
        .send()
        .await
        .expect("answered");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let t = Instant::now();
    let slow = client
        .get(&url)
        .header("X-Sandbox-Delay-Ms", "300")
        .send()
        .await
        .expect("answered");
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300), "the delay was added");

    let statuses: Vec<u16> = log(&client, &base).await.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [503, 429, 500, 400, 400, 200],
        "injected answers are recorded"
    );
    sandbox.shutdown().await;

    let (failing, base) = start(Options {
        fail_rate: 1.0,
        ..Options::instant()
    })
    .await;
    for _ in 0..5 {
        let r = client
            .get(format!("{base}/kard/rewards"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r), Some(1));
    }
    failing.shutdown().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = Sandbox::start(
        listener,
        Options {
            fail_rate: 1.5,
            ..Options::instant()
        },
    );
    assert!(matches!(refused, Err(SandboxError::FailRate(_))));
}

#[tokio::test]
async fn the_request_log_clears() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    for name in ["mailer", "sftp", "avalara"] {
        let r = client
            .post(format!("{base}/{name}/x"))
            .json(&json!({"amount": 100}))
            .send()
            .await;
        assert_eq!(r.expect("answered").status(), StatusCode::OK);
    }
    assert_eq!(log(&client, &base).await.len(), 3);
    let cleared = client
        .delete(format!("{base}/_sandbox/requests"))
        .send()
        .await
        .expect("answered");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(log(&client, &base).await.is_empty());
    // Recording goes on after a clear.
    client
        .get(format!("{base}/veriff/sessions/1"))
        .send()
        .await
        .expect("answered");
    assert_eq!(log(&client, &base).await.len(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn every_contract_integration_answers_with_the_generic_body() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    for name in culm_worker::sandbox::INTEGRATIONS {
        let r = client
            .post(format!("{base}/{name}/ping"))
            .json(&json!({}))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(
            (body["ok"].as_bool(), body["integration"].as_str()),
            (Some(true), Some(name))
        );
    }
    sandbox.shutdown().await;
}

/// Salesforce's collections upsert answers one result per record, in order; a record
/// with a bad address fails alone; a body without records is refused.
#[tokio::test]
async fn salesforce_upserts_many_contacts_with_one_result_each() {
    let (sandbox, base) = start(Options::instant()).await;
    let client = Client::new();
    let url = format!("{base}/salesforce{}", culm_jobs::crm::CONTACT_UPSERT_PATH);
    let r = client
        .patch(&url)
        .json(&json!({"allOrNone": false, "records": [
            {"user_id": "u1", "email": "a@example.com"},
            {"user_id": "u2", "email": "nope"},
            {"user_id": "u3", "email": "c@example.com"},
        ]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("JSON");
    let success: Vec<Option<bool>> = body
        .as_array()
        .expect("an array of results")
        .iter()
        .map(|r| r["success"].as_bool())
        .collect();
    assert_eq!(success, [Some(true), Some(false), Some(true)], "{body}");
    assert_eq!(body[1]["errors"][0]["statusCode"], "INVALID_EMAIL_ADDRESS");
    let r = client.patch(&url).json(&json!({})).send().await.expect("answered");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    sandbox.shutdown().await;
}

/// A loopback port that was free a moment ago (for child processes, which take an address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits for the child's sandbox to answer, posts one order, then stops the child with
/// SIGTERM and expects exit 0.
async fn exercise_child(mut child: Child, base: &str) {
    let client = Client::new();
    let up = eventually(Duration::from_secs(30), "the sandbox to answer", || async {
        client.get(format!("{base}/_sandbox/requests")).send().await.ok()
    })
    .await;
    assert_eq!(up.status(), StatusCode::OK);
    let placed = client
        .post(format!("{base}/bamboo/orders"))
        .json(&order(1))
        .send()
        .await
        .expect("answered");
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    assert_eq!(log(&client, base).await.len(), 1);
    let exit = culm_tests::sigterm_and_wait(&mut child);
    assert!(exit.success(), "exits 0 after SIGTERM: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_sandbox_serves_on_the_listen_flag() {
    let port = free_port();
    let child = Command::new(culm_bin())
        .current_dir(workspace_root())
        .args(["sandbox", "--listen", &format!("127.0.0.1:{port}"), "--latency-ms", "0"])
        .env("CULM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("culm starts");
    exercise_child(child, &format!("http://127.0.0.1:{port}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_run_with_sandbox_starts_it_on_the_configured_address() {
    let env = TestEnv::new(|_| {}).await;
    let port = free_port();
    let child = Command::new(culm_bin())
        .current_dir(workspace_root())
        .args(["run", "--sandbox", "--no-scheduler", "--queues", "platform"])
        .env("CULM_REDIS_URL", culm_tests::redis_url())
        .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
        .env("CULM__ADMIN__ENABLED", "false")
        .env("CULM__SANDBOX__LISTEN", format!("127.0.0.1:{port}"))
        .env("CULM__SANDBOX__LATENCY_MS", "0")
        .env("CULM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("culm starts");
    // SIGTERM is handled once the pools run: wait until they have run a job.
    let job = env
        .enqueue(culm_core::EnqueueRequest::raw("platform.noop", json!({})).queue("platform"))
        .await;
    eventually(Duration::from_secs(30), "the pools to run a job", || async {
        let s = env.store.status(&job.id).await.ok()??;
        (s.state == culm_worker::store::JobState::Done).then_some(())
    })
    .await;
    exercise_child(child, &format!("http://127.0.0.1:{port}")).await;
    env.cleanup().await;
}

// --- Rate discipline of several `culm run` replicas, measured at the sandbox -----------

/// A `culm run` process on `bamboo_orders`, pointed at `base`, with `extra` variables;
/// SIGKILLed when dropped.
fn bamboo_replica(env: &TestEnv, base: &str, extra: &[(&str, &str)]) -> culm_tests::KillOnDrop {
    let mut c = Command::new(culm_bin());
    c.current_dir(workspace_root())
        .args(["run", "--no-scheduler", "--queues", "bamboo_orders"])
        .env("CULM_REDIS_URL", culm_tests::redis_url())
        .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
        .env("CULM__ADMIN__ENABLED", "false")
        .env("CULM__INTEGRATIONS__BAMBOO__BASE_URL", format!("{base}/bamboo"))
        .env("CULM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        c.env(k, v);
    }
    culm_tests::KillOnDrop(Some(c.spawn().expect("culm starts")))
}

/// Three of [`bamboo_replica`].
fn bamboo_replicas(env: &TestEnv, base: &str, extra: &[(&str, &str)]) -> Vec<culm_tests::KillOnDrop> {
    (0..3).map(|_| bamboo_replica(env, base, extra)).collect()
}

fn place_orders(n: usize) -> Vec<culm_core::EnqueueRequest> {
    (0..n)
        .map(|i| {
            culm_core::EnqueueRequest::raw(
                "bamboo.place_order",
                json!({"order_id": format!("rate-{i}"), "sku": "AMAZON_US_25", "quantity": 1}),
            )
        })
        .collect()
}

/// What the sandbox saw of `POST /bamboo/orders`: arrival times (ms) of accepted orders,
/// distinct order ids accepted, and how many were refused with 429.
struct OrderLog {
    accepted: Vec<i64>,
    distinct: usize,
    refused: usize,
}

async fn order_log(client: &Client, base: &str) -> OrderLog {
    let entries = log(client, base).await;
    let orders = entries
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/bamboo/orders");
    let accepted: Vec<&RecordedRequest> = orders.clone().filter(|r| r.status == 202).collect();
    let distinct: std::collections::BTreeSet<&str> = accepted
        .iter()
        .filter_map(|r| r.body.as_ref()?.get("order_id")?.as_str())
        .collect();
    OrderLog {
        accepted: accepted.iter().map(|r| at_ms(r)).collect(),
        distinct: distinct.len(),
        refused: orders.filter(|r| r.status == 429).count(),
    }
}

/// Waits until the sandbox has accepted `orders` distinct orders.
async fn all_accepted(client: &Client, base: &str, orders: usize) {
    eventually(
        Duration::from_secs(180),
        "every order accepted by the sandbox",
        || async { (order_log(client, base).await.distinct >= orders).then_some(()) },
    )
    .await;
}

/// Runs `orders` Bamboo orders through three replicas against a sandbox with `latency`
/// and returns the sandbox's view once every order was accepted.
async fn three_replicas_place(latency: Duration, extra: &[(&str, &str)], orders: usize) -> OrderLog {
    let env = TestEnv::new(|_| {}).await;
    let (sandbox, base) = start(Options {
        latency,
        fail_rate: 0.0,
    })
    .await;
    env.store.enqueue(place_orders(orders)).await.expect("enqueue");
    let replicas = bamboo_replicas(&env, &base, extra);
    let client = Client::new();
    all_accepted(&client, &base, orders).await;
    let seen = order_log(&client, &base).await;
    drop(replicas);
    sandbox.shutdown().await;
    env.cleanup().await;
    seen
}

/// No window of one second (closed, as Bamboo counts) holds more than two accepted orders.
fn assert_two_per_second(accepted: &[i64]) {
    let mut t = accepted.to_vec();
    t.sort_unstable();
    for w in t.windows(3) {
        assert!(w[2] - w[0] > 1000, "three accepted orders within one second: {w:?}");
    }
    let tightest = t.windows(3).map(|w| w[2] - w[0]).min().unwrap_or(0);
    eprintln!("tightest 3 accepted orders: {tightest} ms apart (limit: more than 1000)");
}

/// A slow partner (answers slower than the client timeout) is still never sent
/// more than its limit: every send, retries of timed-out sends included, takes a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_exceed_bamboos_limit_when_it_is_slower_than_the_timeout() {
    let seen = three_replicas_place(
        Duration::from_millis(100),
        &[("CULM__INTEGRATIONS__BAMBOO__TIMEOUT", "100ms")],
        40,
    )
    .await;
    eprintln!(
        "slow partner: {} accepted sends for {} orders, {} refused",
        seen.accepted.len(),
        seen.distinct,
        seen.refused
    );
    assert_eq!(
        seen.refused, 0,
        "the sandbox refused {} order requests with 429",
        seen.refused
    );
    assert_two_per_second(&seen.accepted);
}

/// At normal latency three replicas use at least 95 % of Bamboo's 2/s (the span
/// of the accepted orders against the shortest span the limit allows), with no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_use_at_least_95_percent_of_bamboos_limit() {
    let orders = 40;
    let seen = three_replicas_place(Duration::from_millis(20), &[], orders).await;
    assert_eq!(
        seen.refused, 0,
        "the sandbox refused {} order requests with 429",
        seen.refused
    );
    assert_two_per_second(&seen.accepted);
    let mut t = seen.accepted.clone();
    t.sort_unstable();
    // At most 2 per closed second: n orders need more than (n / 2 - 1) seconds.
    let minimum = (orders as f64 / 2.0 - 1.0) * 1000.0;
    let span = (t[orders - 1] - t[0]) as f64;
    let utilisation = minimum / span;
    eprintln!(
        "normal latency: {orders} orders in {span} ms, minimum {minimum} ms: utilisation {:.1} %",
        utilisation * 100.0
    );
    assert!(
        utilisation >= 0.95,
        "utilisation {:.1} % of the allowed rate",
        utilisation * 100.0
    );
}

/// Bamboo answers 429 to everything for 10 s. The first 429 halves the shared
/// rate, so every replica slows down (the three together send no more than the adaptive
/// 1 per window, not 2 after every Retry-After); afterwards the rate recovers to 2/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_outage_lowers_the_shared_rate_for_every_replica_and_it_recovers() {
    let env = TestEnv::new(|_| {}).await;
    let (sandbox, base) = start(Options {
        latency: Duration::from_millis(20),
        fail_rate: 0.0,
    })
    .await;
    let orders = 50;
    env.store.enqueue(place_orders(orders)).await.expect("enqueue");
    let replicas = bamboo_replicas(&env, &base, &[("CULM__INTEGRATION_DEFAULTS__RECOVER_AFTER", "2s")]);
    let client = Client::new();
    eventually(Duration::from_secs(60), "the first orders accepted", || async {
        (order_log(&client, &base).await.distinct >= 6).then_some(())
    })
    .await;
    let outage = client
        .post(format!("{base}/_sandbox/outage"))
        .json(&json!({"integration": "bamboo", "status": 429, "ms": 10_000}))
        .send()
        .await
        .expect("answered");
    assert_eq!(outage.status(), StatusCode::NO_CONTENT);
    all_accepted(&client, &base, orders).await;
    let entries = log(&client, &base).await;
    let sends: Vec<(i64, u16)> = entries
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/bamboo/orders")
        .map(|r| (at_ms(r), r.status))
        .collect();
    let refused: Vec<i64> = sends.iter().filter(|s| s.1 == 429).map(|s| s.0).collect();
    let (first, last) = (refused[0], refused[refused.len() - 1]);
    // Slots reserved before the first 429 reached the limiter (up to max_wait = 2 s ahead,
    // plus the 429's own latency) are sent as reserved; from then on the lowered rate
    // allows one send per window (1 s + guard).
    let from = first + 2_100;
    let during = sends.iter().filter(|s| s.0 > from && s.0 <= last).count();
    let allowed = (last - from) / 1000 + 1;
    eprintln!(
        "429 outage: {} sends refused over {} ms; {during} sends in the {} ms from 2.1 s after the first 429 (1 per window allows {allowed})",
        refused.len(),
        last - first,
        last - from
    );
    assert!(
        during as i64 <= allowed,
        "{during} sends in {} ms: more than 1 per window",
        last - from
    );
    // Recovered: after the outage three accepted orders fit within 1.5 s again (2/s; at
    // the lowered 1/s they would span more than 2 s).
    let after: Vec<i64> = sends.iter().filter(|s| s.0 > last && s.1 == 202).map(|s| s.0).collect();
    let fastest = after.windows(3).map(|w| w[2] - w[0]).min().unwrap_or(i64::MAX);
    eprintln!(
        "after the outage: {} accepted, tightest 3 within {fastest} ms",
        after.len()
    );
    assert!(
        fastest < 1500,
        "the rate did not recover to 2/s: {fastest} ms for 3 orders"
    );
    assert_two_per_second(&sends.iter().filter(|s| s.1 == 202).map(|s| s.0).collect::<Vec<_>>());
    let mut conn = env.store.connection();
    let lowered: bool = redis::cmd("EXISTS")
        .arg(format!("{}:integration:{{bamboo:place_order}}:rate", env.prefix))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!lowered, "the adaptive rate is back at the configured limit");
    drop(replicas);
    sandbox.shutdown().await;
    env.cleanup().await;
}

/// Requests Bamboo is answering now, and the most at once since the last reset.
async fn bamboo_inflight(client: &Client, base: &str) -> Inflight {
    let all: std::collections::BTreeMap<String, Inflight> = client
        .get(format!("{base}/_sandbox/inflight"))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    all.get("bamboo").copied().unwrap_or_default()
}

/// Waits until `bamboo_orders` holds no job: every order placed, polled and recorded.
async fn bamboo_orders_drained(env: &TestEnv) {
    eventually(Duration::from_secs(180), "bamboo_orders drained", || async {
        let s = env.store.stats("bamboo_orders").await.expect("stats");
        (s.pending + s.scheduled + s.running == 0).then_some(())
    })
    .await;
}

/// `max_in_flight = 5` on `bamboo_orders` (the seed's "five consumers") holds across
/// three replicas, each at concurrency 5 (15 slots), counted as requests Bamboo is
/// answering at once. Then a replica holding every permit is SIGKILLed: its permits come
/// back when its leases expire, and two new replicas finish the work.
///
/// Answers take 1 to 3 s, so without the cap the replicas would have about 8 requests
/// open at once (orders and polls at 2/s each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_across_replicas_and_a_killed_holders_permits_come_back() {
    let env = TestEnv::new(|_| {}).await;
    let (sandbox, base) = start(Options {
        latency: Duration::from_secs(2),
        fail_rate: 0.0,
    })
    .await;
    let extra = [
        ("CULM__INTEGRATIONS__BAMBOO__TIMEOUT", "10s"),
        ("CULM__WORKER__LEASE_TTL", "6s"),
        ("CULM__WORKER__LEASE_EXTEND_INTERVAL", "2s"),
        ("CULM__WORKER__REAP_INTERVAL", "1s"),
    ];
    let client = Client::new();
    let first = 12;
    env.store.enqueue(place_orders(first)).await.expect("enqueue");
    let mut replicas = bamboo_replicas(&env, &base, &extra);
    all_accepted(&client, &base, first).await;
    bamboo_orders_drained(&env).await;
    let shared = bamboo_inflight(&client, &base).await;
    eprintln!(
        "three replicas, 15 slots: at most {} Bamboo requests at once",
        shared.peak
    );
    assert!(shared.peak <= 5, "{} requests at once over a cap of 5", shared.peak);

    // One replica alone takes every permit; then it is SIGKILLed with all five held.
    let holder = replicas.remove(0);
    for r in replicas {
        r.sigterm();
    }
    let more = 10;
    let orders: Vec<_> = place_orders(first + more).split_off(first);
    env.store.enqueue(orders).await.expect("enqueue");
    eventually(
        Duration::from_secs(60),
        "the lone replica holds all five permits",
        || async {
            let s = env.store.stats("bamboo_orders").await.expect("stats");
            (s.running == 5).then_some(())
        },
    )
    .await;
    let _others = [bamboo_replica(&env, &base, &extra), bamboo_replica(&env, &base, &extra)];
    drop(holder);
    let reset = client
        .delete(format!("{base}/_sandbox/inflight"))
        .send()
        .await
        .expect("answered");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    // Only if the dead holder's permits come back can the new replicas finish.
    all_accepted(&client, &base, first + more).await;
    bamboo_orders_drained(&env).await;
    let after = bamboo_inflight(&client, &base).await;
    eprintln!("after the SIGKILL: at most {} Bamboo requests at once", after.peak);
    assert!(after.peak <= 5, "{} requests at once over a cap of 5", after.peak);
    sandbox.shutdown().await;
    env.cleanup().await;
}
