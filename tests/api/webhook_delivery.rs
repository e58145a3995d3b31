//! Webhook delivery, end to end: a real receiver (an HTTP server on a random loopback port)
//! checks every signature with the Standard Webhooks reference library (`standardwebhooks`),
//! and the tests assert what a subscriber sees: each lifecycle event once per subscription,
//! in order per job; retries on the schedule; filters and organizations; and delivery after
//! a restart while the receiver was down.

use crate::helpers::{id, lasting, spawn, spawn_app, spawn_app_with, Options, TestApp};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// One POST as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn event_type(&self) -> String {
        self.json()["event_type"].as_str().unwrap().to_owned()
    }

    /// Verified by the reference library with `secret`, and the same under `svix-*` names.
    fn verify(&self, secret: &str) {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&self.body, &self.headers)
            .unwrap_or_else(|e| panic!("signature refused ({e}): {self:?}"));
        for name in ["id", "timestamp", "signature"] {
            assert_eq!(
                self.header(&format!("svix-{name}")),
                self.header(&format!("webhook-{name}"))
            );
        }
        assert_eq!(self.header("content-type"), "application/json");
    }
}

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<Received>>,
    /// Statuses to answer, in turn; 200 once they are used up.
    answers: Mutex<VecDeque<u16>>,
    /// Requests to `/slow` are held this long before their answer.
    slow: Mutex<Duration>,
}

/// An HTTP server on a loopback port that records every request.
struct Receiver {
    port: u16,
    inbox: Arc<Inbox>,
}

async fn record(req: HttpRequest, body: web::Bytes, inbox: web::Data<Inbox>) -> HttpResponse {
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.headers() {
        headers.append(
            http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    inbox.got.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    if req.path() == "/slow" {
        let hold = *inbox.slow.lock().unwrap();
        tokio::time::sleep(hold).await;
    }
    let status = inbox.answers.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .body(format!("answered {status}"))
}

impl Receiver {
    /// Listens on `port` (0: any free one), answering `answers` first, then 200s.
    fn start(port: u16, answers: &[u16]) -> Receiver {
        let inbox = Arc::new(Inbox::default());
        inbox.answers.lock().unwrap().extend(answers);
        let data = web::Data::from(inbox.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port))
        .expect("the receiver binds");
        let port = server.addrs()[0].port();
        actix_web::rt::spawn(server.run());
        Receiver { port, inbox }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn got(&self) -> Vec<Received> {
        self.inbox.got.lock().unwrap().clone()
    }

    /// Waits until `path` has received `n` requests; returns them, oldest first.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Received> = self.got().into_iter().filter(|r| r.path == path).collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} got {} of {n}: {:?}",
                got.len(),
                got.iter().map(Received::event_type).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What `path` received, event types in order, after giving stragglers time to come.
    async fn settled(&self, path: &str) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.got()
            .iter()
            .filter(|r| r.path == path)
            .map(Received::event_type)
            .collect()
    }
}

/// Creates a subscription as `key`; returns its id and secret.
async fn subscribe(app: &TestApp, key: &str, url: &str, types: &[&str]) -> (Uuid, String) {
    let (status, s) = app
        .request_as(
            Some(key),
            Method::POST,
            "/webhooks/subscriptions",
            Some(json!({"url": url, "event_types": types})),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    let sid = id(&s);
    let (_, detail) = app
        .request_as(
            Some(key),
            Method::GET,
            &format!("/webhooks/subscriptions/{sid}?include_secret=true"),
            None,
        )
        .await;
    (sid, detail["secret"].as_str().unwrap().to_owned())
}

const SYNC_TYPES: [&str; 6] = [
    "sync.pending",
    "sync.running",
    "sync.cancelling",
    "sync.completed",
    "sync.failed",
    "sync.cancelled",
];

#[actix_web::test]
async fn lifecycle_events_arrive_once_per_subscription_in_order_and_signed() {
    let app = spawn_app().await;
    let r = Receiver::start(0, &[]);
    let (all, all_secret) = subscribe(&app, &app.key, &r.url("/all"), &SYNC_TYPES).await;
    let (_, done_secret) = subscribe(&app, &app.key, &r.url("/done"), &["sync.completed"]).await;
    let c = app.collection("Webhook Target").await;
    let sc = id(&app
        .source_connection(
            c["readable_id"].as_str().unwrap(),
            json!({"entity_count": 3, "duration_seconds": 0.1}),
        )
        .await);
    let job = id(&app.run(sc).await);
    let finished = app.wait_status(sc, job, "completed").await;

    let got = r.wait_for("/all", 3).await;
    let done = r.wait_for("/done", 1).await;
    assert_eq!(
        r.settled("/all").await,
        ["sync.pending", "sync.running", "sync.completed"],
        "each once, in order"
    );
    assert_eq!(r.settled("/done").await, ["sync.completed"]);
    for m in &got {
        m.verify(&all_secret);
    }
    done[0].verify(&done_secret);
    // One message, delivered to each subscription under the same id.
    assert_eq!(done[0].header("webhook-id"), got[2].header("webhook-id"));
    assert_eq!(done[0].body, got[2].body);
    let ids: std::collections::HashSet<&str> = got.iter().map(|m| m.header("webhook-id")).collect();
    assert_eq!(ids.len(), 3);

    // Airweave's payload, key for key.
    let p = got[2].json();
    let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "event_type",
        "timestamp",
        "organization_id",
        "sync_id",
        "sync_job_id",
        "collection_id",
        "source_connection_id",
        "source_type",
        "collection_name",
        "collection_readable_id",
        "entities_inserted",
        "entities_updated",
        "entities_deleted",
        "entities_skipped",
        "chunks_written",
        "error",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{p}");
    assert_eq!(p["sync_job_id"], job.to_string());
    assert_eq!(p["source_connection_id"], sc.to_string());
    assert_eq!(p["collection_id"], c["id"]);
    assert_eq!(p["collection_name"], "Webhook Target");
    assert_eq!(p["collection_readable_id"], c["readable_id"]);
    assert_eq!(p["organization_id"], c["organization_id"]);
    assert_eq!(p["source_type"], "timed");
    assert_eq!(p["entities_inserted"], finished["entities_inserted"]);
    assert!(p["entities_inserted"].as_u64().unwrap() >= 3, "{p}");
    assert_eq!(p["error"], Value::Null);
    assert_eq!(got[0].json()["entities_inserted"], 0);
    // The message shown is the body sent (a sync.* payload is stored compact and rendered
    // again for each).
    let (_, shown) = app
        .get("/webhooks/messages?event_types=sync.completed")
        .await;
    assert_eq!(shown[0]["payload"], got[2].json());

    // The subscription shows its attempts, newest first, and is healthy.
    let (_, detail) = app.get(&format!("/webhooks/subscriptions/{all}")).await;
    let attempts = detail["delivery_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{detail}");
    assert!(attempts.iter().all(|a| a["response_status_code"] == 200
        && a["status"] == "success"
        && a["endpoint_id"] == all.to_string()));
    assert_eq!(
        attempts[0]["message_id"].as_str(),
        Some(got[2].header("webhook-id"))
    );
    assert_eq!(detail["health_status"], "healthy");
}

#[actix_web::test]
async fn a_cancelled_sync_sends_cancelling_then_cancelled_and_nothing_after() {
    let app = spawn_app().await;
    let r = Receiver::start(0, &[]);
    let (_, secret) = subscribe(&app, &app.key, &r.url("/h"), &SYNC_TYPES).await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
    app.wait_status(sc, job, "cancelled").await;
    let got = r.wait_for("/h", 4).await;
    assert_eq!(
        r.settled("/h").await,
        [
            "sync.pending",
            "sync.running",
            "sync.cancelling",
            "sync.cancelled"
        ]
    );
    for m in &got {
        m.verify(&secret);
        assert_eq!(m.json()["sync_job_id"], job.to_string());
    }
    assert_eq!(got[3].json()["event_type"], "sync.cancelled");
}

#[actix_web::test]
async fn a_forced_cancel_s_sync_cancelled_says_it_was_forced() {
    let app = spawn_app_with(Options {
        cancel_timeout_seconds: 2,
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[]);
    let (_, secret) = subscribe(&app, &app.key, &r.url("/h"), &["sync.cancelled"]).await;
    // A source deaf to cancel: only the watchdog ends its job.
    let sc = app
        .idle_connection(
            json!({"entity_count": 1000, "duration_seconds": 30, "ignore_cancel": true}),
        )
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200, "{body}");
    app.wait_status(sc, job, "cancelled").await;
    let got = r.wait_for("/h", 1).await;
    got[0].verify(&secret);
    let payload = got[0].json();
    assert_eq!(payload["event_type"], "sync.cancelled");
    assert_eq!(payload["sync_job_id"], job.to_string());
    let error = payload["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("forced by the watchdog") && error.contains("2 seconds"),
        "{payload}"
    );
    assert_eq!(r.settled("/h").await, ["sync.cancelled"]);
}

#[actix_web::test]
async fn a_500_is_retried_on_the_schedule_until_a_200_and_a_dead_end_stops() {
    let app = spawn_app_with(Options {
        settings: |s| {
            s.webhook_retry_schedule =
                syncjobs::config::Schedule(vec![Duration::from_millis(300); 2]);
        },
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[500, 200]);
    let (sid, secret) = subscribe(&app, &app.key, &r.url("/flaky"), &["collection.created"]).await;
    app.collection("Retried Collection").await;
    let got = r.wait_for("/flaky", 2).await;
    for m in &got {
        m.verify(&secret);
    }
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body);
    let waited = got[1].header("webhook-timestamp").parse::<i64>().unwrap()
        - got[0].header("webhook-timestamp").parse::<i64>().unwrap();
    assert!((0..=2).contains(&waited), "{waited} s");
    assert_eq!(r.settled("/flaky").await.len(), 2, "no more after the 200");
    let (_, detail) = app.get(&format!("/webhooks/subscriptions/{sid}")).await;
    let codes: Vec<&Value> = detail["delivery_attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["response_status_code"])
        .collect();
    assert_eq!(codes, [&json!(200), &json!(500)], "{detail}");
    assert_eq!(detail["delivery_attempts"][1]["response"], "answered 500");
    assert_eq!(detail["delivery_attempts"][1]["status"], "failed");
    assert_eq!(detail["health_status"], "degraded");

    // Always failing: the first attempt and the schedule's two retries, then nothing.
    let dead = Receiver::start(0, &[503; 10]);
    let (sid, _) = subscribe(&app, &app.key, &dead.url("/dead"), &["collection.created"]).await;
    app.collection("Never Delivered").await;
    dead.wait_for("/dead", 3).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(dead.settled("/dead").await.len(), 3);
    let (_, detail) = app.get(&format!("/webhooks/subscriptions/{sid}")).await;
    assert_eq!(detail["delivery_attempts"].as_array().unwrap().len(), 3);
    assert_eq!(detail["health_status"], "failing");
}

#[actix_web::test]
async fn filters_disabled_subscriptions_and_organizations_hold() {
    let app = spawn_app().await;
    let r = Receiver::start(0, &[]);
    let (_, secret) = subscribe(&app, &app.key, &r.url("/deleted"), &["collection.deleted"]).await;
    let (off, _) = subscribe(&app, &app.key, &r.url("/off"), &["collection.created"]).await;
    let (status, _) = app
        .request_as(
            Some(&app.key),
            Method::PATCH,
            &format!("/webhooks/subscriptions/{off}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, other_secret) = subscribe(
        &app,
        &app.other_key,
        &r.url("/other"),
        &["collection.created"],
    )
    .await;

    let c = app.collection("Mine Only").await;
    let rid = c["readable_id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/collections/{rid}")).await.0, 200);
    let got = r.wait_for("/deleted", 1).await;
    got[0].verify(&secret);
    assert_eq!(got[0].json()["collection_readable_id"], rid);
    assert_eq!(got[0].json()["collection_id"], c["id"]);
    assert_eq!(r.settled("/deleted").await, ["collection.deleted"]);
    assert!(r.settled("/off").await.is_empty(), "disabled");
    assert!(
        r.settled("/other").await.is_empty(),
        "another organization's event"
    );

    let (status, theirs) = app
        .request_as(
            Some(&app.other_key),
            Method::POST,
            "/collections",
            Some(json!({"name": "Theirs"})),
        )
        .await;
    assert_eq!(status, 200);
    let got = r.wait_for("/other", 1).await;
    got[0].verify(&other_secret);
    assert_eq!(got[0].json()["collection_id"], theirs["id"]);
    assert_eq!(r.settled("/other").await, ["collection.created"]);
    assert!(r.settled("/off").await.is_empty());
}

#[actix_web::test]
async fn a_restart_while_the_receiver_is_down_still_delivers_afterwards() {
    // A port nothing listens on until the receiver starts on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let slow_retries = |s: &mut syncjobs::config::Settings| {
        s.webhook_retry_schedule = syncjobs::config::Schedule(vec![Duration::from_millis(500); 30]);
    };
    let first = spawn_app_with(Options {
        settings: slow_retries,
        ..Options::default()
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/later");
    let (sid, secret) = subscribe(&first, &first.key, &url, &["collection.created"]).await;
    let c = first.collection("Delivered Later").await;
    // At least one attempt failed (nobody listening) and was recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, d) = first.get(&format!("/webhooks/subscriptions/{sid}")).await;
        let attempts = d["delivery_attempts"].as_array().unwrap();
        if let Some(a) = attempts.first() {
            assert_eq!(a["response_status_code"], 0, "{d}");
            assert_ne!(a["response"], "", "why it failed is recorded");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.handle.stop(true).await;

    let second = spawn(Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        settings: slow_retries,
        ..Options::default()
    })
    .await
    .app;
    // The receiver comes back only now: the stopped server's dispatcher is long gone.
    let r = Receiver::start(port, &[]);
    let got = r.wait_for("/later", 1).await;
    got[0].verify(&secret);
    assert_eq!(got[0].json()["collection_id"], c["id"]);
    assert_eq!(r.settled("/later").await, ["collection.created"], "once");
    let (_, d) = second.get(&format!("/webhooks/subscriptions/{sid}")).await;
    assert_eq!(
        d["delivery_attempts"][0]["response_status_code"], 200,
        "{d}"
    );

    // A read model rebuilt from the log knows the message was delivered: nothing is sent
    // again, and the attempts read the same.
    second.handle.stop(true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.discard_read_model().await;
    let rebuilt = spawn(Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        settings: slow_retries,
        ..Options::default()
    })
    .await
    .app;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        r.settled("/later").await,
        ["collection.created"],
        "not sent again"
    );
    let (_, again) = rebuilt.get(&format!("/webhooks/subscriptions/{sid}")).await;
    assert_eq!(again["delivery_attempts"], d["delivery_attempts"]);
}

#[actix_web::test]
async fn a_hanging_endpoint_delays_neither_the_api_nor_another_subscription() {
    let app = spawn_app_with(Options {
        settings: |s| s.webhook_timeout_ms = 3_000,
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[]);
    *r.inbox.slow.lock().unwrap() = Duration::from_secs(60);
    subscribe(&app, &app.key, &r.url("/slow"), &["collection.created"]).await;
    let (_, other_secret) = subscribe(
        &app,
        &app.other_key,
        &r.url("/fast"),
        &["collection.created"],
    )
    .await;
    let started = tokio::time::Instant::now();
    for i in 0..3 {
        app.collection(&format!("Slowly Sent {i}")).await;
        let (status, _) = app
            .request_as(
                Some(&app.other_key),
                Method::POST,
                "/collections",
                Some(json!({ "name": format!("Quickly Sent {i}") })),
            )
            .await;
        assert_eq!(status, 200);
    }
    let fast = r.wait_for("/fast", 3).await;
    let took = started.elapsed();
    for m in &fast {
        m.verify(&other_secret);
    }
    // The hanging endpoint holds its first message for the whole timeout; the other
    // organization's three arrived meanwhile, and the API answered at once.
    assert!(took < Duration::from_secs(2), "{took:?}");
    let slow = r.got().iter().filter(|m| m.path == "/slow").count();
    assert_eq!(slow, 1, "one attempt at a time per subscription");
}

#[actix_web::test]
async fn messages_are_the_organizations_history_and_failed_ones_can_be_recovered() {
    let app = spawn_app_with(Options {
        // No retries: the first failure ends a delivery.
        settings: |s| s.webhook_retry_schedule = syncjobs::config::Schedule(vec![]),
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[500]);
    let (sid, secret) = subscribe(
        &app,
        &app.key,
        &r.url("/h"),
        &["collection.created", "collection.deleted"],
    )
    .await;
    let a = app.collection("First One").await;
    let rid = a["readable_id"].as_str().unwrap().to_owned();
    app.delete(&format!("/collections/{rid}")).await;
    let b = app.collection("Second One").await;
    let got = r.wait_for("/h", 3).await;
    assert_eq!(got[0].json()["collection_id"], a["id"]);
    let failed_id = got[0].header("webhook-id").to_owned();

    // Every message of the organization, newest first, filterable by repeated types.
    let (status, all) = app.get("/webhooks/messages").await;
    assert_eq!(status, 200, "{all}");
    let types: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "collection.created",
            "collection.deleted",
            "collection.created"
        ]
    );
    assert_eq!(all[0]["payload"]["collection_id"], b["id"]);
    assert_eq!(all[2]["id"], failed_id.as_str());
    assert_eq!(all[2]["channels"], json!(["collection.created"]));
    assert_eq!(all[2]["tags"], Value::Null);
    assert_eq!(
        serde_json::to_vec(&all[2]["payload"]).unwrap(),
        serde_json::to_vec(&got[0].json()).unwrap(),
        "the payload shown is the one sent"
    );
    let (_, deleted) = app
        .get("/webhooks/messages?event_types=collection.deleted")
        .await;
    assert_eq!(deleted.as_array().unwrap().len(), 1);
    let (_, both) = app
        .get("/webhooks/messages?event_types=collection.deleted&event_types=collection.created")
        .await;
    assert_eq!(both, all);
    assert_eq!(
        app.get("/webhooks/messages?event_types=sync.failed")
            .await
            .1,
        json!([])
    );
    assert_eq!(
        app.get("/webhooks/messages?limit=1").await.1,
        json!([all[0]])
    );
    assert_eq!(app.get("/webhooks/messages?limit=0").await.0, 422);
    let (_, theirs) = app
        .request_as(
            Some(&app.other_key),
            Method::GET,
            "/webhooks/messages",
            None,
        )
        .await;
    assert_eq!(theirs, json!([]));

    // One message, with or without its attempts; others' and malformed ids are not found.
    let path = format!("/webhooks/messages/{failed_id}");
    let (status, one) = app.get(&path).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["delivery_attempts"], Value::Null);
    assert_eq!(one["payload"], all[2]["payload"]);
    let (_, with) = app.get(&format!("{path}?include_attempts=true")).await;
    let attempts = with["delivery_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{with}");
    assert_eq!(attempts[0]["response_status_code"], 500);
    assert_eq!(attempts[0]["endpoint_id"], sid.to_string());
    let not_found = json!({"detail": "Message not found"});
    let (status, v) = app
        .request_as(Some(&app.other_key), Method::GET, &path, None)
        .await;
    assert_eq!((status.as_u16(), v), (404, not_found.clone()));
    let (status, v) = app
        .get("/webhooks/messages/msg_2bVxUn3RFnLYHa8z6ZKHMT9PqPX")
        .await;
    assert_eq!((status.as_u16(), v), (404, not_found));

    // Recover: a window before the message recovers nothing; one that holds it sends it
    // again (same id), and its attempts show both.
    let recover = format!("/webhooks/subscriptions/{sid}/recover");
    let hours_ago = |h: i64| (chrono::Utc::now() - chrono::Duration::hours(h)).to_rfc3339();
    let (status, task) = app
        .post(
            &recover,
            json!({"since": hours_ago(2), "until": hours_ago(1)}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "completed");
    assert_eq!(r.settled("/h").await.len(), 3, "nothing in that window");
    let (status, _) = app.post(&recover, json!({"since": hours_ago(1)})).await;
    assert_eq!(status, 200);
    let again = r.wait_for("/h", 4).await;
    again[3].verify(&secret);
    assert_eq!(again[3].header("webhook-id"), failed_id);
    assert_eq!(r.settled("/h").await.len(), 4, "only the failed one");
    let (_, with) = app.get(&format!("{path}?include_attempts=true")).await;
    let codes: Vec<&Value> = with["delivery_attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["response_status_code"])
        .collect();
    assert_eq!(codes, [&json!(200), &json!(500)]);
    // Nothing failed any more: a second recovery sends nothing.
    app.post(&recover, json!({"since": hours_ago(1)})).await;
    assert_eq!(r.settled("/h").await.len(), 4);

    let (status, v) = app
        .request_as(
            Some(&app.other_key),
            Method::POST,
            &recover,
            Some(json!({"since": hours_ago(1)})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v),
        (404, json!({"detail": "Subscription not found"}))
    );
    let (status, v) = app.post(&recover, json!({})).await;
    assert_eq!(
        (status.as_u16(), &v["detail"]),
        (422, &json!("since: field required"))
    );
    let (status, v) = app.post(&recover, json!({"since": "yesterday"})).await;
    assert_eq!(status, 422, "{v}");
}

#[actix_web::test]
async fn re_enabling_with_recover_since_sends_what_it_missed_and_the_failed_messages_again() {
    let app = spawn_app_with(Options {
        settings: |s| s.webhook_retry_schedule = syncjobs::config::Schedule(vec![]),
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[500]);
    let (sid, secret) = subscribe(&app, &app.key, &r.url("/h"), &["collection.created"]).await;
    app.collection("Failed Once").await;
    let first = r.wait_for("/h", 1).await;
    wait_attempts(&app, &format!("/webhooks/subscriptions/{sid}"), 1).await;
    let path = format!("/webhooks/subscriptions/{sid}");
    let patch = async |body: Value| {
        let (status, v) = app
            .request_as(Some(&app.key), Method::PATCH, &path, Some(body))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    };
    patch(json!({"disabled": true})).await;
    // Disabled: nothing is sent, and recover_since without re-enabling does nothing.
    let missed = app.collection("While Disabled").await;
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    patch(json!({"description": "still off", "recover_since": since})).await;
    assert_eq!(r.settled("/h").await.len(), 1);
    let back = patch(json!({"disabled": false, "recover_since": since})).await;
    assert_eq!(back["disabled"], false);
    // What it missed while disabled (Airweave: "retry all messages that were generated
    // while the subscription was disabled"), then the failed one again.
    let got = r.wait_for("/h", 3).await;
    got[1].verify(&secret);
    assert_eq!(got[1].json()["collection_id"], missed["id"]);
    got[2].verify(&secret);
    assert_eq!(got[2].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(r.settled("/h").await.len(), 3);
}

/// The event types of the organization's messages, newest first.
async fn history(app: &TestApp, key: &str, query: &str) -> Vec<String> {
    let (status, v) = app
        .request_as(
            Some(key),
            Method::GET,
            &format!("/webhooks/messages{query}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["event_type"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn the_messages_are_the_organizations_event_history_without_any_subscription() {
    let app = spawn_app().await;
    let c = app.collection("Nobody Listens").await;
    let sc = id(&app
        .source_connection(
            c["readable_id"].as_str().unwrap(),
            json!({"entity_count": 2, "duration_seconds": 0.1}),
        )
        .await);
    let job = id(&app.run(sc).await);
    let done = app.wait_status(sc, job, "completed").await;
    assert_eq!(
        history(&app, &app.key, "").await,
        [
            "sync.completed",
            "sync.running",
            "sync.pending",
            "source_connection.created",
            "collection.created"
        ]
    );
    assert_eq!(
        history(
            &app,
            &app.key,
            "?event_types=sync.pending&event_types=collection.created"
        )
        .await,
        ["sync.pending", "collection.created"]
    );
    let (_, completed) = app
        .get("/webhooks/messages?event_types=sync.completed")
        .await;
    assert_eq!(completed[0]["payload"]["sync_job_id"], job.to_string());
    assert_eq!(
        completed[0]["payload"]["entities_inserted"],
        done["entities_inserted"]
    );
    assert!(history(&app, &app.other_key, "").await.is_empty());
}

#[actix_web::test]
async fn a_new_subscription_with_recover_since_gets_past_events_once_in_order_then_new_ones() {
    let app = spawn_app().await;
    let r = Receiver::start(0, &[]);
    let before = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let a = app.collection("Past A").await;
    let b = app.collection("Past B").await;
    app.request_as(
        Some(&app.other_key),
        Method::POST,
        "/collections",
        Some(json!({"name": "Not Mine"})),
    )
    .await;
    let (status, v) = app
        .post(
            "/webhooks/subscriptions",
            json!({"url": r.url("/h"), "event_types": ["collection.created"],
                   "recover_since": before}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let sid = id(&v);
    let c = app.collection("After").await;
    let got = r.wait_for("/h", 3).await;
    let ids: Vec<Value> = got
        .iter()
        .map(|g| g.json()["collection_id"].clone())
        .collect();
    assert_eq!(ids, [a["id"].clone(), b["id"].clone(), c["id"].clone()]);
    assert_eq!(r.settled("/h").await.len(), 3, "each once");
    let (_, detail) = app
        .get(&format!(
            "/webhooks/subscriptions/{sid}?include_secret=true"
        ))
        .await;
    for g in &got {
        g.verify(detail["secret"].as_str().unwrap());
    }

    // In the future, or not a time: 422, and nothing is created.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for (since, detail) in [
        (json!(future), "recover_since must not be in the future"),
        (
            json!("last week"),
            "recover_since: expected an ISO 8601 date-time, got last week",
        ),
        (json!(3), "recover_since: expected a string, got a number"),
    ] {
        let (status, v) = app
            .post(
                "/webhooks/subscriptions",
                json!({"url": r.url("/x"), "event_types": ["collection.created"],
                       "recover_since": since}),
            )
            .await;
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["detail"], detail);
    }
    let (_, all) = app.get("/webhooks/subscriptions").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn past_events_asked_for_survive_a_restart_before_they_are_delivered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let slow_retries = |s: &mut syncjobs::config::Settings| {
        s.webhook_retry_schedule = syncjobs::config::Schedule(vec![Duration::from_millis(500); 30]);
    };
    let first = spawn_app_with(Options {
        settings: slow_retries,
        ..Options::default()
    })
    .await;
    let before = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(first.collection(&format!("Past {i}")).await["id"].clone());
    }
    let (status, v) = first
        .post(
            "/webhooks/subscriptions",
            json!({"url": format!("http://127.0.0.1:{port}/h"),
                   "event_types": ["collection.created"], "recover_since": before}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // Stopped before the receiver is up: nothing was delivered.
    first.handle.stop(true).await;
    let second = spawn(Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        settings: slow_retries,
        ..Options::default()
    })
    .await
    .app;
    let r = Receiver::start(port, &[]);
    let got = r.wait_for("/h", 5).await;
    // Each once. (Not necessarily in log order here: the first may have been tried, and
    // failed, before the stop, and a retry waits its turn on the schedule.)
    let mut ids: Vec<String> = got
        .iter()
        .map(|g| g.json()["collection_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut made: Vec<String> = made
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    made.sort();
    assert_eq!(ids, made);
    assert_eq!(r.settled("/h").await.len(), 5, "each once");
    drop(second);
}

#[actix_web::test]
async fn a_subscription_failing_longer_than_the_limit_is_disabled_and_can_be_brought_back() {
    let clock = Arc::new(crate::helpers::ShiftedClock::default());
    let app = spawn_app_with(Options {
        settings: |s| {
            s.webhook_retry_schedule = syncjobs::config::Schedule(vec![]);
            s.webhook_disable_after_hours = 2;
        },
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let r = Receiver::start(0, &[500, 500, 500]);
    let (sid, _) = subscribe(&app, &app.key, &r.url("/h"), &["collection.created"]).await;
    let path = format!("/webhooks/subscriptions/{sid}");
    let start = clock_now(&clock);
    app.collection("Fails First").await;
    r.wait_for("/h", 1).await;
    // Recorded (at the clock's time then) before the clock moves.
    wait_attempts(&app, &path, 1).await;
    // An hour of failures: under the limit, still enabled.
    clock.advance(chrono::Duration::hours(1));
    app.collection("Fails Again").await;
    r.wait_for("/h", 2).await;
    wait_attempts(&app, &path, 2).await;
    let (_, s) = app.get(&path).await;
    assert_eq!(s["disabled"], false, "{s}");
    // Past two hours since the first failure: this failure disables it.
    clock.advance(chrono::Duration::hours(2));
    app.collection("Fails Last").await;
    r.wait_for("/h", 3).await;
    let s = wait_disabled(&app, &path).await;
    assert_eq!(s["health_status"], "failing", "{s}");
    let (_, list) = app.get("/webhooks/subscriptions").await;
    assert_eq!(list[0]["disabled"], true);
    // Why, in the subscription's own stream of the log.
    let stream = format!("webhook_subscription-{sid}");
    let events = app.store.read_stream(&stream, 0).await.unwrap();
    let reason = events
        .iter()
        .find_map(|e| match &e.event {
            syncjobs_domain::Event::Webhook(
                syncjobs_domain::WebhookEvent::WebhookSubscriptionDisabled {
                    reason,
                    failing_since,
                    ..
                },
            ) => Some((reason.clone(), *failing_since)),
            _ => None,
        })
        .expect("a WebhookSubscriptionDisabled event");
    assert!(reason.0.contains("HTTP 500"), "{}", reason.0);
    assert!(
        (reason.1 - start).num_seconds().abs() < 60,
        "the first failure: {reason:?}"
    );

    // Disabled: no delivery for what happens now.
    clock.advance(chrono::Duration::minutes(10));
    let missed = app.collection("Missed").await;
    assert_eq!(r.settled("/h").await.len(), 3);
    // Enabled again with recover_since: what it missed comes (the receiver answers 200 now).
    let since = (clock_now(&clock) - chrono::Duration::minutes(1)).to_rfc3339();
    let (status, v) = app
        .request_as(
            Some(&app.key),
            Method::PATCH,
            &path,
            Some(json!({"disabled": false, "recover_since": since})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["disabled"], false);
    let got = r.wait_for("/h", 4).await;
    assert_eq!(got[3].json()["collection_id"], missed["id"]);
    // Failures count afresh: the next failure does not disable it at once.
    r.inbox.answers.lock().unwrap().push_back(500);
    app.collection("Fails After").await;
    r.wait_for("/h", 5).await;
    wait_attempts(&app, &path, 5).await;
    let (_, s) = app.get(&path).await;
    assert_eq!(s["disabled"], false, "{s}");
}

fn clock_now(clock: &crate::helpers::ShiftedClock) -> chrono::DateTime<chrono::Utc> {
    syncjobs_domain::Clock::now(clock)
}

/// Waits until the subscription shows `n` attempts (recorded and folded).
async fn wait_attempts(app: &TestApp, path: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, s) = app.get(path).await;
        if s["delivery_attempts"].as_array().map_or(0, Vec::len) >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn wait_disabled(app: &TestApp, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, s) = app.get(path).await;
        if s["disabled"] == true {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[actix_web::test]
async fn messages_past_retention_are_purged_and_a_rebuild_does_not_bring_them_back() {
    let clock = Arc::new(crate::helpers::ShiftedClock::default());
    let one_day = |s: &mut syncjobs::config::Settings| s.webhook_retention_days = 1;
    let first = spawn_app_with(Options {
        settings: one_day,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    first.collection("Old Events").await;
    clock.advance(chrono::Duration::hours(25));
    // The next batch lets the purge look (due by the clock).
    first.collection("New Events").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while history(&first, &first.key, "").await.len() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, kept) = first.get("/webhooks/messages").await;
    assert_eq!(kept[0]["payload"]["collection_name"], "New Events");
    let (_, collections) = first.get("/collections").await;
    assert_eq!(collections.as_array().unwrap().len(), 2, "only messages go");

    // Rebuilt from the log: the old event makes no message again.
    first.handle.stop(true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.discard_read_model().await;
    let rebuilt = spawn(Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        settings: one_day,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await
    .app;
    let (_, again) = rebuilt.get("/webhooks/messages").await;
    assert_eq!(again, kept);
}

#[actix_web::test]
async fn a_stub_sync_that_fails_on_purpose_sends_a_signed_sync_failed() {
    let app = spawn_app().await;
    let r = Receiver::start(0, &[]);
    let (_, secret) = subscribe(&app, &app.key, &r.url("/failed"), &["sync.failed"]).await;
    let c = app.collection("Failing On Purpose").await;
    let (status, sc) = app
        .post(
            "/source-connections",
            json!({"short_name": "stub", "readable_collection_id": c["readable_id"],
                   "config": {"entity_count": 50, "fail_after": 2},
                   "authentication": {"credentials": {"stub_key": "stub"}}}),
        )
        .await;
    assert_eq!(status, 200, "{sc}");
    let sc = id(&sc);
    // sync_immediately (the default) started its first job.
    let (_, jobs) = app.get(&format!("/source-connections/{sc}/jobs")).await;
    let job = id(&jobs[0]);
    let failed = app.wait_status(sc, job, "failed").await;
    let got = r.wait_for("/failed", 1).await;
    got[0].verify(&secret);
    let p = got[0].json();
    assert_eq!(p["event_type"], "sync.failed");
    assert_eq!(p["sync_job_id"], job.to_string());
    assert_eq!(p["source_type"], "stub");
    assert_eq!(p["error"], failed["error"]);
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("Stub source simulated failure after 2 entities (fail_after=2)"),
        "{p}"
    );
    assert_eq!(r.settled("/failed").await, ["sync.failed"]);
}
