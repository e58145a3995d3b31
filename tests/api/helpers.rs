//! spawn_app (zero2prod's shape): the whole application on a random port, on an injected
//! in-memory store, with two organizations' keys and a client for each.

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use syncjobs::api::{keys, HealthProbe};
use syncjobs::backend::ReadModelAt;
use syncjobs::config::Settings;
use syncjobs::startup::{Application, Components};
use syncjobs::telemetry;
use syncjobs_actors::pipeline::{EntitySink, MemoryDestination, SqliteDestination};
use syncjobs_actors::{JobSettings, Pipeline};
use syncjobs_domain::{EventStore, RecordedEvent, SharedClock, SystemClock};
use syncjobs_store_postgres::PgDestination;
use syncjobs_store_sqlite::EmbeddedStore;
use uuid::Uuid;

/// Where the pipeline writes in a test application.
pub enum Destination {
    /// The production destination of the app's store: SQLite in the app's data directory
    /// beside an embedded store, PostgreSQL on the same database as a PostgreSQL store.
    Sqlite,
    /// In memory, each write call taking this long (a cancel waits for the one in flight).
    Slow(Duration),
    /// In memory; write calls after the first `n` fail (the run fails).
    FailingAfter(usize),
}

pub struct TestApp {
    pub address: String,
    /// The default organization's key (SYNCJOBS_BOOTSTRAP_API_KEY).
    pub key: String,
    /// A key of a second organization, "other".
    pub other_key: String,
    pub client: reqwest::Client,
    /// The production store: embedded SQLite in the app's data directory, PostgreSQL
    /// (see [`postgres_server`]) or KurrentDB (see [`kurrentdb_server`]).
    pub store: Arc<dyn EventStore>,
    /// Where the read model is: the data directory, or the PostgreSQL store's database.
    pub read_model: ReadModelAt,
    pub destination: Arc<dyn EntitySink>,
    pub handle: actix_web::dev::ServerHandle,
    pub data_dir: Arc<tempfile::TempDir>,
    pub settings: Settings,
}

pub struct Options {
    /// Reuse a store (restarts); default: a new store (see [`postgres_server`]).
    pub store: Option<Arc<dyn EventStore>>,
    /// With `store`: where its read model is (default: the data directory).
    pub read_model: Option<ReadModelAt>,
    pub data_dir: Option<Arc<tempfile::TempDir>>,
    pub bootstrap_key: Option<String>,
    pub destination: Destination,
    pub cancel_timeout_seconds: u64,
    pub delete_wait: Duration,
    pub max_body_bytes: usize,
    /// NATS URL, JetStream stream and subject prefix for the relay (None: no relay).
    pub nats: Option<(String, String, String)>,
    /// Heartbeat period of server-sent event streams.
    pub sse_heartbeat: Duration,
    /// Extra `/health` probes.
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// Last changes to the settings (HTTP limits, ...), after all of the above.
    pub settings: fn(&mut Settings),
    /// The service's clock (default: the system's).
    pub clock: Option<SharedClock>,
}

/// The system's clock moved on by what the test says ([`ShiftedClock::advance`]): days of
/// webhook retention or failure pass in an instant, while everything else runs in real time.
#[derive(Default)]
pub struct ShiftedClock {
    offset: std::sync::Mutex<chrono::Duration>,
}

impl ShiftedClock {
    pub fn advance(&self, by: chrono::Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl syncjobs_domain::Clock for ShiftedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + *self.offset.lock().unwrap()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: None,
            read_model: None,
            data_dir: None,
            bootstrap_key: Some(format!("test-key-{}", Uuid::new_v4().simple())),
            destination: Destination::Sqlite,
            cancel_timeout_seconds: 180,
            delete_wait: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            nats: None,
            sse_heartbeat: Duration::from_secs(30),
            probes: Vec::new(),
            settings: |_| {},
            clock: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub struct Spawned {
    pub app: TestApp,
    /// The key printed at a first start without any key.
    pub generated_key: Option<String>,
}

pub async fn spawn_app_with(o: Options) -> TestApp {
    spawn(o).await.app
}

/// `SYNCJOBS_TEST_STORE=postgres`: the suite runs on PostgreSQL (the server at
/// `SYNCJOBS_TEST_POSTGRES_URL`), each app on a fresh database dropped with its store.
/// Unset or `sqlite`: the embedded store in the app's data directory. Tests that exercise
/// the embedded store itself open it explicitly either way.
pub fn postgres_server() -> Option<String> {
    match std::env::var("SYNCJOBS_TEST_STORE").as_deref() {
        Ok("postgres") => Some(
            std::env::var(syncjobs_store_postgres::testkit::URL_VAR)
                .expect("SYNCJOBS_TEST_STORE=postgres needs SYNCJOBS_TEST_POSTGRES_URL"),
        ),
        Ok("") | Ok("sqlite") | Ok("kurrentdb") | Err(_) => None,
        Ok(other) => panic!("SYNCJOBS_TEST_STORE={other}: expected sqlite, postgres or kurrentdb"),
    }
}

/// The databases of the PostgreSQL stores this process's apps were given, so that an app
/// restarted on the same store finds its destination on the same database.
static DATABASES: std::sync::Mutex<Vec<(std::sync::Weak<dyn EventStore>, String)>> =
    std::sync::Mutex::new(Vec::new());

fn remember_database(store: &Arc<dyn EventStore>, url: String) {
    let mut known = DATABASES.lock().unwrap();
    known.retain(|(s, _)| s.strong_count() > 0);
    known.push((Arc::downgrade(store), url));
}

/// The database of a PostgreSQL store made by [`spawn`]; None for an embedded store.
fn database_of(store: &Arc<dyn EventStore>) -> Option<String> {
    if store.backend() != "postgres" {
        return None;
    }
    let known = DATABASES.lock().unwrap();
    let found = known
        .iter()
        .find(|(s, _)| std::ptr::addr_eq(s.as_ptr(), Arc::as_ptr(store)))
        .map(|(_, url)| url.clone());
    Some(found.expect("a PostgreSQL store made by spawn (its database holds the destination)"))
}

/// `SYNCJOBS_TEST_STORE=kurrentdb`: the suite runs on the KurrentDB server at
/// `KURRENTDB_URL`, each app in a namespace of its own (a fresh, empty store), in a build
/// with `--features kurrentdb`. Never run where this was written: no server could be had.
pub fn kurrentdb_server() -> Option<String> {
    if std::env::var("SYNCJOBS_TEST_STORE").as_deref() != Ok("kurrentdb") {
        return None;
    }
    #[cfg(not(feature = "kurrentdb"))]
    panic!("SYNCJOBS_TEST_STORE=kurrentdb needs a build with --features kurrentdb");
    #[cfg(feature = "kurrentdb")]
    Some(std::env::var("KURRENTDB_URL").expect(
        "SYNCJOBS_TEST_STORE=kurrentdb needs KURRENTDB_URL (e.g. esdb://127.0.0.1:2113?tls=false)",
    ))
}

/// A new, empty store on the KurrentDB server at `url`.
#[cfg(feature = "kurrentdb")]
async fn fresh_kurrentdb_store(url: &str) -> Arc<dyn EventStore> {
    let url =
        syncjobs_store_kurrentdb::with_namespace(url, &format!("test-{}", Uuid::new_v4().simple()));
    syncjobs_store_kurrentdb::KurrentStore::connect(&url)
        .await
        .expect("a KurrentDB store")
}

#[cfg(not(feature = "kurrentdb"))]
async fn fresh_kurrentdb_store(_url: &str) -> Arc<dyn EventStore> {
    unreachable!("kurrentdb_server() refuses a build without the kurrentdb feature")
}

pub async fn spawn(o: Options) -> Spawned {
    telemetry::init_for_tests();
    let data_dir = o
        .data_dir
        .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("a temp dir")));
    let mut settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: data_dir.path().to_owned(),
        bootstrap_api_key: o.bootstrap_key.clone(),
        delete_wait_seconds: o.delete_wait.as_secs().max(1),
        cancel_timeout_seconds: o.cancel_timeout_seconds,
        nats_url: o.nats.as_ref().map(|n| n.0.clone().into()),
        nats_stream: o
            .nats
            .as_ref()
            .map_or_else(|| Settings::default().nats_stream, |n| n.1.clone()),
        nats_subject_prefix: o
            .nats
            .as_ref()
            .map_or_else(|| Settings::default().nats_subject_prefix, |n| n.2.clone()),
        max_body_bytes: o.max_body_bytes,
        http_workers: Some(2),
        shutdown_timeout_seconds: 10,
        checkpoint_every_seconds: 1,
        handle_signals: false,
        sse_heartbeat_ms: o.sse_heartbeat.as_millis() as u64,
        ..Settings::default()
    };
    (o.settings)(&mut settings);
    let clock: SharedClock = o.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let store: Arc<dyn EventStore> = match (o.store, postgres_server(), kurrentdb_server()) {
        (Some(store), _, _) => store,
        (None, Some(admin), _) => {
            let (store, url) = syncjobs_store_postgres::testkit::fresh_store_with_url(&admin).await;
            remember_database(&store, url);
            store
        }
        (None, None, Some(url)) => fresh_kurrentdb_store(&url).await,
        (None, None, None) => EmbeddedStore::open(data_dir.path()).expect("an embedded store"),
    };
    // A PostgreSQL store keeps the read model in its database; a test may say where instead.
    let read_model = o.read_model.unwrap_or_else(|| match database_of(&store) {
        Some(url) => ReadModelAt::Postgres(url.into(), Default::default()),
        None => ReadModelAt::DataDir,
    });
    let destination: Arc<dyn EntitySink> = match o.destination {
        Destination::Sqlite => match database_of(&store) {
            Some(url) => PgDestination::connect(&url).await.expect("a destination"),
            None => SqliteDestination::open(&settings.destination_dir()).expect("a destination"),
        },
        Destination::Slow(delay) => MemoryDestination::with_write_delay(delay),
        Destination::FailingAfter(n) => MemoryDestination::failing_after(n, Duration::ZERO),
    };
    let dyn_store = store.clone();
    let components = Components {
        store: dyn_store.clone(),
        clock: clock.clone(),
        destination: destination.clone(),
        runner: Arc::new(Pipeline::new(destination.clone(), 4)),
        job_settings: JobSettings {
            progress_every_entities: 5,
            progress_interval: Duration::from_millis(50),
            ..Default::default()
        },
        probes: o.probes,
        read_model: read_model.clone(),
    };
    let mut app = Application::build(&settings, components)
        .await
        .expect("the application starts");
    let generated_key = app.take_generated_key().map(|k| k.key);
    let port = app.port();
    let handle = app.handle();
    let state = app.state();
    actix_web::rt::spawn(app.run_until_stopped());
    let other = keys::create_key(&dyn_store, &clock, "other", None, "test")
        .await
        .expect("a second organization's key");
    state
        .projection
        .wait_for(other.position, Duration::from_secs(5))
        .await
        .expect("the key is visible");
    Spawned {
        app: TestApp {
            address: format!("http://127.0.0.1:{port}"),
            key: o
                .bootstrap_key
                .or(generated_key.clone())
                .unwrap_or_default(),
            other_key: other.key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
            store,
            read_model,
            destination,
            handle,
            data_dir,
            settings,
        },
        generated_key,
    }
}

/// A response's status and JSON body (every body of this API is JSON).
pub async fn parts(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

impl TestApp {
    /// Leaves no usable read model: the file gone, or PostgreSQL's tables of a layout this
    /// build does not know (emptied and rebuilt at the next start).
    pub async fn discard_read_model(&self) {
        match &self.read_model {
            ReadModelAt::DataDir => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = self.settings.read_model_path().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            ReadModelAt::Postgres(url, _) => {
                syncjobs_store_postgres::testkit::client(url.expose())
                    .await
                    .execute("UPDATE read_projection SET schema_version = -1", &[])
                    .await
                    .unwrap();
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn request_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        parts(req.send().await.expect("the request is answered")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request_as(Some(&self.key), Method::GET, path, None)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request_as(Some(&self.key), Method::POST, path, Some(body))
            .await
    }

    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.request_as(Some(&self.key), Method::POST, path, None)
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request_as(Some(&self.key), Method::DELETE, path, None)
            .await
    }

    /// Creates a collection and returns its body.
    pub async fn collection(&self, name: &str) -> Value {
        let (status, body) = self.post("/collections", json!({ "name": name })).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Creates a timed source connection (no first sync) and returns its body.
    pub async fn source_connection(&self, collection: &str, config: Value) -> Value {
        let (status, body) = self
            .post(
                "/source-connections",
                json!({
                    "short_name": "timed",
                    "readable_collection_id": collection,
                    "config": config,
                    "authentication": {"credentials": {"timed_key": "x"}},
                    "sync_immediately": false,
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A collection with one idle timed connection; returns the connection's id.
    pub async fn idle_connection(&self, config: Value) -> Uuid {
        let c = self.collection("Test Collection").await;
        let sc = self
            .source_connection(c["readable_id"].as_str().unwrap(), config)
            .await;
        id(&sc)
    }

    pub async fn run(&self, sc: Uuid) -> Value {
        let (status, body) = self
            .post_empty(&format!("/source-connections/{sc}/run"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn job(&self, sc: Uuid, job: Uuid) -> Value {
        let (status, body) = self
            .get(&format!("/source-connections/{sc}/jobs/{job}"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the job until `pred` holds (bounded).
    pub async fn wait_job(
        &self,
        sc: Uuid,
        job: Uuid,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let body = self.job(sc, job).await;
            if pred(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, sc: Uuid, job: Uuid, status: &str) -> Value {
        self.wait_job(sc, job, status, |b| b["status"] == status)
            .await
    }

    /// Every event of a job's stream, as the store holds it.
    pub async fn job_events(&self, job: Uuid) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&syncjobs_domain::events::stream::job(job), 0)
            .await
            .unwrap()
    }

    /// What the destination holds for a connection.
    pub async fn entity_count(&self, sc: Uuid) -> u64 {
        self.destination
            .stats(sc)
            .await
            .expect("destination stats")
            .total_entities
    }

    pub fn head(&self) -> u64 {
        *self.store.watch_head().borrow()
    }
}

pub fn id(body: &Value) -> Uuid {
    Uuid::parse_str(
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {body}")),
    )
    .unwrap()
}

/// A config for a run that lasts about `secs` seconds.
pub fn lasting(secs: f64) -> Value {
    json!({ "entity_count": 1000, "duration_seconds": secs })
}
