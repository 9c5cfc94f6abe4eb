//! Unit21 fraud monitoring (queue `unit21`, third-party tier): events, entities, alerts.
use crate::{
    http::client,
    job,
    support::{THIRD_PARTY, done, seg},
};
use culm_core::{Registry, RegistryError};

/// Registers the Unit21 job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<SendEvent>()?
        .register::<SyncEntity>()?
        .register::<SyncAlerts>()?
        .register::<SyncCases>()?;
    Ok(())
}

job! {
    /// Sends a fraud-monitoring event (authorization, transfer, login...).
    SendEvent = "unit21.send_event" in "unit21" for THIRD_PARTY;
    "Send a fraud-monitoring event to Unit21.";
    {
        /// Our event id (Unit21 deduplicates on it).
        event_id: String,
        /// The customer's account at the bank core (Galileo).
        account_id: String,
        /// Event kind, e.g. `card_authorization`.
        kind: String,
        /// Amount in cents, for money events.
        #[serde(default)]
        amount_cents: Option<u64>,
    }
    example SendEvent { event_id: "evt_5001".into(), account_id: "acc_1001".into(), kind: "login".into(), amount_cents: None };
    |j, ctx| {
        let r = client(&ctx, "unit21")?.post("events", "/events").json(&j).send().await?;
        Ok(done("unit21", "events", &r))
    }
}

job! {
    /// Upserts a customer entity.
    SyncEntity = "unit21.sync_entity" in "unit21" for THIRD_PARTY;
    "Upsert a customer entity in Unit21.";
    {
        /// Our customer id, as the partner's account for the customer is keyed.
        user_id: String,
    }
    example SyncEntity { user_id: "usr_1001".into() };
    |j, ctx| {
        let r = client(&ctx, "unit21")?.put("entities", format!("/entities/{}", seg(&j.user_id))).json(&j).send().await?;
        Ok(done("unit21", "entities", &r))
    }
}

job! {
    /// Pulls alerts raised in the last `since_minutes`.
    SyncAlerts = "unit21.sync_alerts" in "unit21" for THIRD_PARTY;
    "Pull recent Unit21 alerts.";
    {
        /// Look-back window in minutes.
        since_minutes: u32,
    }
    example SyncAlerts { since_minutes: 15 };
    |j, ctx| {
        let r = client(&ctx, "unit21")?.get("alerts", "/alerts").query("since_minutes", j.since_minutes).send().await?;
        Ok(done("unit21", "alerts", &r))
    }
}

job! {
    /// Pulls investigation cases updated in the last `since_minutes`.
    SyncCases = "unit21.sync_cases" in "unit21" for THIRD_PARTY;
    "Pull recently updated Unit21 cases.";
    {
        /// Look-back window in minutes.
        since_minutes: u32,
    }
    example SyncCases { since_minutes: 30 };
    |j, ctx| {
        let r = client(&ctx, "unit21")?.get("cases", "/cases").query("since_minutes", j.since_minutes).send().await?;
        Ok(done("unit21", "cases", &r))
    }
}
