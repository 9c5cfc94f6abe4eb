//! Email and SMS through the bulk mail provider (queue `bulk_mail`, batch tier), and the
//! campaign fan-out: one `mail.campaign` job enqueues a `mail.send_email`/`mail.send_sms`
//! per recipient in batches of 500, one enqueue call per batch.
use crate::{
    http::client,
    job,
    support::{BATCH, done, follow, seg},
};
use culm_core::{JobError, Outcome, Registry, RegistryError};
use serde::{Deserialize, Serialize};

/// Registers the mail job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<SendEmail>()?
        .register::<SendSms>()?
        .register::<Campaign>()?
        .register::<CampaignReport>()?;
    Ok(())
}

/// A campaign's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Sent through the mail provider to the customer's address.
    Email,
    /// Sent as a text message to the customer's phone.
    Sms,
}

job! {
    /// Sends one templated email.
    SendEmail = "mail.send_email" in "bulk_mail" for BATCH;
    "Send one templated email.";
    {
        /// Recipient address.
        to: String,
        /// The provider-side template to render.
        template: String,
        /// Template variables.
        #[serde(default)]
        vars: serde_json::Map<String, serde_json::Value>,
    }
    example SendEmail { to: "ana@example.com".into(), template: "welcome".into(), vars: serde_json::Map::new() };
    |j, ctx| {
        if !j.to.contains('@') {
            return Err(JobError::permanent(format!("`{}` is not an email address", j.to)));
        }
        // Keyed so a redelivered job does not mail twice.
        let r = client(&ctx, "mailer")?.post("email", "/email").json(&j).idempotent(&ctx).send().await?;
        Ok(done("mailer", "email", &r))
    }
}

job! {
    /// Sends one templated SMS.
    SendSms = "mail.send_sms" in "bulk_mail" for BATCH;
    "Send one templated SMS.";
    {
        /// E.164 phone number.
        to: String,
        /// The provider-side template to render.
        template: String,
        /// Template variables.
        #[serde(default)]
        vars: serde_json::Map<String, serde_json::Value>,
    }
    example SendSms { to: "+15555550100".into(), template: "otp_notice".into(), vars: serde_json::Map::new() };
    |j, ctx| {
        if !j.to.starts_with('+') {
            return Err(JobError::permanent(format!("`{}` is not an E.164 number", j.to)));
        }
        let r = client(&ctx, "mailer")?.post("sms", "/sms").json(&j).idempotent(&ctx).send().await?;
        Ok(done("mailer", "sms", &r))
    }
}

job! {
    /// Fans a campaign out into one send per recipient, in batches. Recipients come from
    /// the payload, or, when it lists none and names a `segment`, from the provider's
    /// segment (`GET /segments/<segment>` → `recipients`).
    Campaign = "mail.campaign" in "bulk_mail" for BATCH;
    "Fan a campaign out into per-recipient sends (batched enqueues).";
    {
        /// Campaign id (for logs).
        campaign_id: String,
        /// Email or SMS.
        channel: Channel,
        /// The provider-side template to render.
        template: String,
        /// Recipients (addresses or numbers).
        #[serde(default)]
        recipients: Vec<String>,
        /// Provider segment to read recipients from when `recipients` is empty.
        #[serde(default)]
        segment: String,
    }
    example Campaign { campaign_id: "cmp_1".into(), channel: Channel::Email, template: "monthly_news".into(), recipients: vec!["ana@example.com".into(), "bo@example.com".into()], segment: String::new() };
    |j, ctx| {
        let mut recipients = j.recipients.clone();
        if recipients.is_empty() && !j.segment.is_empty() {
            let r = client(&ctx, "mailer")?.get("segments", format!("/segments/{}", seg(&j.segment))).send().await?;
            recipients = r
                .body
                .get("recipients")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
        }
        let mut jobs = Vec::with_capacity(recipients.len());
        for to in recipients {
            let vars = serde_json::Map::from_iter([("campaign_id".to_owned(), serde_json::Value::String(j.campaign_id.clone()))]);
            jobs.push(match j.channel {
                Channel::Email => follow(&SendEmail { to, template: j.template.clone(), vars })?,
                Channel::Sms => follow(&SendSms { to, template: j.template.clone(), vars })?,
            });
        }
        let n = jobs.len();
        // A tracked batch: the report runs once, when every send reached a final state.
        // Its id derives from this job's id, so a retried campaign finds it again.
        let report = follow(&CampaignReport { campaign_id: j.campaign_id.clone() })?;
        let batch = ctx
            .batch(jobs)
            .on_complete(report)
            .description(format!("campaign {}", j.campaign_id))
            .create()
            .await
            .map_err(|e| match e {
                culm_core::EnqueueError::Storage(m) => JobError::retryable(format!("campaign batch failed: {m}")),
                other => JobError::permanent(format!("campaign batch rejected: {other}")),
            })?;
        Ok(Outcome::done().with_summary(format!("campaign {}: {n} sends in batch {}", j.campaign_id, batch.id)))
    }
}

job! {
    /// A campaign's report: the `on_complete` callback of its batch of sends, run once
    /// when every send is done, dead, cancelled or expired. Its result names the batch,
    /// whose counts and per-send results `GET /v1/batches/{id}` and `…/jobs` serve.
    CampaignReport = "mail.campaign_report" in "bulk_mail" for BATCH;
    "Report a campaign once all its sends are final (its batch's callback).";
    {
        /// Campaign id.
        campaign_id: String,
    }
    example CampaignReport { campaign_id: "cmp_1".into() };
    |j, ctx| {
        let batch = ctx.batch_id().unwrap_or_default().to_owned();
        tracing::info!(campaign_id = %j.campaign_id, batch = %batch, "campaign complete");
        Ok(Outcome::done()
            .with_summary(format!("campaign {}: all sends final (batch {batch})", j.campaign_id))
            .with_result(serde_json::json!({ "campaign_id": j.campaign_id, "batch": batch })))
    }
}
