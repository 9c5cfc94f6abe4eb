//! A PostgreSQL database of the test's own, dropped when the test ends.
use crate::{TcpProxy, TestEnv};
use culm_worker::db::{
    Db,
    ledger::{self, Ledger, LedgerWriter},
};
use sqlx::{Connection, PgConnection};

/// The server URL without a database (`CULM_TEST_DATABASE_URL`, default the local trust login).
pub fn database_server_url() -> String {
    std::env::var("CULM_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database name of the test's own, `culm_test_<ulid>`, on [`database_server_url`].
/// Nothing is created up front (culm's `Db::ensure_database` and `culm migrate` create
/// it); on `Drop` the database is dropped, with `FORCE`, if it exists, so a failing
/// test cleans up too.
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// A fresh name and its URL.
    #[allow(clippy::new_without_default, reason = "each call makes a new database name")]
    pub fn new() -> TestDb {
        let name = format!("culm_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let url = format!("{}/{name}", database_server_url());
        TestDb { name, url }
    }

    /// The same database reached through `proxy`.
    pub fn via(&self, proxy: &TcpProxy) -> String {
        let base = database_server_url();
        let host = base.rsplit('@').next().unwrap_or("127.0.0.1:5432").to_owned();
        format!("{}/{}", base.replace(&host, &proxy.addr.to_string()), self.name)
    }
}

/// Creates and migrates the env's database (`database.url`); starts a ledger writer.
pub async fn ledger_for(env: &TestEnv) -> (Db, Ledger, LedgerWriter) {
    Db::ensure_database(&env.config.database)
        .await
        .expect("create database");
    let db = Db::connect(&env.config.database).await.expect("connect");
    db.migrate().await.expect("migrate");
    let (l, w) = ledger::start(
        db.clone(),
        env.store.connection(),
        &env.prefix,
        env.config.database.ledger.clone(),
    );
    (db, l, w)
}

async fn drop_database(name: &str) -> Result<(), sqlx::Error> {
    let mut c = PgConnection::connect(&format!("{}/postgres", database_server_url())).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut c)
        .await?;
    c.close().await
}

impl Drop for TestDb {
    /// Drops the database on a thread of its own (with its own runtime), so it works
    /// whether or not the test's runtime is still running, and after a panic.
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(drop_database(&name)).map_err(std::io::Error::other)
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.url),
            Err(_) => eprintln!("dropping test database {} panicked", self.url),
        }
    }
}
