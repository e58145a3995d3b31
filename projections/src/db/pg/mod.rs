//! The read model in PostgreSQL: tables (`schema.sql`) in the event store's database, shared
//! by every node.
//!
//! Every node runs a projector over the one log; a batch's transaction first locks the
//! projection's row (`FOR UPDATE`), folds only the events above the stored position, and
//! commits rows and position together. A node that finds the position already past its
//! batch (another node folded it) commits nothing and publishes it: so `wait_for(p)` on any
//! node returns once the stored position has reached `p`, whoever folded it. The live jobs a
//! node holds are only a cache of the rows, valid while it folded the last batch; a batch
//! loads the live jobs it touches that it does not hold (`WHERE id = ANY($1)`), and
//! recovery's unfinished jobs come from the table.
//!
//! - [`writer`]: the writer ([`PgWriter`]) and the fold's row operations on its transaction.
//! - [`view`]: the queries the API makes.
//!
//! Connections are driven by a runtime of this read model's own (one thread), as the
//! PostgreSQL store's are: actix's workers are single-threaded runtimes that come and go, and
//! a connection must not die with the one that happened to open it.

pub mod view;
pub mod writer;

pub use writer::PgWriter;

use super::{ReadError, PROJECTION_NAME, SCHEMA_VERSION};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use std::time::Duration;
use syncjobs_store_postgres::{OwnRuntime, Timeouts};
use tokio_postgres::NoTls;

const SCHEMA: &str = include_str!("schema.sql");
/// Tables in the order they are dropped on a rebuild.
const TABLES: [&str; 12] = [
    "read_projection",
    "read_organizations",
    "read_api_keys",
    "read_collections",
    "read_source_connections",
    "read_jobs",
    "read_purge_queue",
    "read_organization_counts",
    "read_webhook_subscriptions",
    "read_webhook_messages",
    "read_webhook_deliveries",
    "read_webhook_attempts",
];
/// Serialises schema changes between nodes starting together (an arbitrary constant of
/// this read model; the event store's lock is another).
const SCHEMA_LOCK: i64 = 0x5359_4e43_5245_4144; // "SYNCREAD"
/// Read connections a node keeps (the writer takes one more while it commits).
const POOL_SIZE: usize = 16;

/// Opens connections on the read model's runtime, which then drives them.
struct OnRuntime(tokio::runtime::Handle);

impl deadpool_postgres::Connect for OnRuntime {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        let handle = self.0.clone();
        Box::pin(async move {
            let task = handle.spawn(async move {
                let (client, connection) = config.connect(NoTls).await?;
                let driver = tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%err, "read model connection closed");
                    }
                });
                Ok((client, driver))
            });
            match task.await {
                Ok(connected) => connected,
                // The runtime is shutting down: the read model is closing. tokio-postgres's
                // errors cannot be made by hand; a connection without a host fails at once.
                Err(_) => tokio_postgres::Config::new()
                    .connect(NoTls)
                    .await
                    .map(|_| unreachable!("a connection without a host")),
            }
        })
    }
}

/// The read model's database: a pool of connections on its own runtime.
pub struct PgDb {
    pool: Pool,
    /// Connecting, waiting for a pooled connection and each read are bounded (the store's
    /// bounds): a read fails as unavailable instead of hanging on a database that is away.
    timeouts: Timeouts,
    // Last: dropped after the pool whose connections it drives.
    _runtime: OwnRuntime,
}

/// The read model's commits do not wait for the WAL flush (`synchronous_commit = off`),
/// unless the URL's options say otherwise. Safe because the model is derived and each
/// batch commits its rows with its position: a server crash can lose only the last
/// commits (a fraction of a second), rows and position together, and the projector folds
/// those events again from the position that survived; never applied twice, never skipped.
/// The log itself, the destination and the leases keep durable commits (other pools).
/// It takes the flush's wait off every fold a command waits for (read-your-writes), which
/// was a third of a cancel's time across nodes (bench #14).
fn relaxed_commits(config: &mut tokio_postgres::Config) {
    let options = config.get_options().unwrap_or("").to_owned();
    if !options.contains("synchronous_commit") {
        config.options(format!("{options} -c synchronous_commit=off").trim_start());
    }
}

/// Errors of the pool: the database is away (unavailable), or the pool was misconfigured.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> ReadError {
    ReadError::Unavailable(format!("read model database: {e}"))
}

impl PgDb {
    /// Connects to `url`, creates the tables (or drops and recreates them when their
    /// version is not this build's: rebuilt from the log) and returns the database and
    /// its writer at the stored position.
    /// With `rebuild`, the tables are emptied first (`syncjobs rebuild-read-model`).
    pub async fn open(
        url: &str,
        rebuild: bool,
        timeouts: Timeouts,
    ) -> Result<(PgDb, PgWriter), ReadError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ReadError::Config(e.to_string()))?;
        syncjobs_store_postgres::tune(&mut config, &timeouts);
        if config.get_application_name().is_none() {
            config.application_name("syncjobs-read-model");
        }
        relaxed_commits(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("syncjobs-pg-read")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_connect(
            config,
            OnRuntime(handle),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(timeouts.pool_wait))
            .create_timeout(Some(timeouts.connect))
            .recycle_timeout(Some(timeouts.connect))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ReadError::Config(e.to_string()))?;
        let db = PgDb {
            pool,
            timeouts,
            _runtime: OwnRuntime(Some(runtime)),
        };
        prepare_schema(&db, rebuild).await?;
        let writer = PgWriter::load(db.pool.clone()).await?;
        Ok((db, writer))
    }

    /// How long one read may take.
    pub(crate) fn operation_timeout(&self) -> Duration {
        self.timeouts.operation
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, ReadError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Creates the tables, or drops and recreates them when `rebuild` or when their version is
/// not this build's; under an advisory lock, so that nodes starting together agree.
async fn prepare_schema(db: &PgDb, rebuild: bool) -> Result<(), ReadError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let stored = tx
        .query_opt(
            "SELECT schema_version FROM read_projection WHERE name = $1",
            &[&PROJECTION_NAME],
        )
        .await?
        .map(|r| r.get::<_, i64>(0));
    let rebuild = rebuild
        || match stored {
            Some(version) if version != SCHEMA_VERSION => {
                tracing::warn!(
                    found = version,
                    expected = SCHEMA_VERSION,
                    "read model of another schema version; rebuilding it from the log"
                );
                true
            }
            _ => false,
        };
    if rebuild {
        for table in TABLES {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        tx.batch_execute(SCHEMA).await?;
    }
    tx.execute(
        "INSERT INTO read_projection (name, position, schema_version) VALUES ($1, 0, $2)
         ON CONFLICT (name) DO NOTHING",
        &[&PROJECTION_NAME, &SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A stored text time.
pub(crate) fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, ReadError> {
    syncjobs_domain::time::parse(s).map_err(|e| ReadError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::relaxed_commits;

    fn options(url: &str) -> String {
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        relaxed_commits(&mut config);
        config.get_options().unwrap_or("").to_owned()
    }

    #[test]
    fn the_read_models_commits_do_not_wait_for_the_flush_unless_the_url_says() {
        assert_eq!(options("postgres://u@h/db"), "-c synchronous_commit=off");
        assert_eq!(
            options("postgres://u@h/db?options=-c%20work_mem%3D8MB"),
            "-c work_mem=8MB -c synchronous_commit=off"
        );
        assert_eq!(
            options("postgres://u@h/db?options=-c%20synchronous_commit%3Don"),
            "-c synchronous_commit=on"
        );
    }
}
