//! Third-party synchronisation families (third-party tier): Salesforce CRM sync,
//! AppsFlyer attribution events, Veriff and Persona identity verification, Kard
//! rewards and Avalara tax calculation. One queue per integration.
use crate::{
    http::client,
    job,
    support::{THIRD_PARTY, done, follow, seg},
};
use culm_core::{JobContext, JobError, Outcome, Registry, RegistryError};
use std::time::Duration;

/// Registers the CRM, attribution, identity, rewards and tax job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register_batch::<SyncContact>()?
        .register::<SyncAccountStatus>()?
        .register::<CreateCase>()?
        .register::<SendAttributionEvent>()?
        .register::<PullReport>()?
        .register::<CreateVeriffSession>()?
        .register::<FetchVeriffDecision>()?
        .register::<CreateInquiry>()?
        .register::<FetchInquiry>()?
        .register::<SendRewardTransaction>()?
        .register::<IssueReward>()?
        .register::<SyncOffers>()?
        .register::<CalculateTax>()?
        .register::<CommitTax>()?
        .register::<PullChanges>()?
        .register::<SyncPendingSessions>()?
        .register::<SyncPendingInquiries>()?
        .register::<SyncRewards>()?
        .register::<ReconcileTax>()?
        .register::<SyncTaxCodes>()?;
    Ok(())
}

/// Decision polls before a verification is handed to a human.
pub const MAX_DECISION_POLLS: u32 = 30;

// --- Salesforce ------------------------------------------------------------------------

/// Upserts a customer contact in Salesforce. A batch job type: the worker hands up to
/// [`SyncContact::MAX_BATCH`] contacts to one call, which upserts them in one
/// sObject Collections request (one limiter slot); each contact ends on its own result.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncContact {
    /// Our customer id, as the partner's account for the customer is keyed.
    pub user_id: String,
    /// Where the customer receives mail; synced to the CRM as the contact's address.
    pub email: String,
    /// Given name.
    #[serde(default)]
    pub first_name: String,
    /// Family name.
    #[serde(default)]
    pub last_name: String,
}

/// Salesforce's sObject Collections upsert of contacts, keyed by our user id.
pub const CONTACT_UPSERT_PATH: &str = "/composite/sobjects/Contact/user_id";

impl culm_core::Job for SyncContact {
    const NAME: &'static str = "salesforce.sync_contact";
    const QUEUE: &'static str = "salesforce";
    const TIERS: &'static [culm_core::Tier] = THIRD_PARTY;
    const DESCRIPTION: &'static str = "Upsert customer contacts in Salesforce (up to 50 per request).";

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        culm_core::run_one(self, ctx).await
    }
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    fn example() -> Option<Self> {
        Some(SyncContact {
            user_id: "usr_1001".into(),
            email: "ana@example.com".into(),
            first_name: "Ana".into(),
            last_name: "Diaz".into(),
        })
    }
}

impl culm_core::BatchJob for SyncContact {
    /// Salesforce takes 200 records per request; 50 keeps one request small and quick.
    const MAX_BATCH: usize = 50;

    async fn run_many(items: Vec<(Self, JobContext)>) -> Vec<Result<Outcome, JobError>> {
        // An address that is not one never leaves: that contact fails alone.
        let mut answers: Vec<Option<Result<Outcome, JobError>>> = items
            .iter()
            .map(|(j, _)| {
                (!j.email.contains('@'))
                    .then(|| Err(JobError::permanent(format!("email `{}` is not an address", j.email))))
            })
            .collect();
        let send: Vec<usize> = (0..items.len()).filter(|&i| answers[i].is_none()).collect();
        let Some(&first) = send.first() else {
            return answers.into_iter().flatten().collect();
        };
        let records: Vec<&SyncContact> = send.iter().map(|&i| &items[i].0).collect();
        let reply = match client(&items[first].1, "salesforce") {
            Ok(c) => {
                c.patch("contacts", CONTACT_UPSERT_PATH)
                    .json(&serde_json::json!({"allOrNone": false, "records": records}))
                    .send()
                    .await
            }
            Err(e) => Err(e),
        };
        match reply {
            // The request failed as a whole (deferred, retryable or refused): every
            // contact it carried ends that way, each under its own budget.
            Err(e) => {
                for &i in &send {
                    answers[i] = Some(Err(same_error(&e)));
                }
            }
            Ok(r) => {
                let results = r.body.as_array().map(Vec::as_slice).unwrap_or_default();
                for (n, &i) in send.iter().enumerate() {
                    answers[i] = Some(upsert_result(results.get(n), r.status));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(JobError::retryable("no answer for this contact"))))
            .collect()
    }
}

/// One record's result of a collections upsert.
fn upsert_result(result: Option<&serde_json::Value>, status: u16) -> Result<Outcome, JobError> {
    let Some(result) = result else {
        return Err(JobError::retryable(
            "salesforce contacts: the upsert answered no result for this contact",
        ));
    };
    if result.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
        let id = result.get("id").and_then(serde_json::Value::as_str).unwrap_or("-");
        return Ok(Outcome::done().with_summary(format!("salesforce contacts: HTTP {status} id={id}")));
    }
    let error = result.get("errors").and_then(|e| e.get(0));
    let code = error
        .and_then(|e| e.get("statusCode"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("UNKNOWN");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("no message");
    let text = format!("salesforce contacts: {code}: {message}");
    // Salesforce's lock contention clears on its own; anything else is the record's fault.
    if code == "UNABLE_TO_LOCK_ROW" {
        Err(JobError::retryable(text))
    } else {
        Err(JobError::permanent(text))
    }
}

/// The same error again, for each job a failed request carried.
fn same_error(e: &JobError) -> JobError {
    match e {
        JobError::Retryable { message, after } => JobError::Retryable {
            message: message.clone(),
            after: *after,
        },
        JobError::Permanent(m) => JobError::Permanent(m.clone()),
        JobError::Defer { after, reason } => JobError::Defer {
            after: *after,
            reason: reason.clone(),
        },
    }
}

job! {
    /// Mirrors an account's status (active, frozen, closed) to Salesforce.
    SyncAccountStatus = "salesforce.sync_account_status" in "salesforce" for THIRD_PARTY;
    "Mirror an account status to Salesforce.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
        /// New status.
        status: String,
    }
    example SyncAccountStatus { user_id: "usr_1001".into(), status: "active".into() };
    |j, ctx| {
        let r = client(&ctx, "salesforce")?.put("accounts", format!("/accounts/{}/status", seg(&j.user_id))).json(&j).send().await?;
        Ok(done("salesforce", "accounts", &r))
    }
}

job! {
    /// Opens a support case.
    CreateCase = "salesforce.create_case" in "salesforce" for THIRD_PARTY;
    "Open a Salesforce support case.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
        /// Subject line.
        subject: String,
    }
    example CreateCase { user_id: "usr_1001".into(), subject: "Card not received".into() };
    |j, ctx| {
        let r = client(&ctx, "salesforce")?.post("cases", "/cases").json(&j).idempotent(&ctx).send().await?;
        Ok(done("salesforce", "cases", &r))
    }
}

// --- AppsFlyer -------------------------------------------------------------------------

job! {
    /// Sends an in-app attribution event.
    SendAttributionEvent = "appsflyer.send_event" in "appsflyer" for THIRD_PARTY;
    "Send an attribution event to AppsFlyer.";
    {
        /// AppsFlyer's customer user id.
        customer_user_id: String,
        /// Event name, e.g. `af_first_deposit`.
        event_name: String,
        /// Optional value (e.g. an amount).
        #[serde(default)]
        event_value: Option<String>,
    }
    example SendAttributionEvent { customer_user_id: "usr_1001".into(), event_name: "af_first_deposit".into(), event_value: Some("25.00".into()) };
    |j, ctx| {
        let r = client(&ctx, "appsflyer")?.post("events", "/events").json(&j).send().await?;
        Ok(done("appsflyer", "events", &r))
    }
}

job! {
    /// Pulls a raw-data report of a day (`YYYY-MM-DD`; empty: yesterday upstream).
    PullReport = "appsflyer.pull_report" in "appsflyer" for THIRD_PARTY;
    "Pull an AppsFlyer raw-data report.";
    {
        /// Report, e.g. `installs`, `in_app_events`, `uninstalls`.
        report: String,
        /// Day, `YYYY-MM-DD`.
        #[serde(default)]
        date: String,
    }
    example PullReport { report: "installs".into(), date: "2026-11-22".into() };
    |j, ctx| {
        let mut call = client(&ctx, "appsflyer")?.get("reports", format!("/reports/{}", seg(&j.report)));
        if !j.date.is_empty() {
            call = call.query("date", &j.date);
        }
        let r = call.send().await?;
        Ok(done("appsflyer", "reports", &r))
    }
}

// --- Veriff ----------------------------------------------------------------------------

job! {
    /// Starts an identity verification session, then polls for its decision.
    CreateVeriffSession = "veriff.create_session" in "veriff" for THIRD_PARTY;
    "Start a Veriff verification session, then poll its decision.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
    }
    example CreateVeriffSession { user_id: "usr_1001".into() };
    |j, ctx| {
        let r = client(&ctx, "veriff")?.post("sessions", "/sessions").json(&j).idempotent(&ctx).send().await?;
        let session_id = r.str("id").unwrap_or(&j.user_id).to_owned();
        let next = FetchVeriffDecision { session_id, polls: 0 };
        Ok(done("veriff", "sessions", &r).then(follow(&next)?.delay(Duration::from_secs(30))))
    }
}

job! {
    /// Reads a session's decision; re-enqueues itself while it is pending.
    FetchVeriffDecision = "veriff.fetch_decision" in "veriff" for THIRD_PARTY;
    "Read a Veriff decision (continuation until decided).";
    {
        /// Veriff session id.
        session_id: String,
        /// Polls so far.
        #[serde(default)]
        polls: u32,
    }
    example FetchVeriffDecision { session_id: "ses_1".into(), polls: 0 };
    |j, ctx| {
        let r = client(&ctx, "veriff")?.get("decisions", format!("/sessions/{}/decision", seg(&j.session_id))).send().await?;
        let status = r.str("status").unwrap_or("approved").to_owned();
        if status == "pending" && j.polls + 1 < MAX_DECISION_POLLS {
            let next = FetchVeriffDecision { session_id: j.session_id.clone(), polls: j.polls + 1 };
            return Ok(Outcome::done().with_summary("pending").then(follow(&next)?.delay(Duration::from_secs(60))));
        }
        Ok(Outcome::done().with_summary(format!("session {}: {status}", j.session_id)))
    }
}

// --- Persona ---------------------------------------------------------------------------

job! {
    /// Creates a Persona inquiry from a template.
    CreateInquiry = "persona.create_inquiry" in "persona" for THIRD_PARTY;
    "Create a Persona inquiry.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
        /// Persona template id.
        template_id: String,
    }
    example CreateInquiry { user_id: "usr_1001".into(), template_id: "itmpl_kyc".into() };
    |j, ctx| {
        let r = client(&ctx, "persona")?.post("inquiries", "/inquiries").json(&j).idempotent(&ctx).send().await?;
        Ok(done("persona", "inquiries", &r))
    }
}

job! {
    /// Reads an inquiry's state.
    FetchInquiry = "persona.fetch_inquiry" in "persona" for THIRD_PARTY;
    "Read a Persona inquiry's state.";
    {
        /// Persona inquiry id.
        inquiry_id: String,
    }
    example FetchInquiry { inquiry_id: "inq_1".into() };
    |j, ctx| {
        let r = client(&ctx, "persona")?.get("inquiry", format!("/inquiries/{}", seg(&j.inquiry_id))).send().await?;
        Ok(done("persona", "inquiry", &r))
    }
}

// --- Kard ------------------------------------------------------------------------------

job! {
    /// Reports a card transaction for reward matching.
    SendRewardTransaction = "kard.send_transaction" in "kard" for THIRD_PARTY;
    "Report a card transaction to Kard for reward matching.";
    {
        /// The card transaction this job is about, as the card processor numbers it.
        transaction_id: String,
        /// The customer's account at the bank core (Galileo).
        account_id: String,
        /// Amount in cents.
        amount_cents: u64,
        /// Merchant name.
        merchant: String,
    }
    example SendRewardTransaction { transaction_id: "txn_9001".into(), account_id: "acc_1001".into(), amount_cents: 4599, merchant: "Grocer".into() };
    |j, ctx| {
        let r = client(&ctx, "kard")?.post("transactions", "/transactions").json(&j).send().await?;
        Ok(done("kard", "transactions", &r))
    }
}

job! {
    /// Credits an earned reward (moves money: idempotent upstream).
    IssueReward = "kard.issue_reward" in "kard" for THIRD_PARTY;
    "Credit an earned Kard reward (idempotent upstream).";
    {
        /// The reward being granted, as the rewards partner numbers it.
        reward_id: String,
        /// The customer's account at the bank core (Galileo).
        account_id: String,
        /// Amount in cents.
        amount_cents: u64,
    }
    example IssueReward { reward_id: "rw_1".into(), account_id: "acc_1001".into(), amount_cents: 150 };
    |j, ctx| {
        let r = client(&ctx, "kard")?.post("rewards", "/rewards").json(&j).idempotent(&ctx).send().await?;
        Ok(done("kard", "rewards", &r))
    }
}

job! {
    /// Refreshes the reward offers catalog.
    SyncOffers = "kard.sync_offers" in "kard" for THIRD_PARTY;
    "Refresh Kard's offers.";
    {}
    example SyncOffers {};
    |j, ctx| {
        let r = client(&ctx, "kard")?.get("offers", "/offers").send().await?;
        Ok(done("kard", "offers", &r))
    }
}

// --- Avalara ---------------------------------------------------------------------------

job! {
    /// Calculates sales tax for a fee or purchase.
    CalculateTax = "avalara.calculate_tax" in "avalara" for THIRD_PARTY;
    "Calculate tax with Avalara.";
    {
        /// Our id of the uploaded identity document.
        document_id: String,
        /// Taxable amount in cents.
        amount_cents: u64,
        /// US ZIP code.
        zip: String,
    }
    example CalculateTax { document_id: "doc_1".into(), amount_cents: 999, zip: "10001".into() };
    |j, ctx| {
        let r = client(&ctx, "avalara")?.post("calculate", "/transactions/create").json(&j).send().await?;
        Ok(done("avalara", "calculate", &r))
    }
}

job! {
    /// Commits a calculated tax document.
    CommitTax = "avalara.commit_transaction" in "avalara" for THIRD_PARTY;
    "Commit an Avalara tax document.";
    {
        /// Our id of the uploaded identity document.
        document_id: String,
    }
    example CommitTax { document_id: "doc_1".into() };
    |j, ctx| {
        let r = client(&ctx, "avalara")?
            .post("commit", format!("/transactions/{}/commit", seg(&j.document_id)))
            .idempotent(&ctx)
            .send()
            .await?;
        Ok(done("avalara", "commit", &r))
    }
}

// --- Periodic pulls (schedules/*.toml) -------------------------------------------------

job! {
    /// Pulls records of a Salesforce object changed since the last pull.
    PullChanges = "salesforce.pull_changes" in "salesforce" for THIRD_PARTY;
    "Pull changed Salesforce records of one object.";
    {
        /// Object, e.g. `Contact`, `Case`.
        object: String,
    }
    example PullChanges { object: "Contact".into() };
    |j, ctx| {
        let r = client(&ctx, "salesforce")?.get("changes", format!("/changes/{}", seg(&j.object))).send().await?;
        Ok(done("salesforce", "changes", &r))
    }
}

job! {
    /// Re-reads Veriff sessions still pending after `older_than_minutes`.
    SyncPendingSessions = "veriff.sync_pending" in "veriff" for THIRD_PARTY;
    "Re-read Veriff sessions that are still pending.";
    {
        /// Only sessions older than this.
        older_than_minutes: u32,
    }
    example SyncPendingSessions { older_than_minutes: 30 };
    |j, ctx| {
        let r = client(&ctx, "veriff")?
            .get("sessions", "/sessions")
            .query("status", "pending")
            .query("older_than_minutes", j.older_than_minutes)
            .send()
            .await?;
        Ok(done("veriff", "sessions", &r))
    }
}

job! {
    /// Re-reads Persona inquiries still pending after `older_than_minutes`.
    SyncPendingInquiries = "persona.sync_pending" in "persona" for THIRD_PARTY;
    "Re-read Persona inquiries that are still pending.";
    {
        /// Only inquiries older than this.
        older_than_minutes: u32,
    }
    example SyncPendingInquiries { older_than_minutes: 30 };
    |j, ctx| {
        let r = client(&ctx, "persona")?
            .get("inquiries", "/inquiries")
            .query("status", "pending")
            .query("older_than_minutes", j.older_than_minutes)
            .send()
            .await?;
        Ok(done("persona", "inquiries", &r))
    }
}

job! {
    /// Pulls rewards earned since the last pull (crediting is `kard.issue_reward`).
    SyncRewards = "kard.sync_rewards" in "kard" for THIRD_PARTY;
    "Pull newly earned Kard rewards.";
    {
        /// Look-back window in minutes.
        since_minutes: u32,
    }
    example SyncRewards { since_minutes: 60 };
    |j, ctx| {
        let r = client(&ctx, "kard")?.get("rewards", "/rewards").query("since_minutes", j.since_minutes).send().await?;
        Ok(done("kard", "rewards", &r))
    }
}

job! {
    /// Reconciles committed tax documents of a period with Avalara.
    ReconcileTax = "avalara.reconcile" in "avalara" for THIRD_PARTY;
    "Reconcile committed tax documents with Avalara.";
    {
        /// Period, `YYYY-MM-DD` or a keyword (`yesterday`, `previous_month`).
        period: String,
    }
    example ReconcileTax { period: "yesterday".into() };
    |j, ctx| {
        let period = crate::support::resolve_period(&j.period);
        let r = client(&ctx, "avalara")?.get("reconcile", "/transactions").query("period", &period).send().await?;
        Ok(done("avalara", "reconcile", &r))
    }
}

job! {
    /// Refreshes Avalara's tax codes.
    SyncTaxCodes = "avalara.sync_tax_codes" in "avalara" for THIRD_PARTY;
    "Refresh Avalara tax codes.";
    {}
    example SyncTaxCodes {};
    |j, ctx| {
        let r = client(&ctx, "avalara")?.get("tax_codes", "/definitions/taxcodes").send().await?;
        Ok(done("avalara", "tax_codes", &r))
    }
}
