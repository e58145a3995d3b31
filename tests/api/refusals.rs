//! Read-your-writes for refusals: a 400 that names a job's state (`Cannot cancel job in
//! completed state`, `Cannot start new sync: a sync job is already running`) is answered only
//! once the read model shows that state, so the next GET never contradicts it.
//!
//! The read model is held back by a store wrapper that hides the global log from a given
//! event on (the projector follows the global log; decisions read the job's own stream).

use crate::helpers::{id, lasting, spawn_app_with, Options, TestApp};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError};
use syncjobs_store_sqlite::EmbeddedStore;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a held refusal must stay unanswered to count as waiting.
const HELD: Duration = Duration::from_millis(400);

#[derive(Default)]
struct Hold {
    /// Hide the first event of this type and everything after it...
    from_type: Option<&'static str>,
    /// ...which is everything after this position, once that event has been seen.
    cap: Option<u64>,
}

/// The embedded store, with the global log (what the projector follows) held back on demand.
struct GatedStore {
    inner: Arc<dyn EventStore>,
    hold: Mutex<Hold>,
    head: watch::Sender<u64>,
}

impl GatedStore {
    fn new(inner: Arc<dyn EventStore>) -> Arc<GatedStore> {
        let mut inner_head = inner.watch_head();
        let (head, _) = watch::channel(*inner_head.borrow());
        let gated = Arc::new(GatedStore {
            inner,
            hold: Mutex::new(Hold::default()),
            head,
        });
        let weak = Arc::downgrade(&gated);
        tokio::spawn(async move {
            while inner_head.changed().await.is_ok() {
                let Some(gated) = weak.upgrade() else { return };
                gated.head.send_replace(*inner_head.borrow());
            }
        });
        gated
    }

    /// From the next event of `event_type` on, the read model sees nothing new.
    fn hold_from(&self, event_type: &'static str) {
        *self.hold.lock().unwrap() = Hold {
            from_type: Some(event_type),
            cap: None,
        };
    }

    fn is_holding_back(&self) -> bool {
        self.hold.lock().unwrap().cap.is_some()
    }

    /// Lets the read model catch up.
    fn release(&self) {
        *self.hold.lock().unwrap() = Hold::default();
        // Wake the follower, which waits for the head to move.
        self.head.send_replace(*self.inner.watch_head().borrow());
    }
}

#[async_trait]
impl EventStore for GatedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.inner.read_all(after, limit).await?;
        let mut hold = self.hold.lock().unwrap();
        if let (Some(from_type), None) = (hold.from_type, hold.cap) {
            if let Some(e) = events.iter().find(|e| e.event_type() == from_type) {
                hold.cap = Some(e.global_position - 1);
            }
        }
        if let Some(cap) = hold.cap {
            events.retain(|e| e.global_position <= cap);
        }
        Ok(events)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

async fn gated_app() -> (TestApp, Arc<GatedStore>) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let inner: Arc<dyn EventStore> = EmbeddedStore::open(dir.path()).unwrap();
    let gated = GatedStore::new(inner);
    let app = spawn_app_with(Options {
        store: Some(gated.clone()),
        data_dir: Some(dir),
        ..Options::default()
    })
    .await;
    (app, gated)
}

/// Polls the job's own stream (not the read model) until it holds an event of this type.
async fn in_log(app: &TestApp, job: Uuid, event_type: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !app
        .job_events(job)
        .await
        .iter()
        .any(|e| e.event_type() == event_type)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {event_type} in the log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a POST in the background; its answer is awaited later.
fn post_in_background(
    app: &TestApp,
    path: &str,
) -> tokio::task::JoinHandle<(reqwest::StatusCode, Value)> {
    let request = app
        .client
        .post(app.url(path))
        .header("x-api-key", &app.key)
        .send();
    tokio::spawn(async move { crate::helpers::parts(request.await.unwrap()).await })
}

/// The refusal is not answered while the read model is held back, and is once it catches up.
async fn answered_only_after_release(
    gated: &GatedStore,
    refusal: tokio::task::JoinHandle<(reqwest::StatusCode, Value)>,
) -> (reqwest::StatusCode, Value) {
    tokio::time::sleep(HELD).await;
    assert!(gated.is_holding_back(), "the read model was not held back");
    assert!(
        !refusal.is_finished(),
        "answered while the read model still showed the earlier state"
    );
    gated.release();
    tokio::time::timeout(Duration::from_secs(10), refusal)
        .await
        .expect("answered once the read model caught up")
        .unwrap()
}

#[actix_web::test]
async fn a_cancel_refused_for_a_completed_job_is_answered_once_a_get_shows_it_completed() {
    let (app, gated) = gated_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 5, "duration_seconds": 0.5}))
        .await;
    gated.hold_from("JobCompleted");
    let job = id(&app.run(sc).await);
    in_log(&app, job, "JobCompleted").await;
    assert_eq!(app.job(sc, job).await["status"], "running", "held back");

    let cancel = post_in_background(&app, &format!("/source-connections/{sc}/jobs/{job}/cancel"));
    let (status, body) = answered_only_after_release(&gated, cancel).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "Cannot cancel job in completed state");
    assert_eq!(app.job(sc, job).await["status"], "completed");
}

#[actix_web::test]
async fn a_run_refused_for_a_running_job_is_answered_once_a_get_shows_it_running() {
    let (app, gated) = gated_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    gated.hold_from("JobStarted");
    let job = id(&app.run(sc).await);
    in_log(&app, job, "JobStarted").await;
    assert_eq!(app.job(sc, job).await["status"], "pending", "held back");

    let run = post_in_background(&app, &format!("/source-connections/{sc}/run"));
    let (status, body) = answered_only_after_release(&gated, run).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Cannot start new sync: a sync job is already running"
    );
    assert_eq!(app.job(sc, job).await["status"], "running");
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
}
