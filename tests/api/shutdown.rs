//! Graceful stop: no new requests, in-flight ones (and their appends) finish.

use crate::helpers::{id, lasting, spawn_app_with, Destination, Options};
use std::time::Duration;

#[actix_web::test]
async fn a_graceful_stop_lets_an_in_flight_delete_finish_then_refuses_requests() {
    let app = spawn_app_with(Options {
        destination: Destination::Slow(Duration::from_millis(600)),
        ..Options::default()
    })
    .await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let path = format!("/source-connections/{sc}");
    let in_flight = app.delete(&path);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.handle.stop(true).await;
    };
    let ((status, body), ()) = futures::join!(in_flight, stop);
    assert_eq!(status, 200, "{body}");
    let events = app
        .store
        .read_stream(&syncjobs_domain::events::stream::source_connection(sc), 0)
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        2,
        "the deletion was appended before the stop completed"
    );
    assert!(
        app.client.get(app.url("/health")).send().await.is_err(),
        "no new requests after the stop"
    );
}
