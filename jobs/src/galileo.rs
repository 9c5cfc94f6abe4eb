//! Galileo core banking (queue `galileo`, critical tier only): accounts, cards, card
//! loads, transfers, authorizations, balances and transactions. Card loads and transfers
//! move money and carry the job's idempotency key.
use crate::{
    http::client,
    job,
    support::{CRITICAL, done, follow, seg},
    unit21,
};
use culm_core::{Outcome, Registry, RegistryError};

/// Registers the Galileo job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<CreateAccount>()?
        .register::<AccountEvent>()?
        .register::<ActivateCard>()?
        .register::<FreezeCard>()?
        .register::<LoadCard>()?
        .register::<Transfer>()?
        .register::<ProcessAuthorization>()?
        .register::<SyncBalance>()?
        .register::<SyncTransactions>()?
        .register::<PollEvents>()?;
    Ok(())
}

job! {
    /// Opens a Galileo account for a customer.
    CreateAccount = "galileo.create_account" in "galileo" for CRITICAL;
    "Open a Galileo account for a customer.";
    {
        /// Our customer id, as the bank core and the CRM know the customer.
        customer_id: String,
        /// Galileo product id.
        product_id: String,
    }
    example CreateAccount { customer_id: "cus_1001".into(), product_id: "prd_checking".into() };
    |j, ctx| {
        // Creating an account twice is as bad as paying twice: keyed too.
        let r = client(&ctx, "galileo")?.post("create_account", "/accounts").json(&j).idempotent(&ctx).send().await?;
        Ok(done("galileo", "create_account", &r))
    }
}

job! {
    /// Applies an account status change (e.g. `closed`, `dormant`, `kyc_passed`).
    AccountEvent = "galileo.account_event" in "galileo" for CRITICAL;
    "Apply an account status change in Galileo.";
    {
        /// Galileo account id.
        account_id: String,
        /// The event, e.g. `kyc_passed`.
        event: String,
    }
    example AccountEvent { account_id: "acc_1001".into(), event: "kyc_passed".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?
            .post("account_event", format!("/accounts/{}/events", seg(&j.account_id)))
            .json(&j)
            .send()
            .await?;
        Ok(done("galileo", "account_event", &r))
    }
}

job! {
    /// Activates a card.
    ActivateCard = "galileo.activate_card" in "galileo" for CRITICAL;
    "Activate a card.";
    {
        /// The card at the card processor (Galileo's card id).
        card_id: String,
        /// Owning account.
        account_id: String,
    }
    example ActivateCard { card_id: "card_2001".into(), account_id: "acc_1001".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?
            .post("card_status", format!("/cards/{}/activate", seg(&j.card_id)))
            .json(&j)
            .send()
            .await?;
        Ok(done("galileo", "card_status", &r))
    }
}

job! {
    /// Freezes a card (lost, stolen, fraud hold).
    FreezeCard = "galileo.freeze_card" in "galileo" for CRITICAL;
    "Freeze a card.";
    {
        /// The card at the card processor (Galileo's card id).
        card_id: String,
        /// Why, e.g. `lost`.
        reason: String,
    }
    example FreezeCard { card_id: "card_2001".into(), reason: "lost".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?
            .post("card_status", format!("/cards/{}/freeze", seg(&j.card_id)))
            .json(&j)
            .send()
            .await?;
        Ok(done("galileo", "card_status", &r))
    }
}

job! {
    /// Loads funds onto a card. Moves money: sent with the job's idempotency key.
    LoadCard = "galileo.load_card" in "galileo" for CRITICAL;
    "Load funds onto a card (idempotent upstream).";
    {
        /// The card at the card processor (Galileo's card id).
        card_id: String,
        /// Funding account.
        account_id: String,
        /// Amount in cents.
        amount_cents: u64,
        /// ISO currency.
        currency: String,
    }
    example LoadCard { card_id: "card_2001".into(), account_id: "acc_1001".into(), amount_cents: 2500, currency: "USD".into() };
    |j, ctx| {
        if j.amount_cents == 0 {
            return Err(culm_core::JobError::permanent("amount_cents must be above zero"));
        }
        let r = client(&ctx, "galileo")?
            .post("load_card", format!("/cards/{}/loads", seg(&j.card_id)))
            .json(&j)
            .idempotent(&ctx)
            .send()
            .await?;
        Ok(done("galileo", "load_card", &r))
    }
}

job! {
    /// Moves money between accounts. Sent with the job's idempotency key.
    Transfer = "galileo.transfer" in "galileo" for CRITICAL;
    "Transfer between accounts (idempotent upstream).";
    {
        /// Our transfer id; also the idempotency key sent to the partner, so money moves once.
        transfer_id: String,
        /// Debited account.
        from_account: String,
        /// Credited account.
        to_account: String,
        /// Amount in cents.
        amount_cents: u64,
        /// Free text shown to the customer.
        #[serde(default)]
        memo: String,
    }
    example Transfer { transfer_id: "tr_3001".into(), from_account: "acc_1001".into(), to_account: "acc_1002".into(), amount_cents: 1000, memo: "rent".into() };
    |j, ctx| {
        if j.amount_cents == 0 || j.from_account == j.to_account {
            return Err(culm_core::JobError::permanent("a transfer needs a positive amount and two different accounts"));
        }
        let r = client(&ctx, "galileo")?.post("transfer", "/transfers").json(&j).idempotent(&ctx).send().await?;
        Ok(done("galileo", "transfer", &r))
    }
}

job! {
    /// Processes a card authorization, then reports it to Unit21 as a fraud event
    /// (a continuation on the unit21 queue, not a call from the critical pool).
    ProcessAuthorization = "galileo.process_authorization" in "galileo" for CRITICAL;
    "Process a card authorization, then send it to Unit21.";
    {
        /// Galileo authorization id.
        authorization_id: String,
        /// The customer's account at the bank core (Galileo).
        account_id: String,
        /// Amount in cents.
        amount_cents: u64,
        /// Merchant name.
        merchant: String,
    }
    example ProcessAuthorization { authorization_id: "auth_4001".into(), account_id: "acc_1001".into(), amount_cents: 1299, merchant: "Corner Store".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?
            .post("authorization", format!("/authorizations/{}/process", seg(&j.authorization_id)))
            .json(&j)
            .send()
            .await?;
        let event = unit21::SendEvent {
            event_id: format!("auth-{}", j.authorization_id),
            account_id: j.account_id.clone(),
            kind: "card_authorization".into(),
            amount_cents: Some(j.amount_cents),
        };
        Ok(Outcome::done()
            .with_summary(format!("galileo authorization: HTTP {}", r.status))
            .then(follow(&event)?))
    }
}

job! {
    /// Refreshes an account's balance.
    SyncBalance = "galileo.sync_balance" in "galileo" for CRITICAL;
    "Refresh an account balance from Galileo.";
    {
        /// The customer's account at the bank core (Galileo).
        account_id: String,
    }
    example SyncBalance { account_id: "acc_1001".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?
            .get("balance", format!("/accounts/{}/balance", seg(&j.account_id)))
            .send()
            .await?;
        Ok(done("galileo", "balance", &r))
    }
}

job! {
    /// Pulls an account's recent transactions.
    SyncTransactions = "galileo.sync_transactions" in "galileo" for CRITICAL;
    "Pull an account's transactions since a time.";
    {
        /// The customer's account at the bank core (Galileo).
        account_id: String,
        /// RFC 3339 lower bound; empty: the upstream's default window.
        #[serde(default)]
        since: String,
    }
    example SyncTransactions { account_id: "acc_1001".into(), since: String::new() };
    |j, ctx| {
        let mut call = client(&ctx, "galileo")?.get("transactions", format!("/accounts/{}/transactions", seg(&j.account_id)));
        if !j.since.is_empty() {
            call = call.query("since", &j.since);
        }
        let r = call.send().await?;
        Ok(done("galileo", "transactions", &r))
    }
}

job! {
    /// Pulls one of Galileo's event feeds (authorizations, settlements, card and account
    /// status changes, disputes, ACH) since the feed's last cursor.
    PollEvents = "galileo.poll_events" in "galileo" for CRITICAL;
    "Pull one Galileo event feed.";
    {
        /// Feed name, e.g. `authorizations`.
        stream: String,
    }
    example PollEvents { stream: "authorizations".into() };
    |j, ctx| {
        let r = client(&ctx, "galileo")?.get("events", "/events").query("stream", &j.stream).send().await?;
        let n = r.body.get("events").and_then(|e| e.as_array()).map_or(0, Vec::len);
        Ok(Outcome::done().with_summary(format!("galileo {}: {n} events", j.stream)))
    }
}
