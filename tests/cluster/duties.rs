//! One NATS relay and one webhook dispatcher at a time across the nodes (issue #15 item 6,
//! issue #17): every node has `NATS_URL` and a subscription points at a receiver of this
//! test; while all run, each webhook message is POSTed once and each event reaches the
//! JetStream stream; when the holder of both duties is killed (SIGKILL), another node takes
//! them over and every event and every message still arrives, with no gap; when the new
//! holder of the relay stops gracefully (SIGTERM), the last node relays on.

use crate::nats_stream::DeleteStreamOnDrop;
use crate::node::{Cluster, ClusterSpec, Http};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::events::Event;
use syncjobs_domain::RecordedEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const SYNC_TYPES: [&str; 6] = [
    "sync.pending",
    "sync.running",
    "sync.cancelling",
    "sync.completed",
    "sync.failed",
    "sync.cancelled",
];

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Got {
    webhook_id: String,
    event_type: String,
    job: String,
}

/// A minimal HTTP/1.1 server on a loopback port that answers 200 to every POST and records
/// its `webhook-id` and payload (keep-alive connections included, as the dispatcher's client
/// pools them).
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve(mut socket: tokio::net::TcpStream, got: Arc<Mutex<Vec<Got>>>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Value = serde_json::from_slice(&buf[end..end + len]).unwrap_or(Value::Null);
        buf.drain(..end + len);
        got.lock().unwrap().push(Got {
            webhook_id: header("webhook-id").unwrap_or_default(),
            event_type: body["event_type"].as_str().unwrap_or("").to_owned(),
            job: body["sync_job_id"].as_str().unwrap_or("").to_owned(),
        });
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the receiver binds");
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, kept.clone()));
            }
        });
        Receiver { port, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// How many times each (job, event type) arrived, for `jobs`.
    fn per_message(&self, jobs: &HashSet<Uuid>) -> HashMap<(String, String), usize> {
        let jobs: HashSet<String> = jobs.iter().map(Uuid::to_string).collect();
        let mut n = HashMap::new();
        for g in self.got() {
            if jobs.contains(&g.job) {
                *n.entry((g.job, g.event_type)).or_default() += 1;
            }
        }
        n
    }

    /// Until every one of `jobs` has had pending, running and completed delivered (bounded).
    async fn wait_all(&self, jobs: &HashSet<Uuid>) -> HashMap<(String, String), usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = self.per_message(jobs);
            let missing: Vec<String> = jobs
                .iter()
                .flat_map(|j| {
                    ["sync.pending", "sync.running", "sync.completed"]
                        .map(|t| (j.to_string(), t.to_owned()))
                })
                .filter(|k| !n.contains_key(k))
                .map(|(j, t)| format!("{j} {t}"))
                .collect();
            if missing.is_empty() {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "messages never delivered: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `Nats-Msg-Id` of every message in the stream (empty while it does not exist).
async fn stream_ids(js: &async_nats::jetstream::Context, name: &str) -> Vec<String> {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let state = stream.info().await.expect("stream info").state.clone();
    let mut ids = Vec::new();
    if state.messages == 0 {
        return ids;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("a stream message");
        if let Some(id) = m.headers.get("Nats-Msg-Id") {
            ids.push(id.as_str().to_owned());
        }
    }
    ids
}

/// Until the stream holds every event of `log` (bounded); fails naming what is missing.
async fn wait_stream_holds(js: &async_nats::jetstream::Context, name: &str, log: &[RecordedEvent]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids: HashSet<String> = stream_ids(js, name).await.into_iter().collect();
        // Access events (key hashes) and webhook deliveries are never published.
        let missing: Vec<u64> = log
            .iter()
            .filter(|e| !matches!(e.event, Event::Access(_) | Event::Webhook(_)))
            .filter(|e| !ids.contains(&e.event_id.to_string()))
            .map(|e| e.global_position)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never published (positions): {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each node's state for `duty` on its `/health` (with the key): `holding`, `standby`...
async fn duty_states(nodes: &[(&str, &Http)], duty: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, http) in nodes {
        let (status, body) = http.get("/health").await;
        assert_eq!(status, 200, "{name}: {body}");
        let state = body["duties"][duty]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no {duty} duty on /health: {body}"))
            .to_owned();
        out.push((name.to_string(), state));
    }
    out
}

/// Until exactly one of `nodes` holds `duty` and every other stands by; the holder's name.
async fn wait_one_holder(nodes: &[(&str, &Http)], duty: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let states = duty_states(nodes, duty).await;
        let holders: Vec<&String> = states
            .iter()
            .filter(|(_, s)| s == "holding")
            .map(|(n, _)| n)
            .collect();
        if holders.len() == 1 && states.iter().all(|(_, s)| s == "holding" || s == "standby") {
            return holders[0].clone();
        }
        assert!(holders.len() <= 1, "two holders of {duty}: {states:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{duty}: no single holder: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The jobs' streams all ended (bounded).
async fn wait_final(cluster: &Cluster, jobs: &HashSet<Uuid>) {
    cluster
        .wait_log(|log| {
            jobs.iter().all(|j| {
                log.get(j)
                    .and_then(|events| events.last())
                    .and_then(|e| e.job_event())
                    .is_some_and(|e| e.is_final())
            })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_relays_and_dispatches_at_a_time_and_another_takes_over_when_it_is_killed() {
    let nats_url = match std::env::var("NATS_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ if std::env::var("SYNCJOBS_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("SYNCJOBS_REQUIRE_SERVICES=1 but NATS_URL is not set")
        }
        _ => {
            eprintln!("skipped: this test needs NATS_URL (NATS with JetStream)");
            return;
        }
    };
    let run = Uuid::new_v4().simple().to_string();
    let stream = format!("SYNCJOBS_LEASE_{}", &run[..12]);
    let prefix = format!("syncjobs_lease.{}.events", &run[..12]);
    let _cleanup = DeleteStreamOnDrop {
        url: nats_url.clone(),
        stream: stream.clone(),
    };
    let Some(mut cluster) = Cluster::start(ClusterSpec {
        apis: 2,
        workers: 1,
        env: vec![
            ("NATS_URL".into(), nats_url.clone()),
            ("SYNCJOBS_NATS_STREAM".into(), stream.clone()),
            ("SYNCJOBS_NATS_SUBJECT_PREFIX".into(), prefix),
        ],
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    let js = async_nats::jetstream::new(
        async_nats::connect(nats_url.as_str())
            .await
            .expect("NATS answers"),
    );
    crate::bounded(async {
        let receiver = Receiver::start().await;
        let (api1, api2, worker) = (
            &cluster.api(0).clone(),
            &cluster.api(1).clone(),
            &cluster.worker(0).clone(),
        );
        let (status, sub) = api1
            .post(
                "/webhooks/subscriptions",
                Some(json!({
                    "url": format!("http://127.0.0.1:{}/hook", receiver.port),
                    "event_types": SYNC_TYPES,
                })),
            )
            .await;
        assert_eq!(status, 200, "{sub}");

        // Every node contends; exactly one holds each duty. API node #1 started first, alone:
        // it took both.
        let (id1, id2, idw) = (cluster.api_id(0), cluster.api_id(1), cluster.worker_id(0));
        let all = [
            (id1.as_str(), api1),
            (id2.as_str(), api2),
            (idw.as_str(), worker),
        ];
        for duty in ["nats-relay", "webhook-dispatcher"] {
            assert_eq!(wait_one_holder(&all, duty).await, id1, "{duty}");
        }

        // While all three run: each message POSTed once, each event published.
        let collection = api1.collection().await;
        let mut connections = Vec::new();
        let mut first = HashSet::new();
        for i in 0..6 {
            let api = if i % 2 == 0 { api1 } else { api2 };
            let (sc, job) = api
                .connection_in(
                    &collection,
                    json!({"entity_count": 3, "duration_seconds": 0.2}),
                    true,
                )
                .await;
            connections.push(sc);
            first.insert(job.expect("a first job"));
        }
        wait_final(&cluster, &first).await;
        receiver.wait_all(&first).await;
        // Stragglers from a second dispatcher would come within this.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let twice: Vec<_> = receiver
            .per_message(&first)
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect();
        assert!(
            twice.is_empty(),
            "messages POSTed more than once: {twice:?}"
        );
        let ids: Vec<String> = receiver.got().into_iter().map(|g| g.webhook_id).collect();
        assert_eq!(
            ids.len(),
            ids.iter().collect::<HashSet<_>>().len(),
            "a webhook-id POSTed twice"
        );
        wait_stream_holds(&js, &stream, &cluster.log().await).await;

        // The holder dies without a word; jobs go on through API node #2 meanwhile.
        cluster.kill_api(0);
        let killed = tokio::time::Instant::now();
        let mut second = HashSet::new();
        for sc in &connections[..3] {
            second.insert(api2.run(*sc).await);
        }
        let rest = [(id2.as_str(), api2), (idw.as_str(), worker)];
        let relay = wait_one_holder(&rest, "nats-relay").await;
        let dispatcher = wait_one_holder(&rest, "webhook-dispatcher").await;
        eprintln!(
            "took over within {:?}: relay {relay}, dispatcher {dispatcher}",
            killed.elapsed()
        );
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "{:?}",
            killed.elapsed()
        );
        // /metrics says the same as /health, and the new holder's log says it took over.
        for (name, http) in rest {
            let (status, text) = http.get_text("/metrics").await;
            assert_eq!(status, 200, "{text}");
            for (duty, holder) in [("nats-relay", &relay), ("webhook-dispatcher", &dispatcher)] {
                let held = u8::from(holder.as_str() == name);
                let line = format!("syncjobs_duty_held{{duty=\"{duty}\"}} {held}");
                assert!(
                    text.lines().any(|l| l == line),
                    "{name}: no `{line}` in\n{text}"
                );
            }
        }
        if relay == id2 {
            let logs = cluster.api_logs(1);
            assert!(
                logs.lines().any(|l| l.contains("took the duty")
                    && l.contains("\"duty\":\"nats-relay\"")
                    && l.contains(&format!("\"node_id\":\"{id2}\""))),
                "{logs}"
            );
        }
        for sc in &connections[3..] {
            second.insert(api2.run(*sc).await);
        }
        wait_final(&cluster, &second).await;

        // Every message reaches the receiver (at least once) and every event the stream.
        let all_jobs: HashSet<Uuid> = first.union(&second).copied().collect();
        let delivered = receiver.wait_all(&all_jobs).await;
        assert_eq!(delivered.len(), 3 * all_jobs.len(), "{delivered:?}");
        wait_stream_holds(&js, &stream, &cluster.log().await).await;
        let published = stream_ids(&js, &stream).await;
        assert_eq!(
            published.len(),
            published.iter().collect::<HashSet<_>>().len(),
            "JetStream kept an event twice"
        );

        // A graceful stop (SIGTERM) of the relay's holder lets the lease go as it ends: the
        // last node relays from the cursor it saved, the stopping node's own last events
        // (a worker's WorkerStopped) included.
        let (stopping, last) = if relay == id2 {
            ((id2.as_str(), api2), (idw.as_str(), worker))
        } else {
            ((idw.as_str(), worker), (id2.as_str(), api2))
        };
        let status = if stopping.0 == id2 {
            cluster.stop_api(1).await
        } else {
            cluster.stop_worker(0).await
        };
        assert!(status.success(), "{}: {status}", stopping.0);
        let stopped = tokio::time::Instant::now();
        assert_eq!(wait_one_holder(&[last], "nats-relay").await, last.0);
        eprintln!(
            "relay taken over {:?} after {} stopped",
            stopped.elapsed(),
            stopping.0
        );
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "{:?}",
            stopped.elapsed()
        );
        wait_stream_holds(&js, &stream, &cluster.log().await).await;
    })
    .await;
}
