//! Third-party synchronisation families (third-party tier): Salesforce CRM sync,
//! AppsFlyer attribution events, Veriff and Persona identity verification, Kard
//! rewards and Avalara tax calculation. One queue per integration.
use crate::{
    http::client,
    job,
    support::{THIRD_PARTY, done, follow, seg},
};
use culm_core::{JobError, Outcome, Registry, RegistryError};
use std::time::Duration;

/// Registers the CRM, attribution, identity, rewards and tax job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<SyncContact>()?
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

job! {
    /// Upserts a customer contact in Salesforce.
    SyncContact = "salesforce.sync_contact" in "salesforce" for THIRD_PARTY;
    "Upsert a customer contact in Salesforce.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
        /// Where the customer receives mail; synced to the CRM as the contact's address.
        email: String,
        /// Given name.
        #[serde(default)]
        first_name: String,
        /// Family name.
        #[serde(default)]
        last_name: String,
    }
    example SyncContact { user_id: "usr_1001".into(), email: "ana@example.com".into(), first_name: "Ana".into(), last_name: "Diaz".into() };
    |j, ctx| {
        if !j.email.contains('@') {
            return Err(JobError::permanent(format!("email `{}` is not an address", j.email)));
        }
        let r = client(&ctx, "salesforce")?.put("contacts", format!("/contacts/{}", seg(&j.user_id))).json(&j).send().await?;
        Ok(done("salesforce", "contacts", &r))
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
