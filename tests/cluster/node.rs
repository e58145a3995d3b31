//! The cluster's processes: started from the built binary, each with its own data
//! directory and port, killed when the cluster is dropped (a panicking test included).

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{EventStore, RecordedEvent};
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_syncjobs");

/// How long a node may take to say it listens.
const START_BOUND: Duration = Duration::from_secs(60);
/// How long a wait for a job's state may take.
const WAIT_BOUND: Duration = Duration::from_secs(60);

pub fn cancel_path(sc: Uuid, job: Uuid) -> String {
    format!("/source-connections/{sc}/jobs/{job}/cancel")
}

pub fn id(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("no id in {body}"))
}

pub struct ClusterSpec {
    pub apis: usize,
    pub workers: usize,
    pub worker_capacity: Option<u32>,
    pub cancel_timeout_seconds: u64,
    /// SYNCJOBS_WORKER_HEARTBEAT_SECONDS and SYNCJOBS_WORKER_TIMEOUT_SECONDS (None: the
    /// defaults, 5 and 30).
    pub liveness: Option<(u64, u64)>,
    /// SYNCJOBS_DRAIN_SECONDS (None: the default, 20).
    pub drain_seconds: Option<u64>,
    /// More environment for every node (NATS_URL and the relay's names, say).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            apis: 2,
            workers: 3,
            worker_capacity: None,
            // Long: a cancel that a worker does not confirm shows as a timeout of the test,
            // not as a forced cancel that looks like success.
            cancel_timeout_seconds: 120,
            liveness: None,
            drain_seconds: None,
            env: Vec::new(),
        }
    }
}

/// One `syncjobs serve` process.
pub struct Node {
    pub id: String,
    role: &'static str,
    child: Child,
    pub http: Http,
    logs: Arc<Mutex<String>>,
    /// Kept for a restart of the node on the same directory; removed when dropped.
    data_dir: Option<tempfile::TempDir>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of one node, with the cluster's key.
#[derive(Clone)]
pub struct Http {
    base: String,
    key: String,
    client: Client,
}

pub struct Cluster {
    /// Dropped first: the processes die before their database does.
    apis: Vec<Node>,
    workers: Vec<Node>,
    store: Arc<dyn EventStore>,
    /// What a restart needs: the database, the key and the settings.
    url: String,
    key: String,
    spec: ClusterSpec,
    /// Held while the cluster lives: see [`ONE_AT_A_TIME`].
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// One cluster at a time: a node holds up to ~25 PostgreSQL connections (the store's pool,
/// the read model's, the destination's, the listener), so the clusters of every test at
/// once would pass the server's `max_connections` (100 by default) and see their reads
/// refused.
static ONE_AT_A_TIME: std::sync::LazyLock<Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Mutex::new(())));

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in self.apis.iter().chain(&self.workers) {
                let logs = node.logs.lock().map(|l| l.clone()).unwrap_or_default();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                eprintln!("---- {} (last lines) ----", node.id);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        self.apis.clear();
        self.workers.clear();
    }
}

fn start_node(
    role: &'static str,
    id: &str,
    url: &str,
    key: &str,
    spec: &ClusterSpec,
    data_dir: Option<tempfile::TempDir>,
) -> std::thread::JoinHandle<Node> {
    let mut cmd = Command::new(BIN);
    let data_dir = data_dir.unwrap_or_else(|| tempfile::tempdir().expect("a data directory"));
    cmd.env_clear()
        .arg("serve")
        .env("SYNCJOBS_ROLE", role)
        .env("SYNCJOBS_NODE_ID", id)
        .env("SYNCJOBS_STORE", url)
        .env("SYNCJOBS_DATA_DIR", data_dir.path())
        .env("SYNCJOBS_BIND", "127.0.0.1:0")
        .env("SYNCJOBS_BOOTSTRAP_API_KEY", key)
        .env(
            "SYNCJOBS_CANCEL_TIMEOUT_SECONDS",
            spec.cancel_timeout_seconds.to_string(),
        )
        .env("SYNCJOBS_LOG_FORMAT", "json")
        .env("SYNCJOBS_HTTP_WORKERS", "2");
    if let Some(c) = spec.worker_capacity {
        cmd.env("SYNCJOBS_WORKER_CAPACITY", c.to_string());
    }
    if let Some(drain) = spec.drain_seconds {
        cmd.env("SYNCJOBS_DRAIN_SECONDS", drain.to_string());
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some((heartbeat, timeout)) = spec.liveness {
        cmd.env("SYNCJOBS_WORKER_HEARTBEAT_SECONDS", heartbeat.to_string())
            .env("SYNCJOBS_WORKER_TIMEOUT_SECONDS", timeout.to_string());
    }
    // The kernel kills the node if the thread that started it ends (a test process killed
    // outright included): no orphan keeps the port or the database.
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("syncjobs listening") {
                let parsed: Option<Value> = serde_json::from_str(&line).ok();
                if let Some(address) = parsed
                    .as_ref()
                    .and_then(|v| v["fields"]["address"].as_str())
                {
                    let _ = tx.send(address.to_owned());
                }
            }
            if let Ok(mut all) = kept.lock() {
                all.push_str(&line);
                all.push('\n');
            }
            // Drained to the end, so the node never blocks on a full pipe.
        }
    });
    let (id, key) = (id.to_owned(), key.to_owned());
    std::thread::spawn(move || {
        let node = |base: String| Node {
            id: id.clone(),
            role,
            child,
            http: Http {
                base,
                key: key.clone(),
                client: Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("a client"),
            },
            logs: logs.clone(),
            data_dir: Some(data_dir),
        };
        match rx.recv_timeout(START_BOUND) {
            Ok(address) => node(format!("http://{address}")),
            Err(_) => {
                let n = node(String::new());
                let logs = n.logs.lock().map(|l| l.clone()).unwrap_or_default();
                drop(n);
                panic!("node {id} never said it was listening:\n{logs}")
            }
        }
    })
}

/// SIGTERM to `node`; waits until it has stopped.
async fn stop(node: &mut Node) -> std::process::ExitStatus {
    let pid = node.child.id() as libc::pid_t;
    // SAFETY: a signal to a child this test started and has not reaped yet.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM to {}", node.id);
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        if let Some(status) = node.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not stop",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// A fresh database and the nodes of `spec` on it; None (after saying so) when no
    /// PostgreSQL server is configured and none is required.
    pub async fn start(spec: ClusterSpec) -> Option<Cluster> {
        let Ok(admin) = std::env::var("SYNCJOBS_TEST_POSTGRES_URL") else {
            if std::env::var("SYNCJOBS_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("SYNCJOBS_REQUIRE_SERVICES=1 but SYNCJOBS_TEST_POSTGRES_URL is not set");
            }
            eprintln!("skipped: the cluster tests need SYNCJOBS_TEST_POSTGRES_URL (PostgreSQL)");
            return None;
        };
        let turn = ONE_AT_A_TIME.clone().lock_owned().await;
        let (store, url) = syncjobs_store_postgres::testkit::fresh_store_with_url(&admin).await;
        let key = format!("cluster-key-{}", Uuid::new_v4().simple());
        let run = Uuid::new_v4().simple().to_string()[..6].to_owned();
        // The first API node alone first: it registers the key and makes the schema.
        // Started from this (the test's) thread, which outlives the cluster: the kernel's
        // parent-death signal follows the thread that forked, and a blocking pool's thread
        // may end while the node still runs.
        let first = start_node("api", &format!("api-1-{run}"), &url, &key, &spec, None);
        let first = tokio::task::spawn_blocking(move || first.join())
            .await
            .expect("a join")
            .expect("api #1 starts");
        let mut starting = Vec::new();
        for i in 1..spec.apis {
            starting.push(("api", format!("api-{}-{run}", i + 1)));
        }
        for i in 0..spec.workers {
            starting.push(("worker", format!("worker-{}-{run}", i + 1)));
        }
        let handles: Vec<(&str, std::thread::JoinHandle<Node>)> = starting
            .iter()
            .map(|(role, id)| (*role, start_node(role, id, &url, &key, &spec, None)))
            .collect();
        let mut apis = vec![first];
        let mut workers = Vec::new();
        let joined = tokio::task::spawn_blocking(move || {
            handles
                .into_iter()
                .map(|(role, h)| (role, h.join()))
                .collect::<Vec<_>>()
        })
        .await
        .expect("a join");
        let mut failed = None;
        for (role, node) in joined {
            match node {
                Ok(node) if role == "api" => apis.push(node),
                Ok(node) => workers.push(node),
                Err(e) => failed = Some(e),
            }
        }
        let cluster = Cluster {
            apis,
            workers,
            store,
            url,
            key,
            spec,
            _turn: turn,
        };
        if let Some(e) = failed {
            drop(cluster);
            std::panic::resume_unwind(e);
        }
        for node in cluster.apis.iter().chain(&cluster.workers) {
            let (status, body) = node.http.get("/health").await;
            assert_eq!(status, 200, "{}: {body}", node.id);
        }
        Some(cluster)
    }

    pub fn api(&self, i: usize) -> &Http {
        &self.apis[i].http
    }

    pub fn worker(&self, i: usize) -> &Http {
        &self.workers[i].http
    }

    /// SIGKILL to worker `i`: it dies without a word (no final event, no cleanup).
    pub fn kill_worker(&self, i: usize) {
        let pid = self.workers[i].child.id() as libc::pid_t;
        // SAFETY: a signal to a child this test started and has not reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(sent, 0, "SIGKILL to {}", self.workers[i].id);
    }

    /// SIGKILL to API node `i`.
    pub fn kill_api(&self, i: usize) {
        let pid = self.apis[i].child.id() as libc::pid_t;
        // SAFETY: a signal to a child this test started and has not reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(sent, 0, "SIGKILL to {}", self.apis[i].id);
    }

    /// What API node `i` has logged so far (JSON lines).
    pub fn api_logs(&self, i: usize) -> String {
        self.apis[i]
            .logs
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub fn api_id(&self, i: usize) -> String {
        self.apis[i].id.clone()
    }

    /// The whole log, in order.
    pub async fn log(&self) -> Vec<RecordedEvent> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |e: &RecordedEvent| e.global_position);
            let batch = self
                .store
                .read_all(after, 4096)
                .await
                .expect("the log reads");
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }

    /// SIGKILL to every node at once (the database stays): nothing is written on the way.
    pub fn kill_all(&mut self) {
        for node in self.apis.iter_mut().chain(self.workers.iter_mut()) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Starts every node again, each with its id and data directory, the API nodes first
    /// (sequentially, as at the start), and waits until each answers.
    pub async fn restart_all(&mut self) {
        let nodes: Vec<Node> = self.apis.drain(..).chain(self.workers.drain(..)).collect();
        let mut handles = Vec::new();
        for mut node in nodes {
            let (role, id, dir) = (node.role, node.id.clone(), node.data_dir.take());
            drop(node);
            handles.push(start_node(role, &id, &self.url, &self.key, &self.spec, dir));
        }
        let started = tokio::task::spawn_blocking(move || {
            handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        })
        .await
        .expect("a join");
        for node in started {
            let node = node.unwrap_or_else(|e| std::panic::resume_unwind(e));
            if node.role == "api" {
                self.apis.push(node);
            } else {
                self.workers.push(node);
            }
        }
        for node in self.apis.iter().chain(&self.workers) {
            let (status, body) = node.http.get("/health").await;
            assert_eq!(status, 200, "{}: {body}", node.id);
        }
    }

    /// SIGTERM to worker `i`: a graceful stop (it drains); waits until it exits (bounded).
    pub async fn stop_worker(&mut self, i: usize) -> std::process::ExitStatus {
        stop(&mut self.workers[i]).await
    }

    /// SIGTERM to API node `i`; waits until it has stopped.
    pub async fn stop_api(&mut self, i: usize) -> std::process::ExitStatus {
        stop(&mut self.apis[i]).await
    }

    /// `syncjobs verify` over the shared database: its exit status and output.
    pub fn verify(&self) -> (bool, String) {
        let out = Command::new(BIN)
            .env_clear()
            .env("SYNCJOBS_STORE", &self.url)
            .arg("verify")
            .output()
            .expect("verify runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The events of a worker's stream.
    pub async fn worker_events(&self, i: usize) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&stream::worker(&self.workers[i].id), 0)
            .await
            .expect("the log reads")
    }

    pub fn worker_id(&self, i: usize) -> String {
        self.workers[i].id.clone()
    }

    pub async fn worker_health(&self, i: usize) -> Value {
        let (status, body) = self.worker(i).get("/health").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A job's stream, read from the shared log.
    pub async fn events(&self, job: Uuid) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&stream::job(job), 0)
            .await
            .expect("the log reads")
    }

    /// The whole log's job streams, read again until `done` holds (bounded).
    pub async fn wait_log(
        &self,
        done: impl Fn(&HashMap<Uuid, Vec<RecordedEvent>>) -> bool,
    ) -> HashMap<Uuid, Vec<RecordedEvent>> {
        let deadline = tokio::time::Instant::now() + WAIT_BOUND;
        loop {
            let mut jobs: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
            let mut after = 0;
            loop {
                let batch = self
                    .store
                    .read_all(after, 4096)
                    .await
                    .expect("the log reads");
                let Some(last) = batch.last() else { break };
                after = last.global_position;
                for e in batch {
                    if let Some(job) = stream::job_id(&e.stream_id) {
                        jobs.entry(job).or_default().push(e);
                    }
                }
            }
            if done(&jobs) {
                return jobs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never got there ({} job streams)",
                jobs.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Http {
    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (u16, String) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = res.status();
        let text = res.text().await.expect("a body");
        (status.as_u16(), text)
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.request(method, path, body).await;
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: {status}: not JSON ({e}): {text:?}"));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.json(Method::GET, path, None).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.json(Method::POST, path, Some(body.unwrap_or_else(|| json!({}))))
            .await
    }

    /// A new collection's readable id.
    pub async fn collection(&self) -> String {
        let (status, body) = self
            .post("/collections", Some(json!({"name": "Cluster Collection"})))
            .await;
        assert_eq!(status, 200, "{body}");
        body["readable_id"]
            .as_str()
            .expect("a readable id")
            .to_owned()
    }

    /// A timed connection in `collection`; with `sync` its first job too.
    pub async fn connection_in(
        &self,
        collection: &str,
        config: Value,
        sync: bool,
    ) -> (Uuid, Option<Uuid>) {
        let (status, body) = self
            .post(
                "/source-connections",
                Some(json!({
                    "short_name": "timed",
                    "readable_collection_id": collection,
                    "config": config,
                    "authentication": {"credentials": {"timed_key": "x"}},
                    "sync_immediately": sync,
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let job = body["sync"]["last_job"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok());
        (id(&body), job)
    }

    /// A timed connection with no job yet, in a new collection.
    pub async fn connection(&self, config: Value) -> Uuid {
        let collection = self.collection().await;
        self.connection_in(&collection, config, false).await.0
    }

    /// Runs a sync; the new job's id.
    pub async fn run(&self, sc: Uuid) -> Uuid {
        let (status, body) = self
            .post(&format!("/source-connections/{sc}/run"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        id(&body)
    }

    pub async fn job(&self, sc: Uuid, job: Uuid) -> Value {
        let (status, body) = self
            .get(&format!("/source-connections/{sc}/jobs/{job}"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Until this node shows the connection (another node created it).
    pub async fn wait_connection(&self, sc: Uuid) {
        let deadline = tokio::time::Instant::now() + WAIT_BOUND;
        while self.get(&format!("/source-connections/{sc}")).await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "{sc} never shown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the job on this node until `pred` holds (bounded); a 404 (another node
    /// created it and this one has not folded it yet) counts as not yet.
    pub async fn wait_job(
        &self,
        sc: Uuid,
        job: Uuid,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT_BOUND;
        loop {
            let (status, body) = self
                .get(&format!("/source-connections/{sc}/jobs/{job}"))
                .await;
            if status == StatusCode::OK.as_u16() && pred(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never {what} on {}: {status} {body}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The job's history as the replay route shows it.
    pub async fn events_route(&self, sc: Uuid, job: Uuid) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/source-connections/{sc}/jobs/{job}/events"))
            .await;
        assert_eq!(status, 200, "{body}");
        match body {
            Value::Array(events) => events,
            other => other["events"].as_array().cloned().unwrap_or_default(),
        }
    }
}
