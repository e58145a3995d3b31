//! `/metrics`: scraped with a real Prometheus text parser, the figures move with what the
//! test did (requests, a completed job, a cancelled one, a force-cancelled one, a stream).

use crate::helpers::{id, lasting, spawn_app_with, Options, TestApp};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use std::time::Duration;

async fn scrape(app: &TestApp) -> Scrape {
    // No key: a Prometheus scraper sends none.
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn matches(s: &Sample, metric: &str, labels: &[(&str, &str)]) -> bool {
    s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
}

/// The sum of the scalar samples of `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| matches(s, metric, labels))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Scrapes until `pred` holds (the job figures follow the log, a moment behind).
async fn scrape_until(app: &TestApp, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(app).await;
        if pred(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const JOB_ROUTE: &str = "/source-connections/:source_connection_id/jobs/:job_id";

#[actix_web::test]
async fn metrics_move_with_requests_jobs_cancels_and_streams() {
    let app = spawn_app_with(Options {
        cancel_timeout_seconds: 2,
        ..Options::default()
    })
    .await;
    let before = scrape(&app).await;
    assert_eq!(
        value(&before, "syncjobs_jobs", &[("status", "running")]),
        0.0
    );
    assert_eq!(value(&before, "syncjobs_force_cancels_total", &[]), 0.0);

    // One job completes.
    let quick = app
        .idle_connection(json!({"entity_count": 5, "duration_seconds": 0.1}))
        .await;
    let done = id(&app.run(quick).await);
    app.wait_status(quick, done, "completed").await;

    // One runs, then is cancelled; a stream follows it meanwhile.
    let slow = app.idle_connection(lasting(30.0)).await;
    let cancelled = id(&app.run(slow).await);
    app.wait_status(slow, cancelled, "running").await;
    let stream = app
        .client
        .get(app.url(&format!(
            "/source-connections/{slow}/jobs/{cancelled}/events"
        )))
        .header("x-api-key", &app.key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let running = scrape_until(&app, "one running job", |s| {
        value(s, "syncjobs_jobs", &[("status", "running")]) == 1.0
    })
    .await;
    assert_eq!(value(&running, "syncjobs_sse_streams_open", &[]), 1.0);
    drop(stream);
    let (status, body) = app
        .post_empty(&format!(
            "/source-connections/{slow}/jobs/{cancelled}/cancel"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    app.wait_status(slow, cancelled, "cancelled").await;

    // One ignores the cancel: the watchdog force-cancels it.
    let stuck = app
        .idle_connection(
            json!({"entity_count": 1000, "duration_seconds": 30, "ignore_cancel": true}),
        )
        .await;
    let forced = id(&app.run(stuck).await);
    app.wait_status(stuck, forced, "running").await;
    app.post_empty(&format!("/source-connections/{stuck}/jobs/{forced}/cancel"))
        .await;
    app.wait_status(stuck, forced, "cancelled").await;
    assert_eq!(app.get("/no/such/path").await.0, 404);

    let after = scrape_until(&app, "two cancel latencies", |s| {
        value(s, "syncjobs_cancel_latency_seconds_count", &[]) == 2.0
    })
    .await;
    for status in ["pending", "running", "cancelling"] {
        assert_eq!(
            value(&after, "syncjobs_jobs", &[("status", status)]),
            0.0,
            "{status}"
        );
    }
    assert_eq!(value(&after, "syncjobs_force_cancels_total", &[]), 1.0);
    let sum = value(&after, "syncjobs_cancel_latency_seconds_sum", &[]);
    assert!(
        sum > 2.0 && sum < 20.0,
        "the forced one took the 2 s timeout: {sum}"
    );

    let events = |t: &str| value(&after, "syncjobs_events_total", &[("type", t)]);
    assert_eq!(events("JobCreated"), 3.0);
    assert_eq!(events("JobCompleted"), 1.0);
    assert_eq!(events("CancelRequested"), 2.0);
    assert_eq!(events("Cancelled"), 1.0);
    assert_eq!(events("ForceCancelled"), 1.0);
    let appends = value(&after, "syncjobs_store_append_duration_seconds_count", &[]);
    assert!(appends >= 9.0, "{appends}");
    assert_eq!(
        value(&after, "syncjobs_store_append_batch_events_count", &[]),
        appends
    );
    assert_eq!(value(&after, "syncjobs_sse_streams_open", &[]), 0.0);
    assert_eq!(value(&after, "syncjobs_projection_lag_events", &[]), 0.0);

    // Requests by route pattern and status; never a raw path or an id.
    let gets = value(
        &after,
        "syncjobs_http_requests_total",
        &[("method", "GET"), ("route", JOB_ROUTE), ("status", "200")],
    );
    assert!(
        gets >= 6.0,
        "{gets}: {:?}",
        after
            .samples
            .iter()
            .filter(|s| s.metric == "syncjobs_http_requests_total")
            .map(|s| s.labels.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        value(
            &after,
            "syncjobs_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "syncjobs_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", JOB_ROUTE)]
        ) >= gets
    );
    assert!(
        value(
            &after,
            "syncjobs_http_requests_total",
            &[("route", "/metrics")]
        ) >= 2.0
    );
    for s in &after.samples {
        for v in s.labels.values() {
            for job in [done, cancelled, forced, quick, slow, stuck] {
                assert!(
                    !v.contains(&job.to_string()),
                    "{} carries an id: {v}",
                    s.metric
                );
            }
        }
    }
}
