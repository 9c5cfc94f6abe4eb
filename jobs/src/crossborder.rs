//! Cross-border transfers and FX (queue `crossborder`, critical tier only). A transfer
//! is sent with the job's idempotency key, then its status is polled through
//! continuations, never by blocking a worker.
use crate::{
    http::client,
    job,
    support::{CRITICAL, done, follow, seg},
};
use culm_core::{JobError, Outcome, Registry, RegistryError};
use std::time::Duration;

/// Registers the cross-border job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<Quote>()?
        .register::<SendTransfer>()?
        .register::<CheckTransfer>()?
        .register::<SyncFxRates>()?;
    Ok(())
}

/// Status polls before a transfer is handed to operations as stuck.
pub const MAX_POLLS: u32 = 60;

job! {
    /// Requests an FX quote.
    Quote = "crossborder.quote" in "crossborder" for CRITICAL;
    "Request an FX quote.";
    {
        /// Source currency.
        from_currency: String,
        /// Target currency.
        to_currency: String,
        /// Amount in cents of the source currency.
        amount_cents: u64,
    }
    example Quote { from_currency: "USD".into(), to_currency: "MXN".into(), amount_cents: 10000 };
    |j, ctx| {
        let r = client(&ctx, "crossborder")?.post("quotes", "/quotes").json(&j).send().await?;
        Ok(done("crossborder", "quotes", &r))
    }
}

job! {
    /// Sends an international transfer (idempotent upstream), then polls its status.
    SendTransfer = "crossborder.send_transfer" in "crossborder" for CRITICAL;
    "Send a cross-border transfer (idempotent upstream), then poll it.";
    {
        /// Our transfer id; also the idempotency key sent to the partner, so money moves once.
        transfer_id: String,
        /// Debited account.
        account_id: String,
        /// The recipient at the remittance partner.
        recipient_id: String,
        /// Amount in cents.
        amount_cents: u64,
        /// Source currency.
        currency: String,
    }
    example SendTransfer { transfer_id: "xb_6001".into(), account_id: "acc_1001".into(), recipient_id: "rcp_77".into(), amount_cents: 20000, currency: "USD".into() };
    |j, ctx| {
        if j.amount_cents == 0 {
            return Err(JobError::permanent("amount_cents must be above zero"));
        }
        let r = client(&ctx, "crossborder")?.post("transfers", "/transfers").json(&j).idempotent(&ctx).send().await?;
        let check = CheckTransfer { transfer_id: j.transfer_id.clone(), polls: 0 };
        Ok(done("crossborder", "transfers", &r).then(follow(&check)?.delay(Duration::from_secs(2))))
    }
}

job! {
    /// Polls a transfer until it leaves `pending`/`processing`, re-enqueuing itself.
    CheckTransfer = "crossborder.check_transfer" in "crossborder" for CRITICAL;
    "Poll a cross-border transfer's status (continuation).";
    {
        /// Our transfer id; also the idempotency key sent to the partner, so money moves once.
        transfer_id: String,
        /// Polls so far.
        #[serde(default)]
        polls: u32,
    }
    example CheckTransfer { transfer_id: "xb_6001".into(), polls: 0 };
    |j, ctx| {
        let r = client(&ctx, "crossborder")?
            .get("transfer_status", format!("/transfers/{}", seg(&j.transfer_id)))
            .send()
            .await?;
        let status = r.str("status").unwrap_or("completed").to_owned();
        if matches!(status.as_str(), "pending" | "processing") {
            if j.polls + 1 >= MAX_POLLS {
                return Err(JobError::permanent(format!(
                    "transfer {} still {status} after {MAX_POLLS} polls: needs operations",
                    j.transfer_id
                )));
            }
            let next = CheckTransfer { transfer_id: j.transfer_id.clone(), polls: j.polls + 1 };
            let delay = Duration::from_secs(u64::from(2 + j.polls.min(28)));
            return Ok(Outcome::done().with_summary(format!("still {status}")).then(follow(&next)?.delay(delay)));
        }
        Ok(Outcome::done().with_summary(format!("transfer {}: {status}", j.transfer_id)))
    }
}

job! {
    /// Refreshes FX rates.
    SyncFxRates = "crossborder.sync_fx_rates" in "crossborder" for CRITICAL;
    "Refresh FX rates.";
    {}
    example SyncFxRates {};
    |j, ctx| {
        let r = client(&ctx, "crossborder")?.get("rates", "/rates").send().await?;
        Ok(done("crossborder", "rates", &r))
    }
}
