//! culm's PostgreSQL side: the connection pool, the embedded migrations and the
//! schema-version guard, plus the read paths over the ledger (`culm_job_runs`) and the
//! dead-letter archive (`culm_dead_jobs`). The ledger writer lives in `ledger`, the
//! outbox relay in `outbox`. Redis stays the hot path; nothing here runs per job.
pub mod dead;
pub mod ledger;
pub mod outbox;
pub mod retention;
pub mod services;

use crate::{
    config::{DatabaseConfig, redact_url},
    store::{ErrorRecord, JobState, JobStatus},
};
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, PgConnection, PgPool, Row,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};
use std::{borrow::Cow, str::FromStr, time::Duration};

/// The migrations in `migrations/`, embedded in the binary (version, description, SQL).
/// A unit test checks this list against the directory.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger dead outbox",
        include_str!("../../../migrations/0001_ledger_dead_outbox.sql"),
    ),
    (
        2,
        "superseded runs",
        include_str!("../../../migrations/0002_superseded_runs.sql"),
    ),
    (
        3,
        "expired runs",
        include_str!("../../../migrations/0003_expired_runs.sql"),
    ),
    (
        4,
        "outbox traceparent",
        include_str!("../../../migrations/0004_outbox_traceparent.sql"),
    ),
    (
        5,
        "cancelled runs",
        include_str!("../../../migrations/0005_cancelled_runs.sql"),
    ),
    (
        6,
        "runs by type ascending",
        include_str!("../../../migrations/0006_runs_by_type_ascending.sql"),
    ),
];

/// The embedded migrations as an sqlx migrator.
pub fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            MIGRATIONS
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, Cow::Borrowed(*sql), false)
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0)
}

/// One run of a job, from the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    pub attempt: u32,
    /// `succeeded`, `failed_will_retry`, `dead`, `deferred`, `superseded` or `cancelled`.
    pub outcome: String,
    pub error: Option<String>,
    /// ms.
    pub started_at: Option<i64>,
    /// ms.
    pub finished_at: i64,
    pub duration_ms: f64,
    pub worker_id: String,
    pub summary: Option<String>,
}

/// A PostgreSQL problem. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `database.url` is not usable.
    #[error("database.url ({url}) is not a valid PostgreSQL URL: {cause}")]
    BadUrl {
        /// The URL with its password redacted.
        url: String,
        cause: String,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach PostgreSQL at {url}: {cause}. Start it, or point culm elsewhere with CULM_DATABASE_URL (or database.url)"
    )]
    Unreachable {
        /// The URL with its password redacted.
        url: String,
        cause: String,
    },
    /// The database does not exist and this role may not create it.
    #[error(
        "database `{database}` does not exist and role `{role}` may not create it ({cause}). Ask a superuser to run: CREATE DATABASE \"{database}\" OWNER \"{role}\";  then run `culm migrate`"
    )]
    CannotCreate {
        database: String,
        /// The role culm connected as.
        role: String,
        /// PostgreSQL's message.
        cause: String,
    },
    /// The schema has migrations this binary does not know (a newer culm migrated it).
    #[error(
        "the database schema is at version {found}, newer than this binary's {known}: refusing to start. Deploy a culm that knows version {found} (a newer release), or restore the database"
    )]
    SchemaTooNew {
        /// Highest applied version.
        found: i64,
        /// Highest version this binary knows.
        known: i64,
    },
    /// Migrations are pending and `migrate_on_start` is off.
    #[error(
        "the database schema is at version {found}, this binary needs {known}: run `culm migrate` (or set database.migrate_on_start = true)"
    )]
    SchemaBehind {
        /// Highest applied version.
        found: i64,
        /// Highest version this binary knows.
        known: i64,
    },
    /// Applying migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Handle to culm's PostgreSQL pool. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

fn options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(&config.url).map_err(|e| DbError::BadUrl {
        url: redact_url(&config.url),
        cause: e.to_string(),
    })?;
    let ms = config.statement_timeout.as_millis().to_string();
    Ok(opts
        .options([("statement_timeout", ms.as_str())])
        .application_name("culm"))
}

fn is_code(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == code)
}

impl Db {
    /// Connects (lazily re-connecting later as needed) and checks the server answers.
    pub async fn connect(config: &DatabaseConfig) -> Result<Db, DbError> {
        let opts = options(config)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(opts);
        let db = Db { pool };
        db.ping(config.connect_timeout)
            .await
            .map_err(|e| DbError::Unreachable {
                url: redact_url(&config.url),
                cause: if is_code(&e, "3D000") {
                    "the database does not exist; run `culm migrate` (it creates it when the role may)".to_owned()
                } else {
                    e.to_string()
                },
            })?;
        Ok(db)
    }

    /// The pool, for queries outside this module (the archive, the relay, tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `SELECT 1` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), sqlx::Error> {
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(())
    }

    /// Creates the configured database when it does not exist (and the role may).
    /// Returns whether it created it.
    pub async fn ensure_database(config: &DatabaseConfig) -> Result<bool, DbError> {
        let opts = options(config)?;
        let unreachable = |e: sqlx::Error| DbError::Unreachable {
            url: redact_url(&config.url),
            cause: e.to_string(),
        };
        let connect = |o: PgConnectOptions| async move {
            tokio::time::timeout(config.connect_timeout, PgConnection::connect_with(&o))
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
        };
        match connect(opts.clone()).await {
            Ok(c) => {
                let _ = c.close().await;
                Ok(false)
            }
            // 3D000 invalid_catalog_name: the database does not exist.
            Err(e) if is_code(&e, "3D000") => {
                let database = opts.get_database().unwrap_or("postgres").to_owned();
                let role = opts.get_username().to_owned();
                let mut admin = connect(opts.clone().database("postgres")).await.map_err(unreachable)?;
                let sql = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
                let created = sqlx::query(&sql).execute(&mut admin).await;
                let _ = admin.close().await;
                match created {
                    Ok(_) => {
                        tracing::info!(%database, "created database");
                        Ok(true)
                    }
                    // 42P04 duplicate_database: another process won the race.
                    Err(e) if is_code(&e, "42P04") => Ok(false),
                    Err(e) => Err(DbError::CannotCreate {
                        database,
                        role,
                        cause: e
                            .as_database_error()
                            .map(|d| d.message().to_owned())
                            .unwrap_or_else(|| e.to_string()),
                    }),
                }
            }
            Err(e) => Err(unreachable(e)),
        }
    }

    /// Applied migration versions, oldest first (empty on a fresh database).
    pub async fn applied_versions(&self) -> Result<Vec<i64>, DbError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Refuses a schema with versions this binary does not know.
    pub async fn check_not_newer(&self) -> Result<i64, DbError> {
        let applied = self.applied_versions().await?;
        let known = latest_version();
        let found = applied.last().copied().unwrap_or(0);
        if let Some(v) = applied.iter().find(|v| !MIGRATIONS.iter().any(|m| m.0 == **v)) {
            return Err(DbError::SchemaTooNew {
                found: *v.max(&found),
                known,
            });
        }
        Ok(found)
    }

    /// Applies pending migrations (idempotent); refuses a newer schema first. Returns the
    /// versions applied by this call.
    pub async fn migrate(&self) -> Result<Vec<i64>, DbError> {
        self.check_not_newer().await?;
        let before = self.applied_versions().await?;
        migrator().run(&self.pool).await?;
        let after = self.applied_versions().await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    /// Every run of job `id` in the ledger, oldest first (the dashboard's job page).
    pub async fn job_runs(&self, id: &str) -> Result<Vec<JobRun>, DbError> {
        let rows = sqlx::query(
            "SELECT attempt, outcome, error, started_at, finished_at, duration_ms, worker_id, summary \
             FROM culm_job_runs WHERE job_id = $1 ORDER BY finished_at, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let started: Option<DateTime<Utc>> = r.try_get("started_at")?;
                let finished: DateTime<Utc> = r.try_get("finished_at")?;
                Ok(JobRun {
                    attempt: u32::try_from(r.try_get::<i32, _>("attempt")?).unwrap_or(0),
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                    started_at: started.map(|t| t.timestamp_millis()),
                    finished_at: finished.timestamp_millis(),
                    duration_ms: r.try_get("duration_ms")?,
                    worker_id: r.try_get("worker_id")?,
                    summary: r.try_get("summary")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Start-up check of `culm run`: migrate when allowed, otherwise require the schema
    /// to be exactly current.
    pub async fn prepare(&self, migrate_on_start: bool) -> Result<(), DbError> {
        if migrate_on_start {
            let applied = self.migrate().await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "applied database migrations");
            }
            return Ok(());
        }
        let found = self.check_not_newer().await?;
        let known = latest_version();
        if found < known {
            return Err(DbError::SchemaBehind { found, known });
        }
        Ok(())
    }

    /// A job's history from the ledger, for jobs Redis no longer holds. The state is the
    /// one the last recorded attempt left the job in.
    pub async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, DbError> {
        let rows = sqlx::query(
            "SELECT job, queue, attempt, outcome, error, enqueued_at, finished_at, next_run_at \
             FROM culm_job_runs WHERE job_id = $1 ORDER BY finished_at, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let outcome: String = last.try_get("outcome")?;
        // A retry or a deferral leaves the job scheduled for its next attempt.
        let state = match outcome.as_str() {
            "succeeded" => JobState::Done,
            "dead" => JobState::Dead,
            "expired" => JobState::Expired,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Scheduled,
        };
        let mut errors = Vec::new();
        for r in &rows {
            let error: Option<String> = r.try_get("error")?;
            let o: String = r.try_get("outcome")?;
            if let Some(error) = error.filter(|_| o == "failed_will_retry" || o == "dead") {
                let at: DateTime<Utc> = r.try_get("finished_at")?;
                errors.push(ErrorRecord {
                    attempt: u32::try_from(r.try_get::<i32, _>("attempt")?).unwrap_or(0),
                    at: at.timestamp_millis(),
                    error,
                });
            }
        }
        let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
        let enqueued: Option<DateTime<Utc>> = last.try_get("enqueued_at")?;
        let finished: DateTime<Utc> = last.try_get("finished_at")?;
        let next_run: Option<DateTime<Utc>> = last.try_get("next_run_at")?;
        Ok(Some(JobStatus {
            id: id.to_owned(),
            queue: last.try_get("queue")?,
            state,
            job: Some(last.try_get("job")?),
            attempts: u32::try_from(last.try_get::<i32, _>("attempt")?).unwrap_or(0),
            enqueued_at: ms(enqueued),
            run_at: ms(next_run).filter(|_| state == JobState::Scheduled),
            lease_expires_at: None,
            finished_at: Some(finished.timestamp_millis()).filter(|_| state != JobState::Scheduled),
            last_error: errors.last().map(|e| e.error.clone()),
            errors,
            // The ledger keeps summaries, not results.
            result: None,
            priority: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations/ exists")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            MIGRATIONS.len(),
            "migrations/ has {files:?}; add new ones to MIGRATIONS"
        );
        for (f, (v, _, _)) in files.iter().zip(MIGRATIONS) {
            let num: i64 = f.split('_').next().and_then(|n| n.parse().ok()).expect("NNNN_name.sql");
            assert_eq!(num, *v, "{f}");
        }
    }
}
