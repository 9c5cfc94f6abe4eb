//! Batch job types (`culm_core::BatchJob`) on a real runtime and the real Redis: jobs a
//! pool holds together go to one handler call, and each still ends on its own (done,
//! retry, defer, dead), with its own attempt, lease token and dead letter; a short
//! answer, a panic or a timeout loses no job; a lease lost mid-call is fenced like a
//! single run's; a job cancelled during the call ends cancelled if the handler saw it,
//! and an expired one never reaches it;
//! rate limits count upstream requests, not handler calls.
use culm_core::{BatchJob, EnqueueRequest, Job, JobContext, JobError, Outcome, Tier};
use culm_jobs::http::config::LimitConfig;
use culm_tests::{TestEnv, eventually, is, next_event, queue};
use culm_worker::runtime::JobEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{LazyLock, Mutex},
    time::Duration,
};
use tokio::sync::broadcast;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

const WAIT: Duration = Duration::from_secs(30);

/// Per test (`tag`): the size of each handler call, in call order.
static CALLS: LazyLock<Mutex<BTreeMap<String, Vec<usize>>>> = LazyLock::new(Mutex::default);
/// Per job id: how many handler calls included it.
static RUNS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(Mutex::default);
/// Tags whose `hold` items may finish.
static RELEASED: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Mutex::default);

fn calls(tag: &str) -> Vec<usize> {
    CALLS.lock().expect("calls").get(tag).cloned().unwrap_or_default()
}

fn runs(id: &str) -> u32 {
    RUNS.lock().expect("runs").get(id).copied().unwrap_or(0)
}

/// One job of the test's batch job type: `act` says how its item ends.
#[derive(Debug, Serialize, Deserialize)]
struct Grouped {
    tag: String,
    act: String,
}

impl Job for Grouped {
    const NAME: &'static str = "test.grouped";
    const QUEUE: &'static str = "t_grouped";
    const TIERS: &'static [Tier] = &Tier::ALL;
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        culm_core::run_one(self, ctx).await
    }
}

impl BatchJob for Grouped {
    const MAX_BATCH: usize = 8;
    // Long enough that jobs fetched together always meet, on a loaded machine too.
    const LINGER: Duration = Duration::from_millis(300);

    async fn run_many(items: Vec<(Self, JobContext)>) -> Vec<Result<Outcome, JobError>> {
        let tag = items.first().map(|(j, _)| j.tag.clone()).unwrap_or_default();
        CALLS
            .lock()
            .expect("calls")
            .entry(tag.clone())
            .or_default()
            .push(items.len());
        let nth: Vec<u32> = items
            .iter()
            .map(|(_, ctx)| {
                let mut r = RUNS.lock().expect("runs");
                let n = r.entry(ctx.id.clone()).or_default();
                *n += 1;
                *n
            })
            .collect();
        let first_call = nth.iter().all(|&n| n == 1);
        if first_call && items.iter().any(|(j, _)| j.act == "panic") {
            panic!("the upstream client blew up");
        }
        if first_call && items.iter().any(|(j, _)| j.act == "slow") {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if items.iter().any(|(j, _)| j.act == "hold") {
            while !RELEASED.lock().expect("released").contains(&tag) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if items.iter().any(|(j, _)| j.act == "until_cancelled") {
            // Looks at every job's signal until one of them is raised.
            while !items.iter().any(|(_, ctx)| ctx.is_cancelled()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut answers: Vec<Result<Outcome, JobError>> = items
            .iter()
            .zip(&nth)
            .map(|((j, ctx), &n)| match (j.act.as_str(), n) {
                ("retry_once", 1) => Err(JobError::retryable("first try fails")),
                ("defer_once", 1) => Err(JobError::defer(Duration::from_millis(50), "upstream busy")),
                ("dead", _) => Err(JobError::permanent(format!("job {} cannot succeed", ctx.id))),
                _ => Ok(Outcome::done()),
            })
            .collect();
        if items.iter().any(|(j, _)| j.act == "short") {
            answers.pop();
        }
        answers
    }
}

async fn env_with(adjust: impl FnOnce(&mut culm_worker::config::Config)) -> TestEnv {
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register_batch::<Grouped>().expect("register");
    registry.register_batch::<Chunked>().expect("register");
    TestEnv::with_registry(registry, adjust).await
}

fn job(tag: &str, act: &str) -> EnqueueRequest {
    EnqueueRequest::raw("test.grouped", json!({"tag": tag, "act": act}))
}

/// Collects events of `ids` until each has a final one (done, dead, cancelled, expired); returns
/// each job's events in order.
async fn until_final(rx: &mut broadcast::Receiver<JobEvent>, ids: &[String]) -> HashMap<String, Vec<JobEvent>> {
    let last = |e: &JobEvent| ["done", "dead", "cancelled", "expired"].iter().any(|k| is(k, e));
    let mut seen: HashMap<String, Vec<JobEvent>> = HashMap::new();
    while ids.iter().any(|id| !seen.get(id).is_some_and(|es| es.iter().any(last))) {
        let e = next_event(rx, WAIT, |e| ids.contains(&e.id)).await;
        seen.entry(e.id.clone()).or_default().push(e);
    }
    seen
}

fn kinds(events: &[JobEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| {
            ["done", "dead", "retry", "defer", "cancelled", "expired"]
                .into_iter()
                .find(|k| is(k, e))
                .unwrap_or("?")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_serves_many_jobs_and_each_ends_on_its_own() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 5_000, 3));
    })
    .await;
    let tag = env.prefix.clone();
    // Enqueued together before the pool starts: its first fetch leases all four.
    let ids = culm_tests::enqueue_ids(
        &env.store,
        vec![
            job(&tag, "done"),
            job(&tag, "retry_once"),
            job(&tag, "defer_once"),
            job(&tag, "dead"),
        ],
    )
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_grouped".into()]).expect("start");
    let seen = until_final(&mut events, &ids).await;

    let sizes = calls(&tag);
    assert_eq!(sizes.first(), Some(&4), "the four jobs went to one call: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 6, "six runs in all: {sizes:?}");
    assert!(sizes.len() < 6, "fewer handler calls than runs: {sizes:?}");
    assert_eq!(kinds(&seen[&ids[0]]), ["done"]);
    assert_eq!(kinds(&seen[&ids[1]]), ["retry", "done"]);
    assert_eq!(kinds(&seen[&ids[2]]), ["defer", "done"]);
    assert_eq!(kinds(&seen[&ids[3]]), ["dead"]);
    // Attempts are each job's own: the retry spent one, the deferral did not.
    assert_eq!(seen[&ids[1]].last().map(|e| e.attempt), Some(2));
    assert_eq!(
        seen[&ids[2]].last().map(|e| e.attempt),
        Some(1),
        "a deferral spends no attempt"
    );
    let own = format!("job {} cannot succeed", ids[3]);
    assert_eq!(seen[&ids[3]][0].error, own, "the dead job carries its own error");
    let dead = env.store.dead_list("t_grouped", 10).await.expect("dead list");
    assert_eq!(
        dead.iter()
            .map(|d| (d.id.as_str(), d.last_error.as_deref()))
            .collect::<Vec<_>>(),
        [(ids[3].as_str(), Some(own.as_str()))],
        "only the dead job is in the dead letters, with its own error"
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_short_of_the_jobs_loses_none_of_them() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 5_000, 2));
    })
    .await;
    let tag = env.prefix.clone();
    let ids = culm_tests::enqueue_ids(&env.store, (0..3).map(|_| job(&tag, "short")).collect()).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_grouped".into()]).expect("start");
    let seen = until_final(&mut events, &ids).await;

    assert_eq!(calls(&tag).first(), Some(&3), "{:?}", calls(&tag));
    let mut done = 0;
    for id in &ids {
        match kinds(&seen[id]).as_slice() {
            ["done"] => done += 1,
            // The job without an answer is retried with an error saying so, then (alone
            // in its call, and still unanswered) dead-lettered on its last attempt.
            ["retry", "dead"] => {
                let retry = &seen[id][0].error;
                assert!(retry.contains("answered 2 results for 3 jobs"), "{retry}");
                let dead = &seen[id][1].error;
                assert!(
                    dead.contains("answered 0 results for 1 jobs") && dead.contains("attempt 2 of 2"),
                    "{dead}"
                );
            }
            other => panic!("job {id} ended {other:?}"),
        }
    }
    assert_eq!(done, 2, "the answered jobs are done: {seen:?}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_a_timeout_of_the_call_retries_every_job_of_it() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 1_000, 2));
    })
    .await;
    for (act, error) in [("panic", "handler panicked"), ("slow", "timed out after 1s")] {
        let tag = format!("{}-{act}", env.prefix);
        let ids = culm_tests::enqueue_ids(&env.store, (0..3).map(|_| job(&tag, act)).collect()).await;
        let rt = env.runtime();
        let mut events = rt.events();
        let running = rt.start(&["t_grouped".into()]).expect("start");
        let seen = until_final(&mut events, &ids).await;
        assert_eq!(calls(&tag).first(), Some(&3), "{act}: {:?}", calls(&tag));
        for id in &ids {
            assert_eq!(kinds(&seen[id]), ["retry", "done"], "{act}: {:?}", seen[id]);
            assert!(seen[id][0].error.contains(error), "{act}: {}", seen[id][0].error);
            assert_eq!(
                seen[id][1].attempt, 2,
                "{act}: the failed call spent each job's attempt"
            );
        }
        running.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_lease_is_lost_mid_call_is_fenced_like_a_single_run() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 20_000, 3));
    })
    .await;
    let tag = env.prefix.clone();
    let ids = culm_tests::enqueue_ids(&env.store, (0..3).map(|_| job(&tag, "hold")).collect()).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_grouped".into()]).expect("start");
    eventually(WAIT, "the grouped call to start", || async {
        (calls(&tag).first() == Some(&3)).then_some(())
    })
    .await;
    // While the call runs, another holder takes the first job's lease over (as after
    // a reaper handed it out again): its token changes under the running call.
    let lost = &ids[0];
    let attempts = format!("{}:attempts", env.store.base_key("t_grouped"));
    let mut c = env.store.connection();
    let token: String = redis::cmd("HGET")
        .arg(&attempts)
        .arg(format!("{lost}:t"))
        .query_async(&mut c)
        .await
        .expect("the running job's token");
    redis::cmd("HSET")
        .arg(&attempts)
        .arg(format!("{lost}:t"))
        // Tokens rise from 1 per queue: this one no lease of this test ever had.
        .arg("999999")
        .exec_async(&mut c)
        .await
        .expect("HSET");
    RELEASED.lock().expect("released").push(tag.clone());

    let seen = until_final(&mut events, &ids).await;
    let original: u64 = token.trim_end_matches('s').parse().expect("a numeric token");
    for id in &ids[1..] {
        assert_eq!(kinds(&seen[id]), ["done"], "{:?}", seen[id]);
        assert_eq!(seen[id][0].attempt, 1);
    }
    // The call's answer for the lost job was fenced off: nothing was settled under its
    // old token. The reaper found the lease expired and the job ran again.
    assert!(
        seen[lost].iter().all(|e| e.token != original),
        "the old lease settled the job: {:?}",
        seen[lost]
    );
    assert_eq!(kinds(&seen[lost]).last(), Some(&"done"));
    assert_eq!(runs(lost), 2, "the lost job ran again under a new lease");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_during_the_call_ends_cancelled_and_the_others_done() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 20_000, 3));
    })
    .await;
    let tag = env.prefix.clone();
    let ids = culm_tests::enqueue_ids(&env.store, (0..3).map(|_| job(&tag, "until_cancelled")).collect()).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_grouped".into()]).expect("start");
    eventually(WAIT, "the grouped call to start", || async {
        (calls(&tag).first() == Some(&3)).then_some(())
    })
    .await;
    env.store.cancel(&ids[1]).await.expect("cancel");
    let seen = until_final(&mut events, &ids).await;
    assert_eq!(kinds(&seen[&ids[0]]), ["done"]);
    assert_eq!(kinds(&seen[&ids[1]]), ["cancelled"], "the handler saw its cancellation");
    assert_eq!(kinds(&seen[&ids[2]]), ["done"]);
    assert_eq!(calls(&tag), [3], "one call served all three");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_never_reaches_the_grouped_call() {
    let env = env_with(|c| {
        c.queues.insert("t_grouped".into(), queue("batch", 8, 5_000, 3));
    })
    .await;
    let tag = env.prefix.clone();
    let expires_at = culm_core::now_ms() + 200;
    let ids = culm_tests::enqueue_ids(
        &env.store,
        vec![job(&tag, "done"), job(&tag, "done").expires_at_ms(expires_at)],
    )
    .await;
    eventually(WAIT, "the second job's expiry to pass", || async {
        (culm_core::now_ms() > expires_at).then_some(())
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_grouped".into()]).expect("start");
    let seen = until_final(&mut events, &ids).await;
    assert_eq!(kinds(&seen[&ids[0]]), ["done"]);
    assert_eq!(kinds(&seen[&ids[1]]), ["expired"]);
    assert_eq!(runs(&ids[1]), 0, "the expired job was handed to the handler");
    assert_eq!(calls(&tag), [1], "the call had only the live job");
    running.shutdown().await;
    env.cleanup().await;
}

/// A batch job type that upserts its items two per upstream request.
#[derive(Debug, Serialize, Deserialize)]
struct Chunked {
    tag: String,
}

impl Job for Chunked {
    const NAME: &'static str = "test.chunked";
    const QUEUE: &'static str = "t_chunked";
    const TIERS: &'static [Tier] = &Tier::ALL;
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        culm_core::run_one(self, ctx).await
    }
}

impl BatchJob for Chunked {
    const MAX_BATCH: usize = 8;
    const LINGER: Duration = Duration::from_millis(300);

    async fn run_many(items: Vec<(Self, JobContext)>) -> Vec<Result<Outcome, JobError>> {
        let tag = items.first().map(|(j, _)| j.tag.clone()).unwrap_or_default();
        CALLS.lock().expect("calls").entry(tag).or_default().push(items.len());
        let mut answers = Vec::with_capacity(items.len());
        for chunk in items.chunks(2) {
            let sent = match culm_jobs::http::client(&chunk[0].1, "salesforce") {
                Ok(c) => {
                    c.post("upsert", "/upsert")
                        .json(&json!({"n": chunk.len()}))
                        .send()
                        .await
                }
                Err(e) => Err(e),
            };
            for _ in chunk {
                answers.push(match &sent {
                    Ok(_) => Ok(Outcome::done()),
                    Err(e) => Err(JobError::retryable(e.to_string())),
                });
            }
        }
        answers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_call_takes_one_limiter_slot_per_upstream_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/salesforce/upsert"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let env = env_with(|c| {
        c.queues.insert("t_chunked".into(), queue("batch", 8, 5_000, 1));
        let sf = c.integrations.get_mut("salesforce").expect("salesforce");
        sf.base_url = format!("{}/salesforce", server.uri());
        sf.limits = vec![LimitConfig {
            endpoint: "upsert".into(),
            rate: 1_000,
            per: Duration::from_secs(60),
            burst: None,
        }];
    })
    .await;
    let tag = env.prefix.clone();
    let reqs = (0..6)
        .map(|_| EnqueueRequest::raw("test.chunked", json!({"tag": tag})))
        .collect();
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_chunked".into()]).expect("start");
    let seen = until_final(&mut events, &ids).await;
    assert!(ids.iter().all(|id| kinds(&seen[id]) == ["done"]), "{seen:?}");

    let sizes = calls(&tag);
    let requests: usize = sizes.iter().map(|n| n.div_ceil(2)).sum();
    assert!(
        requests < ids.len(),
        "grouped calls sent fewer requests than jobs: {sizes:?}"
    );
    let received = server.received_requests().await.expect("recording").len();
    assert_eq!(received, requests, "{sizes:?}");
    let mut c = env.store.connection();
    let slots: usize = redis::cmd("LLEN")
        .arg(format!("{}:integration:{{salesforce:upsert}}:slots", env.prefix))
        .query_async(&mut c)
        .await
        .expect("LLEN");
    assert_eq!(slots, requests, "one limiter slot per request, not per call or per job");
    running.shutdown().await;
    env.cleanup().await;
}
