//! The HTTP layer: bodies and heads that never arrive are cut (408) instead of holding a
//! connection, an idle connection is closed, a known path with another method answers 405
//! with `Allow`, and every error the application answers is JSON with a `detail`.

use crate::helpers::{parts, spawn_app, spawn_app_with, Options, TestApp};
use reqwest::Method;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends until it closes the connection (bounded by `within`).
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, conn.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server kept the connection open for {within:?}; it sent {:?}",
                String::from_utf8_lossy(&out)
            )
        })
        .expect("the connection is readable");
    String::from_utf8_lossy(&out).into_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("a connection")
}

/// A request head announcing a 100-byte body, and the body's first 7 bytes.
fn stalled_post(app: &TestApp) -> String {
    format!(
        "POST /collections HTTP/1.1\r\nHost: test\r\nx-api-key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\"",
        app.key
    )
}

/// The JSON body of a raw HTTP/1.1 response.
fn json_body(raw: &str) -> serde_json::Value {
    let (_, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: not JSON: {raw:?}"))
}

#[actix_web::test]
async fn a_body_that_never_arrives_is_answered_408_and_the_connection_closed() {
    let app = spawn_app_with(Options {
        settings: |s| s.body_timeout_ms = 2000,
        ..Default::default()
    })
    .await;
    let head = app.head();
    let mut stalled = connect(&app).await;
    stalled
        .write_all(stalled_post(&app).as_bytes())
        .await
        .unwrap();
    let sent = Instant::now();

    // Meanwhile the server serves others: the waiting handler holds nothing they need.
    let (status, body) = app.get("/collections").await;
    assert_eq!(status, 200, "{body}");
    if sent.elapsed() < Duration::from_millis(1500) {
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), stalled.peek(&mut probe)).await;
        assert!(
            early.is_err(),
            "the stalled request was answered before its timeout"
        );
    }

    let raw = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw:?}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw:?}"
    );
    assert_eq!(
        json_body(&raw)["detail"],
        "Request body not received within 2 s"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert_eq!(app.head(), head, "nothing was recorded");
}

#[actix_web::test]
async fn many_stalled_bodies_are_all_cut_and_the_server_still_answers() {
    let app = spawn_app_with(Options {
        settings: |s| s.body_timeout_ms = 500,
        ..Default::default()
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut c = connect(&app).await;
        c.write_all(stalled_post(&app).as_bytes()).await.unwrap();
        conns.push(c);
    }
    let answers = futures::future::join_all(
        conns
            .iter_mut()
            .map(|c| read_until_closed(c, Duration::from_secs(15))),
    )
    .await;
    for raw in answers {
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw:?}");
    }
    assert_eq!(app.get("/health").await.0, 200);
}

#[actix_web::test]
async fn a_request_head_that_never_ends_is_answered_408_and_closed() {
    let app = spawn_app_with(Options {
        settings: |s| s.header_timeout_ms = 500,
        ..Default::default()
    })
    .await;
    let mut conn = connect(&app).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await
        .unwrap();
    let sent = Instant::now();
    let raw = read_until_closed(&mut conn, Duration::from_secs(4)).await;
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw:?}");
    assert!(sent.elapsed() >= Duration::from_millis(400), "{raw:?}");
}

#[actix_web::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(Options {
        settings: |s| s.keep_alive_seconds = 1,
        ..Default::default()
    })
    .await;
    let mut conn = connect(&app).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let raw = read_until_closed(&mut conn, Duration::from_secs(4)).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw:?}");
}

#[actix_web::test]
async fn a_known_path_with_another_method_answers_405_with_allow_and_a_detail() {
    let app = spawn_app().await;
    let mut allowed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in syncjobs::api::endpoints() {
        allowed
            .entry(e.path)
            .or_default()
            .push(e.method.to_string());
    }
    let sc = uuid::Uuid::new_v4();
    for (path, methods) in &allowed {
        let concrete = path
            .replace("{readable_id}", "some-collection")
            .replace("{source_connection_id}", &sc.to_string())
            .replace("{job_id}", &sc.to_string());
        for method in [
            "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE",
        ] {
            if methods.iter().any(|m| m == method) {
                continue;
            }
            let r = app
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .header("x-api-key", &app.key)
                .send()
                .await
                .unwrap();
            let allow = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 405, "{method} {path}: {text}");
            let mut listed: Vec<String> = allow
                .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            listed.sort();
            let mut expected = methods.clone();
            expected.sort();
            assert_eq!(listed, expected, "{method} {path}");
            if method != "HEAD" {
                let body: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
                assert_eq!(body["detail"], "Method Not Allowed");
            }
        }
    }
}

#[actix_web::test]
async fn odd_requests_that_reach_the_application_get_a_json_detail() {
    let app = spawn_app().await;
    let sc = uuid::Uuid::new_v4();
    let cases: Vec<(Method, String, u16)> = vec![
        (Method::GET, "/nope".into(), 404),
        (Method::POST, "/nope/deeper?x=%ZZ".into(), 404),
        (Method::GET, "/collections?limit=%ZZ".into(), 422),
        (Method::GET, "/collections/%FF%FE".into(), 404),
        (Method::GET, "/collections/a%00b".into(), 404),
        (Method::GET, format!("/source-connections/{sc}%00"), 422),
        (Method::GET, "/source-connections/%E2%82".into(), 422),
        (
            Method::GET,
            format!("/source-connections/{sc}/jobs/{sc}/state?version=%FF"),
            422,
        ),
        (Method::GET, "/sync/job/%20/subscribe".into(), 422),
    ];
    for (method, path, want) in cases {
        let r = app
            .client
            .request(method.clone(), app.url(&path))
            .header("x-api-key", &app.key)
            .send()
            .await
            .unwrap();
        let (status, body) = parts(r).await;
        assert_eq!(status.as_u16(), want, "{method} {path}: {body}");
        assert!(body["detail"].is_string(), "{method} {path}: {body}");
    }
}

/// The server's end of `client` among this process's descriptors (the app runs in the
/// test's process): the socket whose peer is the client's local address.
#[cfg(target_os = "linux")]
fn server_end_of(client: &TcpStream) -> std::mem::ManuallyDrop<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let ours = client.local_addr().expect("the client's address");
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed (ManuallyDrop never closes it) and only
        // queried; one that is not a socket (or closed meanwhile) fails the query.
        let socket = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if socket.peer_addr().ok() == Some(ours) {
            return socket;
        }
    }
    panic!("no descriptor of this process is the server's end of {ours}");
}

/// Server-sent events are small writes one after another; with Nagle's algorithm on, each
/// one written behind an unacknowledged one waits for the client's delayed ACK (40 ms on
/// Linux), so a job's final message reached its stream tens of ms after a GET showed it
/// (bench #14). Every accepted connection has it off.
#[cfg(target_os = "linux")]
#[actix_web::test]
async fn accepted_connections_have_nagle_off() {
    let app = spawn_app().await;
    let mut conn = connect(&app).await;
    // Answered: the server has accepted and set up the connection.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("a request");
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    let server_end = server_end_of(&conn);
    assert!(
        server_end.nodelay().expect("TCP_NODELAY reads"),
        "the server's end of the connection has Nagle's algorithm on"
    );
}
