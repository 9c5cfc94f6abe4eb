//! File transfers and reports through the SFTP/report provider, and statements:
//! `ftp.*` (queue `ftp`, batch tier), `reports.generate` (queue `reports`) and
//! `statements.*` (queue `statements`, reporting tier). `statements.run` fans out one
//! `statements.generate` per account in batches of 500, one enqueue call per batch.
use crate::{
    http::client,
    job,
    support::{BATCH, REPORTING, done, fan_out, follow, seg},
};
use culm_core::{JobError, Outcome, Registry, RegistryError, RetryPolicy};
use std::time::Duration;

/// Registers the file, report and statement job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<UploadFile>()?
        .register::<FetchGalileoReports>()?
        .register::<GenerateReport>()?
        .register::<StatementRun>()?
        .register::<GenerateStatement>()?;
    Ok(())
}

job! {
    /// Uploads a generated file to a partner's drop.
    UploadFile = "ftp.upload_file" in "ftp" for BATCH;
    "Upload a file to a partner drop.";
    // A partner's file server that refuses an upload is usually restarting: three more
    // tries, 30 s apart, then a person looks at the dead letter.
    retry RetryPolicy::fixed(4, Duration::from_secs(30));
    {
        /// Destination path at the provider.
        remote_path: String,
        /// Where the content comes from (an object-store URL or a report id).
        source: String,
    }
    example UploadFile { remote_path: "/outbound/ach/2026-11-22.csv".into(), source: "report:ach-daily".into() };
    |j, ctx| {
        if !j.remote_path.starts_with('/') || j.remote_path.contains("..") {
            return Err(JobError::permanent(format!("remote_path `{}` must be absolute without `..`", j.remote_path)));
        }
        let r = client(&ctx, "sftp")?.post("upload", "/files").json(&j).idempotent(&ctx).send().await?;
        Ok(done("sftp", "upload", &r))
    }
}

job! {
    /// Picks up Galileo's daily report files of a day (empty: latest).
    FetchGalileoReports = "ftp.fetch_galileo_reports" in "ftp" for BATCH;
    "Pick up Galileo's report files.";
    // Galileo's files land late on some days: look again after 5, 15 and 30 minutes.
    retry RetryPolicy::delays(&[Duration::from_secs(300), Duration::from_secs(900), Duration::from_secs(1800)]);
    timeout Duration::from_secs(120);
    {
        /// Day, `YYYY-MM-DD`.
        #[serde(default)]
        date: String,
    }
    example FetchGalileoReports { date: "2026-11-22".into() };
    |j, ctx| {
        let mut call = client(&ctx, "sftp")?.get("list", "/galileo/reports");
        if !j.date.is_empty() {
            call = call.query("date", &j.date);
        }
        let r = call.send().await?;
        let n = r.body.get("files").and_then(|f| f.as_array()).map_or(0, Vec::len);
        Ok(Outcome::done().with_summary(format!("galileo reports: {n} files")))
    }
}

job! {
    /// Generates an internal or partner report and delivers it.
    GenerateReport = "reports.generate" in "reports" for REPORTING;
    "Generate and deliver a report.";
    {
        /// Report name, e.g. `daily_settlement`.
        report: String,
        /// Period, e.g. `2026-11-22`, `2026-11`, or a keyword (`yesterday`, `previous_month`).
        period: String,
    }
    example GenerateReport { report: "daily_settlement".into(), period: "2026-11-22".into() };
    |j, ctx| {
        let body = GenerateReport { report: j.report.clone(), period: crate::support::resolve_period(&j.period) };
        let r = client(&ctx, "sftp")?
            .post("reports", format!("/reports/{}", seg(&j.report)))
            .json(&body)
            .idempotent(&ctx)
            .send()
            .await?;
        Ok(done("sftp", "reports", &r))
    }
}

job! {
    /// A statement run: one `statements.generate` per account, enqueued in batches.
    /// Accounts come from the payload, or when it lists none from Galileo
    /// (`GET /accounts?status=active` → `account_ids`).
    StatementRun = "statements.run" in "statements" for REPORTING;
    "Fan a statement run out into per-account statements (batched enqueues).";
    {
        /// Period, e.g. `2026-11` (monthly), `2026-11-22` (daily), or a keyword
        /// resolved at run time: `previous_month`, `yesterday`.
        period: String,
        /// Accounts; empty: every active account at Galileo.
        #[serde(default)]
        account_ids: Vec<String>,
    }
    example StatementRun { period: "2026-10".into(), account_ids: vec!["acc_1001".into(), "acc_1002".into()] };
    |j, ctx| {
        let period = crate::support::resolve_period(&j.period);
        let mut accounts = j.account_ids.clone();
        if accounts.is_empty() {
            let r = client(&ctx, "galileo")?.get("accounts", "/accounts").query("status", "active").send().await?;
            accounts = r
                .body
                .get("account_ids")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
        }
        let jobs = accounts
            .into_iter()
            .map(|account_id| follow(&GenerateStatement { period: period.clone(), account_id }))
            .collect::<Result<Vec<_>, _>>()?;
        let n = fan_out(&ctx, jobs).await?;
        Ok(Outcome::done().with_summary(format!("statements {period}: {n} accounts")))
    }
}

job! {
    /// Builds one account's statement from Galileo and delivers it through the file provider.
    GenerateStatement = "statements.generate" in "statements" for REPORTING;
    "Build and deliver one account's statement.";
    {
        /// The statement's month, `YYYY-MM`.
        period: String,
        /// The customer's account at the bank core (Galileo).
        account_id: String,
    }
    example GenerateStatement { period: "2026-10".into(), account_id: "acc_1001".into() };
    |j, ctx| {
        let data = client(&ctx, "galileo")?
            .get("statement_data", format!("/accounts/{}/statement", seg(&j.account_id)))
            .query("period", &j.period)
            .send()
            .await?;
        let doc = serde_json::json!({"account_id": j.account_id, "period": j.period, "data": data.body});
        let r = client(&ctx, "sftp")?
            .post("statements", format!("/statements/{}/{}", seg(&j.period), seg(&j.account_id)))
            .json(&doc)
            .idempotent(&ctx)
            .send()
            .await?;
        Ok(done("sftp", "statements", &r))
    }
}
