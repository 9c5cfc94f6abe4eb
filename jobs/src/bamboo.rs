//! Bamboo gift cards (queues `bamboo_orders` and `bamboo_sync`, third-party tier): the
//! order pipeline of the Steller seed as continuations:
//! `bamboo.accept_order` → `bamboo.place_order` (2/s, idempotent) → `bamboo.poll_order`
//! (120/min, re-enqueued until fulfilled) → `bamboo.record_result`; and
//! `bamboo.sync_catalog` (2/hour). Limits are the shared ones of `[integrations.bamboo]`.
use crate::{
    http::{Integrations, client},
    job,
    support::{THIRD_PARTY, follow, seg},
};
use culm_core::{JobError, Outcome, Registry, RegistryError};
use std::time::Duration;

/// Registers the Bamboo job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<AcceptOrder>()?
        .register::<PlaceOrder>()?
        .register::<PollOrder>()?
        .register::<RecordResult>()?
        .register::<SyncCatalog>()?
        .register::<SyncExchangeRates>()?;
    Ok(())
}

/// Status polls before an order is dead-lettered as stuck.
pub const MAX_POLLS: u32 = 40;
/// How long a recorded result is kept in Redis (`<prefix>:bamboo:order:<order_id>`).
pub const RESULT_TTL_SECS: u64 = 7 * 24 * 3600;

fn check_order(order_id: &str, sku: &str, quantity: u32) -> Result<(), JobError> {
    if order_id.is_empty() || sku.is_empty() || quantity == 0 || quantity > 100 {
        return Err(JobError::permanent(
            "an order needs an order_id, a sku and a quantity between 1 and 100",
        ));
    }
    Ok(())
}

job! {
    /// Accepts an order: validates it and hands it to `bamboo.place_order`. Fast by
    /// design (the seed's order acceptance), no upstream call.
    AcceptOrder = "bamboo.accept_order" in "bamboo_orders" for THIRD_PARTY;
    "Accept a gift-card order and queue its placement.";
    {
        /// Our order id; also the idempotency key sent to Bamboo, so a retried order is placed once.
        order_id: String,
        /// Bamboo product SKU.
        sku: String,
        /// Cards to buy.
        quantity: u32,
        /// The buyer's account, when the caller knows it (empty otherwise).
        #[serde(default)]
        account_id: String,
    }
    example AcceptOrder { order_id: "ord_8001".into(), sku: "AMAZON_US_25".into(), quantity: 1, account_id: "acc_1001".into() };
    |j, ctx| {
        check_order(&j.order_id, &j.sku, j.quantity)?;
        let place = PlaceOrder { order_id: j.order_id.clone(), sku: j.sku.clone(), quantity: j.quantity };
        Ok(Outcome::done().with_summary(format!("order {} accepted", j.order_id)).then(follow(&place)?))
    }
}

job! {
    /// Places the order at Bamboo (2 requests/s across every process; idempotent), then
    /// schedules the first status poll.
    PlaceOrder = "bamboo.place_order" in "bamboo_orders" for THIRD_PARTY;
    "Place a gift-card order at Bamboo (2/s, idempotent), then poll it.";
    {
        /// Our order id; also the idempotency key sent to Bamboo, so a retried order is placed once.
        order_id: String,
        /// Bamboo product SKU.
        sku: String,
        /// Cards to buy.
        quantity: u32,
    }
    example PlaceOrder { order_id: "ord_8002".into(), sku: "AMAZON_US_25".into(), quantity: 1 };
    |j, ctx| {
        check_order(&j.order_id, &j.sku, j.quantity)?;
        let r = client(&ctx, "bamboo")?.post("place_order", "/orders").json(&j).idempotent(&ctx).send().await?;
        let poll = PollOrder { order_id: j.order_id.clone(), polls: 0 };
        Ok(Outcome::done()
            .with_summary(format!("order {} placed: HTTP {}", j.order_id, r.status))
            .then(follow(&poll)?.delay(Duration::from_secs(1))))
    }
}

job! {
    /// Reads the order's status (120/min across every process). Until it is fulfilled the
    /// job re-enqueues itself with a growing delay; a worker never waits on Bamboo.
    PollOrder = "bamboo.poll_order" in "bamboo_orders" for THIRD_PARTY;
    "Poll a Bamboo order until fulfilled (continuation), then record it.";
    {
        /// Our order id; also the idempotency key sent to Bamboo, so a retried order is placed once.
        order_id: String,
        /// Polls so far.
        #[serde(default)]
        polls: u32,
    }
    example PollOrder { order_id: "ord_8002".into(), polls: 0 };
    |j, ctx| {
        // A just-placed order may not be visible yet: 404 means "ask again", within MAX_POLLS.
        let r = client(&ctx, "bamboo")?
            .get("get_order", format!("/orders/{}", seg(&j.order_id)))
            .accept(404)
            .send()
            .await?;
        let status = if r.status == 404 { "not_found".to_owned() } else { r.str("status").unwrap_or("fulfilled").to_owned() };
        match status.as_str() {
            "fulfilled" => {
                let cards = r.body.get("cards").cloned().unwrap_or(serde_json::Value::Array(vec![]));
                let record = RecordResult { order_id: j.order_id.clone(), status, cards };
                Ok(Outcome::done().with_summary("fulfilled").then(follow(&record)?))
            }
            "failed" | "cancelled" => {
                let record = RecordResult { order_id: j.order_id.clone(), status, cards: serde_json::Value::Array(vec![]) };
                Ok(Outcome::done().with_summary("order failed upstream").then(follow(&record)?))
            }
            _ if j.polls + 1 >= MAX_POLLS => Err(JobError::permanent(format!(
                "order {} still `{status}` after {MAX_POLLS} polls", j.order_id
            ))),
            _ => {
                let next = PollOrder { order_id: j.order_id.clone(), polls: j.polls + 1 };
                let delay = Duration::from_secs(u64::from(1 + j.polls.min(29)));
                Ok(Outcome::done().with_summary(format!("still {status}")).then(follow(&next)?.delay(delay)))
            }
        }
    }
}

job! {
    /// Records the order's final state (`<prefix>:bamboo:order:<order_id>`, kept 7 days)
    /// for the order API to read.
    RecordResult = "bamboo.record_result" in "bamboo_orders" for THIRD_PARTY;
    "Record a Bamboo order's final state.";
    {
        /// Our order id; also the idempotency key sent to Bamboo, so a retried order is placed once.
        order_id: String,
        /// Final status.
        status: String,
        /// Cards delivered (codes stay in Redis only, never in logs).
        #[serde(default)]
        cards: serde_json::Value,
    }
    example RecordResult { order_id: "ord_8002".into(), status: "fulfilled".into(), cards: serde_json::json!([]) };
    |j, ctx| {
        let integrations = ctx.dep::<Integrations>().ok_or_else(|| JobError::permanent("integration clients are not configured"))?;
        let mut conn = integrations.redis().ok_or_else(|| JobError::permanent("no Redis connection available"))?;
        let key = integrations.key(&format!("bamboo:order:{}", j.order_id));
        let value = serde_json::json!({"order_id": j.order_id, "status": j.status, "cards": j.cards, "job_id": ctx.id});
        redis::cmd("SET")
            .arg(&key)
            .arg(value.to_string())
            .arg("EX")
            .arg(RESULT_TTL_SECS)
            .exec_async(&mut conn)
            .await
            .map_err(|e| JobError::retryable(format!("recording order {} failed: {e}", j.order_id)))?;
        Ok(Outcome::done().with_summary(format!("order {}: {}", j.order_id, j.status)))
    }
}

job! {
    /// Refreshes the gift-card catalog (Bamboo allows 2 calls/hour; a call beyond it is
    /// deferred to the next free slot, never sent).
    SyncCatalog = "bamboo.sync_catalog" in "bamboo_sync" for THIRD_PARTY;
    "Refresh the Bamboo catalog (2/hour).";
    {}
    example SyncCatalog {};
    |j, ctx| {
        let r = client(&ctx, "bamboo")?.get("catalog", "/catalog").send().await?;
        let n = r.body.get("products").and_then(|p| p.as_array()).map_or(0, Vec::len);
        Ok(Outcome::done().with_summary(format!("catalog: {n} products")))
    }
}

job! {
    /// Refreshes Bamboo's exchange rates.
    SyncExchangeRates = "bamboo.sync_exchange_rates" in "bamboo_sync" for THIRD_PARTY;
    "Refresh Bamboo exchange rates.";
    {}
    example SyncExchangeRates {};
    |j, ctx| {
        let r = client(&ctx, "bamboo")?.get("exchange_rates", "/exchange-rates").send().await?;
        Ok(crate::support::done("bamboo", "exchange_rates", &r))
    }
}
