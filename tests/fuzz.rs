//! Fuzz targets of the `syncjobs` package: every decoder of outside input.
//!
//! - request bodies: [`read_json`] and the field readers, then the create bodies of
//!   `POST /collections` and `POST /source-connections` end to end through a running app;
//! - event rows as the embedded store holds them (every column damaged in turn), decoded by
//!   `read_stream` and checked by `verify`;
//! - exported histories for `syncjobs replay --file`.
//!
//! Properties: no panic; every refusal is a clean error (a 4xx with a JSON `detail`, a
//! `StoreError::Corrupt` naming the row, a `ReplayError`); no declared length makes a decoder
//! reserve more than its input allows; valid input round-trips. Cases are bounded (see
//! `support/cases.rs`; `PROPTEST_CASES` runs more).

#[path = "support/alloc_probe.rs"]
mod alloc_probe;
#[path = "support/cases.rs"]
mod cases;
#[allow(dead_code)] // the app helpers of the API suite; this target uses a few
#[path = "api/helpers.rs"]
mod helpers;
#[allow(dead_code)] // each target uses its own part
#[path = "support/strategies.rs"]
mod strategies;

use actix_web::test::TestRequest;
use actix_web::{web, FromRequest};
use chrono::{SecondsFormat, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use strategies::{event, job_event, json_value, mutate, mutation, pointers, stored_time, TYPES};
use syncjobs::api::input::{check_len, path_uuid, read_json, Fields};
use syncjobs::api::ApiError;
use syncjobs::replay::{export_line, DebugCommand, ReplayError, ServerArgs};
use syncjobs_domain::events::{stream, CURRENT_SCHEMA_VERSION};
use syncjobs_domain::{
    EntityCounts, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent,
    StoreError, SyncJobEvent,
};
use syncjobs_store_sqlite::EmbeddedStore;
use uuid::Uuid;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

// ---- request bodies: read_json and the field readers ----------------------------------

const LIMIT: usize = 1024;

/// A body as a client might send it: JSON objects of the create bodies, damaged or not,
/// other JSON, random bytes, whitespace, deep nesting.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = prop::collection::vec((strategies::text(), json_value()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()).to_string())
        .boxed();
    prop_oneof![
        object.clone().prop_map(String::into_bytes),
        (object, prop::collection::vec(mutation(), 1..4)).prop_map(|(o, ms)| {
            let mut b = o.into_bytes();
            for m in &ms {
                mutate(&mut b, m);
            }
            b
        }),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..2 * LIMIT),
        (0usize..64).prop_map(|n| " \t\r\n".repeat(n).into_bytes()),
        (0usize..400).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        (0usize..300)
            .prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()),
    ]
}

/// The Content-Length a client declares: the true one, none, a lie, or nonsense.
fn declared() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("true".to_owned())),
        any::<u64>().prop_map(|n| Some(n.to_string())),
        (0usize..2 * LIMIT).prop_map(|n| Some(n.to_string())),
        Just(Some("18446744073709551616".to_owned())),
        Just(Some("-1".to_owned())),
    ]
}

async fn read(body: Vec<u8>, declared: Option<String>) -> Result<Map<String, Value>, ApiError> {
    // After the payload, which sets its own (true) Content-Length.
    let mut req = TestRequest::post().uri("/collections").set_payload(body);
    if let Some(n) = declared {
        req = req.insert_header(("content-length", n));
    }
    let (req, mut payload) = req.to_http_parts();
    let payload = web::Payload::from_request(&req, &mut payload)
        .await
        .expect("a payload");
    let settings = syncjobs::api::ApiSettings {
        max_body_bytes: LIMIT,
        ..Default::default()
    };
    read_json(&req, payload, &settings).await
}

#[test]
fn request_bodies_are_read_or_refused_cleanly() {
    let rt = runtime();
    let mut runner = TestRunner::new(cases::cases(512));
    let declared_too_large = |d: &Option<String>| {
        d.as_deref()
            .and_then(|d| d.parse::<usize>().ok())
            .is_some_and(|n| n > LIMIT)
    };
    runner
        .run(&(body(), declared()), |(body, declared)| {
            let huge_claim = declared_too_large(&declared);
            let (result, largest) = alloc_probe::largest_allocation(|| {
                rt.block_on(read(body.clone(), declared.clone()))
            });
            // The buffer is sized by the smaller of the claim and the limit, never the claim.
            prop_assert!(
                largest <= alloc_probe::allowance(body.len()),
                "{largest} bytes"
            );
            let parsed = serde_json::from_slice::<Value>(&body).ok();
            match result {
                Ok(map) => {
                    prop_assert!(body.len() <= LIMIT && !huge_claim);
                    prop_assert_eq!(parsed, Some(Value::Object(map.clone())));
                    fields_name_themselves(&map)?;
                }
                Err(e) => {
                    let status = actix_web::ResponseError::status_code(&e).as_u16();
                    prop_assert!(
                        matches!(
                            e,
                            ApiError::PayloadTooLarge(_)
                                | ApiError::Unprocessable(_)
                                | ApiError::BadRequest(_)
                        ),
                        "{e:?}"
                    );
                    prop_assert!([400, 413, 422].contains(&status));
                    prop_assert!(
                        !e.to_string().is_empty() && e.to_string().len() < 400,
                        "{e}"
                    );
                    // A valid object within the limit is never refused.
                    if body.len() <= LIMIT && !huge_claim {
                        prop_assert!(!matches!(parsed, Some(Value::Object(_))), "{e}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Every reader of every field answers a value or an error that names the field.
fn fields_name_themselves(map: &Map<String, Value>) -> Result<(), TestCaseError> {
    let f = Fields(map);
    for name in map.keys().map(String::as_str).chain(["name", "absent"]) {
        let named = |e: ApiError| e.to_string().starts_with(&format!("{name}:"));
        if let Err(e) = f.req_str(name) {
            prop_assert!(named(e));
        }
        if let Err(e) = f.opt_str(name) {
            prop_assert!(named(e));
        }
        if let Err(e) = f.opt_bool(name) {
            prop_assert!(named(e));
        }
        if let Err(e) = f.opt_object(name) {
            prop_assert!(named(e));
        }
        if let Ok(Some(s)) = f.opt_str(name) {
            if let Err(e) = check_len(name, s, 4, 64) {
                prop_assert!(named(e));
            }
            // A path segment: the UUID forms parse, anything else is a short 422.
            if let Err(e) = path_uuid(name, s) {
                prop_assert!(e.to_string().len() < 250, "{e}");
            }
        }
    }
    Ok(())
}

/// The one length prefix of a request: a Content-Length beyond the limit is refused before
/// a byte is read or reserved, whatever the body really is.
#[test]
fn a_huge_declared_content_length_is_refused_before_anything_is_reserved() {
    let rt = runtime();
    for claim in [LIMIT + 1, 1 << 40, usize::MAX] {
        let (result, largest) = alloc_probe::largest_allocation(|| {
            rt.block_on(read(b"{}".to_vec(), Some(claim.to_string())))
        });
        assert!(
            matches!(result, Err(ApiError::PayloadTooLarge(_))),
            "{claim}: {result:?}"
        );
        assert!(largest < 64 * 1024, "{claim}: reserved {largest} bytes");
    }
}

#[test]
fn path_uuids_round_trip_and_anything_else_is_refused_briefly() {
    let mut runner = TestRunner::new(cases::cases(512));
    runner
        .run(
            &(any::<u128>(), strategies::text(), any::<bool>()),
            |(n, junk, simple)| {
                let id = Uuid::from_u128(n);
                let text = if simple {
                    id.simple().to_string()
                } else {
                    id.to_string()
                };
                prop_assert_eq!(path_uuid("id", &text).unwrap(), id);
                if let Err(e) = path_uuid("id", &junk) {
                    prop_assert!(e.to_string().starts_with("id is not a valid UUID"));
                }
                Ok(())
            },
        )
        .unwrap();
}

// ---- create bodies, end to end through the handlers -----------------------------------

/// An app on its own thread and runtime (proptest's cases are synchronous); requests go
/// from the test's thread.
struct RemoteApp {
    address: String,
    key: String,
    store: Arc<dyn EventStore>,
}

fn remote_app() -> RemoteApp {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = helpers::spawn_app_with(helpers::Options {
                destination: helpers::Destination::Slow(Duration::ZERO),
                max_body_bytes: LIMIT,
                ..Default::default()
            })
            .await;
            tx.send(RemoteApp {
                address: app.address.clone(),
                key: app.key.clone(),
                store: app.store.clone(),
            })
            .expect("the test waits");
            // Serve until the test process ends.
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the app starts")
}

impl RemoteApp {
    fn head(&self) -> u64 {
        *self.store.watch_head().borrow()
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = client
            .request(method, format!("{}{path}", self.address))
            .header("x-api-key", &self.key);
        if let Some(body) = body {
            req = req.body(body);
        }
        let r = req.send().await.expect("the server answers");
        let status = r.status().as_u16();
        let text = r.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        (status, body)
    }
}

/// One field of a create body: a good value, an awkward one, the wrong type, or absent.
/// The first of `values` is a valid one, and comes most often, so that a good share of the
/// bodies is accepted and the accepted path is fuzzed too.
fn field(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        16 => Just(Some(values[0].clone())),
        4 => prop::sample::select(values).prop_map(Some),
        1 => strategies::text().prop_map(|s| Some(Value::from(s))),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

fn collection_body() -> impl Strategy<Value = Vec<u8>> {
    let names = vec![
        json!("Finance Data"),
        json!("abcd"),
        json!("x".repeat(64)),
        json!("é".repeat(10)),
        json!("abc"),
    ];
    let ids = vec![
        // null: one is made from the name (a fixed id would be taken after its first use)
        Value::Null,
        json!("finance-data"),
        json!("a"),
        json!("a--b"),
        json!("A"),
        json!("x1-2-3"),
        json!("9".repeat(129)),
    ];
    let structured = (field(names), field(ids), prop::option::of(json_value()))
        .prop_map(|(name, readable_id, extra)| {
            Value::Object(object(vec![
                ("name", name),
                ("readable_id", readable_id),
                ("extra", extra),
            ]))
            .to_string()
            .into_bytes()
        })
        .boxed();
    prop_oneof![
        4 => structured.clone(),
        1 => (structured, prop::collection::vec(mutation(), 1..3)).prop_map(|(mut b, ms)| {
            for m in &ms {
                mutate(&mut b, m);
            }
            b
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn source_connection_body() -> impl Strategy<Value = Map<String, Value>> {
    let short = vec![json!("timed"), json!("Timed"), json!("nope")];
    let rcid = vec![json!("target"), json!("missing")];
    let names = vec![
        json!("My timed source"),
        json!("abc"),
        json!("x".repeat(43)),
    ];
    let counts = vec![
        json!(1),
        json!(10000),
        json!(0),
        json!(10001),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
    ];
    let durations = vec![
        json!(0.1),
        json!(600),
        json!(0.05),
        json!(601),
        json!(-0.0),
        json!(1e308),
    ];
    let seeds = vec![json!(42), json!(-7), json!(u64::MAX), json!(0.5)];
    let config = (
        field(counts),
        field(durations),
        field(seeds),
        prop::option::weighted(0.2, json_value()),
    )
        .prop_map(|(c, d, s, extra)| {
            Value::Object(object(vec![
                ("entity_count", c),
                ("duration_seconds", d),
                ("seed", s),
                ("ignore_cancel", extra),
            ]))
        });
    let auth = vec![
        json!({"credentials": {"timed_key": "k"}}),
        json!({"credentials": "pw"}),
        json!({"provider": "x"}),
        json!({}),
        Value::Null,
    ];
    (
        (
            field(short),
            field(rcid),
            field(names),
            field(vec![json!("about"), json!("d".repeat(256))]),
        ),
        (
            prop_oneof![3 => config.prop_map(Some), 1 => field(vec![json!({})])],
            field(auth),
            // Never true (nor absent): a started job would append on its own, and a refusal
            // must be seen to record nothing. Wrong types are refused.
            prop_oneof![
                8 => Just(Some(json!(false))),
                1 => Just(Some(json!("yes"))),
                1 => Just(Some(json!(0))),
            ],
        ),
    )
        .prop_map(
            |((short_name, rcid, name, description), (config, auth, sync))| {
                object(vec![
                    ("short_name", short_name),
                    ("readable_collection_id", rcid),
                    ("name", name),
                    ("description", description),
                    ("config", config),
                    ("authentication", auth),
                    ("sync_immediately", sync),
                ])
            },
        )
}

/// A refusal: a 4xx of the contract with a short string `detail`.
fn assert_refusal(status: u16, body: &Value, sent: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        [400, 404, 413, 422].contains(&status),
        "{status} {body} for {}",
        String::from_utf8_lossy(sent)
    );
    let detail = body["detail"].as_str().unwrap_or_default();
    prop_assert!(!detail.is_empty() && detail.len() < 400, "{body}");
    Ok(())
}

#[test]
fn collection_create_bodies_are_created_as_sent_or_refused_recording_nothing() {
    let app = remote_app();
    let rt = runtime();
    let client = reqwest::Client::new();
    let mut runner = TestRunner::new(cases::cases(128));
    runner
        .run(&collection_body(), |sent| {
            rt.block_on(async {
                let head = app.head();
                let (status, body) = app
                    .send(
                        &client,
                        reqwest::Method::POST,
                        "/collections",
                        Some(sent.clone()),
                    )
                    .await;
                if status != 200 {
                    assert_refusal(status, &body, &sent)?;
                    prop_assert_eq!(app.head(), head, "a refused create recorded something");
                    return Ok(());
                }
                let input: Map<String, Value> =
                    serde_json::from_slice(&sent).expect("only JSON objects are accepted");
                prop_assert_eq!(&body["name"], &input["name"]);
                if let Some(rid) = input.get("readable_id").filter(|v| !v.is_null()) {
                    prop_assert_eq!(&body["readable_id"], rid);
                }
                let rid = body["readable_id"].as_str().unwrap_or_default();
                let (status, got) = app
                    .send(
                        &client,
                        reqwest::Method::GET,
                        &format!("/collections/{rid}"),
                        None,
                    )
                    .await;
                prop_assert_eq!(status, 200);
                prop_assert_eq!(got, body);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn source_connection_create_bodies_are_created_as_sent_or_refused_recording_nothing() {
    let app = remote_app();
    let rt = runtime();
    let client = reqwest::Client::new();
    let target = serde_json::to_vec(&json!({"name": "Target", "readable_id": "target"})).unwrap();
    let (status, _) =
        rt.block_on(app.send(&client, reqwest::Method::POST, "/collections", Some(target)));
    assert_eq!(status, 200);
    let mut runner = TestRunner::new(cases::cases(128));
    runner
        .run(
            &(
                source_connection_body(),
                any::<prop::sample::Index>(),
                prop::option::weighted(0.3, json_value()),
            ),
            |(mut input, at, replacement)| {
                // Some of the time one field somewhere gets a value of any shape.
                let mut value = Value::Object(input.clone());
                if let Some(replacement) = replacement {
                    let mut all = Vec::new();
                    pointers(&value, String::new(), &mut all);
                    all.retain(|p| !p.is_empty() && p != "/sync_immediately");
                    if !all.is_empty() {
                        if let Some(slot) = value.pointer_mut(&all[at.index(all.len())]) {
                            *slot = replacement;
                        }
                    }
                    if let Value::Object(m) = &value {
                        input = m.clone();
                    }
                }
                // Without an explicit false a job would start and append on its own.
                let jobs_may_start = input.get("sync_immediately") != Some(&json!(false));
                let sent = value.to_string().into_bytes();
                rt.block_on(async {
                    let head = app.head();
                    let (status, body) = app
                        .send(
                            &client,
                            reqwest::Method::POST,
                            "/source-connections",
                            Some(sent.clone()),
                        )
                        .await;
                    if status != 200 {
                        assert_refusal(status, &body, &sent)?;
                        if !jobs_may_start {
                            prop_assert_eq!(
                                app.head(),
                                head,
                                "a refused create recorded something"
                            );
                        }
                        return Ok(());
                    }
                    prop_assert_eq!(&body["short_name"], "timed");
                    prop_assert_eq!(&body["readable_collection_id"], "target");
                    if let Some(name) = input.get("name").filter(|v| !v.is_null()) {
                        prop_assert_eq!(&body["name"], name);
                    }
                    if let Some(Value::Object(config)) = input.get("config") {
                        for (k, v) in config.iter().filter(|(_, v)| !v.is_null()) {
                            if k != "ignore_cancel" {
                                // as numbers: 600 may come back as 600.0
                                let got = &body["config"][k];
                                prop_assert!(
                                    got == v
                                        || (got.as_f64().is_some() && got.as_f64() == v.as_f64()),
                                    "config.{}: sent {}, got {}",
                                    k,
                                    v,
                                    got
                                );
                            }
                        }
                    }
                    let id = body["id"].as_str().unwrap_or_default();
                    let (status, got) = app
                        .send(
                            &client,
                            reqwest::Method::GET,
                            &format!("/source-connections/{id}"),
                            None,
                        )
                        .await;
                    prop_assert_eq!(status, 200);
                    prop_assert_eq!(&got["config"], &body["config"]);
                    Ok(())
                })
            },
        )
        .unwrap();
}

// ---- event rows as the embedded store holds them --------------------------------------

/// One stored row, column by column, as SQLite values.
#[derive(Debug, Clone)]
struct Row {
    version: rusqlite::types::Value,
    event_id: rusqlite::types::Value,
    event_type: rusqlite::types::Value,
    schema_version: rusqlite::types::Value,
    data: rusqlite::types::Value,
    recorded_at: rusqlite::types::Value,
    causation_id: rusqlite::types::Value,
    correlation_id: rusqlite::types::Value,
    caused_by: rusqlite::types::Value,
}

fn sql_text(s: impl Into<String>) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(s.into())
}

/// A SQLite value of the wrong kind for any column: an integer, a real, a blob (not UTF-8).
fn odd_value() -> impl Strategy<Value = rusqlite::types::Value> {
    use rusqlite::types::Value as V;
    prop_oneof![
        any::<i64>().prop_map(V::Integer),
        any::<f64>().prop_map(V::Real),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(V::Blob),
        Just(V::Blob(vec![0xff, 0xfe, 0x00])),
        strategies::text().prop_map(V::Text),
    ]
}

/// A row that the store wrote (`damage` = None) or one with a column damaged.
fn row() -> impl Strategy<Value = (Row, Option<usize>)> {
    use rusqlite::types::Value as V;
    let good = (
        event(),
        stored_time(),
        strategies::uuid(),
        prop::option::of(strategies::uuid()),
        strategies::text(),
        any::<bool>(),
    )
        .prop_map(|(e, at, id, cause, by, v1)| {
            let (data, schema) = if v1 {
                (strategies::as_v1(&e).0, 1)
            } else {
                (e.to_json().unwrap(), 2)
            };
            Row {
                version: V::Integer(1),
                event_id: sql_text(id.to_string()),
                event_type: sql_text(e.event_type()),
                schema_version: V::Integer(schema),
                data: sql_text(data),
                recorded_at: sql_text(at.to_rfc3339_opts(SecondsFormat::Nanos, true)),
                causation_id: cause.map_or(V::Null, |c| sql_text(c.to_string())),
                correlation_id: V::Null,
                caused_by: sql_text(by),
            }
        })
        .boxed();
    let damage = (
        0usize..9,
        odd_value(),
        prop::collection::vec(mutation(), 1..4),
        prop::sample::select(TYPES.to_vec()),
        prop_oneof![Just(0i64), Just(3), Just(-1), Just(1 << 40), Just(i64::MIN)],
    );
    prop_oneof![
        1 => good.clone().prop_map(|r| (r, None)),
        3 => (good, damage).prop_map(|(mut r, (column, odd, ms, other_type, schema))| {
            let damaged_text = |v: &V| {
                let mut b = match v { V::Text(s) => s.clone().into_bytes(), _ => Vec::new() };
                for m in &ms {
                    mutate(&mut b, m);
                }
                sql_text(String::from_utf8_lossy(&b).into_owned())
            };
            match column {
                0 => r.version = odd,
                1 => r.event_id = damaged_text(&r.event_id),
                2 => r.event_type = sql_text(other_type),
                3 => r.schema_version = V::Integer(schema),
                4 => r.data = damaged_text(&r.data),
                5 => r.recorded_at = damaged_text(&r.recorded_at),
                6 => r.causation_id = damaged_text(&sql_text(Uuid::nil().to_string())),
                7 => r.data = odd,
                _ => r.caused_by = odd,
            }
            (r, Some(column))
        }),
    ]
}

#[test]
fn stored_rows_decode_or_are_reported_corrupt_by_position() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async { EmbeddedStore::open(dir.path()).expect("a store") });
    // A second connection writes rows the store's own writer never would.
    let raw = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    raw.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut runner = TestRunner::new(cases::cases(256));
    runner
        .run(&row(), |(r, damaged)| {
            let stream_id = stream::job(Uuid::new_v4());
            let inserted = raw.execute(
                "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, \
                 recorded_at, causation_id, correlation_id, caused_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    stream_id, r.version, r.event_id, r.event_type, r.schema_version, r.data,
                    r.recorded_at, r.causation_id, r.correlation_id, r.caused_by
                ],
            );
            if inserted.is_err() {
                return Ok(()); // SQLite itself refused it (a NOT NULL column)
            }
            let position = u64::try_from(raw.last_insert_rowid()).unwrap();
            // The global log, as the projector and `verify` read it (a stream read would
            // skip a row whose version column is damaged).
            let read = rt.block_on(store.read_all(position - 1, 1));
            match read {
                Ok(events) => {
                    prop_assert_eq!(events.len(), 1);
                    let e = &events[0];
                    prop_assert_eq!(e.global_position, position);
                    // What decodes is what the columns say.
                    prop_assert_eq!(e.event_type(), column_text(&r.event_type));
                    let json = e.event.to_json().unwrap();
                    let again = Event::from_stored(CURRENT_SCHEMA_VERSION, &json).ok();
                    prop_assert_eq!(again.as_ref(), Some(&e.event));
                    if damaged.is_none() {
                        prop_assert_eq!(sql_text(e.event_id.to_string()), r.event_id);
                        prop_assert_eq!(
                            sql_text(e.recorded_at.to_rfc3339_opts(SecondsFormat::Nanos, true)),
                            r.recorded_at
                        );
                    }
                }
                Err(StoreError::Corrupt { position: p, reason }) => {
                    prop_assert!(damaged.is_some(), "an intact row was refused: {reason}");
                    prop_assert_eq!(p, position, "{}", reason);
                }
                Err(other) => prop_assert!(false, "not a clean refusal: {other}"),
            }
            Ok(())
        })
        .unwrap();
    // And `syncjobs verify` walks the whole damaged log, reporting rather than stopping.
    let report = rt
        .block_on(syncjobs::replay::verify(store.as_ref()))
        .expect("verify answers");
    assert!(report.head > 0);
}

/// A TEXT column as a string; anything else as its debug form (never equal to a type name).
fn column_text(v: &rusqlite::types::Value) -> String {
    match v {
        rusqlite::types::Value::Text(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn events_appended_through_the_store_read_back_identical() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async { EmbeddedStore::open(dir.path()).expect("a store") });
    let mut runner = TestRunner::new(cases::cases(128));
    runner
        .run(
            &(
                prop::collection::vec((event(), stored_time()), 1..4),
                prop::option::of(strategies::uuid()),
            ),
            |(events, causation_id)| {
                let stream_id = format!("fuzz-{}", Uuid::new_v4());
                let metadata = Metadata {
                    causation_id,
                    correlation_id: None,
                    caused_by: "fuzz".into(),
                };
                let new: Vec<NewEvent> = events
                    .iter()
                    .map(|(e, at)| NewEvent::new(e.clone(), *at, metadata.clone()))
                    .collect();
                let written = rt
                    .block_on(store.append(&stream_id, ExpectedVersion::Exact(0), new))
                    .expect("an append");
                let read = rt
                    .block_on(store.read_stream(&stream_id, 0))
                    .expect("a read");
                prop_assert_eq!(read, written);
                Ok(())
            },
        )
        .unwrap();
}

// ---- exported histories: `syncjobs replay --file` -------------------------------------

/// A job's history as `syncjobs export` writes it: JobCreated, then any job events.
fn history() -> impl Strategy<Value = Vec<RecordedEvent>> {
    (
        strategies::uuid(),
        prop::collection::vec((job_event(), 0i64..1_000_000), 0..8),
        stored_time(),
    )
        .prop_map(|(job, rest, start)| {
            let created = SyncJobEvent::JobCreated {
                job_id: job,
                source_connection_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                short_name: "timed".into(),
                config: json!({"entity_count": 10}),
            };
            std::iter::once((created, 0))
                .chain(rest)
                .enumerate()
                .map(|(i, (event, ms))| RecordedEvent {
                    event_id: Uuid::from_u128(i as u128),
                    stream_id: stream::job(job),
                    version: i as u64 + 1,
                    global_position: 10 + i as u64,
                    recorded_at: start
                        .checked_add_signed(chrono::Duration::milliseconds(ms))
                        .unwrap_or(start),
                    schema_version: 2,
                    metadata: Metadata::default(),
                    event: event.into(),
                })
                .collect()
        })
}

/// Damage to an export: to its bytes, to one value, or to its lines (dropped, repeated).
#[derive(Debug, Clone)]
enum ExportDamage {
    None,
    Bytes(Vec<strategies::Mutation>),
    Value(prop::sample::Index, Value),
    DropLine(prop::sample::Index),
    RepeatLine(prop::sample::Index),
}

fn export_damage() -> impl Strategy<Value = ExportDamage> {
    prop_oneof![
        1 => Just(ExportDamage::None),
        2 => prop::collection::vec(mutation(), 1..4).prop_map(ExportDamage::Bytes),
        3 => (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| ExportDamage::Value(i, v)),
        1 => any::<prop::sample::Index>().prop_map(ExportDamage::DropLine),
        1 => any::<prop::sample::Index>().prop_map(ExportDamage::RepeatLine),
    ]
}

fn export_text(events: &[RecordedEvent], damage: &ExportDamage) -> String {
    let mut lines: Vec<String> = events.iter().map(|e| export_line(e).unwrap()).collect();
    match damage {
        ExportDamage::None => {}
        ExportDamage::Bytes(ms) => {
            let mut b = lines.join("\n").into_bytes();
            for m in ms {
                mutate(&mut b, m);
            }
            return String::from_utf8_lossy(&b).into_owned();
        }
        ExportDamage::Value(at, replacement) => {
            let mut values: Vec<Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let mut all = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let mut here = Vec::new();
                pointers(v, String::new(), &mut here);
                all.extend(here.into_iter().map(|p| (i, p)));
            }
            let (i, p) = &all[at.index(all.len())];
            if let Some(slot) = values[*i].pointer_mut(p) {
                *slot = replacement.clone();
            }
            lines = values.iter().map(Value::to_string).collect();
        }
        ExportDamage::DropLine(at) => {
            lines.remove(at.index(lines.len()));
        }
        ExportDamage::RepeatLine(at) => {
            let i = at.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
    }
    lines.join("\n")
}

#[test]
fn exported_histories_replay_or_are_refused_cleanly() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.jsonl");
    let mut runner = TestRunner::new(cases::cases(256));
    runner
        .run(
            &(
                history(),
                export_damage(),
                prop::option::of(0u64..10),
                any::<bool>(),
            ),
            |(events, damage, to_version, json)| {
                let text = export_text(&events, &damage);
                std::fs::write(&path, &text).unwrap();
                // Every import path: the file's lines as `replay --file` reads them...
                let imported = syncjobs::replay::import_jsonl(&text);
                if matches!(damage, ExportDamage::None) {
                    prop_assert_eq!(imported.as_ref().ok(), Some(&events), "an intact export");
                }
                // ...and the whole command, on a file, with every output form.
                let cmd = DebugCommand::Replay {
                    job_id: None,
                    file: Some(path.clone()),
                    to_version,
                    json,
                    server: ServerArgs::default(),
                };
                let mut out = Vec::new();
                let (result, largest) = alloc_probe::largest_allocation(|| {
                    rt.block_on(syncjobs::replay::run(
                        cmd,
                        Err("no store in this test".into()),
                        &mut out,
                        json,
                    ))
                });
                prop_assert!(
                    largest <= alloc_probe::allowance(text.len()),
                    "{largest} bytes"
                );
                match result {
                    Ok(code) => {
                        prop_assert!(code <= 1);
                        prop_assert!(imported.is_ok(), "replayed what the import refused");
                        // Silent only when `--to-version` leaves nothing to show (a history
                        // whose first line is gone, replayed to before its first version).
                        prop_assert!(!out.is_empty() || to_version.is_some());
                    }
                    Err(e) => {
                        prop_assert!(
                            matches!(
                                e,
                                ReplayError::BadLine { .. }
                                    | ReplayError::MixedStreams { .. }
                                    | ReplayError::NoSuchVersion { .. }
                                    | ReplayError::Usage(_)
                            ),
                            "{e:?}"
                        );
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// The panic the event fuzz target found (domain/tests/fuzz_events.rs), reached from an
/// export: a CancelRequested whose timeout is past chrono's range made `replay --file`
/// panic while it printed the watchdog deadline; counts near `u64::MAX` overflowed.
#[test]
fn replaying_a_cancel_timeout_beyond_the_calendar_answers_instead_of_panicking() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.jsonl");
    let job = Uuid::new_v4();
    let at = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let events: Vec<RecordedEvent> = [
        SyncJobEvent::JobCreated {
            job_id: job,
            source_connection_id: Uuid::nil(),
            organization_id: Uuid::nil(),
            short_name: "timed".into(),
            config: Value::Null,
        },
        SyncJobEvent::JobStarted { worker: "w".into() },
        SyncJobEvent::CancelRequested {
            requested_by: "api".into(),
            timeout_seconds: u64::MAX,
        },
        SyncJobEvent::ProgressRecorded {
            counts: EntityCounts {
                inserted: u64::MAX,
                updated: u64::MAX,
                ..Default::default()
            },
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, e)| RecordedEvent {
        event_id: Uuid::new_v4(),
        stream_id: stream::job(job),
        version: i as u64 + 1,
        global_position: i as u64 + 1,
        recorded_at: at,
        schema_version: 2,
        metadata: Metadata::default(),
        event: e.into(),
    })
    .collect();
    let text: Vec<String> = events.iter().map(|e| export_line(e).unwrap()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    for json in [false, true] {
        let cmd = DebugCommand::Replay {
            job_id: None,
            file: Some(path.clone()),
            to_version: None,
            json,
            server: ServerArgs::default(),
        };
        let mut out = Vec::new();
        let code = rt
            .block_on(syncjobs::replay::run(
                cmd,
                Err("no store in this test".into()),
                &mut out,
                false,
            ))
            .expect("replayed");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
        assert!(String::from_utf8_lossy(&out).contains("cancelling"));
    }
}
