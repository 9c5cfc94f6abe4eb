//! The dashboard under `/ui` over real HTTP against the real Redis: login and sessions,
//! read versus admin, CSRF on every action, and each page's main action (pause a queue,
//! retry dead letters by filter with the count confirmed first, cancel a scheduled job,
//! trigger a schedule and see the tick, the replica list).
use culm_core::EnqueueRequest;
use culm_tests::{TestEnv, is, next_event, queue};
use culm_worker::{
    admin::{AdminState, Token},
    config::Scope,
    scheduler::{Scheduler, catalog::Catalog},
    store::{JobState, Routing},
};
use reqwest::{Client, StatusCode, header, redirect};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "ui-admin-secret";
const READER: &str = "ui-reader-secret";

struct Ui {
    base: String,
    http: Client,
    _stop: watch::Sender<bool>,
}

/// A logged-in browser: its session cookie.
struct Browser<'a> {
    ui: &'a Ui,
    cookie: String,
}

impl Ui {
    async fn start(env: &TestEnv) -> Ui {
        let tokens = vec![
            Token::new("ops", ADMIN, vec![Scope::Admin]),
            Token::new("support", READER, vec![Scope::Read]),
        ];
        let catalog = Catalog::from_sources(
            &[(
                "schedules/test.toml".into(),
                "[[schedule]]\nname = \"t.nightly\"\ncron = \"0 0 3 * * *\"\ntimezone = \"America/New_York\"\njob = \"platform.noop\"\nqueue = \"t_ui\"\noverlap = \"allow\"\ndescription = \"nightly test\"\n".into(),
            )],
            env.store.registry(),
            &Routing::from_config(&env.config, env.store.registry()),
        )
        .expect("catalog");
        let scheduler = Scheduler::new(env.store.clone(), catalog, &env.config);
        let (base, stop) = culm_tests::serve_admin(
            AdminState::new(&env.config, env.store.clone(), tokens).with_scheduler(Some(scheduler)),
        )
        .await;
        Ui {
            base,
            http: Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .expect("client"),
            _stop: stop,
        }
    }

    async fn login(&self, token: &str) -> Result<Browser<'_>, StatusCode> {
        let resp = self
            .http
            .post(format!("{}/ui/login", self.base))
            .form(&[("token", token)])
            .send()
            .await
            .expect("login sent");
        if resp.status() != StatusCode::SEE_OTHER {
            return Err(resp.status());
        }
        let set = resp
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        assert!(!set.contains(token), "the token is never in the cookie");
        let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
        assert_eq!(location, Some("/ui"));
        Ok(Browser {
            ui: self,
            cookie: set.split(';').next().unwrap_or_default().to_owned(),
        })
    }
}

impl Browser<'_> {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .ui
            .http
            .get(format!("{}{path}", self.ui.base))
            .header(header::COOKIE, &self.cookie)
            .send()
            .await
            .expect("sent");
        (resp.status(), resp.text().await.expect("body"))
    }

    /// The page's CSRF token (every mutating form carries it).
    async fn csrf(&self) -> String {
        let (_, page) = self.get("/ui").await;
        let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        page[at..at + 32].to_owned()
    }

    /// Posts a form; returns the status and where it redirects.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let resp = self
            .ui
            .http
            .post(format!("{}{path}", self.ui.base))
            .header(header::COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .expect("sent");
        let to = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (resp.status(), to)
    }
}

async fn env() -> TestEnv {
    TestEnv::new(|c| {
        c.queues.insert("t_ui".into(), queue("batch", 2, 5_000, 1));
        c.worker.idle_poll_interval = Duration::from_millis(50);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_reading_and_acting_need_the_right_token_and_the_csrf_token() {
    let env = env().await;
    let ui = Ui::start(&env).await;
    // Not logged in: every page sends to the login form.
    let r = ui.http.get(format!("{}/ui", ui.base)).send().await.expect("sent");
    assert_eq!(
        (
            r.status(),
            r.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
        ),
        (StatusCode::SEE_OTHER, Some("/ui/login"))
    );
    assert_eq!(ui.login("wrong").await.err(), Some(StatusCode::UNAUTHORIZED));

    let reader = ui.login(READER).await.expect("a read token logs in");
    let (s, page) = reader.get("/ui").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("t_ui") && page.contains("read only"), "{page}");
    assert!(!page.contains(READER), "no token in any page");
    let csrf = reader.csrf().await;
    let (s, _) = reader.post("/ui/queues/t_ui/pause", &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a read token sees, it does not act");

    let admin = ui.login(ADMIN).await.expect("an admin token logs in");
    let (s, _) = admin.post("/ui/queues/t_ui/pause", &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another session's CSRF token is refused");
    let (s, _) = admin.post("/ui/queues/t_ui/pause", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a form without its CSRF token is refused");
    assert!(!env.store.stats("t_ui").await.expect("stats").paused);

    let csrf = admin.csrf().await;
    let (s, to) = admin.post("/ui/queues/t_ui/pause", &[("csrf", &csrf)]).await;
    assert_eq!((s, to.starts_with("/ui/queues/t_ui")), (StatusCode::SEE_OTHER, true));
    assert!(env.store.stats("t_ui").await.expect("stats").paused);
    let (_, page) = admin.get("/ui").await;
    assert!(page.contains("tag paused"), "the overview shows it paused");
    let (_, page) = admin.get("/ui/queues/t_ui").await;
    assert!(page.contains(">Resume<"), "{page}");
    let (s, _) = admin.post("/ui/queues/t_ui/resume", &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(!env.store.stats("t_ui").await.expect("stats").paused);

    let (s, to) = admin.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/ui/login"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_by_filter_after_a_confirmation_that_shows_the_count() {
    let env = env().await;
    let ui = Ui::start(&env).await;
    let admin = ui.login(ADMIN).await.expect("login");
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_ui".into()]).expect("start");
    let reqs = ["card closed", "card closed", "other"]
        .iter()
        .map(|r| EnqueueRequest::raw("platform.fail_permanently", json!({ "reason": r })).queue("t_ui"))
        .collect();
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    let mut left: std::collections::HashSet<String> = ids.iter().cloned().collect();
    while !left.is_empty() {
        let e = next_event(&mut events, WAIT, |e| left.contains(&e.id) && is("dead", e)).await;
        left.remove(&e.id);
    }
    running.shutdown().await;

    let (s, page) = admin.get("/ui/dead?queue=t_ui&error=card").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains(&ids[0]) && page.contains(&ids[1]) && !page.contains(&ids[2]),
        "{page}"
    );
    let (_, confirm) = admin.get("/ui/dead/confirm?action=retry&queue=t_ui&error=card").await;
    assert!(confirm.contains("<strong id=\"match-count\">2</strong>"), "{confirm}");
    let csrf = admin.csrf().await;
    let (s, to) = admin
        .post(
            "/ui/dead/act",
            &[
                ("csrf", &csrf),
                ("all", "1"),
                ("action", "retry"),
                ("queue", "t_ui"),
                ("error", "card"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(to.contains("msg=Retried%202%20of%202"), "{to}");
    for (id, want) in [
        (&ids[0], JobState::Pending),
        (&ids[1], JobState::Pending),
        (&ids[2], JobState::Dead),
    ] {
        assert_eq!(env.store.status(id).await.expect("status").map(|s| s.state), Some(want));
    }
    // A selection: purge the last one from its job page.
    let (_, page) = admin.get(&format!("/ui/jobs/{}", ids[2])).await;
    assert!(
        page.contains("other") && page.contains("&quot;reason&quot;: &quot;other&quot;"),
        "payload and error shown: {page}"
    );
    let (s, _) = admin
        .post(
            "/ui/dead/act",
            &[("csrf", &csrf), ("action", "purge"), ("ids", &ids[2])],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(env.store.status(&ids[2]).await.expect("status").is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_is_cancelled_and_a_triggered_schedule_shows_its_tick() {
    let env = env().await;
    let ui = Ui::start(&env).await;
    let admin = ui.login(ADMIN).await.expect("login");
    let later = env
        .enqueue(
            EnqueueRequest::raw("platform.noop", json!({}))
                .queue("t_ui")
                .delay(Duration::from_secs(3600)),
        )
        .await;
    let (_, page) = admin.get("/ui/queues/t_ui?state=scheduled").await;
    assert!(page.contains(&later.id), "{page}");
    let csrf = admin.csrf().await;
    let (s, _) = admin
        .post(&format!("/ui/jobs/{}/cancel", later.id), &[("csrf", &csrf)])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let st = env.store.status(&later.id).await.expect("status").expect("known");
    assert_eq!(st.state, JobState::Cancelled);
    let (_, page) = admin.get(&format!("/ui/jobs/{}", later.id)).await;
    assert!(page.contains("tag cancelled"), "{page}");

    let (_, page) = admin.get("/ui/schedules").await;
    assert!(
        page.contains("t.nightly") && page.contains("America/New_York"),
        "{page}"
    );
    let (s, to) = admin.post("/ui/schedules/t.nightly/trigger", &[("csrf", &csrf)]).await;
    assert_eq!(
        (s, to.starts_with("/ui/schedules/t.nightly")),
        (StatusCode::SEE_OTHER, true)
    );
    let (_, page) = admin.get("/ui/schedules/t.nightly").await;
    assert!(
        page.contains("manual trigger") && page.contains("tag triggered"),
        "{page}"
    );

    let running = env.runtime().start(&["t_ui".into()]).expect("start");
    let (_, page) = culm_tests::eventually(WAIT, "the replica listed", || async {
        let (s, page) = admin.get("/ui/workers").await;
        page.contains(">t_ui</a> 0/2").then_some((s, page))
    })
    .await;
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_page_links_its_follow_ups_and_a_follow_up_links_its_parent() {
    let env = env().await;
    let ui = Ui::start(&env).await;
    let reader = ui.login(READER).await.expect("login");
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_ui".into()]).expect("start");
    let set = env.key("chain");
    let parent = env
        .enqueue(EnqueueRequest::raw("platform.chain", json!({"set": set, "steps": 2})).queue("t_ui"))
        .await;
    next_event(&mut events, WAIT, |e| e.id == parent.id && is("done", e)).await;
    // The second step runs under the key culm gave it: `<parent>:then:0`.
    let child = eventually_child(&env, &parent.id).await;
    next_event(&mut events, WAIT, |e| e.id == child && is("done", e)).await;
    running.shutdown().await;
    let (_, page) = reader.get(&format!("/ui/jobs/{}", parent.id)).await;
    assert!(page.contains(&format!("href=\"/ui/jobs/{child}\"")), "{page}");

    // A follow-up still waiting shows its parent.
    let mut waiting = EnqueueRequest::raw("platform.noop", json!({}))
        .queue("t_ui")
        .delay(Duration::from_secs(3600));
    waiting.idempotency_key = Some(format!("{}:then:7", parent.id));
    let waiting = env.enqueue(waiting).await;
    let (_, page) = reader.get(&format!("/ui/jobs/{}", waiting.id)).await;
    assert!(page.contains(&format!("href=\"/ui/jobs/{}\"", parent.id)), "{page}");
    env.cleanup().await;
}

async fn eventually_child(env: &TestEnv, parent: &str) -> String {
    culm_tests::eventually(WAIT, "the follow-up stored", || async {
        env.store
            .follow_ups(parent, 5)
            .await
            .ok()?
            .into_iter()
            .next()
            .map(|(_, id)| id)
    })
    .await
}

#[tokio::test]
async fn the_integrations_page_shows_each_endpoints_limit_rate_429s_and_the_breaker() {
    use culm_jobs::http::{Client as Integration, config::IntegrationSettings};
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::path};
    let env = env().await;
    let ui = Ui::start(&env).await;
    let server = MockServer::start().await;
    Mock::given(path("/bamboo/orders"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .expect(1)
        .mount(&server)
        .await;
    let c = &env.config;
    let mut s = IntegrationSettings::resolve("bamboo", &c.integrations["bamboo"], &c.integration_defaults);
    s.base_url = format!("{}/bamboo", server.uri());
    let bamboo = Integration::new(s, culm_worker::integrations::conn(&env.store), &env.prefix, None).expect("client");
    assert!(
        bamboo.post("place_order", "/orders").send().await.is_err(),
        "429 defers"
    );
    // Unit21's breaker, opened by one failure (threshold 1) for two minutes.
    Mock::given(path("/unit21/events"))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = IntegrationSettings::resolve("unit21", &c.integrations["unit21"], &c.integration_defaults);
    s.base_url = format!("{}/unit21", server.uri());
    s.transport_retries = 0;
    s.breaker.failure_threshold = 1;
    s.breaker.open_for = Duration::from_secs(120);
    let unit21 = Integration::new(s, culm_worker::integrations::conn(&env.store), &env.prefix, None).expect("client");
    assert!(unit21.post("events", "/events").send().await.is_err(), "500 fails");

    let reader = ui.login(READER).await.expect("a read token logs in");
    let (status, page) = reader.get("/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("href=\"/ui/integrations\""), "linked from the navigation");
    // The call's statistics are written after its result: wait until the page has them.
    let page = culm_tests::eventually(WAIT, "the 429 on the integrations page", || async {
        let (status, page) = reader.get("/ui/integrations").await;
        assert_eq!(status, StatusCode::OK);
        let place = row(&page, "place_order")?;
        // Each call's statistics, both written: Unit21's endpoint is listed once called.
        row(&page, "events")?;
        // Endpoint, limit, rate in force (halved by the 429), requests, 429s.
        (cells(&place)[..5] == ["place_order", "2 / 1s", "1 / 1s", "1", "1"]).then_some(page)
    })
    .await;
    let get_order = row(&page, "get_order").expect("every limited endpoint is listed");
    assert_eq!(cells(&get_order)[..4], ["get_order", "120 / 1m", "120 / 1m", "0"]);
    let section = |name: &str| {
        let at = page
            .find(&format!("id=\"integration-{name}\""))
            .expect("a section per integration");
        page[at..at + page[at..].find("</section>").expect("section ends")].to_owned()
    };
    assert!(
        section("bamboo").contains("breaker closed"),
        "Bamboo's breaker is closed"
    );
    let unit21 = section("unit21");
    assert!(unit21.contains("breaker open") && unit21.contains("until "), "{unit21}");
    let events = row(&unit21, "events").expect("the called endpoint is listed");
    // No limit, no rate; one request, no 429, one failure.
    assert_eq!(cells(&events)[..6], ["events", "none", "–", "1", "0", "1"]);
    assert_eq!(
        page.matches("method=\"post\"").count(),
        1,
        "read only: no form but logging out"
    );
    env.cleanup().await;
}

/// The first table row of `page` whose first cell is `endpoint`.
fn row(page: &str, endpoint: &str) -> Option<String> {
    let at = page.find(&format!("<tr><td><code>{endpoint}</code>"))?;
    let end = page[at..].find("</tr>")? + at;
    Some(page[at..end].to_owned())
}

/// The text of each cell of `row`, tags removed.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let mut text = String::new();
            let mut in_tag = true;
            for ch in c.chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    _ if !in_tag => text.push(ch),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batches_pages_show_counts_callbacks_and_members_linked_from_a_members_job_page() {
    let env = env().await;
    let ui = Ui::start(&env).await;
    let reader = ui.login(READER).await.expect("login");
    let b = env
        .store
        .create_batch(culm_worker::store::NewBatch {
            jobs: vec![
                EnqueueRequest::raw("platform.noop", json!({})).queue("t_ui"),
                EnqueueRequest::raw("platform.noop", json!({})).queue("t_ui"),
            ],
            on_complete: Some(EnqueueRequest::raw("platform.noop", json!({})).queue("t_ui")),
            description: Some("statements 2026-11".into()),
            ..Default::default()
        })
        .await
        .expect("create");
    let (s, list) = reader.get("/ui/batches").await;
    assert_eq!(s, StatusCode::OK);
    assert!(list.contains(&format!("href=\"/ui/batches/{}\"", b.id)), "{list}");
    assert!(list.contains("statements 2026-11"), "{list}");
    // A pending member's page links its batch; the batch page lists its members.
    let member = &b.jobs[1].id;
    let (_, job) = reader.get(&format!("/ui/jobs/{member}")).await;
    assert!(job.contains(&format!("href=\"/ui/batches/{}\"", b.id)), "{job}");
    let (s, page) = reader.get(&format!("/ui/batches/{}", b.id)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(&format!("href=\"/ui/jobs/{member}\"")), "{page}");
    assert!(page.contains("0% (0 of 2)"), "{page}");
    assert!(page.contains("on_complete"), "{page}");
    let (s, _) = reader.get("/ui/batches/01NOSUCHBATCH").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}
