//! Job handlers run inline with the test kit (`culm_core::testing`, `culm_jobs::testing`):
//! no worker, no queue. Upstreams are wiremock servers whose `.expect(n)` call counts are
//! verified when the server is dropped, so a duplicated money movement fails the test.
//! The shared rate limiter runs on the real Redis, under a key prefix of the test's own.
use culm_core::{EnqueueRequest, Job};
use culm_jobs::{
    bamboo::{AcceptOrder, PlaceOrder, PollOrder, RecordResult},
    files::{GenerateStatement, StatementRun},
    galileo::{ProcessAuthorization, Transfer},
    mail::{Campaign, CampaignReport, Channel},
    platform::Chain,
    testing::{TestIntegrations, kit},
    unit21::SendEvent,
};
use serde_json::json;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{any, body_partial_json, header, method, path},
};

/// Clients for `integrations`, each at `<server>/<name>` as in the sandbox.
async fn upstreams(server: &MockServer, integrations: &[&str]) -> TestIntegrations {
    let mut t = TestIntegrations::connect().await.expect("the test Redis is reachable");
    for name in integrations {
        t = t.point(name, &format!("{}/{name}", server.uri()));
    }
    t
}

/// Every money-moving job sends `ctx.idempotency_key()` (`culm-<job id>`) as
/// `Idempotency-Key`, and a retry of the same job (same id, next attempt) sends the same
/// key, so the upstream executes it once.
#[tokio::test]
async fn money_moving_jobs_send_their_job_id_as_idempotency_key() {
    let server = MockServer::start().await;
    let money = [
        ("galileo.load_card", "/galileo/cards/card_2001/loads"),
        ("galileo.transfer", "/galileo/transfers"),
        ("crossborder.send_transfer", "/crossborder/transfers"),
        ("ding.top_up", "/ding/topups"),
        ("bamboo.place_order", "/bamboo/orders"),
    ];
    // The transfer fails once with a 500; the retry must carry the same key.
    Mock::given(method("POST"))
        .and(path("/galileo/transfers"))
        .and(header("idempotency-key", "culm-job-galileo-transfer"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    // One successful call each (the transfer's retry included).
    for (job, p) in money {
        Mock::given(method("POST"))
            .and(path(p))
            .and(header("idempotency-key", format!("culm-job-{}", job.replace('.', "-"))))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "up-1"})))
            .expect(1)
            .mount(&server)
            .await;
    }
    let t = upstreams(&server, &["galileo", "crossborder", "ding", "bamboo"]).await;
    let kit = t.kit();
    let registry = culm_jobs::registry().expect("registry");
    for (job, _) in money {
        let example = registry.get(job).and_then(|s| s.example.clone()).expect("example");
        let req = EnqueueRequest::raw(job, example);
        let id = format!("job-{}", job.replace('.', "-"));
        if job == "galileo.transfer" {
            let first = kit.perform_request(&req).id(&id).await;
            assert!(first.assert_retry().contains("HTTP 500"), "{first:?}");
            kit.perform_request(&req).id(&id).attempt(2).await.assert_done();
        } else {
            kit.perform_request(&req).id(&id).await.assert_done();
        }
    }
    t.cleanup().await;
    // `server` is dropped here: every `.expect(n)` is checked.
}

/// The Bamboo pipeline, one step at a time: accept → place (one POST) → poll until
/// fulfilled (not found, pending, fulfilled) → record the result in Redis.
#[tokio::test]
async fn bamboo_pipeline_runs_through_continuations() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/bamboo/orders"))
        .and(body_partial_json(json!({"order_id": "ord-p1", "quantity": 1})))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"order_id": "ord-p1", "status": "pending"})))
        .expect(1)
        .mount(&server)
        .await;
    // Not visible yet, then pending, then fulfilled.
    Mock::given(method("GET"))
        .and(path("/bamboo/orders/ord-p1"))
        .respond_with(ResponseTemplate::new(404).set_body_string("order not found"))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bamboo/orders/ord-p1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"order_id": "ord-p1", "status": "pending"})))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bamboo/orders/ord-p1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"order_id": "ord-p1", "status": "fulfilled", "cards": [{"code": "XXXX"}]})),
        )
        .expect(1)
        .with_priority(3)
        .mount(&server)
        .await;
    let t = upstreams(&server, &["bamboo"]).await;
    let kit = t.kit();

    let accepted = kit
        .perform(AcceptOrder {
            order_id: "ord-p1".into(),
            sku: "AMAZON_US_25".into(),
            quantity: 1,
            account_id: "acc_1".into(),
        })
        .await;
    accepted.assert_done();
    let [place] = <[PlaceOrder; 1]>::try_from(accepted.follow_ups_of::<PlaceOrder>()).expect("one placement");
    assert_eq!((place.order_id.as_str(), place.quantity), ("ord-p1", 1));

    let placed = kit.perform(place).await;
    placed.assert_done();
    let first_poll = placed.assert_enqueued_with(PollOrder::NAME, json!({"order_id": "ord-p1", "polls": 0}));
    assert!(first_poll.run_at_ms.is_some(), "the first poll is delayed");

    // Follow the polls as the worker would, each step being the previous one's follow-up.
    let mut next = first_poll.clone();
    let mut polls = 0;
    let record = loop {
        let polled = kit.perform_request(&next).await;
        polled.assert_done();
        polls += 1;
        if let Some(r) = polled.follow_ups().iter().find(|r| r.job == RecordResult::NAME) {
            break r.clone();
        }
        next = polled.assert_enqueued(PollOrder::NAME).clone();
        assert!(polls < 5, "still polling after {polls} polls");
    };
    assert_eq!(polls, 3, "polled until fulfilled: not found, pending, fulfilled");

    let recorded = kit.perform_request(&record).await;
    assert_eq!(
        recorded.assert_done().summary.as_deref(),
        Some("order ord-p1: fulfilled")
    );
    let stored: Option<String> = redis::cmd("GET")
        .arg(t.key("bamboo:order:ord-p1"))
        .query_async(&mut t.redis())
        .await
        .expect("GET");
    let v: serde_json::Value = serde_json::from_str(&stored.expect("the result is recorded")).expect("JSON");
    assert_eq!(v["status"], "fulfilled");
    assert_eq!(v["cards"][0]["code"], "XXXX");
    assert_eq!(v["job_id"], recorded.id.as_str());
    t.cleanup().await;
}

/// A statement run over 1,200 accounts enqueues them in 3 batches of at most 500, each
/// keyed by the run's id; a redelivered run (same id) creates nothing new.
#[tokio::test]
async fn a_statement_run_fans_out_in_batches() {
    let kit = kit();
    let run = StatementRun {
        period: "2026-10".into(),
        account_ids: (0..1200).map(|i| format!("acc_{i}")).collect(),
    };
    let first = kit.perform(run.clone()).id("01RUN").await;
    first.assert_done();
    assert_eq!(first.enqueue_calls, 3, "1200 jobs in 3 enqueue calls");
    assert_eq!(first.created, 1200);
    let statements = first.enqueued_of::<GenerateStatement>();
    assert_eq!(statements.len(), 1200);
    assert!(statements.iter().all(|s| s.period == "2026-10"));
    assert_eq!(first.enqueued[7].idempotency_key.as_deref(), Some("01RUN:fan:7"));
    let again = kit.perform(run).id("01RUN").await;
    again.assert_done();
    assert_eq!(
        (again.enqueued.len(), again.created),
        (1200, 0),
        "a redelivery creates nothing"
    );
}

/// A campaign puts its sends in one tracked batch whose `on_complete` is the campaign's
/// report; the batch id and the sends' keys derive from the campaign job's id, so a
/// redelivered campaign creates nothing new.
#[tokio::test]
async fn a_campaign_sends_in_a_tracked_batch_reported_once_complete() {
    let kit = kit();
    let campaign = Campaign {
        campaign_id: "cmp_9".into(),
        channel: Channel::Email,
        template: "news".into(),
        recipients: (0..3).map(|i| format!("r{i}@example.com")).collect(),
        segment: String::new(),
    };
    let first = kit.perform(campaign.clone()).id("01CMP").await;
    first.assert_done();
    assert_eq!(first.batches.len(), 1);
    let batch = &first.batches[0];
    assert_eq!(batch.id, "01CMP-b0");
    assert_eq!(batch.jobs.len(), 3);
    assert_eq!(
        batch.on_complete.as_ref().map(|r| r.job.as_str()),
        Some(CampaignReport::NAME)
    );
    assert_eq!(
        first.enqueued[2].idempotency_key.as_deref(),
        Some("batchm:01CMP-b0:m:2")
    );
    let again = kit.perform(campaign).id("01CMP").await;
    again.assert_done();
    assert_eq!(
        (again.batches[0].id.as_str(), again.created),
        ("01CMP-b0", 0),
        "a redelivery creates nothing"
    );
}

/// A platform chain step records itself and continues with the next step in the same
/// queue; the last step continues with nothing.
#[tokio::test]
async fn a_chain_step_continues_with_the_next_in_its_queue() {
    let t = TestIntegrations::connect().await.expect("the test Redis is reachable");
    let kit = t.kit();
    let set = t.key("chain");
    let step = kit
        .perform(Chain {
            set: set.clone(),
            step: 1,
            steps: 2,
        })
        .queue("t_chain")
        .await;
    step.assert_done();
    let next = step.assert_enqueued_with(Chain::NAME, json!({"step": 2, "steps": 2}));
    assert_eq!(next.queue.as_deref(), Some("t_chain"), "the chain stays in its queue");
    assert_eq!(step.follow_ups().len(), 1);

    let last = kit.perform_request(next).await;
    assert_eq!(last.assert_done().summary.as_deref(), Some("chain complete"));
    last.refute_enqueued(Chain::NAME);
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&set)
        .query_async(&mut t.redis())
        .await
        .expect("SMEMBERS");
    members.sort();
    assert_eq!(members, ["step-1", "step-2"]);
    t.cleanup().await;
}

/// An authorization is processed once at Galileo and continues with a Unit21 fraud event
/// (a follow-up in the third-party tier, not a call from the critical pool).
#[tokio::test]
async fn an_authorization_continues_with_a_fraud_event() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/galileo/authorizations/auth-9/process"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "g-1"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/unit21/events"))
        .and(body_partial_json(
            json!({"event_id": "auth-auth-9", "amount_cents": 1299}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u-1"})))
        .expect(1)
        .mount(&server)
        .await;
    let t = upstreams(&server, &["galileo", "unit21"]).await;
    let kit = t.kit();
    let processed = kit
        .perform(ProcessAuthorization {
            authorization_id: "auth-9".into(),
            account_id: "acc_1".into(),
            amount_cents: 1299,
            merchant: "Corner Store".into(),
        })
        .await;
    processed.assert_done();
    let event = processed.assert_enqueued(SendEvent::NAME).clone();
    assert_eq!(event.idempotency_key, Some(format!("{}:then:0", processed.id)));
    kit.perform_request(&event).await.assert_done();
    t.cleanup().await;
}

/// Bad input fails permanently before any upstream call; a 4xx from the upstream does too,
/// and neither continues with anything.
#[tokio::test]
async fn invalid_requests_fail_permanently_and_continue_with_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/galileo/transfers"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"error": "account closed"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .with_priority(u8::MAX)
        .expect(0)
        .mount(&server)
        .await;
    let t = upstreams(&server, &["galileo", "bamboo"]).await;
    let kit = t.kit();

    let order = kit
        .perform(AcceptOrder {
            order_id: "ord-1".into(),
            sku: "AMAZON_US_25".into(),
            quantity: 0,
            account_id: String::new(),
        })
        .await;
    assert!(order.assert_permanent().contains("quantity between 1 and 100"));
    order.refute_enqueued(PlaceOrder::NAME);

    let same_account = kit
        .perform(Transfer {
            transfer_id: "tr-1".into(),
            from_account: "acc_1".into(),
            to_account: "acc_1".into(),
            amount_cents: 100,
            memo: String::new(),
        })
        .await;
    assert!(same_account.assert_permanent().contains("two different accounts"));

    let closed = kit
        .perform(Transfer {
            transfer_id: "tr-2".into(),
            from_account: "acc_1".into(),
            to_account: "acc_2".into(),
            amount_cents: 100,
            memo: String::new(),
        })
        .await;
    let reason = closed.assert_permanent();
    assert!(
        reason.contains("HTTP 422") && reason.contains("account closed"),
        "{reason}"
    );

    // A stored payload that no longer matches the job type is dead-lettered, as in the worker.
    let stale = kit
        .perform_request(&EnqueueRequest::raw(Transfer::NAME, json!({"transfer_id": "tr-3"})))
        .await;
    assert!(stale.assert_permanent().contains("from_account"), "{stale:?}");
    t.cleanup().await;
}

/// `salesforce.sync_contact` is a batch job type: one handler call for three contacts
/// sends one collections upsert (one request) with the two that have an address; each
/// contact ends on its own record's result.
#[tokio::test]
async fn contacts_are_upserted_many_per_request_and_each_ends_on_its_own_result() {
    use culm_jobs::crm::{CONTACT_UPSERT_PATH, SyncContact};
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(format!("/salesforce{CONTACT_UPSERT_PATH}")))
        .and(body_partial_json(json!({"allOrNone": false, "records": [
            {"user_id": "u1", "email": "one@example.com"},
            {"user_id": "u3", "email": "three@example.com"},
        ]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "003A", "success": true, "errors": []},
            {"id": null, "success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "row locked"}]},
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let t = upstreams(&server, &["salesforce"]).await;
    let contact = |user: &str, email: &str| SyncContact {
        user_id: user.into(),
        email: email.into(),
        first_name: String::new(),
        last_name: String::new(),
    };
    let runs = t
        .kit()
        .perform_many(vec![
            contact("u1", "one@example.com"),
            contact("u2", "not-an-address"),
            contact("u3", "three@example.com"),
        ])
        .await;
    assert_eq!(runs.len(), 3, "one result per contact");
    let done = runs[0].assert_done();
    assert!(done.summary.as_deref().is_some_and(|s| s.contains("003A")), "{done:?}");
    assert!(runs[1].assert_permanent().contains("not an address"), "{:?}", runs[1]);
    assert!(runs[2].assert_retry().contains("UNABLE_TO_LOCK_ROW"), "{:?}", runs[2]);
    // A contact alone still goes through the same handler (a group of one).
    let alone = t.kit().perform(contact("u4", "nope")).await;
    assert!(alone.assert_permanent().contains("not an address"));
    t.cleanup().await;
}
