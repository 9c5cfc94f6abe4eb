//! `culm migrate`.
use crate::{config::Config, db::Db};
use anyhow::{Result, bail};
use std::process::ExitCode;

/// Creates the database when missing (and allowed), then applies migrations.
pub(super) async fn migrate(config: &Config) -> Result<ExitCode> {
    if !config.database.enabled() {
        bail!("no database configured: set CULM_DATABASE_URL (or database.url)");
    }
    if Db::ensure_database(&config.database).await? {
        println!("created the database");
    }
    let db = Db::connect(&config.database).await?;
    let applied = db.migrate().await?;
    if applied.is_empty() {
        println!("schema is up to date (version {})", crate::db::latest_version());
    } else {
        println!(
            "applied migration(s) {:?}; schema is at version {}",
            applied,
            crate::db::latest_version()
        );
    }
    Ok(ExitCode::SUCCESS)
}
