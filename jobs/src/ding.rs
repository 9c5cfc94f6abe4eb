//! Ding mobile top-ups (queue `ding`, critical tier only). A top-up buys airtime and
//! carries the job's idempotency key.
use crate::{
    http::client,
    job,
    support::{CRITICAL, done},
};
use culm_core::{JobError, Registry, RegistryError};

/// Registers the Ding job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<TopUp>()?
        .register::<SyncProducts>()?
        .register::<CheckBalance>()?;
    Ok(())
}

job! {
    /// Sends a mobile top-up (idempotent upstream).
    TopUp = "ding.top_up" in "ding" for CRITICAL;
    "Send a mobile top-up (idempotent upstream).";
    {
        /// Our top-up id.
        topup_id: String,
        /// Paying account.
        account_id: String,
        /// E.164 phone number.
        phone_number: String,
        /// Ding product SKU.
        sku: String,
        /// Amount in cents.
        amount_cents: u64,
    }
    example TopUp { topup_id: "tu_7001".into(), account_id: "acc_1001".into(), phone_number: "+525512345678".into(), sku: "MX_TELCEL_100".into(), amount_cents: 500 };
    |j, ctx| {
        if !j.phone_number.starts_with('+') {
            return Err(JobError::permanent(format!("phone_number `{}` is not E.164 (+<country><number>)", j.phone_number)));
        }
        let r = client(&ctx, "ding")?.post("top_up", "/topups").json(&j).idempotent(&ctx).send().await?;
        Ok(done("ding", "top_up", &r))
    }
}

job! {
    /// Refreshes the top-up product list of a country (empty: all).
    SyncProducts = "ding.sync_products" in "ding" for CRITICAL;
    "Refresh Ding's product list.";
    {
        /// ISO country code; empty for every country.
        #[serde(default)]
        country: String,
    }
    example SyncProducts { country: "MX".into() };
    |j, ctx| {
        let mut call = client(&ctx, "ding")?.get("products", "/products");
        if !j.country.is_empty() {
            call = call.query("country", &j.country);
        }
        let r = call.send().await?;
        Ok(done("ding", "products", &r))
    }
}

job! {
    /// Reads the prepaid float balance at Ding.
    CheckBalance = "ding.check_balance" in "ding" for CRITICAL;
    "Read the prepaid balance at Ding.";
    {}
    example CheckBalance {};
    |j, ctx| {
        let r = client(&ctx, "ding")?.get("balance", "/balance").send().await?;
        Ok(done("ding", "balance", &r))
    }
}
