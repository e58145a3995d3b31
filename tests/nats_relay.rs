//! The NATS relay against real NATS servers: what a subscriber sees during a run, after a
//! relay crash and restart, and across a NATS server restart.
//!
//! The tests on a shared server use the one at `NATS_URL` (skipped with a reason when it is
//! unset, failing instead when `SYNCJOBS_REQUIRE_SERVICES=1`). Each run uses its own stream
//! name and subject prefix, and deletes its stream at the end, so runs never collide. The
//! others start their own `nats-server` (from `NATS_SERVER_BIN`, `/usr/sbin/nats-server` or
//! PATH) on a free port: killed and started again, or requiring a password.

use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use syncjobs::bus::{spawn_relay, RelayConfig, RelayHandle, RelayStatus};
use syncjobs_domain::events::{
    stream, AccessEvent, CollectionEvent, EntityCounts, Event, Metadata, NewEvent, RecordedEvent,
    SourceConnectionEvent, SyncJobEvent,
};
use syncjobs_domain::store::{EventStore, ExpectedVersion, InMemoryStore};
use syncjobs_store_sqlite::{EmbeddedStore, DB_FILE};
use uuid::Uuid;

#[path = "support/nats_stream.rs"]
mod nats_stream;
use nats_stream::DeleteStreamOnDrop;

fn require_services() -> bool {
    std::env::var("SYNCJOBS_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn nats_url(test: &str) -> Option<String> {
    match std::env::var("NATS_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if require_services() => {
            panic!("{test}: NATS_URL is unset but SYNCJOBS_REQUIRE_SERVICES=1")
        }
        _ => {
            eprintln!("skipping {test}: NATS_URL is not set (e.g. NATS_URL=nats://127.0.0.1:4222)");
            None
        }
    }
}

/// A stream and subject prefix of this test run's own.
struct Names {
    stream: String,
    prefix: String,
}

fn unique_names() -> Names {
    let id = Uuid::new_v4().simple().to_string();
    Names {
        stream: format!("SYNCJOBS_TEST_{id}"),
        prefix: format!("syncjobs_test.{id}.events"),
    }
}

fn relay_config(url: &str, names: &Names, cursor: &Path) -> RelayConfig {
    let mut cfg = RelayConfig::new(url, cursor);
    cfg.stream_name = names.stream.clone();
    cfg.subject_prefix = names.prefix.clone();
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.ack_timeout = Duration::from_secs(1);
    cfg
}

async fn wait_for(relay: &RelayHandle, what: &str, ok: impl Fn(&RelayStatus) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&relay.status()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            relay.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn caught_up(relay: &RelayHandle, head: u64) {
    wait_for(relay, "the relay to catch up", |s| {
        s.published_position == head && s.head_position == head && s.lag == 0
    })
    .await;
}

/// A run's worth of events: an organization and API key, a collection, a source
/// connection, and two interleaved jobs (one completes, one is cancelled).
struct World {
    store: Arc<dyn EventStore>,
    org: Uuid,
    collection: Uuid,
    /// job id -> its source connection id
    jobs: HashMap<Uuid, Uuid>,
    key_hash: String,
    events: Vec<RecordedEvent>,
}

impl World {
    fn new() -> Self {
        Self::on(InMemoryStore::new())
    }

    fn on(store: Arc<dyn EventStore>) -> Self {
        World {
            store,
            org: Uuid::new_v4(),
            collection: Uuid::new_v4(),
            jobs: HashMap::new(),
            key_hash: format!("keyhash{}", Uuid::new_v4().simple()),
            events: vec![],
        }
    }

    async fn append(&mut self, stream: &str, e: impl Into<Event>) -> RecordedEvent {
        let e = NewEvent::new(e, Utc::now(), Metadata::default());
        let mut r = self
            .store
            .append(stream, ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
        let r = r.remove(0);
        self.events.push(r.clone());
        r
    }

    async fn setup(&mut self) -> (Uuid, Uuid) {
        let org = self.org;
        self.append(
            stream::ACCESS,
            AccessEvent::OrganizationCreated {
                organization_id: org,
                name: "acme".into(),
            },
        )
        .await;
        let key_hash = self.key_hash.clone();
        self.append(
            stream::ACCESS,
            AccessEvent::ApiKeyCreated {
                key_id: Uuid::new_v4(),
                organization_id: org,
                key_hash,
                prefix: "sk_test".into(),
                expires_at: None,
            },
        )
        .await;
        let cid = self.collection;
        self.append(
            &stream::collection(cid),
            CollectionEvent::CollectionCreated {
                collection_id: cid,
                organization_id: org,
                name: "docs".into(),
                readable_id: "docs-1".into(),
            },
        )
        .await;
        let mut scs = vec![];
        for name in ["a", "b"] {
            let sc = Uuid::new_v4();
            self.append(
                &stream::source_connection(sc),
                SourceConnectionEvent::SourceConnectionCreated {
                    source_connection_id: sc,
                    organization_id: org,
                    collection_id: cid,
                    readable_collection_id: "docs-1".into(),
                    name: name.into(),
                    description: None,
                    short_name: "timed".into(),
                    config: serde_json::Value::Null,
                    auth_method: "direct".into(),
                    authenticated: true,
                },
            )
            .await;
            scs.push(sc);
        }
        (scs[0], scs[1])
    }

    async fn create_job(&mut self, sc: Uuid) -> Uuid {
        let job = Uuid::new_v4();
        self.jobs.insert(job, sc);
        let org = self.org;
        self.append(
            &stream::job(job),
            SyncJobEvent::JobCreated {
                job_id: job,
                source_connection_id: sc,
                organization_id: org,
                short_name: "timed".into(),
                config: serde_json::json!({"entity_count": 10}),
            },
        )
        .await;
        job
    }

    async fn job_event(&mut self, job: Uuid, e: SyncJobEvent) {
        self.append(&stream::job(job), e).await;
    }

    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    /// The events a subscriber must see, in global order (access events are never published).
    fn published(&self) -> Vec<&RecordedEvent> {
        self.events
            .iter()
            .filter(|e| !matches!(e.event, Event::Access(_) | Event::Webhook(_)))
            .collect()
    }

    /// The subject the contract gives `ev`, computed here independently of the relay.
    fn expected_subject(&self, prefix: &str, ev: &RecordedEvent) -> String {
        let (org, ty) = (self.org, ev.event_type());
        match &ev.event {
            Event::Job(_) => {
                let job = stream::job_id(&ev.stream_id).expect("job stream");
                let sc = self.jobs[&job];
                format!("{prefix}.{org}.{sc}.{job}.{ty}")
            }
            Event::Collection(_) => {
                format!("{prefix}.{org}.collections.{}.{ty}", self.collection)
            }
            Event::SourceConnection(_) => {
                let sc = ev
                    .stream_id
                    .strip_prefix(stream::SOURCE_CONNECTION_PREFIX)
                    .expect("sc stream");
                format!("{prefix}.{org}.source_connections.{sc}.{ty}")
            }
            Event::Access(_) | Event::Webhook(_) => {
                unreachable!("access and webhook events are not published")
            }
            Event::Worker(_) => {
                let id = stream::worker_id(&ev.stream_id).expect("worker stream");
                format!("{prefix}.workers.{id}.{ty}")
            }
        }
    }
}

fn progress(n: u64) -> SyncJobEvent {
    SyncJobEvent::ProgressRecorded {
        counts: EntityCounts {
            inserted: n,
            ..Default::default()
        },
    }
}

/// One message as a subscriber sees it.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    msg_id: Option<String>,
    event: RecordedEvent,
}

fn seen(subject: &str, headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> Seen {
    Seen {
        subject: subject.to_owned(),
        msg_id: headers
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned()),
        event: serde_json::from_slice(payload).expect("payload is a RecordedEvent"),
    }
}

/// Receives core-NATS messages until `n` arrived (fails after a timeout).
async fn receive(sub: &mut async_nats::Subscriber, n: usize) -> Vec<Seen> {
    let mut out = vec![];
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
            .expect("subscription ended");
        out.push(seen(&m.subject, m.headers.as_ref(), &m.payload));
    }
    out
}

/// Asserts that nothing more arrives for a short while.
async fn assert_quiet(sub: &mut async_nats::Subscriber) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected message on {}", m.subject);
    }
}

/// Every message the stream holds, in stream order.
async fn stream_contents(js: &jetstream::Context, name: &str) -> Vec<Seen> {
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = vec![];
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.expect("stream message");
        out.push(seen(&m.subject, Some(&m.headers), &m.payload));
    }
    assert_eq!(out.len() as u64, state.messages);
    out
}

/// The messages must be exactly the world's published events, in global order, each with its
/// contract subject and `Nats-Msg-Id` = event id.
fn assert_exactly_the_log(world: &World, prefix: &str, got: &[Seen]) {
    let want = world.published();
    let got_pos: Vec<u64> = got.iter().map(|s| s.event.global_position).collect();
    let want_pos: Vec<u64> = want.iter().map(|e| e.global_position).collect();
    assert_eq!(got_pos, want_pos, "positions on NATS");
    for (s, e) in got.iter().zip(want) {
        assert_eq!(&s.event, e, "payload is the recorded envelope");
        assert_eq!(s.subject, world.expected_subject(prefix, e));
        assert_eq!(s.msg_id.as_deref(), Some(e.event_id.to_string().as_str()));
    }
}

async fn subscribe(client: &async_nats::Client, prefix: &str) -> async_nats::Subscriber {
    let sub = client
        .subscribe(format!("{prefix}.>"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_every_event_of_a_run_in_order_with_its_subject() {
    let Some(url) = nats_url("a_subscriber_sees_every_event_of_a_run_in_order_with_its_subject")
    else {
        return;
    };
    let names = unique_names();
    let _cleanup = DeleteStreamOnDrop {
        url: url.clone(),
        stream: names.stream.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(url.as_str())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client.clone());
    let mut sub = subscribe(&client, &names.prefix).await;

    // Half the run happens before the relay starts, half while it follows the log.
    let mut world = World::new();
    let (sc_a, sc_b) = world.setup().await;
    let job_a = world.create_job(sc_a).await;
    world
        .job_event(
            job_a,
            SyncJobEvent::JobStarted {
                worker: "w1".into(),
            },
        )
        .await;
    let relay = spawn_relay(
        world.store.clone(),
        relay_config(&url, &names, &dir.path().join("cursor")),
    );
    let job_b = world.create_job(sc_b).await;
    world.job_event(job_a, progress(3)).await;
    world
        .job_event(
            job_b,
            SyncJobEvent::JobStarted {
                worker: "w2".into(),
            },
        )
        .await;
    world.job_event(job_a, progress(7)).await;
    world
        .job_event(
            job_b,
            SyncJobEvent::CancelRequested {
                requested_by: "api-key:x".into(),
                timeout_seconds: 180,
            },
        )
        .await;
    world
        .job_event(
            job_a,
            SyncJobEvent::JobCompleted {
                counts: EntityCounts {
                    inserted: 10,
                    ..Default::default()
                },
            },
        )
        .await;
    world
        .job_event(
            job_b,
            SyncJobEvent::Cancelled {
                counts: EntityCounts::default(),
                note: None,
                counts_reconciled: false,
            },
        )
        .await;
    let cid = world.collection;
    world
        .append(
            &stream::collection(cid),
            CollectionEvent::CollectionDeleted { collection_id: cid },
        )
        .await;

    caught_up(&relay, world.head()).await;
    let status = relay.status();
    assert!(status.connected, "{status:?}");
    assert_eq!(status.last_error, None);

    let n = world.published().len();
    let live = receive(&mut sub, n).await;
    assert_exactly_the_log(&world, &names.prefix, &live);
    assert_quiet(&mut sub).await;
    let stored = stream_contents(&js, &names.stream).await;
    assert_exactly_the_log(&world, &names.prefix, &stored);

    // Per job, a subscriber filtering on one job sees its lifecycle in order.
    for job in [job_a, job_b] {
        let versions: Vec<u64> = live
            .iter()
            .filter(|s| s.event.stream_id == stream::job(job))
            .map(|s| s.event.version)
            .collect();
        let len = versions.len() as u64;
        assert_eq!(versions, (1..=len).collect::<Vec<_>>());
    }
    // Key material never reaches NATS.
    for s in live.iter().chain(&stored) {
        let json = serde_json::to_string(&s.event).unwrap();
        assert!(
            !json.contains(&world.key_hash),
            "key hash leaked on {}",
            s.subject
        );
    }

    relay.shutdown().await;
    js.delete_stream(&names.stream)
        .await
        .expect("delete test stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_after_a_crash_loses_nothing_and_duplicates_keep_their_msg_id() {
    let Some(url) =
        nats_url("a_relay_restarted_after_a_crash_loses_nothing_and_duplicates_keep_their_msg_id")
    else {
        return;
    };
    let names = unique_names();
    let _cleanup = DeleteStreamOnDrop {
        url: url.clone(),
        stream: names.stream.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let client = async_nats::connect(url.as_str())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client.clone());
    let mut sub = subscribe(&client, &names.prefix).await;

    let mut world = World::new();
    let (sc_a, _) = world.setup().await;
    let job = world.create_job(sc_a).await;
    world
        .job_event(job, SyncJobEvent::JobStarted { worker: "w".into() })
        .await;
    for i in 1..=5 {
        world.job_event(job, progress(i)).await;
    }

    // Relay 1 publishes everything, then crashes before it ever saved its cursor.
    let mut cfg = relay_config(&url, &names, &cursor);
    cfg.cursor_save_interval = Duration::from_secs(3600);
    let relay = spawn_relay(world.store.clone(), cfg);
    caught_up(&relay, world.head()).await;
    relay.abort();
    let first = receive(&mut sub, world.published().len()).await;
    assert!(
        !cursor.exists(),
        "the crash happened before any cursor save"
    );

    // While no relay runs, the job goes on.
    for i in 6..=8 {
        world.job_event(job, progress(i)).await;
    }

    // Relay 2 starts from the (missing) cursor: it republishes what relay 1 had sent.
    let relay = spawn_relay(world.store.clone(), relay_config(&url, &names, &cursor));
    caught_up(&relay, world.head()).await;
    let second = receive(&mut sub, world.published().len()).await;
    // A core subscriber sees the republished events again, each with the same Nats-Msg-Id...
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.event.event_id, b.event.event_id);
        assert_eq!(a.msg_id, b.msg_id);
        assert_eq!(a.subject, b.subject);
    }
    assert_exactly_the_log(&world, &names.prefix, &second);
    // ...and JetStream kept exactly one of each, in order: nothing lost, nothing doubled.
    assert_exactly_the_log(
        &world,
        &names.prefix,
        &stream_contents(&js, &names.stream).await,
    );

    // A clean stop saves the cursor; relay 3 resumes after it, mid-job: it has not seen
    // the job's JobCreated, and must still find the job's organization and source connection.
    relay.shutdown().await;
    assert!(cursor.exists());
    let relay = spawn_relay(world.store.clone(), relay_config(&url, &names, &cursor));
    wait_for(&relay, "relay 3 to connect", |s| s.connected).await;
    assert_eq!(relay.status().published_position, world.head());
    assert_quiet(&mut sub).await;
    world
        .job_event(
            job,
            SyncJobEvent::JobCompleted {
                counts: EntityCounts {
                    inserted: 8,
                    ..Default::default()
                },
            },
        )
        .await;
    caught_up(&relay, world.head()).await;
    let last = receive(&mut sub, 1).await;
    let done = world.events.last().unwrap();
    assert_eq!(&last[0].event, done);
    assert_eq!(last[0].subject, world.expected_subject(&names.prefix, done));
    assert_quiet(&mut sub).await;
    assert_exactly_the_log(
        &world,
        &names.prefix,
        &stream_contents(&js, &names.stream).await,
    );

    relay.shutdown().await;
    js.delete_stream(&names.stream)
        .await
        .expect("delete test stream");
}

/// A `nats-server` of this test's own, killed on drop.
struct OwnServer {
    bin: PathBuf,
    port: u16,
    store_dir: PathBuf,
    /// More `nats-server` flags (`--user`, `--pass`).
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    fn find_binary() -> Option<PathBuf> {
        if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
            return Some(PathBuf::from(p));
        }
        let candidates = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ];
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("nats-server"))
                        .find(|p| p.exists())
                })
            })
    }

    fn new(bin: PathBuf, store_dir: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        OwnServer {
            bin,
            port,
            store_dir,
            args: vec![],
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_rides_out_a_nats_outage_and_catches_up_in_order() {
    let Some(bin) = OwnServer::find_binary() else {
        if require_services() {
            panic!("nats-server binary not found but SYNCJOBS_REQUIRE_SERVICES=1");
        }
        eprintln!("skipping: no nats-server binary (set NATS_SERVER_BIN)");
        return;
    };
    let names = unique_names();
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnServer::new(bin, dir.path().join("jetstream"));
    let url = server.url();

    // The relay starts while NATS is not there at all.
    let mut world = World::new();
    let (sc_a, sc_b) = world.setup().await;
    let job_a = world.create_job(sc_a).await;
    let relay = spawn_relay(
        world.store.clone(),
        relay_config(&url, &names, &dir.path().join("cursor")),
    );
    wait_for(&relay, "a connect error", |s| s.last_error.is_some()).await;
    let s = relay.status();
    assert!(!s.connected);
    assert_eq!(s.lag, world.head());

    server.start().await;
    caught_up(&relay, world.head()).await;
    assert!(relay.status().connected);
    let before_outage = world.head();

    // NATS dies. Appends must not notice; the relay lags and says why.
    server.kill();
    let job_b = world.create_job(sc_b).await;
    let mut slowest = Duration::ZERO;
    for i in 1..=20 {
        let t = Instant::now();
        world.job_event(job_a, progress(i)).await;
        world.job_event(job_b, progress(i)).await;
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "appends waited on NATS: {slowest:?}"
    );
    wait_for(&relay, "the relay to notice the outage", |s| {
        !s.connected && s.last_error.is_some()
    })
    .await;
    let s = relay.status();
    assert_eq!(s.published_position, before_outage);
    assert_eq!(s.lag, world.head() - before_outage);

    // NATS comes back with its storage: the relay catches up by itself.
    server.start().await;
    caught_up(&relay, world.head()).await;
    let client = async_nats::connect(url.as_str()).await.expect("connect");
    let js = jetstream::new(client);
    let stored = stream_contents(&js, &names.stream).await;
    assert_exactly_the_log(&world, &names.prefix, &stored);

    // NATS comes back without its storage: the stream is gone, and the relay rebuilds it
    // from the log (the source of truth) instead of carrying on from its cursor.
    server.kill();
    wait_for(&relay, "the relay to notice the outage", |s| !s.connected).await;
    server.store_dir = dir.path().join("jetstream-wiped");
    server.start().await;
    wait_for(&relay, "the relay to reconnect", |s| s.connected).await;
    caught_up(&relay, world.head()).await;
    relay.shutdown().await;
    let client = async_nats::connect(url.as_str()).await.expect("connect");
    let js = jetstream::new(client);
    let stored = stream_contents(&js, &names.stream).await;
    assert_exactly_the_log(&world, &names.prefix, &stored);
    eprintln!("outage test: slowest append during the outage {slowest:?}");
}

/// Log lines written on this thread while the guard lives (a current-thread runtime keeps the
/// relay's task on it), every level and target included.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .finish();
    // tracing-core caches a callsite's interest from the *registering* thread's default
    // while at most one dispatcher is registered (tokio-rs/tracing#3611): a parallel test
    // with no subscriber that reaches a relay callsite first would silence it for the whole
    // process, and this capture would stay empty. A second dispatcher that lives as long as
    // the process makes tracing ask every registered dispatcher; the rebuild re-asks the
    // callsites cached before it existed.
    static KEEPER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (buf, guard)
}

fn logged(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

async fn open_embedded(dir: &Path) -> Arc<EmbeddedStore> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
        .await
        .unwrap()
        .expect("open the embedded store")
}

/// A crash lost the last commit of `events.db` (SQLite drops a torn WAL frame), after the
/// relay had published it. Events recorded since take the lost positions: the relay must
/// publish them, though its cursor says it is past them.
#[tokio::test]
async fn after_the_log_lost_its_tail_the_relay_realigns_and_publishes_what_took_its_place() {
    let Some(url) = nats_url(
        "after_the_log_lost_its_tail_the_relay_realigns_and_publishes_what_took_its_place",
    ) else {
        return;
    };
    let (logs, _guard) = capture_logs();
    let names = unique_names();
    let _cleanup = DeleteStreamOnDrop {
        url: url.clone(),
        stream: names.stream.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cursor = data.join("nats-relay.checkpoint");
    let client = async_nats::connect(url.as_str())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client.clone());

    let store = open_embedded(&data).await;
    let mut world = World::on(store.clone());
    let (sc, _) = world.setup().await;
    let job = world.create_job(sc).await;
    world
        .job_event(job, SyncJobEvent::JobStarted { worker: "w".into() })
        .await;
    for i in 1..=5 {
        world.job_event(job, progress(i)).await;
    }
    let relay = spawn_relay(store.clone(), relay_config(&url, &names, &cursor));
    caught_up(&relay, world.head()).await;
    relay.shutdown().await;
    let cursor_at = world.head();
    let first_run = world.published().into_iter().cloned().collect::<Vec<_>>();

    // The crash: the last 3 events are gone from the log, not from JetStream.
    store.close();
    store.closed().await;
    drop(store);
    let kept = cursor_at - 3;
    let db = rusqlite::Connection::open(data.join(DB_FILE)).unwrap();
    let deleted = db
        .execute(
            "DELETE FROM events WHERE global_position > ?1",
            [kept as i64],
        )
        .unwrap();
    assert_eq!(deleted, 3);
    drop(db);
    world.events.truncate(kept as usize);

    // The service starts again and goes on: new events take positions kept+1.. and beyond
    // the old cursor.
    let store = open_embedded(&data).await;
    world.store = store.clone();
    for i in 10..15 {
        world.job_event(job, progress(i)).await;
    }
    let new_events: Vec<RecordedEvent> = world.events[kept as usize..].to_vec();
    assert_eq!(new_events[0].global_position, kept + 1);
    assert!(world.head() > cursor_at);

    let mut sub = subscribe(&client, &names.prefix).await;
    let relay = spawn_relay(store.clone(), relay_config(&url, &names, &cursor));
    caught_up(&relay, world.head()).await;
    let status = relay.status();
    relay.shutdown().await;

    // It says so, on /health and in the log.
    let r = status.realigned.clone().expect("realigned on /health");
    assert_eq!(r.from, cursor_at, "{r:?}");
    assert!(r.to <= kept && cursor_at - r.to < 2 * 3, "{r:?}");
    assert_eq!(r.republish, world.head() - r.to, "{r:?}");
    let logs = logged(&logs);
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("realigning")
            && l.contains(&format!("from={cursor_at}"))
            && l.contains(&format!("to={}", r.to))
            && l.contains(&format!("republish={}", r.republish))),
        "{logs}"
    );

    // The new events arrive, in order, each under its own id.
    let again = world
        .published()
        .iter()
        .filter(|e| e.global_position > r.to)
        .count();
    let live = receive(&mut sub, again).await;
    let tail: Vec<_> = live[live.len() - new_events.len()..]
        .iter()
        .map(|s| (s.event.global_position, s.event.event_id, s.msg_id.clone()))
        .collect();
    let want: Vec<_> = new_events
        .iter()
        .map(|e| (e.global_position, e.event_id, Some(e.event_id.to_string())))
        .collect();
    assert_eq!(tail, want);
    assert_quiet(&mut sub).await;
    // JetStream: the first run as published (the lost events included: nothing deletes
    // them), then the new events; what was republished before them was deduplicated.
    let stored: Vec<Uuid> = stream_contents(&js, &names.stream)
        .await
        .iter()
        .map(|s| s.event.event_id)
        .collect();
    let want: Vec<Uuid> = first_run
        .iter()
        .chain(&new_events)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(stored, want);

    // A later start finds the log and its cursor in agreement: no realignment.
    let relay = spawn_relay(store.clone(), relay_config(&url, &names, &cursor));
    wait_for(&relay, "the relay to connect", |s| s.connected).await;
    assert_eq!(relay.status().realigned, None);
    assert_eq!(relay.status().published_position, world.head());
    relay.shutdown().await;
    js.delete_stream(&names.stream)
        .await
        .expect("delete test stream");
}

/// `NATS_URL=nats://user:password@host:port` authenticates, and the password shows nowhere:
/// not in `/health`, not in any log line of any level (the NATS client's own included).
#[tokio::test]
async fn credentials_in_the_nats_url_authenticate_and_never_show() {
    let Some(bin) = OwnServer::find_binary() else {
        if require_services() {
            panic!("nats-server binary not found but SYNCJOBS_REQUIRE_SERVICES=1");
        }
        eprintln!("skipping: no nats-server binary (set NATS_SERVER_BIN)");
        return;
    };
    let (logs, _guard) = capture_logs();
    let names = unique_names();
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnServer::new(bin, dir.path().join("jetstream"));
    server.args = ["--user", "relay", "--pass", "s3cret"]
        .map(String::from)
        .to_vec();
    server.start().await;
    let port = server.port;

    let mut world = World::new();
    let (sc, _) = world.setup().await;
    world.create_job(sc).await;

    // A wrong password: the error names the server and the cause, never the password.
    let wrong = format!("nats://relay:n0tit@127.0.0.1:{port}");
    let relay = spawn_relay(
        world.store.clone(),
        relay_config(&wrong, &names, &dir.path().join("c1")),
    );
    wait_for(&relay, "an authorization error", |s| s.last_error.is_some()).await;
    let s = relay.status();
    relay.shutdown().await;
    let error = s.last_error.unwrap_or_default();
    assert!(!error.contains("n0tit"), "{error}");
    assert!(
        error.contains(&format!("nats://relay:***@127.0.0.1:{port}")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("authoriz"), "{error}");

    // The right one: the relay publishes.
    let right = format!("nats://relay:s3cret@127.0.0.1:{port}");
    let relay = spawn_relay(
        world.store.clone(),
        relay_config(&right, &names, &dir.path().join("c2")),
    );
    caught_up(&relay, world.head()).await;
    let s = relay.status();
    relay.shutdown().await;
    assert!(s.last_error.is_none(), "{s:?}");
    let client =
        async_nats::ConnectOptions::with_user_and_password("relay".into(), "s3cret".into())
            .connect(server.url())
            .await
            .expect("connect");
    let stored = stream_contents(&jetstream::new(client), &names.stream).await;
    assert_exactly_the_log(&world, &names.prefix, &stored);

    let logs = logged(&logs);
    assert!(
        !logs.contains("s3cret") && !logs.contains("n0tit"),
        "{logs}"
    );
    assert!(logs.contains(&format!("127.0.0.1:{port}")), "{logs}");
}
