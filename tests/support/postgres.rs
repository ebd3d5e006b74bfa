//! A PostgreSQL schema per test, for the RM's store.

use sqlx::{AssertSqlSafe, Connection};

/// A PostgreSQL schema of the test's own, dropped when the guard is dropped (even on panic).
pub struct PgSchema {
    server_url: String,
    pub schema: String,
    /// The URL the RM connects with: the server's, with `search_path` set to the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates `spindle_e2e_<random>` on SPINDLE_TEST_POSTGRES (default the local `test` database);
    /// `None` (the test skips, saying so) when no server answers there, unless
    /// SPINDLE_REQUIRE_POSTGRES is set.
    pub async fn create() -> Option<PgSchema> {
        let server_url = std::env::var("SPINDLE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let mut admin = match sqlx::PgConnection::connect(&server_url).await {
            Ok(admin) => admin,
            Err(error) => {
                super::skip_unless_required(
                    super::REQUIRE_POSTGRES,
                    &format!("PostgreSQL is unreachable at {server_url} ({error}): start it, or point SPINDLE_TEST_POSTGRES at one"),
                );
                return None;
            }
        };
        let schema = format!("spindle_e2e_{}", hex::encode(rand::random::<[u8; 8]>()));
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create the test schema");
        let _ = admin.close().await;
        let separator = if server_url.contains('?') { '&' } else { '?' };
        let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
        Some(PgSchema { server_url, schema, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (server_url, drop_schema) = (self.server_url.clone(), format!("DROP SCHEMA {} CASCADE", self.schema));
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server_url).await?;
                sqlx::query("SET lock_timeout = '10s'").execute(&mut admin).await?;
                sqlx::query(AssertSqlSafe(drop_schema)).execute(&mut admin).await?;
                Ok::<(), sqlx::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}
