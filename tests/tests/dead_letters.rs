//! Dead letters in bulk: `culm dead … --all` with filters against the real Redis, and
//! `DeadLetters` with the PostgreSQL archive, where jobs Redis has let go are re-driven
//! and purged from the archive.
use culm_core::EnqueueRequest;
use culm_tests::{TestDb, TestEnv, culm_bin, eventually, is, ledger_for, next_event, queue, workspace_root};
use culm_worker::{
    dead_letters::DeadLetters,
    store::{DeadFilter, JobState},
};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `culm <args>` over the env's Redis prefix; returns (success, stdout, stderr).
fn culm(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(culm_bin())
        .current_dir(workspace_root())
        .args(args)
        .env("CULM_REDIS_URL", culm_tests::redis_url())
        .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
        .env("CULM_LOG", "warn")
        .output()
        .expect("culm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Enqueues one permanently failing job per reason on `queue` and waits until all are dead.
async fn dead_jobs(env: &TestEnv, queue: &str, reasons: &[&str]) -> Vec<String> {
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&[queue.to_owned()]).expect("start");
    let reqs = reasons
        .iter()
        .map(|r| EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": r })).queue(queue))
        .collect();
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    // Deaths arrive in any order: wait until every id has died.
    let mut alive: std::collections::HashSet<String> = ids.iter().cloned().collect();
    while !alive.is_empty() {
        let e = next_event(&mut events, WAIT, |e| alive.contains(&e.id) && is("dead", e)).await;
        alive.remove(&e.id);
    }
    running.shutdown().await;
    ids
}

async fn state(env: &TestEnv, id: &str) -> Option<JobState> {
    env.store.status(id).await.expect("status").map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_dead_retry_all_redrives_only_what_matches_the_filter() {
    let env = TestEnv::new(|_| {}).await;
    let ids = dead_jobs(
        &env,
        "platform",
        &["card closed", "CARD closed again", "upstream said no"],
    )
    .await;

    let (ok, out, err) = culm(&env, &["dead", "count", "--queue", "platform", "--error", "card"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");
    // Filters without --all would be ignored, so they are refused.
    let (ok, _, err) = culm(&env, &["dead", "retry", "--queue", "platform"]);
    assert!(!ok && err.contains("--all"), "{err}");
    let (ok, _, err) = culm(&env, &["dead", "retry", "--all", "--since", "last week"]);
    assert!(!ok && err.contains("--since"), "{err}");

    let (ok, out, err) = culm(
        &env,
        &[
            "dead", "retry", "--all", "--queue", "platform", "--error", "card", "--since", "1h",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("re-drove 2 of 2"), "{out}");
    assert_eq!(state(&env, &ids[0]).await, Some(JobState::Pending));
    assert_eq!(state(&env, &ids[1]).await, Some(JobState::Pending));
    assert_eq!(state(&env, &ids[2]).await, Some(JobState::Dead));

    let (ok, out, err) = culm(&env, &["dead", "list", "--json", "--job", "platform.fail_permanently"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], ids[2]);

    let (ok, out, err) = culm(&env, &["dead", "purge", "--all", "--queue", "platform"]);
    assert!(ok, "{err}");
    assert!(out.contains("purged 1 of 1"), "{out}");
    assert_eq!(state(&env, &ids[2]).await, None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_archive_bulk_retry_and_purge_reach_jobs_redis_has_let_go() {
    let tdb = TestDb::new();
    let url = tdb.url.clone();
    let env = TestEnv::new(move |c| {
        c.database.url = url;
        c.database.ledger.flush_interval = Duration::from_millis(50);
        c.queues.insert("t_arch".into(), queue("batch", 4, 5_000, 1));
    })
    .await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let rt = env.runtime().with_ledger(ledger);
    let mut events = rt.events();
    let running = rt.start(&["t_arch".to_owned()]).expect("start");
    let reqs = ["card closed", "card closed", "upstream said no"]
        .iter()
        .map(|r| EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": r })).queue("t_arch"))
        .collect();
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    // Deaths arrive in any order: wait until every id has died.
    let mut alive: std::collections::HashSet<String> = ids.iter().cloned().collect();
    while !alive.is_empty() {
        let e = next_event(&mut events, WAIT, |e| alive.contains(&e.id) && is("dead", e)).await;
        alive.remove(&e.id);
    }
    running.shutdown().await;
    eventually(WAIT, "every dead job archived", || async {
        (db.dead_list(Some("t_arch"), 10).await.ok()?.len() == 3).then_some(())
    })
    .await;
    // Redis lets them go; only the archive has them now.
    env.cleanup().await;

    let dl = DeadLetters::new(env.store.clone(), Some(db.clone()));
    let card = DeadFilter {
        queue: Some("t_arch".into()),
        error: Some("Card".into()),
        ..Default::default()
    };
    assert_eq!(dl.count(&card).await.expect("count"), 2);
    let done = dl.retry_matching(&card).await.expect("bulk retry");
    assert_eq!((done.matched, done.applied, done.truncated), (2, 2, false));
    assert_eq!(
        dl.count(&card).await.expect("count"),
        0,
        "re-driven jobs leave the archive's list"
    );
    // Each came back as a new job from the archived payload.
    let pending = env.store.stats("t_arch").await.expect("stats").pending;
    assert_eq!(pending, 2);
    assert_eq!(
        dl.retry_matching(&card).await.expect("again").applied,
        0,
        "a second bulk retry re-drives nothing twice"
    );

    let all = DeadFilter::default();
    let purged = dl.purge_matching(&all).await.expect("purge");
    assert_eq!((purged.matched, purged.applied), (1, 1));
    assert!(db.dead_get(&ids[2]).await.expect("get").is_none());
    writer.shutdown(Duration::from_secs(10)).await;
    env.cleanup().await;
    db.pool().close().await;
}
