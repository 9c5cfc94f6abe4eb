//! The PostgreSQL side against a real server: migrations, the job ledger (including an outage
//! in the middle of processing), the dead-letter archive, the transactional outbox with
//! two relays, and the ledger fallback of job status. Each test has its own database
//! (`culm_tests::TestDb`), dropped when the test ends.
use culm_core::EnqueueRequest;
use culm_tests::{KillOnDrop, TcpProxy, TestDb, TestEnv, eventually, is, ledger_for, next_event, queue};
use culm_worker::runtime::JobEvent;
use culm_worker::{
    admin::{AdminState, Token},
    config::{Config, Scope},
    db::{
        Db, DbError,
        ledger::{self, DeadInfo, Ledger, LedgerRow, LedgerWriter, RunOutcome},
        outbox, retention,
    },
};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};
use std::{sync::atomic::Ordering, time::Duration};
use tokio::sync::{broadcast, watch};

const WAIT: Duration = Duration::from_secs(20);

/// A test env whose `[database]` points at `url`, with a fast ledger.
async fn env(url: &str) -> TestEnv {
    let url = url.to_owned();
    TestEnv::new(move |c| {
        c.database.url = url;
        c.database.connect_timeout = Duration::from_secs(1);
        c.database.ledger.flush_interval = Duration::from_millis(50);
        c.database.ledger.flush_batch = 100;
        c.queues.insert("t_q".into(), queue("batch", 8, 5_000, 5));
        c.queues.insert("t_one".into(), queue("batch", 2, 5_000, 1));
    })
    .await
}

/// Enqueues `n` no-op jobs on `t_q` in one call; returns how many were enqueued.
async fn enqueue_noops(env: &TestEnv, n: usize) -> usize {
    let reqs = (0..n)
        .map(|_| EnqueueRequest::raw("platform.noop", json!({})).queue("t_q"))
        .collect();
    env.store.enqueue(reqs).await.expect("enqueue").len()
}

/// Creates and migrates the database directly; returns a proxy the test can cut and an
/// env whose database is reached through it.
async fn env_behind_proxy(tdb: &TestDb) -> (TcpProxy, TestEnv) {
    {
        let env = env(&tdb.url).await;
        let (db, _l, w) = ledger_for(&env).await;
        w.shutdown(Duration::from_secs(5)).await;
        db.pool().close().await;
    }
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let env = env(&tdb.via(&proxy)).await;
    (proxy, env)
}

/// [`env_behind_proxy`] with a ledger connected through the proxy.
async fn ledger_behind_proxy(tdb: &TestDb) -> (TcpProxy, TestEnv, Db, Ledger, LedgerWriter) {
    let (proxy, env) = env_behind_proxy(tdb).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    (proxy, env, db, ledger, writer)
}

/// Waits for `n` successful runs, counting from now.
fn wait_done(events: &broadcast::Receiver<JobEvent>, n: usize) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = events.resubscribe();
    async move {
        for _ in 0..n {
            next_event(&mut rx, WAIT, |e| is("done", e)).await;
        }
    }
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.expect(sql)
}

#[tokio::test]
async fn migrations_apply_from_zero_are_idempotent_and_refuse_a_newer_schema() {
    let tdb = TestDb::new();
    let mut config = Config::defaults().expect("defaults");
    config.database.url = tdb.url.clone();
    // The database does not exist yet: migrate creates it (postgres may).
    assert!(Db::ensure_database(&config.database).await.expect("create"));
    assert!(!Db::ensure_database(&config.database).await.expect("exists"));
    let db = Db::connect(&config.database).await.expect("connect");
    // A fresh database with migrate_on_start off: refused, naming the command.
    let e = db.prepare(false).await.expect_err("schema behind");
    assert!(e.to_string().contains("culm migrate"), "{e}");
    let every: Vec<i64> = (1..=culm_worker::db::latest_version()).collect();
    assert_eq!(db.migrate().await.expect("first migrate"), every);
    assert_eq!(db.migrate().await.expect("second migrate"), Vec::<i64>::new());
    db.prepare(false).await.expect("schema current");
    for table in ["culm_job_runs", "culm_dead_jobs", "culm_outbox"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(db.pool())
            .await
            .expect("regclass");
        assert!(exists, "{table} exists");
    }
    // A newer culm migrated this database: this binary refuses it.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(db.pool())
    .await
    .expect("fake newer migration");
    let e = db.prepare(true).await.expect_err("newer schema");
    assert!(matches!(e, DbError::SchemaTooNew { found: 9999, .. }), "{e}");
    assert!(e.to_string().contains("refusing to start"), "{e}");
    db.pool().close().await;
}

#[tokio::test]
async fn culm_migrate_creates_the_database_and_is_idempotent() {
    let tdb = TestDb::new();
    let run = || {
        std::process::Command::new(culm_tests::culm_bin())
            .arg("migrate")
            .env("CULM_DATABASE_URL", &tdb.url)
            .current_dir(culm_tests::workspace_root())
            .output()
            .expect("culm migrate runs")
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("created the database") && out.contains("applied migration"),
        "{out}"
    );
    let second = run();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success() && out.contains("up to date"), "{out}");
}

#[tokio::test]
async fn a_job_failing_twice_then_succeeding_has_three_ledger_rows_and_status_falls_back_to_the_ledger() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let rt = env.runtime().with_ledger(ledger);
    let mut events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.fail", json!({ "times": 2 })).queue("t_q"))
        .await;
    next_event(&mut events, WAIT, |e| e.id == job.id && is("done", e)).await;
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;

    let rows = sqlx::query(
        "SELECT attempt, outcome, error, summary, tier, queue, job, worker_id, started_at IS NOT NULL AS started, \
         next_run_at IS NOT NULL AS has_next, enqueued_at IS NOT NULL AS has_enqueued \
         FROM culm_job_runs WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(&job.id)
    .fetch_all(db.pool())
    .await
    .expect("ledger rows");
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get("attempt"), r.get("outcome"))).collect();
    assert_eq!(
        got,
        vec![
            (1, "failed_will_retry".to_owned()),
            (2, "failed_will_retry".to_owned()),
            (3, "succeeded".to_owned())
        ]
    );
    for r in &rows {
        assert_eq!(r.get::<String, _>("tier"), "batch");
        assert_eq!(r.get::<String, _>("queue"), "t_q");
        assert_eq!(r.get::<String, _>("job"), "platform.fail");
        assert!(!r.get::<String, _>("worker_id").is_empty());
        assert!(r.get::<bool, _>("started") && r.get::<bool, _>("has_enqueued"));
    }
    assert!(
        rows[0]
            .get::<Option<String>, _>("error")
            .is_some_and(|e| e.contains("induced failure"))
    );
    assert!(rows[0].get::<bool, _>("has_next"));
    assert_eq!(
        rows[2].get::<Option<String>, _>("summary").as_deref(),
        Some("succeeded on attempt 3")
    );

    // Redis forgets the job; status comes from the ledger, over the CLI's path and HTTP.
    env.cleanup().await;
    assert!(env.store.status(&job.id).await.expect("status").is_none());
    let s = db.job_status(&job.id).await.expect("ledger status").expect("in ledger");
    assert_eq!((s.state.as_str(), s.attempts, s.errors.len()), ("done", 3, 2));
    let (base, _stop) = culm_tests::serve_admin(
        AdminState::new(
            &env.config,
            env.store.clone(),
            vec![Token::new("r", "reader-secret", vec![Scope::Read])],
        )
        .with_database(Some(db.clone())),
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/jobs/{}", job.id))
        .bearer_auth("reader-secret")
        .send()
        .await
        .expect("GET job");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["state"], "done");
    assert_eq!(body["attempts"], 3);
    assert_eq!(body["job"], "platform.fail");
    let ready = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    db.pool().close().await;
}

#[tokio::test]
async fn dead_jobs_are_archived_with_payload_and_errors_and_can_be_redriven_from_the_archive() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let rt = env.runtime().with_ledger(ledger);
    let mut events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    let mut req = EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": "card closed" })).queue("t_q");
    req.idempotency_key = Some("dead-1".into());
    let job = env.enqueue(req).await;
    next_event(&mut events, WAIT, |e| e.id == job.id && is("dead", e)).await;
    let dead = eventually(WAIT, "the dead job in the archive", || async {
        db.dead_list(Some("t_q"), 10)
            .await
            .expect("dead list")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(dead.id, job.id);
    assert_eq!(dead.payload, json!({ "reason": "card closed" }));
    assert_eq!((dead.attempts, dead.errors.len()), (1, 1));
    assert_eq!(dead.last_error.as_deref(), Some("card closed"));

    // Redis lets the job go; the archive still re-drives it, as a new job.
    running.shutdown().await;
    env.cleanup().await;
    let (queue, runs_as) = db
        .dead_redrive(&env.store, &job.id)
        .await
        .expect("redrive")
        .expect("archived");
    assert_eq!(queue, "t_q");
    assert_ne!(runs_as, job.id);
    let st = env
        .store
        .status(&runs_as)
        .await
        .expect("status")
        .expect("re-driven job exists");
    assert_eq!(st.state, culm_worker::store::JobState::Pending);
    assert!(
        db.dead_list(Some("t_q"), 10).await.expect("list").is_empty(),
        "re-driven jobs leave the list"
    );
    assert!(db.dead_redrive(&env.store, &job.id).await.expect("again").is_none());

    // A job that died while the ledger was off exists only in Redis: still listed, re-drivable.
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    let only_redis = env
        .enqueue(EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": "x" })).queue("t_q"))
        .await;
    next_event(&mut events, WAIT, |e| e.id == only_redis.id && is("dead", e)).await;
    running.shutdown().await;
    let only_t_q = culm_worker::store::DeadFilter {
        queue: Some("t_q".into()),
        ..Default::default()
    };
    let merged = culm_worker::dead_letters::DeadLetters::new(env.store.clone(), Some(db.clone()))
        .list(&only_t_q, 0, 10)
        .await
        .expect("merged");
    assert!(merged.iter().any(|d| d.id == only_redis.id), "{merged:?}");
    assert_eq!(
        db.dead_redrive(&env.store, &only_redis.id).await.expect("redrive"),
        Some(("t_q".to_owned(), only_redis.id.clone()))
    );
    writer.shutdown(Duration::from_secs(10)).await;
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn the_ledger_survives_postgres_being_unavailable_and_catches_up_without_losing_a_row() {
    let tdb = TestDb::new();
    let (proxy, env, db, ledger, writer) = ledger_behind_proxy(&tdb).await;
    let counters = ledger.counters().clone();
    let rt = env.runtime().with_ledger(ledger);
    let events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    let run = |n: usize| enqueue_noops(&env, n);
    // Before the outage.
    let done = wait_done(&events, 50);
    run(50).await;
    done.await;
    eventually(WAIT, "50 rows written", || async {
        (count(&db, "SELECT count(*) FROM culm_job_runs").await == 50).then_some(())
    })
    .await;

    // PostgreSQL becomes unreachable; the workers keep going.
    proxy.cut();
    let done = wait_done(&events, 150);
    run(150).await;
    done.await;
    eventually(WAIT, "rows spilled to Redis", || async {
        (counters.spilled.load(Ordering::Relaxed) == 150).then_some(())
    })
    .await;

    // Back: the spill is replayed, nothing lost, nothing twice.
    proxy.restore();
    eventually(WAIT, "the ledger catches up", || async {
        (count(&db, "SELECT count(*) FROM culm_job_runs").await == 200).then_some(())
    })
    .await;
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        count(&db, "SELECT count(DISTINCT job_id) FROM culm_job_runs").await,
        200
    );
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 0, "no row dropped");
    let mut c = env.store.connection();
    let left: i64 = redis::cmd("XLEN")
        .arg(ledger::spill_key(&env.prefix))
        .query_async(&mut c)
        .await
        .expect("XLEN");
    assert_eq!(left, 0, "the spill stream is drained");
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn a_batch_holding_a_row_already_written_is_written_without_it_and_nothing_is_spilled() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let counters = ledger.counters().clone();
    let job_id = ulid::Ulid::new().to_string();
    let t0 = (culm_core::now_ms() - 60_000) * 1000;
    let first = ledger_row(&job_id, 1, RunOutcome::FailedWillRetry, t0);
    let rows_of_job = format!("SELECT count(*) FROM culm_job_runs WHERE job_id = '{job_id}'");
    ledger.record(first.clone());
    eventually(WAIT, "the first row written", || async {
        (count(&db, &rows_of_job).await == 1).then_some(())
    })
    .await;
    // The same row again, as the writer resends a batch whose first write it could not
    // confirm, together with a new row.
    ledger.record(first.clone());
    ledger.record(ledger_row(&job_id, 2, RunOutcome::Succeeded, t0 + 1_000));
    writer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        count(&db, &rows_of_job).await,
        2,
        "the new row written, the old one once"
    );
    let same_run = format!("SELECT count(*) FROM culm_job_runs WHERE run_id = '{}'", first.run_id);
    assert_eq!(count(&db, &same_run).await, 1);
    assert_eq!(counters.spilled.load(Ordering::Relaxed), 0, "written, not spilled");
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 0, "no row dropped");
    assert_eq!(counters.written.load(Ordering::Relaxed), 3);
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn outbox_rows_are_enqueued_only_when_committed_and_exactly_once_with_two_relays() {
    let tdb = TestDb::new();
    let mut env = env(&tdb.url).await;
    // Only NOTIFY wakes the relays within the test's time: the poll is far away.
    env.config.database.outbox.poll_interval = Duration::from_secs(600);
    env.config.database.outbox.batch = 7;
    let (db, _l, w) = ledger_for(&env).await;
    w.shutdown(Duration::from_secs(5)).await;
    let mut service = PgConnection::connect(&tdb.url).await.expect("service connection");

    // A relay that pushed row R and died before deleting it: R must not be enqueued again.
    let r: i64 = sqlx::query_scalar(
        "INSERT INTO culm_outbox (job, payload, queue) VALUES ('platform.noop', '{}', 't_q') RETURNING id",
    )
    .fetch_one(&mut service)
    .await
    .expect("row R");
    let mut pushed = EnqueueRequest::raw("platform.noop", json!({})).queue("t_q");
    pushed.idempotency_key = Some(format!("outbox:{r}"));
    env.enqueue(pushed).await;

    let (stop, stop_rx) = watch::channel(false);
    let relays = [
        outbox::start(
            db.clone(),
            env.store.clone(),
            env.config.database.outbox.clone(),
            stop_rx.clone(),
        ),
        outbox::start(
            db.clone(),
            env.store.clone(),
            env.config.database.outbox.clone(),
            stop_rx,
        ),
    ];

    // Rolled back with its business change: never enqueued.
    let mut tx = service.begin().await.expect("begin");
    sqlx::query("INSERT INTO culm_outbox (job, payload, queue, idempotency_key) VALUES ('platform.noop', '{}', 't_q', 'rolled-back')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");

    // Committed: 100 rows (half with their own key) and one the relay must reject.
    let mut tx = service.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO culm_outbox (job, payload, queue, idempotency_key) \
         SELECT 'platform.noop', '{}', 't_q', CASE WHEN g % 2 = 0 THEN 'order-' || g END FROM generate_series(1, 100) g",
    )
    .execute(&mut *tx)
    .await
    .expect("insert 100");
    sqlx::query("INSERT INTO culm_outbox (job, payload) VALUES ('no.such_job', '{}')")
        .execute(&mut *tx)
        .await
        .expect("insert bad");
    tx.commit().await.expect("commit");

    eventually(WAIT, "the outbox drained", || async {
        (count(&db, "SELECT count(*) FROM culm_outbox WHERE rejected_at IS NULL").await == 0).then_some(())
    })
    .await;
    let stats = env.store.stats("t_q").await.expect("stats");
    assert_eq!(
        stats.pending, 101,
        "row R once, 100 committed rows once, the rolled-back row never"
    );
    let err: String = sqlx::query_scalar("SELECT last_error FROM culm_outbox WHERE job = 'no.such_job'")
        .fetch_one(db.pool())
        .await
        .expect("rejected row kept");
    assert!(err.contains("no.such_job"), "{err}");
    // Nothing else arrives later.
    assert_eq!(
        outbox::drain(&db, &env.store, 100).await.expect("drain"),
        outbox::Relayed::default()
    );
    assert_eq!(env.store.stats("t_q").await.expect("stats").pending, 101);

    let _ = stop.send(true);
    for r in relays {
        r.await.expect("relay ends");
    }
    drop(service);
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn readyz_names_postgres_when_it_is_down() {
    let tdb = TestDb::new();
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let env = env(&tdb.via(&proxy)).await;
    Db::ensure_database(&env.config.database).await.expect("create");
    let db = Db::connect(&env.config.database).await.expect("connect");
    let (base, _stop) = culm_tests::serve_admin(
        AdminState::new(&env.config, env.store.clone(), vec![]).with_database(Some(db.clone())),
    )
    .await;
    assert_eq!(
        reqwest::get(format!("{base}/readyz")).await.expect("readyz").status(),
        reqwest::StatusCode::OK
    );
    proxy.cut();
    let resp = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(resp.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["field"], "postgres", "{body}");
    proxy.restore();
    db.pool().close().await;
}

#[tokio::test]
async fn retention_deletes_old_ledger_rows_and_archived_jobs_in_batches() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, _l, w) = ledger_for(&env).await;
    w.shutdown(Duration::from_secs(5)).await;
    sqlx::query(
        "INSERT INTO culm_job_runs (run_id, job_id, job, queue, tier, attempt, outcome, finished_at, worker_id) \
         SELECT 'r' || g, 'j' || g, 'platform.noop', 't_q', 'batch', 1, 'succeeded', \
           CASE WHEN g <= 5 THEN now() - interval '100 days' ELSE now() END, 'w' \
         FROM generate_series(1, 8) g",
    )
    .execute(db.pool())
    .await
    .expect("ledger rows");
    sqlx::query(
        "INSERT INTO culm_dead_jobs (job_id, job, queue, tier, payload, attempts, died_at) VALUES \
         ('old', 'platform.noop', 't_q', 'batch', '{}', 1, now() - interval '500 days'), \
         ('new', 'platform.noop', 't_q', 'batch', '{}', 1, now())",
    )
    .execute(db.pool())
    .await
    .expect("dead rows");
    let mut cfg = env.config.database.ledger.clone();
    cfg.retention = Duration::from_secs(90 * 86_400);
    cfg.dead_retention = Duration::from_secs(400 * 86_400);
    let (runs, dead) = retention::housekeeping(&db, &cfg, 2).await.expect("housekeeping");
    assert_eq!((runs, dead), (5, 1));
    assert_eq!(count(&db, "SELECT count(*) FROM culm_job_runs").await, 3);
    let left: Vec<String> = sqlx::query_scalar("SELECT job_id FROM culm_dead_jobs")
        .fetch_all(db.pool())
        .await
        .expect("dead left");
    assert_eq!(left, vec!["new".to_owned()]);
    db.pool().close().await;
}

#[tokio::test]
async fn an_attempt_whose_worker_vanished_is_recorded_by_the_reaper_and_archived_when_it_was_the_last() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let job = env
        .enqueue(EnqueueRequest::raw("platform.sleep", json!({ "ms": 1 })).queue("t_one"))
        .await;
    // A worker leases the job, extends its lease once (it is running it), and dies
    // without acknowledging.
    let fetched = env
        .store
        .fetch(&std::sync::Arc::from("t_one"), 1, Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(fetched.jobs.len(), 1);
    let d = &fetched.jobs[0];
    let lost = env
        .store
        .extend("t_one", &[(d.id.clone(), d.token)], Duration::from_millis(300))
        .await
        .expect("extend");
    assert!(lost.is_empty());
    // Another process's reaper notices.
    let running = env
        .runtime()
        .with_ledger(ledger)
        .start(&["t_one".to_owned()])
        .expect("start");
    let dead = eventually(WAIT, "the reaped job in the archive", || async {
        db.dead_get(&job.id).await.expect("dead get")
    })
    .await;
    assert_eq!(dead.attempts, 1);
    assert!(
        dead.last_error.as_deref().is_some_and(|e| e.contains("lease expired")),
        "{dead:?}"
    );
    let (outcome, worker): (String, String) =
        sqlx::query_as("SELECT outcome, worker_id FROM culm_job_runs WHERE job_id = $1")
            .bind(&job.id)
            .fetch_one(db.pool())
            .await
            .expect("ledger row");
    assert_eq!(outcome, "dead");
    assert!(worker.starts_with("reaper:"), "{worker}");
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_run_migrates_at_start_relays_the_outbox_records_the_ledger_and_refuses_a_newer_schema() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let command = |args: &[&str]| {
        let mut c = std::process::Command::new(culm_tests::culm_bin());
        c.current_dir(culm_tests::workspace_root())
            .args(args)
            .env("CULM_REDIS_URL", &env.config.redis.url)
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM_DATABASE_URL", &tdb.url)
            .env("CULM_LOG", "warn");
        c
    };
    let args = ["run", "--queues", "platform", "--no-admin", "--no-scheduler"];
    let guard = KillOnDrop(Some(
        command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("culm starts"),
    ));
    // The database did not exist: culm run created and migrated it.
    let db = eventually(WAIT, "culm run to migrate the database", || async {
        let mut config = env.config.database.clone();
        config.url = tdb.url.clone();
        let db = Db::connect(&config).await.ok()?;
        (db.applied_versions().await.ok()?.last() == Some(&culm_worker::db::latest_version())).then_some(db)
    })
    .await;
    sqlx::query("INSERT INTO culm_outbox (job, payload) VALUES ('platform.fail', '{\"times\": 1}')")
        .execute(db.pool())
        .await
        .expect("outbox row");
    eventually(WAIT, "two ledger rows for the outbox job", || async {
        (count(&db, "SELECT count(*) FROM culm_job_runs WHERE job = 'platform.fail'").await == 2).then_some(())
    })
    .await;
    let exit = guard.sigterm();
    assert!(exit.success(), "culm exits 0 after SIGTERM: {exit:?}");

    // A newer culm migrated the database since: this binary refuses to start.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(db.pool())
    .await
    .expect("fake newer migration");
    let out = command(&args).output().expect("culm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to start") && stderr.contains("9999"),
        "{stderr}"
    );
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn rows_spilled_by_a_process_that_stopped_during_the_outage_are_replayed_by_the_next_writer() {
    let tdb = TestDb::new();
    let (proxy, env, db, ledger, writer) = ledger_behind_proxy(&tdb).await;
    let counters = ledger.counters().clone();
    let rt = env.runtime().with_ledger(ledger);
    let events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    proxy.cut();
    let done = wait_done(&events, 30);
    enqueue_noops(&env, 30).await;
    done.await;
    // The process stops while PostgreSQL is still down: its buffer goes to the spill.
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    assert_eq!(counters.spilled.load(Ordering::Relaxed), 30);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);

    // The next process (or another replica) replays it.
    proxy.restore();
    let (_db2, _l2, w2) = ledger_for(&env).await;
    eventually(WAIT, "the spilled rows replayed", || async {
        (count(&db, "SELECT count(*) FROM culm_job_runs").await == 30).then_some(())
    })
    .await;
    w2.shutdown(Duration::from_secs(5)).await;
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn with_spill_memory_rows_wait_in_memory_and_every_row_that_does_not_fit_is_counted() {
    let tdb = TestDb::new();
    let (proxy, mut env) = env_behind_proxy(&tdb).await;
    env.config.database.ledger.spill = culm_worker::config::SpillPolicy::Memory;
    env.config.database.ledger.buffer_size = 100;
    env.config.database.ledger.flush_batch = 100;
    let (_, ledger, writer) = ledger_for(&env).await;
    let direct = Db::connect(&{
        let mut d = env.config.database.clone();
        d.url = tdb.url.clone();
        d
    })
    .await
    .expect("direct connection");
    let counters = ledger.counters().clone();
    let rt = env.runtime().with_ledger(ledger);
    let events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    proxy.cut();
    let done = wait_done(&events, 300);
    enqueue_noops(&env, 300).await;
    done.await;
    proxy.restore();
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    let written = count(&direct, "SELECT count(*) FROM culm_job_runs").await;
    let dropped = counters.dropped.load(Ordering::Relaxed);
    assert_eq!(
        counters.spilled.load(Ordering::Relaxed),
        0,
        "memory policy never spills"
    );
    assert!(
        dropped > 0,
        "300 rows cannot fit in a 100-row buffer and a 100-row channel"
    );
    assert_eq!(
        written as u64 + dropped,
        300,
        "every row is either written or counted as dropped"
    );
    env.cleanup().await;
    direct.pool().close().await;
}

#[test]
fn database_config_errors_name_the_key() {
    let load = |vars: &[(&str, &str)]| {
        culm_worker::config::Loader::new(None, None).load_from(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    let e = load(&[("CULM_DATABASE_URL", "mysql://x/y")]).expect_err("not postgres");
    assert!(
        e.to_string().contains("database.url") && e.to_string().contains("CULM_DATABASE_URL"),
        "{e}"
    );
    let e = load(&[("CULM__DATABASE__POOL_SIZE", "1")]).expect_err("pool too small");
    assert!(e.to_string().contains("database.pool_size"), "{e}");
    let e = load(&[("CULM__DATABASE__LEDGER__SPILL", "disk")]).expect_err("unknown policy");
    assert!(e.to_string().contains("database.ledger.spill"), "{e}");
    let c = load(&[("CULM_DATABASE_URL", "postgres://u:secret@db/culm")]).expect("valid");
    assert!(c.database.enabled() && c.database.ledger.enabled && c.database.outbox.enabled);
    assert!(
        !format!("{:?}", c.database).contains("secret"),
        "the password is never printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redrives_of_one_dead_job_leave_one_live_copy() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let rt = env.runtime().with_ledger(ledger);
    let mut events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": "card closed" })).queue("t_q"))
        .await;
    next_event(&mut events, WAIT, |e| e.id == job.id && is("dead", e)).await;
    eventually(WAIT, "the dead job in the archive", || async {
        db.dead_get(&job.id).await.expect("dead get")
    })
    .await;
    running.shutdown().await;

    // Two operators press "retry" at once (or one request is retried after a lost reply).
    let (a, b) = tokio::join!(
        db.dead_redrive(&env.store, &job.id),
        db.dead_redrive(&env.store, &job.id)
    );
    let answers = [a.expect("first redrive"), b.expect("second redrive")];
    assert!(answers.iter().any(Option::is_some), "{answers:?}");
    // Every live copy of the job: the original id back on its queue, and any new job.
    let pending = env.store.stats("t_q").await.expect("stats");
    assert_eq!(
        pending.pending + pending.scheduled + pending.running,
        1,
        "a re-drive yields one live copy: {answers:?} {pending:?}"
    );
    writer.shutdown(Duration::from_secs(10)).await;
    env.cleanup().await;
    db.pool().close().await;
}

/// Fails for good after a pause long enough for a test to take its lease over.
#[derive(serde::Serialize, serde::Deserialize)]
struct SlowRefusal {
    started: String,
}

impl culm_core::Job for SlowRefusal {
    const NAME: &'static str = "test.slow_refusal";
    const QUEUE: &'static str = "t_one";
    const TIERS: &'static [culm_core::Tier] = &culm_core::Tier::ALL;
    async fn run(self, ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
        let conn = ctx
            .dep::<redis::aio::ConnectionManager>()
            .ok_or_else(|| culm_core::JobError::permanent("no redis"))?;
        let _: () = redis::cmd("SADD")
            .arg(&self.started)
            .arg(&ctx.id)
            .query_async(&mut conn.as_ref().clone())
            .await
            .map_err(|e| culm_core::JobError::retryable(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        Err(culm_core::JobError::permanent("account closed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ack_that_was_fenced_off_never_reaches_the_archive() {
    let tdb = TestDb::new();
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<SlowRefusal>().expect("register");
    let url = tdb.url.clone();
    let env = TestEnv::with_registry(registry, move |c| {
        c.database.url = url;
        c.database.ledger.flush_interval = Duration::from_millis(50);
        c.queues.insert("t_one".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let rt = env.runtime().with_ledger(ledger);
    let running = rt.start(&["t_one".to_owned()]).expect("start");
    let started = env.key("started");
    let job = env
        .enqueue(EnqueueRequest::raw("test.slow_refusal", json!({ "started": started })).queue("t_one"))
        .await;
    eventually(WAIT, "the handler to start", || async {
        env.members(&started).await.contains(&job.id).then_some(())
    })
    .await;
    // Meanwhile the lease moves on: another run holds the job now.
    let mut c = env.store.connection();
    redis::cmd("HSET")
        .arg(format!("{}:attempts", env.store.base_key("t_one")))
        .arg(format!("{}:t", job.id))
        .arg(u64::MAX / 2)
        .exec_async(&mut c)
        .await
        .expect("HSET");
    // The stale run ends: its dead-lettering is fenced off, and recorded as superseded.
    let superseded = eventually(WAIT, "the stale run in the ledger", || async {
        let n = count(
            &db,
            &format!(
                "SELECT count(*) FROM culm_job_runs WHERE job_id = '{}' AND outcome = 'superseded'",
                job.id
            ),
        )
        .await;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(superseded, 1);
    assert!(
        db.dead_get(&job.id).await.expect("dead get").is_none(),
        "a fenced dead ack was archived"
    );
    let st = env.store.status(&job.id).await.expect("status").expect("known");
    assert_eq!(st.state, culm_worker::store::JobState::Running, "{st:?}");
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    env.cleanup().await;
    db.pool().close().await;
}

/// A synthetic ledger row of `job_id`'s attempt `attempt`, recorded at `at_us`; `dead`
/// rows carry what the archive keeps.
fn ledger_row(job_id: &str, attempt: u32, outcome: RunOutcome, at_us: i64) -> LedgerRow {
    LedgerRow {
        run_id: ulid::Ulid::new().to_string(),
        job_id: job_id.to_owned(),
        job: "platform.noop".into(),
        queue: "t_q".into(),
        tier: "batch".into(),
        attempt,
        outcome,
        error: (outcome != RunOutcome::Succeeded).then(|| format!("attempt {attempt} failed")),
        enqueued_at_ms: Some(at_us / 1000 - 1000),
        started_at_us: Some(at_us - 500),
        finished_at_us: at_us,
        duration_ms: 0.5,
        next_run_at_ms: None,
        worker_id: "test-1".into(),
        summary: None,
        dead: (outcome == RunOutcome::Dead).then(|| DeadInfo {
            payload: serde_json::value::to_raw_value(&json!({})).expect("raw"),
            idempotency_key: None,
        }),
    }
}

/// Rows held by a spill stream (an entry holds a JSON array of rows).
async fn rows_in_stream(env: &TestEnv, key: &str) -> usize {
    let mut c = env.store.connection();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    entries
        .iter()
        .map(|(_, f)| serde_json::from_str::<Vec<Value>>(&f[1]).map_or(1, |v| v.len()))
        .sum()
}

async fn xlen(env: &TestEnv, key: &str) -> usize {
    let mut c = env.store.connection();
    redis::cmd("XLEN").arg(key).query_async(&mut c).await.expect("XLEN")
}

/// The value of `culm_ledger_rows_dropped_total{reason}` in this process (0 when absent).
fn dropped_metric(reason: &str) -> f64 {
    let text = culm_worker::telemetry::install().render();
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with(culm_worker::telemetry::LEDGER_DROPPED) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_spill_stream_and_its_unreadable_stream_stay_within_spill_max_rows_and_count_what_they_drop() {
    culm_worker::telemetry::install();
    let tdb = TestDb::new();
    let (proxy, mut env) = env_behind_proxy(&tdb).await;
    env.config.database.ledger.spill_max_rows = 40;
    let (db, ledger, writer) = ledger_for(&env).await;
    let counters = ledger.counters().clone();
    let spill = ledger::spill_key(&env.prefix);
    let full_before = dropped_metric("spill_full");

    // PostgreSQL is unreachable: 100 rows spill into a stream bounded at 40.
    proxy.cut();
    let now = culm_core::now_ms() * 1000;
    for i in 0..100 {
        ledger.record(ledger_row(&format!("job-{i}"), 1, RunOutcome::Succeeded, now + i));
    }
    eventually(WAIT, "100 rows spilled", || async {
        (counters.spilled.load(Ordering::Relaxed) == 100).then_some(())
    })
    .await;
    writer.shutdown(Duration::from_secs(10)).await;
    db.pool().close().await;
    assert_eq!(
        (
            rows_in_stream(&env, &spill).await,
            counters.dropped.load(Ordering::Relaxed)
        ),
        (40, 60),
        "the spill keeps the newest 40 rows and counts the 60 it trimmed"
    );
    assert!(
        dropped_metric("spill_full") - full_before >= 60.0,
        "culm_ledger_rows_dropped_total{{reason=\"spill_full\"}} counts them"
    );

    // Entries replay cannot parse are moved aside, into a stream with the same bound.
    let mut c = env.store.connection();
    let _: () = redis::cmd("DEL").arg(&spill).query_async(&mut c).await.expect("DEL");
    for i in 0..50 {
        let _: String = redis::cmd("XADD")
            .arg(&spill)
            .arg("*")
            .arg("rows")
            .arg(format!("written by a culm from the future #{i}"))
            .query_async(&mut c)
            .await
            .expect("XADD");
    }
    proxy.restore();
    let (db, ledger, writer) = ledger_for(&env).await;
    eventually(WAIT, "the spill stream emptied", || async {
        (xlen(&env, &spill).await == 0).then_some(())
    })
    .await;
    writer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (
            xlen(&env, &format!("{spill}:unreadable")).await,
            ledger.counters().dropped.load(Ordering::Relaxed)
        ),
        (40, 10),
        "the unreadable stream keeps the newest 40 entries and counts the 10 it trimmed"
    );
    assert!(dropped_metric("unreadable_full") >= 10.0);
    env.cleanup().await;
    db.pool().close().await;
}

#[tokio::test]
async fn replaying_a_spilled_dead_row_keeps_a_redrive_and_never_moves_the_archive_back() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let job_id = ulid::Ulid::new().to_string();
    let t0 = (culm_core::now_ms() - 60_000) * 1000;
    let death = ledger_row(&job_id, 3, RunOutcome::Dead, t0);
    ledger.record(ledger_row(&job_id, 1, RunOutcome::FailedWillRetry, t0 - 2_000_000));
    ledger.record(ledger_row(&job_id, 2, RunOutcome::FailedWillRetry, t0 - 1_000_000));
    ledger.record(death.clone());
    eventually(WAIT, "the death archived", || async {
        db.dead_get(&job_id).await.expect("dead get")
    })
    .await;
    writer.shutdown(Duration::from_secs(5)).await;
    // Redis no longer holds the job: the archive re-drives it as a new job.
    let (_, runs_as) = db
        .dead_redrive(&env.store, &job_id)
        .await
        .expect("redrive")
        .expect("archived");
    let archived = || async {
        let r = sqlx::query("SELECT died_at, redriven_at, redriven_as, attempts FROM culm_dead_jobs WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(db.pool())
            .await
            .expect("archive row");
        (
            r.get::<chrono::DateTime<chrono::Utc>, _>("died_at").timestamp_micros(),
            r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("redriven_at")
                .is_some(),
            r.get::<Option<String>, _>("redriven_as"),
            r.get::<i32, _>("attempts"),
        )
    };
    assert_eq!(archived().await, (t0, true, Some(runs_as.clone()), 3));

    // A replica had spilled the same death during a blip, plus an older one; both replay.
    let spill = ledger::spill_key(&env.prefix);
    let spill_rows = |rows: Vec<LedgerRow>| {
        let env = &env;
        let spill = &spill;
        async move {
            let mut c = env.store.connection();
            for r in rows {
                let _: String = redis::cmd("XADD")
                    .arg(spill)
                    .arg("*")
                    .arg("rows")
                    .arg(serde_json::to_string(&[r]).expect("json"))
                    .query_async(&mut c)
                    .await
                    .expect("XADD");
            }
        }
    };
    let replay = || async {
        let (db2, _l, w) = ledger_for(&env).await;
        eventually(WAIT, "the spill replayed", || async {
            (xlen(&env, &spill).await == 0).then_some(())
        })
        .await;
        w.shutdown(Duration::from_secs(5)).await;
        db2.pool().close().await;
    };
    let older = ledger_row(&job_id, 1, RunOutcome::Dead, t0 - 5_000_000);
    spill_rows(vec![death.clone(), older.clone()]).await;
    replay().await;
    assert_eq!(
        archived().await,
        (t0, true, Some(runs_as.clone()), 3),
        "a replayed death the archive already has, or an older one, leaves the re-drive in place"
    );
    assert!(db.dead_list(Some("t_q"), 10).await.expect("list").is_empty());

    // A death after the re-drive is news: the archive moves forward, even when an older
    // death follows it in the same replay.
    let later = (culm_core::now_ms() + 1_000) * 1000;
    spill_rows(vec![ledger_row(&job_id, 4, RunOutcome::Dead, later), older]).await;
    replay().await;
    assert_eq!(archived().await, (later, false, None, 4));
    env.cleanup().await;
    db.pool().close().await;
}

/// A job whose `expires_at` passed before it could start leaves one ledger row with
/// outcome `expired` (the schema accepts it), and once Redis forgets the job its status
/// from the ledger still says `expired`.
#[tokio::test]
async fn an_expired_job_is_in_the_ledger_as_expired() {
    let tdb = TestDb::new();
    let env = env(&tdb.url).await;
    let (db, ledger, writer) = ledger_for(&env).await;
    env.store.pause("t_q").await.expect("pause");
    let job = env
        .enqueue(
            EnqueueRequest::raw("platform.noop", json!({}))
                .queue("t_q")
                .expires_in(Duration::from_millis(200)),
        )
        .await;
    let expires = culm_core::now_ms() + 200;
    eventually(WAIT, "the expiry passes", || async {
        (culm_core::now_ms() > expires).then_some(())
    })
    .await;
    let rt = env.runtime().with_ledger(ledger);
    let mut events = rt.events();
    let running = rt.start(&["t_q".to_owned()]).expect("start");
    env.store.resume("t_q").await.expect("resume");
    next_event(&mut events, WAIT, |e| e.id == job.id && is("expired", e)).await;
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(10)).await;
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT attempt, outcome FROM culm_job_runs WHERE job_id = $1")
        .bind(&job.id)
        .fetch_all(db.pool())
        .await
        .expect("ledger rows");
    assert_eq!(rows, vec![(1, "expired".to_owned())]);
    env.cleanup().await;
    let s = db.job_status(&job.id).await.expect("ledger status").expect("in ledger");
    assert_eq!(s.state.as_str(), "expired");
    db.pool().close().await;
}
