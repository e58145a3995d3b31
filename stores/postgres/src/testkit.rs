//! Fresh databases for tests (feature `testkit`), on the server at
//! `SYNCJOBS_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`; a role
//! that may create databases). Unset: tests skip, saying so, unless
//! `SYNCJOBS_REQUIRE_SERVICES=1` makes that a failure. Used by this crate's tests and by
//! the API suite when it runs on PostgreSQL.

use crate::PgStore;
use async_trait::async_trait;
use std::sync::Arc;
use syncjobs_domain::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The variable naming the test server.
pub const URL_VAR: &str = "SYNCJOBS_TEST_POSTGRES_URL";

/// The server to test against, or None (after saying why) when the test is to be skipped.
pub fn admin_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if std::env::var("SYNCJOBS_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{test}: {URL_VAR} is unset but SYNCJOBS_REQUIRE_SERVICES=1")
        }
        _ => {
            eprintln!(
                "skipping {test}: {URL_VAR} is not set \
                 (e.g. {URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `name` (its query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// A plain connection, driven on the caller's runtime.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    tokio::spawn(connection);
    client
}

/// A database of this test's own, dropped (with whatever is still connected) at the end,
/// even when the test panics.
pub struct TestDb {
    admin: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A new, empty database on the server at `admin`.
    pub async fn create(admin: &str) -> TestDb {
        let name = format!("syncjobs_test_{}", Uuid::new_v4().simple());
        client(admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        TestDb {
            admin: admin.to_owned(),
            url: with_database(admin, &name),
            name,
        }
    }

    /// A store (an instance of its own: its own pool and listener) on this database.
    pub async fn store(&self) -> Arc<PgStore> {
        PgStore::connect(&self.url).await.expect("the store opens")
    }

    /// A plain connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        client(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A thread of its own: Drop may run inside the test's runtime, which cannot block.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                client(&admin)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// A store on a database of its own, dropped when the last handle to the store goes (a
/// restarted test app reusing the store keeps the database).
pub async fn fresh_store(admin: &str) -> Arc<dyn EventStore> {
    fresh_store_with_url(admin).await.0
}

/// [`fresh_store`] and its database's URL (for what lives beside the log: the destination
/// and the read model).
pub async fn fresh_store_with_url(admin: &str) -> (Arc<dyn EventStore>, String) {
    let db = TestDb::create(admin).await;
    let store = db.store().await;
    let url = db.url.clone();
    (Arc::new(OwningStore { store, _db: db }), url)
}

/// The store, then its database: fields drop in order.
struct OwningStore {
    store: Arc<PgStore>,
    _db: TestDb,
}

#[async_trait]
impl EventStore for OwningStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, after).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(after, limit).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.store.watch_head()
    }

    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn write_failure(&self) -> Option<String> {
        self.store.write_failure()
    }

    fn connection_failure(&self) -> Option<String> {
        self.store.connection_failure()
    }

    async fn heartbeat(
        &self,
        worker: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.store.heartbeat(worker, at).await
    }

    async fn heartbeats(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        self.store.heartbeats().await
    }

    async fn forget_heartbeat(&self, worker: &str) -> Result<(), StoreError> {
        self.store.forget_heartbeat(worker).await
    }

    async fn try_lease(
        &self,
        duty: &str,
        holder: &str,
    ) -> Result<syncjobs_domain::store::LeaseTry, StoreError> {
        self.store.try_lease(duty, holder).await
    }
}

/// What a [`FaultProxy`] does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards both ways.
    Pass,
    /// A partition: connections (open and new) are kept, and nothing moves either way.
    Blackhole,
    /// The server is down: open connections are closed and new ones closed at once.
    Refuse,
}

/// A TCP proxy in front of the test server whose traffic a test can stop, to show how the
/// store behaves when the database goes away and comes back without stopping the shared
/// server other tests use.
pub struct FaultProxy {
    /// `url` with its host and port replaced by the proxy's.
    pub url: String,
    mode: watch::Sender<Fault>,
    _accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to the server of `url` (a `postgres://...@host:port/...` URL).
    pub async fn start(url: &str) -> FaultProxy {
        let authority_start = url.find("://").map_or(0, |i| i + 3);
        let rest = &url[authority_start..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        let target = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().expect("an address").port();
        let userinfo = authority
            .rfind('@')
            .map_or(String::new(), |at| authority[..=at].to_owned());
        let proxied = format!(
            "{}{userinfo}127.0.0.1:{port}{}",
            &url[..authority_start],
            &rest[authority_end..]
        );
        let (mode, _) = watch::channel(Fault::Pass);
        let modes = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = modes.subscribe();
                if *rx.borrow_and_update() == Fault::Refuse {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    relay(inbound, outbound, rx).await;
                });
            }
        });
        FaultProxy {
            url: proxied,
            mode,
            _accept: accept,
        }
    }

    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }
}

/// Copies both ways while the mode is `Pass`, holds still under `Blackhole`, and closes both
/// sides under `Refuse`.
async fn relay(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    mut mode: watch::Receiver<Fault>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Fault::Refuse => return,
            Fault::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Pass => {}
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            n = in_read.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if out_write.write_all(&up[..n]).await.is_err() { return },
            },
            n = out_read.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if in_write.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}
