//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver; `scripts/test-deps.sh` installs Debian's `chromium` and
//! `chromium-driver`) against a real `culm run`. It logs in, pauses a queue and sees it
//! paused, retries a dead job and sees it done, cancels a scheduled job, triggers a
//! schedule and sees the tick, and bulk-retries dead letters by filter. A screenshot of
//! each page goes to `target/dashboard-screenshots/`.
use culm_core::EnqueueRequest;
use culm_tests::{KillOnDrop, TestEnv, culm_bin, eventually, workspace_root};
use culm_worker::store::JobState;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "browser-test-admin-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn shots_dir() -> PathBuf {
    let dir = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The browser, a `culm run` and where they are.
struct Rig {
    browser: Client,
    base: String,
    _culm: KillOnDrop,
    _driver: KillOnDrop,
}

impl Rig {
    async fn start(env: &TestEnv) -> Rig {
        let admin_port = free_port();
        let culm = Command::new(culm_bin())
            .current_dir(workspace_root())
            .args(["run", "--queues", "platform"])
            .env("CULM_REDIS_URL", culm_tests::redis_url())
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("CULM__WORKER__IDLE_POLL_INTERVAL", "100ms")
            .env("CULM_ADMIN_TOKEN", TOKEN)
            .env("CULM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("culm run starts");
        let culm = KillOnDrop(Some(culm));
        let driver_port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test-deps.sh installs Debian's chromium-driver)");
        let driver = KillOnDrop(Some(driver));
        let base = format!("http://127.0.0.1:{admin_port}");
        let http = reqwest::Client::new();
        eventually(WAIT, "culm run's admin listener", || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"]
            }
        });
        let caps = caps.as_object().cloned().expect("an object");
        let browser = eventually(WAIT, "chromedriver to accept a session", || {
            let caps = caps.clone();
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{driver_port}"))
                    .await
                    .ok()
            }
        })
        .await;
        Rig {
            browser,
            base,
            _culm: culm,
            _driver: driver,
        }
    }

    async fn goto(&self, path: &str) {
        self.browser
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigates");
    }

    async fn source(&self) -> String {
        self.browser.source().await.expect("page source")
    }

    /// Clicks `css` (every click here submits a form or follows a link) and waits until
    /// the browser has left the page: a `goto` while the form's request is still pending
    /// cancels it, and the action never reaches culm.
    async fn click(&self, css: &str) {
        let element = self
            .browser
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"));
        element.clone().click().await.expect("clicks");
        eventually(WAIT, "the click's page replaced", || async {
            element.is_enabled().await.is_err().then_some(())
        })
        .await;
    }

    /// Waits until the current page, reloaded, contains `text`.
    async fn until_page_has(&self, path: &str, text: &str) -> String {
        eventually(WAIT, text, || async {
            self.goto(path).await;
            let page = self.source().await;
            page.contains(text).then_some(page)
        })
        .await
    }

    async fn shot(&self, name: &str) {
        let png = self.browser.screenshot().await.expect("screenshot");
        std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// Turns pending jobs of a paused queue into dead letters, as if each had died on its
/// last attempt during an upstream outage (the handlers themselves would succeed now).
async fn kill_as_outage(env: &TestEnv, ids: &[String]) {
    let keys = env.store.keys("platform");
    let mut c = env.store.connection();
    let now = culm_core::now_ms();
    for id in ids {
        let errors = json!([{ "attempt": 1, "at": now, "error": "upstream answered 503 (outage)" }]).to_string();
        redis::pipe()
            .lrem(keys.ready(), 0, id)
            .ignore()
            .zadd(keys.dead(), id, now)
            .ignore()
            .hset(keys.errors(), id, errors)
            .ignore()
            .hset(keys.attempts(), id, 1)
            .ignore()
            .exec_async(&mut c)
            .await
            .expect("dead letter written");
    }
}

async fn state(env: &TestEnv, id: &str) -> Option<JobState> {
    env.store.status(id).await.ok().flatten().map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_culm_from_the_dashboard_in_a_real_browser() {
    let env = TestEnv::new(|_| {}).await;
    let rig = Rig::start(&env).await;

    // 1. Log in.
    rig.goto("/ui").await;
    rig.browser
        .wait()
        .for_element(Locator::Css("input[name=token]"))
        .await
        .expect("the login form")
        .send_keys(TOKEN)
        .await
        .expect("types");
    rig.shot("01-login").await;
    rig.click("button[type=submit]").await;
    let page = rig.until_page_has("/ui", "(admin)").await;
    assert!(
        page.contains("Tier: batch") && !page.contains(TOKEN),
        "logged in, no token shown"
    );
    assert!(
        !rig.browser.current_url().await.expect("url").as_str().contains(TOKEN),
        "no token in any URL"
    );

    // 2. Pause a queue and see it paused.
    rig.goto("/ui/queues/platform").await;
    rig.click("form[action='/ui/queues/platform/pause'] button").await;
    let page = rig.until_page_has("/ui/queues/platform", "tag paused").await;
    assert!(page.contains(">Resume<"));
    assert!(env.store.stats("platform").await.expect("stats").paused);
    rig.shot("02-queue-paused").await;

    // Dead letters to work with: one alone, three from one outage, one other failure.
    let mut reqs: Vec<EnqueueRequest> = (0..4)
        .map(|_| EnqueueRequest::raw("platform.noop", json!({})).queue("platform"))
        .collect();
    reqs.push(EnqueueRequest::raw("platform.fail_permanently", json!({"reason": "card closed"})).queue("platform"));
    let ids = culm_tests::enqueue_ids(&env.store, reqs).await;
    kill_as_outage(&env, &ids[..4]).await;
    rig.goto("/ui/queues/platform").await;
    rig.click("form[action='/ui/queues/platform/resume'] button").await;
    rig.until_page_has("/ui/queues/platform", ">Pause<").await;
    // The permanently failing job runs and dies.
    eventually(WAIT, "the failing job dead", || async {
        (state(&env, &ids[4]).await == Some(JobState::Dead)).then_some(())
    })
    .await;

    // 3. Retry one dead job from its page and see it done.
    rig.goto(&format!("/ui/jobs/{}", ids[0])).await;
    assert!(rig.source().await.contains("upstream answered 503"));
    rig.shot("03-job-dead").await;
    rig.click(&format!("form[action='/ui/jobs/{}/retry'] button", ids[0]))
        .await;
    rig.until_page_has(&format!("/ui/jobs/{}", ids[0]), "tag done").await;
    rig.shot("04-job-done").await;

    // 4. Cancel a scheduled job.
    let later = env
        .enqueue(
            EnqueueRequest::raw("platform.noop", json!({}))
                .queue("platform")
                .delay(Duration::from_secs(3600)),
        )
        .await;
    rig.goto("/ui/queues/platform?state=scheduled").await;
    assert!(rig.source().await.contains(&later.id));
    rig.shot("05-queue-scheduled").await;
    rig.goto(&format!("/ui/jobs/{}", later.id)).await;
    rig.click(&format!("form[action='/ui/jobs/{}/cancel'] button", later.id))
        .await;
    rig.until_page_has(&format!("/ui/jobs/{}", later.id), "tag cancelled")
        .await;
    assert_eq!(state(&env, &later.id).await, Some(JobState::Cancelled));

    // 5. Trigger a schedule and see the tick.
    rig.goto("/ui/schedules").await;
    rig.shot("06-schedules").await;
    rig.goto("/ui/schedules/platform.heartbeat").await;
    rig.click("form[action='/ui/schedules/platform.heartbeat/trigger'] button")
        .await;
    let page = rig
        .until_page_has("/ui/schedules/platform.heartbeat", "manual trigger")
        .await;
    assert!(page.contains("tag triggered"), "the tick and its outcome are listed");
    rig.shot("07-schedule-ticks").await;

    // 6. Bulk-retry dead letters by filter, after a confirmation showing the count.
    rig.goto("/ui/dead?queue=platform&error=503").await;
    let page = rig.source().await;
    assert!(
        page.contains(&ids[1]) && !page.contains(&ids[4]),
        "the filter leaves the other failure out"
    );
    rig.shot("08-dead-letters").await;
    rig.click("a[href^='/ui/dead/confirm?action=retry']").await;
    let count = rig
        .browser
        .wait()
        .for_element(Locator::Id("match-count"))
        .await
        .expect("the confirmation")
        .text()
        .await
        .expect("count");
    assert_eq!(count, "3");
    rig.shot("09-confirm").await;
    rig.click("button[name=action][value=retry]").await;
    eventually(WAIT, "the three re-driven jobs done", || async {
        for id in &ids[1..4] {
            if state(&env, id).await != Some(JobState::Done) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(
        state(&env, &ids[4]).await,
        Some(JobState::Dead),
        "outside the filter: untouched"
    );

    rig.goto("/ui/workers").await;
    assert!(rig.source().await.contains("platform"));
    rig.shot("10-workers").await;
    // The integrations page, read-only: every configured integration with its breaker.
    rig.until_page_has("/ui/integrations", "bamboo").await;
    rig.shot("11-integrations").await;
    rig.until_page_has("/ui", "Jobs per minute").await;
    rig.shot("00-overview").await;
    rig.browser.clone().close().await.expect("browser closes");
    env.cleanup().await;
}
