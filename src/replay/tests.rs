//! The debugging commands on recorded histories. Histories are made the way the service
//! makes them (load, fold, decide, append at the expected version); corrupted ones are
//! forged with `ExpectedVersion::Any` appends or hand-made envelopes.

use super::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use clap::{CommandFactory, Parser};
use std::sync::Arc;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Aggregate, CollectionEvent, EntityCounts, EventStore, ExpectedVersion, FoldError,
    InMemoryStore, Job, JobCommand, JobError, JobStatus, Metadata, NewEvent, RecordedEvent,
    SyncJobEvent,
};

fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + Duration::milliseconds(ms)
}

fn job(n: u128) -> Uuid {
    Uuid::from_u128(0x1000 + n)
}

const SC: Uuid = Uuid::from_u128(0x22);

fn counts(n: u64) -> EntityCounts {
    EntityCounts {
        inserted: n,
        ..Default::default()
    }
}

fn meta(by: &str) -> Metadata {
    Metadata {
        caused_by: by.into(),
        ..Default::default()
    }
}

/// What the service does for a command: load, fold, decide, append at the expected version.
async fn exec(
    store: &InMemoryStore,
    id: Uuid,
    cmd: JobCommand,
    ms: i64,
    by: &str,
) -> Result<Vec<RecordedEvent>, JobError> {
    let history = store.read_stream(&stream::job(id), 0).await.unwrap();
    let state = Job::fold(&history).unwrap();
    let events = state.decide(&cmd)?;
    let expected = state.version();
    let new = events
        .into_iter()
        .map(|e| NewEvent::new(e, at(ms), meta(by)))
        .collect();
    Ok(store
        .append(&stream::job(id), ExpectedVersion::Exact(expected), new)
        .await
        .unwrap())
}

fn create(id: Uuid) -> JobCommand {
    JobCommand::Create {
        job_id: id,
        source_connection_id: SC,
        organization_id: Uuid::from_u128(0x33),
        short_name: "timed".into(),
        config: serde_json::json!({"entity_count": 10}),
    }
}

fn start() -> JobCommand {
    JobCommand::Start {
        worker: "w1".into(),
    }
}

fn cancel(by: &str) -> JobCommand {
    JobCommand::RequestCancel {
        requested_by: by.into(),
        timeout_seconds: 180,
    }
}

/// Created, started, progress 5, cancel requested at +2.301s, never confirmed: the watchdog
/// forces it at its deadline, +182.301s.
async fn force_cancelled_job(store: &InMemoryStore, id: Uuid) {
    exec(store, id, create(id), 0, "api-key:k1").await.unwrap();
    exec(store, id, start(), 512, "worker:w1").await.unwrap();
    let progress = JobCommand::RecordProgress { counts: counts(5) };
    exec(store, id, progress, 1020, "worker:w1").await.unwrap();
    exec(store, id, cancel("api-key:k1"), 2301, "api-key:k1")
        .await
        .unwrap();
    let force = JobCommand::ForceCancel {
        now: at(182_301),
        durable: None,
    };
    exec(store, id, force, 182_301, "watchdog").await.unwrap();
}

/// Two clients cancel a running job at once. Both decide on version 2; one append wins,
/// the other hits a version conflict, reloads, and its decision is then refused: the
/// history holds one CancelRequested. The worker confirms later.
async fn conflict_retried_cancel_job(store: &InMemoryStore, id: Uuid) {
    let s = stream::job(id);
    exec(store, id, create(id), 0, "api-key:k1").await.unwrap();
    exec(store, id, start(), 100, "worker:w1").await.unwrap();
    let history = store.read_stream(&s, 0).await.unwrap();
    let state = state_at(&history, 2).unwrap().unwrap();
    let a = state.decide(&cancel("api-key:a")).unwrap();
    let b = state.decide(&cancel("api-key:b")).unwrap();
    let to_new = |events: Vec<SyncJobEvent>, ms, by: &str| {
        events
            .into_iter()
            .map(|e| NewEvent::new(e, at(ms), meta(by)))
            .collect::<Vec<_>>()
    };
    store
        .append(&s, ExpectedVersion::Exact(2), to_new(a, 1000, "api-key:a"))
        .await
        .unwrap();
    let lost = store
        .append(&s, ExpectedVersion::Exact(2), to_new(b, 1001, "api-key:b"))
        .await
        .unwrap_err();
    assert!(lost.is_conflict(), "{lost}");
    // The loser retries on the reloaded state: the job is cancelling now, so no second request.
    assert_eq!(
        exec(store, id, cancel("api-key:b"), 1002, "api-key:b").await,
        Err(JobError::CannotCancel(JobStatus::Cancelling))
    );
    let confirm = JobCommand::ConfirmCancelled { counts: counts(7) };
    exec(store, id, confirm, 4000, "worker:w1").await.unwrap();
}

async fn completed_job(store: &InMemoryStore, id: Uuid) {
    exec(store, id, create(id), 0, "api-key:k1").await.unwrap();
    exec(store, id, start(), 10, "worker:w1").await.unwrap();
    let done = JobCommand::Complete { counts: counts(3) };
    exec(store, id, done, 2000, "worker:w1").await.unwrap();
}

/// Appends without any check: how a corrupted history gets into a store.
async fn forge(store: &InMemoryStore, id: Uuid, event: SyncJobEvent, ms: i64) {
    store
        .append(
            &stream::job(id),
            ExpectedVersion::Any,
            vec![NewEvent::new(event, at(ms), meta("forger"))],
        )
        .await
        .unwrap();
}

async fn run_cmd(
    cmd: DebugCommand,
    store: Option<Arc<dyn EventStore>>,
    color: bool,
) -> (u8, String) {
    let mut out = Vec::new();
    let store = store.ok_or_else(|| "no store in this test".to_owned());
    let code = run(cmd, store, &mut out, color).await.unwrap();
    (code, String::from_utf8(out).unwrap())
}

async fn run_err(cmd: DebugCommand, store: Option<Arc<dyn EventStore>>) -> ReplayError {
    let mut out = Vec::new();
    let store = store.ok_or_else(|| "no store in this test".to_owned());
    run(cmd, store, &mut out, false).await.unwrap_err()
}

fn replay_cmd(id: Uuid, to_version: Option<u64>, json: bool) -> DebugCommand {
    DebugCommand::Replay {
        job_id: Some(id),
        file: None,
        to_version,
        json,
        server: ServerArgs::default(),
    }
}

fn replay_file(path: &std::path::Path) -> DebugCommand {
    DebugCommand::Replay {
        job_id: None,
        file: Some(path.to_owned()),
        to_version: None,
        json: false,
        server: ServerArgs::default(),
    }
}

/// The rows of a table, header first, as lines.
fn rows(text: &str) -> Vec<&str> {
    text.lines().take_while(|l| !l.is_empty()).collect()
}

/// The value of `name` in the state block (`  name   value`).
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("  ")?
                .strip_prefix(name)?
                .strip_prefix("  ")
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Where a column starts in the header line.
fn column(header: &str, name: &str) -> usize {
    header
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {header:?}"))
}

#[tokio::test]
async fn events_lists_one_aligned_line_per_event_with_relative_times() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let (code, out) = run_cmd(
        DebugCommand::Events {
            job_id: job(1),
            server: ServerArgs::default(),
        },
        Some(store),
        false,
    )
    .await;
    assert_eq!(code, 0);
    let lines = rows(&out);
    assert_eq!(lines.len(), 6, "{out}");
    let header = lines[0];
    let type_col = column(header, "TYPE");
    let types: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l[type_col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "JobCreated",
            "JobStarted",
            "ProgressRecorded",
            "CancelRequested",
            "ForceCancelled"
        ]
    );
    let cancel = lines[4];
    for part in [
        "4",
        "2025-03-01T12:00:02.301Z",
        "+2.301s",
        "api-key:k1",
        "timeout=180s",
    ] {
        assert!(cancel.contains(part), "{part} missing in {cancel:?}");
    }
    assert!(
        lines[5].contains("+182.301s") && lines[5].contains("watchdog"),
        "{}",
        lines[5]
    );
    assert!(lines[3].contains("counts: inserted=5"), "{}", lines[3]);
    assert!(!out.contains('\x1b'), "plain output has no escape codes");
}

#[tokio::test]
async fn events_and_replay_say_when_final_counts_were_reconciled_from_the_destination() {
    let store = InMemoryStore::new();
    let id = job(2);
    exec(&store, id, create(id), 0, "api-key:k1").await.unwrap();
    exec(&store, id, start(), 10, "worker:w1").await.unwrap();
    let progress = JobCommand::RecordProgress { counts: counts(5) };
    exec(&store, id, progress, 20, "worker:w1").await.unwrap();
    // No resume allowed: the lost worker's job fails, with the destination's counts.
    let rescue = JobCommand::Rescue {
        lost_worker: "w1".into(),
        last_seen: None,
        max_resumes: 0,
        durable: Some(counts(9)),
    };
    exec(&store, id, rescue, 5000, "recovery").await.unwrap();
    let (code, out) = run_cmd(
        DebugCommand::Events {
            job_id: id,
            server: ServerArgs::default(),
        },
        Some(store.clone()),
        false,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let last = *rows(&out).last().unwrap();
    assert!(
        last.contains("JobFailed")
            && last.contains("counts: inserted=9 (reconciled from the destination)"),
        "{out}"
    );
    assert!(
        !rows(&out)[3].contains("reconciled"),
        "a progress report is not: {out}"
    );
    let (code, out) = run_cmd(replay_cmd(id, None, false), Some(store), false).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"counts_reconciled\":true"), "{out}");
    assert!(!out.contains("problems"), "{out}");
}

#[tokio::test]
async fn a_resumed_job_shows_its_lost_worker_and_its_next_runs_counts_are_not_a_problem() {
    let store = InMemoryStore::new();
    let id = job(3);
    exec(&store, id, create(id), 0, "api-key:k1").await.unwrap();
    exec(&store, id, start(), 10, "worker:w1").await.unwrap();
    let progress = JobCommand::RecordProgress { counts: counts(5) };
    exec(&store, id, progress, 20, "worker:w1").await.unwrap();
    let rescue = JobCommand::Rescue {
        lost_worker: "w1".into(),
        last_seen: Some(at(15)),
        max_resumes: 1,
        durable: Some(counts(7)),
    };
    exec(&store, id, rescue, 40_000, "recovery").await.unwrap();
    let again = JobCommand::Start {
        worker: "w2".into(),
    };
    exec(&store, id, again, 40_100, "worker:w2").await.unwrap();
    // The resumed run counts from nothing: lower than the lost run's, and no problem.
    let progress = JobCommand::RecordProgress { counts: counts(2) };
    exec(&store, id, progress, 40_200, "worker:w2")
        .await
        .unwrap();
    let done = JobCommand::Complete { counts: counts(10) };
    exec(&store, id, done, 40_300, "worker:w2").await.unwrap();
    let (code, out) = run_cmd(
        DebugCommand::Events {
            job_id: id,
            server: ServerArgs::default(),
        },
        Some(store.clone()),
        false,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let resumed = rows(&out)[4];
    assert!(
        resumed.contains("JobResumed")
            && resumed.contains("attempt=1 lost_worker=w1 last_seen=")
            && resumed.contains("counts: inserted=7 (reconciled from the destination)"),
        "{out}"
    );
    let events = store.read_stream(&stream::job(id), 0).await.unwrap();
    assert_eq!(crate::replay::check::check_stream(&events), vec![]);
    let (code, out) = run_cmd(replay_cmd(id, None, false), Some(store), false).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("problems"), "{out}");
}

#[tokio::test]
async fn replay_shows_each_state_with_the_watchdog_deadline_and_the_forced_end() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let (code, out) = run_cmd(replay_cmd(job(1), None, false), Some(store), false).await;
    assert_eq!(code, 0, "{out}");
    let lines = rows(&out);
    let status_col = column(lines[0], "STATUS");
    let statuses: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l[status_col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["pending", "running", "running", "cancelling", "cancelled"]
    );
    assert!(
        lines[4].ends_with("2025-03-01T12:03:02.301Z (+182.301s)"),
        "the watchdog deadline is CancelRequested + 180 s: {}",
        lines[4]
    );
    assert!(
        lines[5].ends_with("+182.301s  -"),
        "ended, no deadline left: {}",
        lines[5]
    );
    assert!(out.contains("state after v5 (final): cancelled"), "{out}");
    assert!(out.contains("(cancel_timeout)"), "{out}");
    assert!(out.contains("\"forced_by\":\"watchdog\""), "{out}");
    assert!(!out.contains("problems"), "{out}");
}

#[tokio::test]
async fn replay_to_version_stops_there() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let (code, out) = run_cmd(
        replay_cmd(job(1), Some(4), false),
        Some(store.clone()),
        false,
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(rows(&out).len(), 1 + 4, "{out}");
    assert!(!out.contains("ForceCancelled"), "{out}");
    assert!(
        out.contains("state after v4 (time travel: the stream goes on to v5): cancelling"),
        "{out}"
    );
    assert_eq!(
        field(&out, "watchdog deadline"),
        "2025-03-01T12:03:02.301Z  +182.301s"
    );

    for beyond in [0, 6] {
        let err = run_err(replay_cmd(job(1), Some(beyond), false), Some(store.clone())).await;
        assert!(
            matches!(err, ReplayError::NoSuchVersion { requested, last: 5 } if requested == beyond),
            "{err}"
        );
    }
}

#[tokio::test]
async fn replay_json_gives_one_object_per_step_with_its_state() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let (code, out) = run_cmd(replay_cmd(job(1), None, true), Some(store), true).await;
    assert_eq!(code, 0);
    assert!(!out.contains('\x1b'), "JSON is never coloured");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let field = |k: &str| {
        lines
            .iter()
            .map(|l| l["state"][k].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        field("status"),
        ["pending", "running", "running", "cancelling", "cancelled"].map(serde_json::Value::from)
    );
    assert_eq!(
        field("version"),
        [1, 2, 3, 4, 5].map(serde_json::Value::from)
    );
    assert_eq!(
        lines[3]["state"]["watchdog_deadline"],
        "2025-03-01T12:03:02.301Z"
    );
    assert!(lines[4]["state"]["watchdog_deadline"].is_null());
    let since: Vec<i64> = lines
        .iter()
        .map(|l| l["since_created_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(since, [0, 512, 1020, 2301, 182_301]);
    assert_eq!(lines[4]["type"], "ForceCancelled");
    assert_eq!(lines[4]["event"]["data"]["timeout_seconds"], 180);
}

#[tokio::test]
async fn a_terminal_gets_the_final_state_highlighted_and_a_pipe_gets_plain_text() {
    let store = InMemoryStore::new();
    completed_job(&store, job(1)).await;
    let (_, coloured) = run_cmd(replay_cmd(job(1), None, false), Some(store.clone()), true).await;
    let (_, plain) = run_cmd(replay_cmd(job(1), None, false), Some(store), false).await;
    assert!(
        coloured.contains("\x1b[1;32mcompleted\x1b[0m"),
        "{coloured:?}"
    );
    assert!(!plain.contains('\x1b'));
    // Colour never shifts a column: strip the codes and the text is the plain text.
    let mut stripped = String::new();
    let mut rest = coloured.as_str();
    while let Some(i) = rest.find('\x1b') {
        stripped.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find('m').unwrap() + 1..];
    }
    stripped.push_str(rest);
    assert_eq!(stripped, plain);
}

#[tokio::test]
async fn a_conflict_retried_cancel_shows_one_cancel_request() {
    let store = InMemoryStore::new();
    conflict_retried_cancel_job(&store, job(2)).await;
    let (_, events) = run_cmd(
        DebugCommand::Events {
            job_id: job(2),
            server: ServerArgs::default(),
        },
        Some(store.clone()),
        false,
    )
    .await;
    assert_eq!(events.matches("CancelRequested").count(), 1, "{events}");
    assert!(
        events.contains("requested_by=api-key:a"),
        "the winner's request: {events}"
    );
    assert!(!events.contains("api-key:b"), "{events}");

    let (code, out) = run_cmd(replay_cmd(job(2), None, false), Some(store.clone()), false).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("state after v4 (final): cancelled"), "{out}");
    assert_eq!(field(&out, "counts"), "inserted=7");
    let (code, _) = run_cmd(DebugCommand::Verify, Some(store), false).await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn an_export_replays_offline_exactly_as_from_the_store() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let (code, exported) = run_cmd(
        DebugCommand::Export {
            job_id: job(1),
            server: ServerArgs::default(),
        },
        Some(store.clone()),
        false,
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(exported.lines().count(), 5);
    let original = store.read_stream(&stream::job(job(1)), 0).await.unwrap();
    assert_eq!(
        import_jsonl(&exported).unwrap(),
        original,
        "the envelope survives intact"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.jsonl");
    std::fs::write(&path, &exported).unwrap();
    let (code, offline) = run_cmd(replay_file(&path), None, false).await;
    let (_, online) = run_cmd(replay_cmd(job(1), None, false), Some(store), false).await;
    assert_eq!(code, 0);
    assert_eq!(offline, online);
}

/// Lines as a v1 build wrote them: flat counts, no cancel timeout.
fn v1_history(id: Uuid) -> String {
    let line = |version: u64, schema: u32, ms: i64, event: serde_json::Value| {
        serde_json::json!({
            "event_id": Uuid::from_u128(0x9000 + u128::from(version)),
            "stream_id": stream::job(id),
            "version": version,
            "global_position": 40 + version,
            "recorded_at": at(ms),
            "schema_version": schema,
            "caused_by": "old-build",
            "event": event,
        })
        .to_string()
    };
    let created = serde_json::json!({"type": "JobCreated", "data": {
        "job_id": id, "source_connection_id": SC, "organization_id": Uuid::from_u128(0x33),
        "short_name": "timed"}});
    [
        line(1, 1, 0, created),
        line(
            2,
            1,
            300,
            serde_json::json!({"type": "JobStarted", "data": {"worker": "old"}}),
        ),
        line(
            3,
            1,
            1500,
            serde_json::json!({"type": "ProgressRecorded", "data": {"inserted": 7, "failed": 1}}),
        ),
        line(
            4,
            1,
            2000,
            serde_json::json!({"type": "CancelRequested", "data": {"requested_by": "api-key:old"}}),
        ),
        line(
            5,
            1,
            2500,
            serde_json::json!({"type": "Cancelled", "data": {"inserted": 8, "failed": 1}}),
        ),
    ]
    .join("\n")
}

#[tokio::test]
async fn a_v1_export_replays_as_current_and_keeps_its_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.jsonl");
    std::fs::write(&path, v1_history(job(3))).unwrap();
    let (code, out) = run_cmd(replay_file(&path), None, false).await;
    assert_eq!(code, 0, "{out}");
    let lines = rows(&out);
    assert!(
        lines[3].contains("inserted=7 failed=1"),
        "v1 flat counts upcast: {}",
        lines[3]
    );
    assert!(
        lines[4].ends_with("2025-03-01T12:03:02.000Z (+182.000s)"),
        "a v1 cancel request gets the 180 s timeout it was made under: {}",
        lines[4]
    );
    assert!(out.contains("state after v5 (final): cancelled"), "{out}");

    let imported = import_jsonl(&v1_history(job(3))).unwrap();
    assert!(imported.iter().all(|e| e.schema_version == 1));
    // Exported again, the line keeps schema v1 and says its body is now current.
    let again = export_value(&imported[2]).unwrap();
    assert_eq!(again["schema_version"], 1);
    assert_eq!(
        again["body_schema_version"],
        syncjobs_domain::CURRENT_SCHEMA_VERSION
    );
    assert_eq!(again["event"]["data"]["counts"]["inserted"], 7);
    // A bare `RecordedEvent` (schema v1, body already current: what a server serialising
    // the envelope directly sends) reads back the same: upcasting a current body is a no-op.
    for e in &imported {
        let bare = serde_json::to_value(e).unwrap();
        assert_eq!(&import_value(bare, 1).unwrap(), e);
    }
    let reexported: Vec<String> = imported.iter().map(|e| export_line(e).unwrap()).collect();
    assert_eq!(import_jsonl(&reexported.join("\n")).unwrap(), imported);
}

#[test]
fn bad_lines_are_named_by_their_line_number() {
    let good = v1_history(job(3));
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    lines.insert(1, String::new()); // blank lines are fine and still counted
    lines[2] = "{\"event_id\": not json".into();
    let err = import_jsonl(&lines.join("\n")).unwrap_err();
    assert!(
        matches!(&err, ReplayError::BadLine { line: 3, reason } if reason.starts_with("not JSON")),
        "{err}"
    );

    let unknown = good.replacen("\"JobStarted\"", "\"JobTeleported\"", 1);
    let err = import_jsonl(&unknown).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 2: unreadable event body (schema v1)"),
        "{err}"
    );

    let future = good.replacen("\"schema_version\":1", "\"schema_version\":99", 1);
    let err = import_jsonl(&future).unwrap_err();
    assert!(err.to_string().contains("newer than this build"), "{err}");

    let missing = "{\"version\": 1}";
    let err = import_jsonl(missing).unwrap_err();
    assert!(
        err.to_string().starts_with("line 1: not an exported event"),
        "{err}"
    );

    let mixed = format!("{}\n{}", good.lines().next().unwrap(), v1_history(job(4)));
    assert!(matches!(
        import_jsonl(&mixed),
        Err(ReplayError::MixedStreams { .. })
    ));
}

#[tokio::test]
async fn a_missing_job_or_store_is_an_error_not_an_empty_answer() {
    let store = InMemoryStore::new();
    let err = run_err(replay_cmd(job(9), None, false), Some(store)).await;
    assert!(
        matches!(err, ReplayError::JobNotFound(id) if id == job(9)),
        "{err}"
    );
    // Without a store the command says why there is none (main passes the reason).
    let err = run_err(DebugCommand::Verify, None).await;
    assert_eq!(err.to_string(), "no store in this test");
    let dir = tempfile::tempdir().unwrap();
    let err = run_err(replay_file(&dir.path().join("nope.jsonl")), None).await;
    assert!(matches!(err, ReplayError::ReadFile { .. }), "{err}");
}

/// A store with several kinds of streams, all healthy.
async fn healthy_store() -> Arc<InMemoryStore> {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    conflict_retried_cancel_job(&store, job(2)).await;
    completed_job(&store, job(3)).await;
    let collection = CollectionEvent::CollectionCreated {
        collection_id: Uuid::from_u128(0x44),
        organization_id: Uuid::from_u128(0x33),
        name: "docs".into(),
        readable_id: "docs".into(),
    };
    store
        .append(
            &stream::collection(Uuid::from_u128(0x44)),
            ExpectedVersion::Exact(0),
            vec![NewEvent::new(collection, at(0), meta("api-key:k1"))],
        )
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn verify_passes_a_healthy_store() {
    let store = healthy_store().await;
    let report = verify(store.as_ref()).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.issues);
    assert_eq!((report.events, report.streams, report.head), (13, 4, 13));
    let (code, out) = run_cmd(DebugCommand::Verify, Some(store), false).await;
    assert_eq!(code, 0);
    assert!(out.contains("checked 13 events in 4 streams"), "{out}");
    assert!(out.contains("ok: every stream folds"), "{out}");
}

#[tokio::test]
async fn verify_names_every_corrupted_stream_and_exits_1() {
    let store = healthy_store().await;
    // job 5: an event after its final state
    completed_job(&store, job(5)).await;
    forge(
        &store,
        job(5),
        SyncJobEvent::JobStarted {
            worker: "late".into(),
        },
        3000,
    )
    .await;
    // job 6: counts going down
    exec(&store, job(6), create(job(6)), 0, "k").await.unwrap();
    exec(&store, job(6), start(), 1, "w").await.unwrap();
    forge(
        &store,
        job(6),
        SyncJobEvent::ProgressRecorded { counts: counts(9) },
        2,
    )
    .await;
    forge(
        &store,
        job(6),
        SyncJobEvent::ProgressRecorded { counts: counts(4) },
        3,
    )
    .await;
    // job 7: forced 100 s into a 180 s timeout
    exec(&store, job(7), create(job(7)), 0, "k").await.unwrap();
    exec(&store, job(7), start(), 1, "w").await.unwrap();
    exec(&store, job(7), cancel("k"), 1000, "k").await.unwrap();
    let early = SyncJobEvent::ForceCancelled {
        error: "forced".into(),
        timeout_seconds: 180,
        requested_at: at(1000),
        counts: EntityCounts::default(),
        counts_reconciled: false,
    };
    forge(&store, job(7), early, 101_000).await;

    let report = verify(store.as_ref()).await.unwrap();
    let bad = |id: Uuid| stream::job(id);
    assert_eq!(
        report.bad_streams(),
        [bad(job(5)), bad(job(6)), bad(job(7))]
    );
    let problems: Vec<&Problem> = report.issues.iter().map(|i| &i.problem).collect();
    assert!(matches!(
        problems[0],
        Problem::DoesNotFold(FoldError::AfterFinal {
            status: JobStatus::Completed,
            event: "JobStarted"
        })
    ));
    assert!(
        matches!(problems[1], Problem::CountsWentDown { before, after } if before.inserted == 9 && after.inserted == 4)
    );
    assert!(
        matches!(problems[2], Problem::ForcedBeforeDeadline { deadline, .. } if *deadline == at(181_000))
    );
    assert_eq!(report.issues[0].version, Some(4));

    let (code, out) = run_cmd(DebugCommand::Verify, Some(store), false).await;
    assert_eq!(code, 1);
    for id in [job(5), job(6), job(7)] {
        assert!(out.contains(&stream::job(id)), "{id} not named: {out}");
    }
    for id in [job(1), job(2), job(3)] {
        assert!(!out.contains(&stream::job(id)), "healthy {id} named: {out}");
    }
    assert!(
        out.contains("JobStarted after the job was already completed"),
        "{out}"
    );
    assert!(
        out.contains("counts went down: inserted=9 -> inserted=4"),
        "{out}"
    );
    assert!(out.contains("FAILED: 3 problems in 3 streams"), "{out}");
}

/// Envelopes made by hand, for breaks an append cannot produce.
fn envelopes(id: Uuid, events: Vec<SyncJobEvent>) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .zip(1..)
        .map(|(event, v)| RecordedEvent {
            event_id: Uuid::from_u128(u128::from(v)),
            stream_id: stream::job(id),
            version: v,
            global_position: 10 * v,
            recorded_at: at(v as i64 * 1000),
            schema_version: syncjobs_domain::CURRENT_SCHEMA_VERSION,
            metadata: Metadata::default(),
            event: event.into(),
        })
        .collect()
}

fn a_running_history(id: Uuid) -> Vec<SyncJobEvent> {
    vec![
        SyncJobEvent::JobCreated {
            job_id: id,
            source_connection_id: SC,
            organization_id: Uuid::from_u128(0x33),
            short_name: "timed".into(),
            config: serde_json::Value::Null,
        },
        SyncJobEvent::JobStarted { worker: "w".into() },
        SyncJobEvent::ProgressRecorded { counts: counts(1) },
        SyncJobEvent::ProgressRecorded { counts: counts(2) },
    ]
}

#[test]
fn check_stream_finds_gaps_positions_and_foreign_events() {
    let id = job(8);
    let healthy = envelopes(id, a_running_history(id));
    assert_eq!(check_stream(&healthy), []);

    let mut gap = healthy.clone();
    gap.remove(2);
    let issues = check_stream(&gap);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        issues[0].problem,
        Problem::VersionGap {
            expected: 3,
            found: 4
        }
    );
    assert_eq!(
        issues[0].to_string(),
        format!(
            "{} v4 (position 40): version gap: expected v3, found v4",
            stream::job(id)
        )
    );

    let mut backwards = healthy.clone();
    backwards[3].global_position = 15;
    assert_eq!(
        check_stream(&backwards)[0].problem,
        Problem::PositionNotIncreasing {
            previous: 30,
            found: 15
        }
    );

    let mut wrong_job = envelopes(job(9), a_running_history(id));
    wrong_job.truncate(1);
    assert_eq!(
        check_stream(&wrong_job)[0].problem,
        Problem::WrongJob { created_for: id }
    );

    let mut foreign = healthy.clone();
    foreign[3].event = CollectionEvent::CollectionDeleted { collection_id: id }.into();
    assert_eq!(
        check_stream(&foreign)[0].problem,
        Problem::NotAJobEvent("CollectionDeleted")
    );

    let mut headless = healthy;
    headless.remove(0);
    let issues = check_stream(&headless);
    assert!(
        issues
            .iter()
            .any(|i| i.problem == Problem::DoesNotFold(FoldError::NotCreated("JobStarted"))),
        "{issues:?}"
    );
}

#[test]
fn state_at_is_the_job_as_it_was_after_that_version() {
    let id = job(8);
    let events = envelopes(id, a_running_history(id));
    assert_eq!(state_at(&events, 0).unwrap(), None);
    assert_eq!(
        state_at(&events, 1).unwrap().unwrap().status,
        JobStatus::Pending
    );
    let v3 = state_at(&events, 3).unwrap().unwrap();
    assert_eq!(
        (v3.status, v3.version, v3.counts),
        (JobStatus::Running, 3, counts(1))
    );
    assert_eq!(state_at(&events, 4).unwrap().unwrap().counts, counts(2));
    assert_eq!(state_at(&events, 5).unwrap(), None, "beyond the end");

    let mut gap = events.clone();
    gap.remove(1);
    assert!(matches!(
        state_at(&gap, 3),
        Err(ReplayError::VersionGap {
            expected: 2,
            found: 3,
            ..
        })
    ));
    assert_eq!(
        state_at(&gap, 1).unwrap().unwrap().version,
        1,
        "before the gap is fine"
    );

    let mut broken = events;
    broken[2].event = SyncJobEvent::JobCompleted { counts: counts(1) }.into();
    assert!(state_at(&broken, 3).is_ok());
    assert!(matches!(
        state_at(&broken, 4),
        Err(ReplayError::Step { version: 4, .. })
    ));
}

#[tokio::test]
async fn replay_of_a_broken_history_shows_where_it_broke_and_exits_1() {
    let store = InMemoryStore::new();
    completed_job(&store, job(5)).await;
    forge(
        &store,
        job(5),
        SyncJobEvent::JobStarted {
            worker: "late".into(),
        },
        3000,
    )
    .await;
    let (code, out) = run_cmd(replay_cmd(job(5), None, false), Some(store), false).await;
    assert_eq!(code, 1);
    assert_eq!(rows(&out).len(), 1 + 3, "the three events that fold: {out}");
    assert!(
        out.contains("v4 JobStarted does not fold: JobStarted after the job was already completed"),
        "{out}"
    );
    assert!(
        out.contains("state after v3 (the last event that folded): completed"),
        "{out}"
    );
    assert!(
        !out.contains("problems:"),
        "the failure is told once: {out}"
    );

    // A history that folds but breaks an invariant: the table is complete, the problem listed.
    let store = InMemoryStore::new();
    exec(&store, job(7), create(job(7)), 0, "k").await.unwrap();
    exec(&store, job(7), start(), 1, "w").await.unwrap();
    exec(&store, job(7), cancel("k"), 1000, "k").await.unwrap();
    let early = SyncJobEvent::ForceCancelled {
        error: "forced".into(),
        timeout_seconds: 180,
        requested_at: at(1000),
        counts: EntityCounts::default(),
        counts_reconciled: false,
    };
    forge(&store, job(7), early, 101_000).await;
    let (code, out) = run_cmd(replay_cmd(job(7), None, false), Some(store), false).await;
    assert_eq!(code, 1);
    assert!(out.contains("state after v4 (final): cancelled"), "{out}");
    let problems = out
        .split("problems:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        problems.trim_end().ends_with(
            "ForceCancelled recorded at 2025-03-01T12:01:41.000Z, \
             before its watchdog deadline 2025-03-01T12:03:01.000Z"
        ),
        "{problems}"
    );
}

/// A store whose event at `position` cannot be decoded.
struct CorruptAt {
    inner: Arc<InMemoryStore>,
    position: u64,
}

#[async_trait::async_trait]
impl EventStore for CorruptAt {
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
        if after < self.position && after + limit as u64 >= self.position {
            return Err(StoreError::Corrupt {
                position: self.position,
                reason: "invalid JSON in the event body".into(),
            });
        }
        self.inner.read_all(after, limit).await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    fn backend(&self) -> &'static str {
        "corrupt"
    }
}

#[tokio::test]
async fn verify_reports_an_unreadable_event_and_checks_the_rest() {
    let inner = InMemoryStore::new();
    completed_job(&inner, job(1)).await; // positions 1..=3
    completed_job(&inner, job(5)).await; // 4..=6
    forge(
        &inner,
        job(5),
        SyncJobEvent::JobStarted {
            worker: "late".into(),
        },
        3000,
    )
    .await; // 7
    let store = CorruptAt { inner, position: 2 };
    let report = verify(&store).await.unwrap();
    assert_eq!(report.issues[0].global_position, Some(2));
    assert_eq!(report.issues[0].stream, None);
    assert!(
        matches!(&report.issues[0].problem, Problem::Unreadable(r) if r.contains("invalid JSON"))
    );
    assert_eq!(report.events, 6, "every readable event was checked");
    // Job 1 lost its v2 to corruption: its stream now has a gap, which is reported too.
    assert_eq!(
        report.bad_streams(),
        [stream::job(job(1)), stream::job(job(5))]
    );
    let text = render::verify_text(&report, false);
    assert!(
        text.contains("(unreadable)") && text.contains("1 unreadable event"),
        "{text}"
    );
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: DebugCommand,
}

#[test]
fn the_subcommands_parse_as_documented() {
    Cli::command().debug_assert();
    let parse = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("syncjobs").chain(args.iter().copied()))
    };
    let id = job(1).to_string();
    let cli = parse(&["replay", &id, "--to-version", "3", "--json"]).unwrap();
    assert_eq!(cli.cmd, replay_cmd(job(1), Some(3), true));
    let cli = parse(&["replay", "--file", "job.jsonl"]).unwrap();
    assert!(matches!(
        cli.cmd,
        DebugCommand::Replay {
            file: Some(_),
            job_id: None,
            ..
        }
    ));
    assert!(parse(&["replay"]).is_err(), "a job id or --file is needed");
    assert!(parse(&["replay", &id, "--file", "x"]).is_err(), "not both");
    assert!(parse(&["events", "not-a-uuid"]).is_err());
    assert!(
        parse(&["export", &id, "--server", "http://x"]).is_err(),
        "--server needs --source-connection"
    );
    assert_eq!(parse(&["verify"]).unwrap().cmd, DebugCommand::Verify);
}

/// A one-shot HTTP server on a thread: answers one request with `status` and `body`, and
/// hands back the request it got.
fn serve_once(status: &str, body: String) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let status = status.to_owned();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, handle)
}

fn server_args(url: String) -> ServerArgs {
    ServerArgs {
        server: Some(url),
        api_key: Some("sk-test".into()),
        source_connection: Some(SC),
    }
}

#[actix_rt::test]
async fn events_from_a_server_read_the_same_as_from_the_store() {
    let store = InMemoryStore::new();
    force_cancelled_job(&store, job(1)).await;
    let history = store.read_stream(&stream::job(job(1)), 0).await.unwrap();
    let body = serde_json::Value::Array(history.iter().map(|e| export_value(e).unwrap()).collect());
    let (url, server) = serve_once("200 OK", body.to_string());
    let remote = DebugCommand::Events {
        job_id: job(1),
        server: server_args(url),
    };
    let (code, from_server) = run_cmd(remote, None, false).await;
    let local = DebugCommand::Events {
        job_id: job(1),
        server: ServerArgs::default(),
    };
    let (_, from_store) = run_cmd(local, Some(store), false).await;
    assert_eq!(code, 0);
    assert_eq!(from_server, from_store);
    let request = server.join().unwrap().to_lowercase();
    assert!(
        request.starts_with(&format!(
            "get /source-connections/{SC}/jobs/{}/events ",
            job(1)
        )),
        "{request}"
    );
    assert!(request.contains("x-api-key: sk-test"), "{request}");
}

#[actix_rt::test]
async fn a_server_that_does_not_know_the_job_says_so() {
    let (url, server) = serve_once("404 Not Found", r#"{"detail":"Sync job not found"}"#.into());
    let err = run_err(replay_cmd_remote(job(1), url), None).await;
    assert!(
        matches!(err, ReplayError::JobNotFound(id) if id == job(1)),
        "{err}"
    );
    server.join().unwrap();

    let (url, server) = serve_once("500 Internal Server Error", "boom".into());
    let err = run_err(replay_cmd_remote(job(1), url), None).await;
    assert!(
        err.to_string().contains("500") && err.to_string().contains("boom"),
        "{err}"
    );
    server.join().unwrap();
}

fn replay_cmd_remote(id: Uuid, url: String) -> DebugCommand {
    DebugCommand::Replay {
        job_id: Some(id),
        file: None,
        to_version: None,
        json: false,
        server: server_args(url),
    }
}

#[test]
fn relative_times_read_in_seconds_up_to_an_hour() {
    use render::relative;
    assert_eq!(relative(Duration::zero()), "+0.000s");
    assert_eq!(relative(Duration::milliseconds(2301)), "+2.301s");
    assert_eq!(relative(Duration::milliseconds(3_599_999)), "+3599.999s");
    assert_eq!(relative(Duration::milliseconds(3_723_004)), "+1h02m03.004s");
    assert_eq!(
        relative(Duration::milliseconds(-4)),
        "-0.004s",
        "clock skew stays visible"
    );
}
