//! The read model's engines for tests: SQLite in a temporary directory, PostgreSQL in a
//! fresh database on the server at `SYNCJOBS_TEST_POSTGRES_URL` (the store's testkit).
#![allow(dead_code)] // each test file uses its part

use syncjobs_projections::{Projection, ProjectionWriter};
pub use syncjobs_store_postgres::testkit;

/// The read model's engines: every test of the fold's behaviour runs on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Runs `test` on SQLite, then on PostgreSQL (a fresh database per model) when
/// `SYNCJOBS_TEST_POSTGRES_URL` is set; unset, the PostgreSQL run is skipped, saying so,
/// unless `SYNCJOBS_REQUIRE_SERVICES=1` makes that a failure.
pub async fn on_each_engine(name: &str, test: impl AsyncFn(Engine)) {
    test(Engine::Sqlite).await;
    if testkit::admin_url(name).is_some() {
        test(Engine::Postgres).await;
    }
}

/// Where a read model's database is: a SQLite file, or a PostgreSQL database of its own
/// (dropped with it).
pub enum Place {
    File(tempfile::TempDir),
    Postgres(testkit::TestDb),
}

impl Place {
    pub async fn new(engine: Engine) -> Place {
        match engine {
            Engine::Sqlite => Place::File(tempfile::tempdir().unwrap()),
            Engine::Postgres => {
                let admin = std::env::var(testkit::URL_VAR).expect("a PostgreSQL server");
                Place::Postgres(testkit::TestDb::create(&admin).await)
            }
        }
    }

    /// Opens (again) the read model there.
    pub async fn open(&self) -> (Projection, ProjectionWriter) {
        match self {
            Place::File(dir) => Projection::open(&dir.path().join("read_model.db"), u64::MAX),
            Place::Postgres(db) => {
                Projection::open_postgres(&db.url, false, Default::default()).await
            }
        }
        .unwrap()
    }
}
