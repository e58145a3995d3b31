//! Several real `syncjobs` processes on one PostgreSQL database: two `--role api` nodes and
//! three `--role worker` nodes, each on its own random port and data directory, talking only
//! through the log (issue #15). Each test starts its own cluster on a fresh database and
//! kills every process it started when it ends, panics included.
//!
//! Needs `SYNCJOBS_TEST_POSTGRES_URL` (an admin URL; a database is made per test). Without
//! it the tests say they are skipped and pass, unless `SYNCJOBS_REQUIRE_SERVICES=1`, where
//! they fail.

mod duties;
#[path = "../support/nats_stream.rs"]
mod nats_stream;
mod node;

use node::{Cluster, ClusterSpec};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use syncjobs_domain::events::{Event, WorkerEvent};
use syncjobs_domain::{RecordedEvent, SyncJobEvent};
use uuid::Uuid;

/// Every test's bound: start-up of five processes included.
const TEST_BOUND: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("the test ran past its bound");
}

/// The worker named in each JobStarted of a job's stream.
fn starts(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.job_event() {
            Some(SyncJobEvent::JobStarted { worker }) => Some(worker.clone()),
            _ => None,
        })
        .collect()
}

fn count_of(events: &[RecordedEvent], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type() == event_type)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_sent_to_api_2_for_a_job_running_on_worker_3_ends_cancelled() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        // One job per worker: three long jobs land one on each.
        worker_capacity: Some(1),
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let (api1, api2) = (cluster.api(0), cluster.api(1));
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let sc = api1
                .connection(json!({"entity_count": 10000, "duration_seconds": 600}))
                .await;
            jobs.push((sc, api1.run(sc).await));
        }
        // Which job did worker #3 claim? The log says.
        let on_3 = loop {
            let mut found = None;
            for &(sc, job) in &jobs {
                let events = cluster.events(job).await;
                if starts(&events) == [cluster.worker_id(2)] {
                    found = Some((sc, job));
                }
            }
            if let Some(found) = found {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (sc, job) = on_3;
        api2.wait_job(sc, job, "writing", |j| {
            j["entities_inserted"].as_u64() > Some(0)
        })
        .await;

        let (status, body) = api2.post(&node::cancel_path(sc, job), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "cancelling", "{body}");

        for api in [api2, api1] {
            let done = api
                .wait_job(sc, job, "cancelled", |j| j["status"] == "cancelled")
                .await;
            assert_eq!(done["error"], serde_json::Value::Null, "not forced: {done}");
            let written = done["entities_inserted"].as_u64().unwrap();
            assert!(written > 0 && written < 10000, "{done}");
        }
        let events = cluster.events(job).await;
        assert_eq!(
            starts(&events),
            [cluster.worker_id(2)],
            "run on worker #3 only"
        );
        assert_eq!(count_of(&events, "CancelRequested"), 1);
        assert_eq!(count_of(&events, "Cancelled"), 1, "confirmed by its worker");
        assert_eq!(count_of(&events, "ForceCancelled"), 0);
        let Some(SyncJobEvent::Cancelled { counts, .. }) =
            events.last().and_then(|e| e.job_event())
        else {
            panic!("the last event is not Cancelled: {events:?}");
        };
        let shown = api1.job(sc, job).await;
        assert_eq!(Some(counts.inserted), shown["entities_inserted"].as_u64());
        // The other two jobs still run on their workers: the cancel reached only its own.
        for &(other_sc, other) in jobs.iter().filter(|(_, j)| *j != job) {
            assert_eq!(api1.job(other_sc, other).await["status"], "running");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_cancels_over_both_api_nodes_record_one_cancel_request() {
    let Some(cluster) = Cluster::start(ClusterSpec::default()).await else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0);
        let sc = api1
            .connection(json!({"entity_count": 10000, "duration_seconds": 600}))
            .await;
        let job = api1.run(sc).await;
        api1.wait_job(sc, job, "running", |j| j["status"] == "running")
            .await;
        cluster.api(1).wait_job(sc, job, "visible", |_| true).await;

        let path = node::cancel_path(sc, job);
        let answers = futures::future::join_all((0..100).map(|i| {
            let api = cluster.api(i % 2);
            let path = path.clone();
            async move { api.post(&path, None).await }
        }))
        .await;
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for (status, body) in &answers {
            *by_status.entry(*status).or_default() += 1;
            if *status == 400 {
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(
                    detail == "Cannot cancel job in cancelling state"
                        || detail == "Cannot cancel job in cancelled state",
                    "{body}"
                );
            } else {
                assert_eq!(*status, 200, "{body}");
            }
        }
        assert_eq!(by_status.get(&200), Some(&1), "{by_status:?}");
        assert_eq!(by_status.get(&400), Some(&99), "{by_status:?}");

        api1.wait_job(sc, job, "cancelled", |j| j["status"] == "cancelled")
            .await;
        // The log, as `syncjobs events` and the replay route show it.
        let events = cluster.events(job).await;
        assert_eq!(count_of(&events, "CancelRequested"), 1, "{events:?}");
        let replayed = api1.events_route(sc, job).await;
        let requested = replayed
            .iter()
            .filter(|e| e["event"]["type"] == "CancelRequested")
            .count();
        assert_eq!(requested, 1, "{replayed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_jobs_over_three_workers_each_claimed_once() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        // Small enough that no worker can take them all, large enough to go fast.
        worker_capacity: Some(8),
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let collection = cluster.api(0).collection().await;
        // 200 connections, each created with its first sync, over both API nodes at once.
        let created = futures::future::join_all((0..200).map(|i| {
            let api = cluster.api(i % 2);
            let collection = collection.clone();
            async move {
                api.connection_in(
                    &collection,
                    json!({"entity_count": 5, "duration_seconds": 0.3}),
                    true,
                )
                .await
            }
        }))
        .await;
        let created: Vec<(Uuid, Uuid)> = created
            .into_iter()
            .map(|(sc, job)| (sc, job.expect("a first job")))
            .collect();
        assert_eq!(created.len(), 200);

        let ids: HashSet<Uuid> = created.iter().map(|(_, j)| *j).collect();
        let finished = cluster
            .wait_log(|log| {
                let done = ids
                    .iter()
                    .filter(|j| {
                        log.get(*j)
                            .and_then(|events| events.last())
                            .and_then(|e| e.job_event())
                            .is_some_and(|e| e.is_final())
                    })
                    .count();
                done == ids.len()
            })
            .await;
        let mut per_worker: HashMap<String, usize> = HashMap::new();
        for job in &ids {
            let events = &finished[job];
            let started = starts(events);
            assert_eq!(started.len(), 1, "claimed once: {events:?}");
            assert_eq!(
                events.last().map(|e| e.event_type()),
                Some("JobCompleted"),
                "{events:?}"
            );
            *per_worker.entry(started[0].clone()).or_default() += 1;
        }
        for w in 0..3 {
            let id = cluster.worker_id(w);
            assert!(
                per_worker.get(&id).copied().unwrap_or(0) > 0,
                "worker {id} got no job: {per_worker:?}"
            );
        }
        assert_eq!(per_worker.values().sum::<usize>(), 200, "{per_worker:?}");
        eprintln!("jobs per worker: {per_worker:?}");
        // None left pending, as the API nodes show them (once a node has folded the last
        // events: the log is read here, the rows lag it by a fold).
        for (sc, job) in created.iter().take(20) {
            cluster
                .api(1)
                .wait_job(*sc, *job, "completed", |j| j["status"] == "completed")
                .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_creates_on_one_connection_via_the_two_api_nodes_one_wins() {
    let Some(cluster) = Cluster::start(ClusterSpec::default()).await else {
        return;
    };
    bounded(async {
        let (api1, api2) = (cluster.api(0), cluster.api(1));
        // Twenty races, each on a connection of its own; each after one finished job (a
        // chain that does not start empty) for half of them.
        for round in 0..20 {
            let sc = api1
                .connection(json!({"entity_count": 1000, "duration_seconds": 600}))
                .await;
            api2.wait_connection(sc).await;
            if round % 2 == 1 {
                let first = api1.run(sc).await;
                api1.post(&node::cancel_path(sc, first), None).await;
                api1.wait_job(sc, first, "cancelled", |j| j["status"] == "cancelled")
                    .await;
                api2.wait_job(sc, first, "cancelled", |j| j["status"] == "cancelled")
                    .await;
            }
            let run = format!("/source-connections/{sc}/run");
            let (a, b) = tokio::join!(api1.post(&run, None), api2.post(&run, None));
            let mut answers = [a, b];
            answers.sort_by_key(|(status, _)| *status);
            let [(won, job), (lost, refusal)] = answers;
            assert_eq!(won, 200, "round {round}: {job} / {refusal}");
            assert_eq!(lost, 400, "round {round}: {job} / {refusal}");
            let detail = refusal["detail"].as_str().unwrap_or_default();
            assert!(
                detail.starts_with("Cannot start new sync: a sync job is already "),
                "{refusal}"
            );
            let listed = api1.get(&format!("/source-connections/{sc}/jobs")).await.1;
            let active = listed
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| {
                    !["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap())
                })
                .count();
            assert_eq!(active, 1, "round {round}: {listed}");
            // Free the connection's workers for the next round.
            let won_id = node::id(&job);
            api1.post(&node::cancel_path(sc, won_id), None).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watchdog_of_one_node_ends_a_stuck_job_once() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        cancel_timeout_seconds: 2,
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0);
        let sc = api1
            .connection(
                json!({"entity_count": 10000, "duration_seconds": 600, "ignore_cancel": true}),
            )
            .await;
        let job = api1.run(sc).await;
        api1.wait_job(sc, job, "running", |j| j["status"] == "running")
            .await;
        let (status, body) = cluster.api(1).post(&node::cancel_path(sc, job), None).await;
        assert_eq!(status, 200, "{body}");
        let done = api1
            .wait_job(sc, job, "force-cancelled", |j| j["status"] == "cancelled")
            .await;
        assert_eq!(done["error_category"], "cancel_timeout", "{done}");
        // Every worker armed a timer; one append landed. Give the others time to fire too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = cluster.events(job).await;
        assert_eq!(count_of(&events, "ForceCancelled"), 1, "{events:?}");
        let finals = events
            .iter()
            .filter(|e| e.job_event().is_some_and(|e| e.is_final()))
            .count();
        assert_eq!(finals, 1, "{events:?}");
        let health = cluster.worker_health(0).await;
        assert_eq!(health["node"]["role"], "worker", "{health}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_worker_of_a_cancelling_job_is_killed_another_nodes_watchdog_ends_it() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        cancel_timeout_seconds: 3,
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0);
        let sc = api1
            .connection(
                json!({"entity_count": 10000, "duration_seconds": 600, "ignore_cancel": true}),
            )
            .await;
        let job = api1.run(sc).await;
        let written = api1
            .wait_job(sc, job, "writing", |j| {
                j["entities_inserted"].as_u64() > Some(0)
            })
            .await;
        let owner = starts(&cluster.events(job).await);
        let owner = (0..3)
            .find(|&w| owner == [cluster.worker_id(w)])
            .expect("a worker of the cluster runs it");
        let (status, body) = cluster.api(1).post(&node::cancel_path(sc, job), None).await;
        assert_eq!(status, 200, "{body}");
        // The only node that could confirm dies without a word.
        cluster.kill_worker(owner);

        let done = api1
            .wait_job(sc, job, "force-cancelled", |j| j["status"] == "cancelled")
            .await;
        assert_eq!(done["error_category"], "cancel_timeout", "{done}");
        assert_eq!(done["error_details"]["counts_reconciled"], true, "{done}");
        assert!(
            done["entities_inserted"].as_u64() >= written["entities_inserted"].as_u64(),
            "{written} -> {done}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = cluster.events(job).await;
        assert_eq!(count_of(&events, "ForceCancelled"), 1, "{events:?}");
        let forced_at = events.last().map(|e| e.recorded_at).unwrap();
        let requested_at = events
            .iter()
            .find(|e| e.event_type() == "CancelRequested")
            .map(|e| e.recorded_at)
            .unwrap();
        let late = (forced_at - requested_at).num_milliseconds();
        assert!(
            (3000..4500).contains(&late),
            "forced {late} ms after the request"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_only_health_and_metrics() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        apis: 1,
        workers: 1,
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let worker = cluster.worker(0);
        let health = cluster.worker_health(0).await;
        assert_eq!(health["status"], "healthy", "{health}");
        assert_eq!(health["node"]["id"], cluster.worker_id(0), "{health}");
        assert_eq!(health["node"]["capacity"], 16, "{health}");
        let (metrics, _) = worker.get_text("/metrics").await;
        assert_eq!(metrics, 200);
        for path in [
            "/collections",
            "/source-connections",
            "/openapi.json",
            "/ui",
        ] {
            let (status, body) = worker.get(path).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
        let api_health = cluster.api(0).get("/health").await.1;
        assert_eq!(api_health["node"]["role"], "api", "{api_health}");
        assert_eq!(cluster.api(0).get("/collections").await.0, 200);
    })
    .await;
}

#[test]
fn a_worker_refuses_to_start_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = std::process::Command::new(node::BIN)
        .env_clear()
        .env("SYNCJOBS_DATA_DIR", dir.path())
        .env("SYNCJOBS_BIND", "127.0.0.1:0")
        .args(["serve", "--role", "worker"])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--role worker needs the PostgreSQL store"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("read_model.db").exists(),
        "refused before it touched anything"
    );
}

/// Heartbeat every second, lost after 3 s of silence: short, so the tests stay short.
const LIVENESS: (u64, u64) = (1, 3);

fn resumes(events: &[RecordedEvent]) -> Vec<(u32, String, bool)> {
    events
        .iter()
        .filter_map(|e| match e.job_event() {
            Some(SyncJobEvent::JobResumed {
                attempt,
                lost_worker,
                handed_back,
                ..
            }) => Some((*attempt, lost_worker.clone(), *handed_back)),
            _ => None,
        })
        .collect()
}

fn finals(events: &[RecordedEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.job_event().is_some_and(|e| e.is_final()))
        .count()
}

/// The connection's entities in the (shared) destination, as an API node shows them.
async fn entities(api: &node::Http, sc: Uuid) -> u64 {
    let (status, body) = api.get(&format!("/source-connections/{sc}")).await;
    assert_eq!(status, 200, "{body}");
    body["entities"]["total_entities"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_job_is_resumed_on_another_worker_and_completes_with_every_entity() {
    let Some(cluster) = Cluster::start(ClusterSpec {
        liveness: Some(LIVENESS),
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0);
        let sc = api1
            .connection(json!({"entity_count": 400, "duration_seconds": 6}))
            .await;
        let job = api1.run(sc).await;
        api1.wait_job(sc, job, "writing", |j| {
            j["entities_inserted"].as_u64() > Some(0)
        })
        .await;
        let owner = starts(&cluster.events(job).await);
        let owner = (0..3)
            .find(|&w| owner == [cluster.worker_id(w)])
            .expect("a worker of the cluster runs it");
        let killed_at = chrono::Utc::now();
        cluster.kill_worker(owner);

        let done = cluster
            .api(1)
            .wait_job(sc, job, "completed", |j| j["status"] == "completed")
            .await;
        let events = cluster.events(job).await;
        let lost_id = cluster.worker_id(owner);
        assert_eq!(
            resumes(&events),
            [(1, lost_id.clone(), false)],
            "{events:?}"
        );
        let started = starts(&events);
        assert_eq!(started.len(), 2, "{started:?}");
        assert_eq!(started[0], lost_id);
        assert_ne!(started[1], lost_id, "resumed on another worker");
        assert_eq!(finals(&events), 1, "{events:?}");
        assert_eq!(events.last().map(|e| e.event_type()), Some("JobCompleted"));
        // The source's 400 entities and their container, each once.
        assert_eq!(entities(api1, sc).await, 401, "{done}");
        // Declared lost once, by one of the two live workers, within the timeout plus a
        // heartbeat interval (the look) plus slack.
        let lost: Vec<(String, chrono::DateTime<chrono::Utc>)> = cluster
            .worker_events(owner)
            .await
            .iter()
            .filter_map(|e| match &e.event {
                Event::Worker(WorkerEvent::WorkerLost { detected_by, .. }) => {
                    Some((detected_by.clone(), e.recorded_at))
                }
                _ => None,
            })
            .collect();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_ne!(lost[0].0, lost_id);
        let resumed_at = events
            .iter()
            .find(|e| e.event_type() == "JobResumed")
            .map(|e| e.recorded_at)
            .unwrap();
        let after = (resumed_at - killed_at).num_milliseconds();
        eprintln!("SIGKILL -> JobResumed: {after} ms (timeout 3 s, heartbeat 1 s)");
        assert!(
            (0..3_000 + 1_000 + 1_500).contains(&after),
            "resumed {after} ms after the kill"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_every_node_while_jobs_run_and_cancel_then_restart_each_job_ends_once() {
    let Some(mut cluster) = Cluster::start(ClusterSpec {
        liveness: Some(LIVENESS),
        cancel_timeout_seconds: 3,
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0).clone();
        let collection = api1.collection().await;
        let mut jobs = Vec::new();
        for i in 0..8 {
            let config = json!({
                "entity_count": 200, "duration_seconds": 4, "seed": i,
                "ignore_cancel": i % 4 == 3,
            });
            let (sc, _) = api1.connection_in(&collection, config, false).await;
            jobs.push((sc, api1.run(sc).await));
        }
        for &(sc, job) in &jobs {
            api1.wait_job(sc, job, "writing", |j| {
                j["entities_inserted"].as_u64() > Some(0)
            })
            .await;
        }
        // Cancels on both API nodes (two of them to jobs that ignore them), then every node
        // dies at once.
        let mut cancelled = HashSet::new();
        for (i, &(sc, job)) in jobs.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            let (status, body) = cluster
                .api(i % 2)
                .post(&node::cancel_path(sc, job), None)
                .await;
            assert_eq!(status, 200, "{body}");
            cancelled.insert(job);
        }
        cluster.kill_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.restart_all().await;

        let ids: HashSet<Uuid> = jobs.iter().map(|(_, j)| *j).collect();
        let log = cluster
            .wait_log(|log| {
                ids.iter().all(|j| {
                    log.get(j)
                        .and_then(|events| events.last())
                        .and_then(|e| e.job_event())
                        .is_some_and(|e| e.is_final())
                })
            })
            .await;
        // Give every node time to act on a job twice if it were going to.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for &(sc, job) in &jobs {
            let events = cluster.events(job).await;
            assert_eq!(
                events.len(),
                log[&job].len(),
                "nothing after the end: {events:?}"
            );
            assert_eq!(finals(&events), 1, "{events:?}");
            let last = events.last().map(|e| e.event_type()).unwrap_or_default();
            if cancelled.contains(&job) {
                assert!(
                    ["Cancelled", "ForceCancelled"].contains(&last),
                    "a cancelled job ends cancelled: {events:?}"
                );
            } else {
                // Resumed at most once (the limit), then run to its end.
                assert!(resumes(&events).len() <= 1, "{events:?}");
                assert_eq!(last, "JobCompleted", "{events:?}");
                // Asked of a restarted node: the one before has another port now.
                assert_eq!(entities(cluster.api(0), sc).await, 201, "{events:?}");
            }
        }
        // The kill cut runs off: they were resumed, not failed.
        let resumed = jobs
            .iter()
            .filter(|(_, job)| !cancelled.contains(job) && !resumes(&log[job]).is_empty())
            .count();
        eprintln!("{resumed} of 4 running jobs resumed after the restart");
        assert!(resumed > 0, "no run was cut off by the kill");
        let (clean, report) = cluster.verify();
        assert!(clean, "syncjobs verify: {report}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_a_worker_and_another_worker_completes_its_handed_back_job() {
    let Some(mut cluster) = Cluster::start(ClusterSpec {
        liveness: Some(LIVENESS),
        drain_seconds: Some(1),
        ..ClusterSpec::default()
    })
    .await
    else {
        return;
    };
    bounded(async {
        let api1 = cluster.api(0).clone();
        let sc = api1
            .connection(json!({"entity_count": 400, "duration_seconds": 6}))
            .await;
        let job = api1.run(sc).await;
        api1.wait_job(sc, job, "writing", |j| {
            j["entities_inserted"].as_u64() > Some(0)
        })
        .await;
        let owner = starts(&cluster.events(job).await);
        let owner = (0..3)
            .find(|&w| owner == [cluster.worker_id(w)])
            .expect("a worker of the cluster runs it");
        let owner_id = cluster.worker_id(owner);
        let status = cluster.stop_worker(owner).await;
        assert!(status.success(), "{status:?}");
        let stream = cluster.worker_events(owner).await;
        assert!(
            matches!(
                stream.last().map(|e| &e.event),
                Some(Event::Worker(WorkerEvent::WorkerStopped {
                    handed_back: 1,
                    ..
                }))
            ),
            "{stream:?}"
        );
        api1.wait_job(sc, job, "completed", |j| j["status"] == "completed")
            .await;
        let events = cluster.events(job).await;
        assert_eq!(
            resumes(&events),
            [(0, owner_id.clone(), true)],
            "{events:?}"
        );
        let started = starts(&events);
        assert_eq!(started.len(), 2, "{started:?}");
        assert_ne!(started[1], owner_id);
        assert_eq!(entities(&api1, sc).await, 401);
        // Past the timeout: a stopped worker is not declared lost.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            !cluster
                .worker_events(owner)
                .await
                .iter()
                .any(|e| matches!(e.event, Event::Worker(WorkerEvent::WorkerLost { .. }))),
            "a stopped worker is not lost"
        );
    })
    .await;
}
