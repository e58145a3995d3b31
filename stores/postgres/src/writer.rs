//! The node's one writer: it takes every append waiting, takes the database-wide append
//! lock, checks each append's expected version, inserts the winners in one statement and
//! commits once (group commit). See the crate docs for why appends are serialised.

use crate::error::{connection_gone, is_unique_violation, pool_error, store_error};
use crate::store::{clamp, timed_out, Shared, POOL_SIZE};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::{NewEvent, RecordedEvent, CURRENT_SCHEMA_VERSION};
use syncjobs_domain::{ExpectedVersion, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The advisory lock key every append transaction holds until it commits ("syncjobs" + 1).
pub const APPEND_LOCK: i64 = 0x7379_6e63_6a6f_6201;

/// The channel a commit notifies, with its last position as the payload.
pub const NOTIFY_CHANNEL: &str = "syncjobs_events";

/// The most appends one commit carries: bounds the time the append lock is held.
pub const MAX_BATCH: usize = 512;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";
pub(crate) const VERSIONS: &str = include_str!("sql/versions.sql");
pub(crate) const INSERT: &str = include_str!("sql/insert.sql");

type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

pub(crate) type Reply = oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>;

/// One append waiting for the writer; bodies are serialised by the appender.
pub(crate) struct Request {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<Prepared>,
    pub reply: Reply,
}

pub(crate) struct Prepared {
    pub event: NewEvent,
    pub data: String,
    pub recorded_at_ns: i64,
}

/// Runs until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::new();
    let mut answered = 0;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        linger(&mut rx, &mut batch, answered).await;
        answered = batch.len();
        commit(&shared, std::mem::take(&mut batch)).await;
    }
}

/// The longest the writer waits for the appenders its last commit answered.
const MAX_LINGER: Duration = Duration::from_millis(1);

/// The fewest appends a commit must have answered for the writer to wait for them.
const LINGER_MIN_GROUP: usize = 4;

/// Concurrent appenders come back together right after a commit answers them; while the
/// next commit holds the lock they could not join it. Waiting briefly for them (at most
/// [`MAX_LINGER`], and only when the last commit answered several) lets one commit carry
/// them all instead of alternating half-full batches.
async fn linger(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>, answered: usize) {
    if answered < LINGER_MIN_GROUP {
        return;
    }
    let deadline = tokio::time::Instant::now() + MAX_LINGER;
    while batch.len() < answered.min(MAX_BATCH) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(request)) => batch.push(request),
            _ => return,
        }
    }
}

/// One append's outcome before the commit: where its events go, or its answer.
enum Planned {
    /// Its events take positions `position..` and versions `after + 1..`.
    Insert {
        position: u64,
        after: u64,
    },
    Done(Result<Vec<RecordedEvent>, StoreError>),
}

/// The batch's rows, one vector per column (the INSERT's arrays).
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    stream: Vec<String>,
    version: Vec<i64>,
    event_id: Vec<Uuid>,
    event_type: Vec<&'static str>,
    schema_version: Vec<i32>,
    data: Vec<String>,
    recorded_at_ns: Vec<i64>,
    causation_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<Uuid>>,
    caused_by: Vec<String>,
}

async fn commit(shared: &Shared, batch: Vec<Request>) {
    let mut outcome = try_commit(shared, &batch).await;
    // Nothing was written: a pooled connection the server had closed (a restart, an idle
    // timeout, a terminated backend). Again on the next one, before anyone sees a 503: each
    // try drops a dead connection from the pool, so the pool's size bounds the tries.
    for _ in 0..POOL_SIZE {
        let Err(Failure::Lost(e)) = &outcome else {
            break;
        };
        tracing::debug!(error = %e, "append connection lost before its commit; trying again");
        outcome = try_commit(shared, &batch).await;
    }
    match outcome {
        Ok((planned, head)) => {
            let mut answers = Vec::with_capacity(batch.len());
            let mut inserted = Vec::new();
            for (request, planned) in batch.into_iter().zip(planned) {
                let Request {
                    stream,
                    events,
                    reply,
                    ..
                } = request;
                let answer = match planned {
                    Planned::Done(answer) => answer,
                    Planned::Insert { position, after } => {
                        let events = recorded(stream, events, position, after);
                        inserted.extend(events.iter().cloned());
                        Ok(events)
                    }
                };
                answers.push((reply, answer));
            }
            // Kept before the head moves: the followers it wakes find them in memory.
            shared.remember(inserted);
            if let Some(head) = head {
                shared.committed(head);
            }
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
        Err(e) if is_conflict_race(&e) && batch.len() > 1 => {
            // A writer that does not take the lock beat us to a version: decide each
            // append on its own, so only the one it concerns fails.
            for request in batch {
                Box::pin(commit(shared, vec![request])).await;
            }
        }
        Err(e) => {
            let e = match e {
                Failure::Unique { stream, expected } => {
                    conflict_after_race(shared, stream, expected).await
                }
                Failure::Store(e) | Failure::Lost(e) => e,
            };
            shared.failed(&e);
            for request in batch {
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

enum Failure {
    /// The unique (stream, version) index refused the batch: a writer that does not take
    /// the append lock wrote a version first. Names the batch's first append.
    Unique {
        stream: String,
        expected: ExpectedVersion,
    },
    /// The connection broke before `COMMIT` was sent: nothing was written.
    Lost(StoreError),
    Store(StoreError),
}

fn is_conflict_race(e: &Failure) -> bool {
    matches!(e, Failure::Unique { .. })
}

/// The batch's one append lost a version to a writer outside the lock: its conflict, with
/// the stream's version as it is now.
async fn conflict_after_race(
    shared: &Shared,
    stream: String,
    expected: ExpectedVersion,
) -> StoreError {
    match shared.stream_version(&stream).await {
        Ok(actual) => StoreError::Conflict {
            stream,
            expected,
            actual,
        },
        Err(e) => e,
    }
}

/// Checks and inserts the batch in one transaction under the append lock. Returns each
/// append's plan and the new head (None: nothing was written).
///
/// Two round trips: `BEGIN`, the lock and the versions go in one flight, the INSERT, the
/// NOTIFY and `COMMIT` in the next (pipelined: sent together, run in order). The lock is
/// held from the first flight's lock to the commit, across one round trip and the flush.
async fn try_commit(
    shared: &Shared,
    batch: &[Request],
) -> Result<(Vec<Planned>, Option<u64>), Failure> {
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| Failure::Store(pool_error(&e)))?;
    let limit = shared.timeouts.operation;
    // Past the limit the outcome is unknown (COMMIT may have been sent): as with a
    // connection lost during COMMIT, the appenders hear "unavailable", never a retry here.
    let committed = match tokio::time::timeout(limit, commit_on(&client, batch)).await {
        Ok(committed) => committed,
        Err(_) => Err(Failure::Store(timed_out(limit))),
    };
    if committed.is_err() {
        // Its transaction may still be open: closed, not returned to the pool (closing it
        // ends the transaction).
        drop(deadpool_postgres::Object::take(client));
    }
    committed
}

async fn commit_on(
    client: &deadpool_postgres::ClientWrapper,
    batch: &[Request],
) -> Result<(Vec<Planned>, Option<u64>), Failure> {
    let store = |e: tokio_postgres::Error| {
        if connection_gone(&e) {
            Failure::Lost(store_error(&e))
        } else {
            Failure::Store(store_error(&e))
        }
    };
    // Prepared once per connection.
    let (lock, read_versions, insert, notify) = futures::try_join!(
        client.prepare_cached(LOCK),
        client.prepare_cached(VERSIONS),
        client.prepare_cached(INSERT),
        client.prepare_cached(NOTIFY),
    )
    .map_err(store)?;
    let mut streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    // The versions are a statement of their own, run after the lock's: under READ
    // COMMITTED it reads a snapshot taken after the previous holder's commit became visible.
    let (lock_params, versions_params): ([&Param<'_>; 1], [&Param<'_>; 1]) =
        ([&APPEND_LOCK], [&streams]);
    let (begun, locked, rows) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&lock, &lock_params),
        client.query(&read_versions, &versions_params),
    );
    begun.map_err(store)?;
    locked.map_err(store)?;
    let rows = rows.map_err(store)?;
    let mut head = 0u64;
    let mut versions: HashMap<String, u64> = HashMap::new();
    for row in rows {
        let stream: Option<String> = row.try_get(0).map_err(store)?;
        let n = u64::try_from(row.try_get::<_, i64>(1).map_err(store)?).unwrap_or(0);
        match stream {
            None => head = n,
            Some(s) => {
                versions.insert(s, n);
            }
        }
    }
    let first = head;
    let mut cols = Columns::default();
    let mut planned = Vec::with_capacity(batch.len());
    for r in batch {
        let actual = versions.get(&r.stream).copied().unwrap_or(0);
        if !r.expected.matches(actual) {
            planned.push(Planned::Done(Err(StoreError::Conflict {
                stream: r.stream.clone(),
                expected: r.expected,
                actual,
            })));
            continue;
        }
        if r.events.is_empty() {
            planned.push(Planned::Done(Ok(Vec::new())));
            continue;
        }
        planned.push(Planned::Insert {
            position: head + 1,
            after: actual,
        });
        for (i, p) in r.events.iter().enumerate() {
            head += 1;
            cols.position.push(clamp(head));
            cols.stream.push(r.stream.clone());
            cols.version.push(clamp(actual + i as u64 + 1));
            cols.event_id.push(p.event.event_id);
            cols.event_type.push(p.event.event.event_type());
            cols.schema_version
                .push(i32::try_from(CURRENT_SCHEMA_VERSION).unwrap_or(i32::MAX));
            cols.data.push(p.data.clone());
            cols.recorded_at_ns.push(p.recorded_at_ns);
            cols.causation_id.push(p.event.metadata.causation_id);
            cols.correlation_id.push(p.event.metadata.correlation_id);
            cols.caused_by.push(p.event.metadata.caused_by.clone());
        }
        versions.insert(r.stream.clone(), actual + r.events.len() as u64);
    }
    if head == first {
        // Conflicts and empty appends only: nothing to commit.
        client.batch_execute("ROLLBACK").await.map_err(store)?;
        return Ok((planned, None));
    }
    let head_text = head.to_string();
    let insert_params: [&Param<'_>; 11] = [
        &cols.position,
        &cols.stream,
        &cols.version,
        &cols.event_id,
        &cols.event_type,
        &cols.schema_version,
        &cols.data,
        &cols.recorded_at_ns,
        &cols.causation_id,
        &cols.correlation_id,
        &cols.caused_by,
    ];
    // Delivered to every listener when (and only if) the transaction commits.
    let notify_params: [&Param<'_>; 2] = [&NOTIFY_CHANNEL, &head_text];
    // After a failed INSERT the server answers COMMIT with a rollback.
    let (inserted, notified, committed) = futures::join!(
        client.execute(&insert, &insert_params),
        client.execute(&notify, &notify_params),
        client.batch_execute("COMMIT"),
    );
    // COMMIT was sent: a connection lost now leaves the outcome unknown, so no retry.
    let unknown = |e: tokio_postgres::Error| Failure::Store(store_error(&e));
    if let Err(e) = inserted {
        if is_unique_violation(&e) {
            let stream = batch.first().map(|r| r.stream.clone()).unwrap_or_default();
            let expected = batch.first().map_or(ExpectedVersion::Any, |r| r.expected);
            return Err(Failure::Unique { stream, expected });
        }
        return Err(unknown(e));
    }
    notified.map_err(unknown)?;
    committed.map_err(unknown)?;
    Ok((planned, Some(head)))
}

/// The envelopes of an append that committed at `position..`, after stream version `after`.
fn recorded(
    stream: String,
    events: Vec<Prepared>,
    position: u64,
    after: u64,
) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, p)| RecordedEvent {
            event_id: p.event.event_id,
            stream_id: stream.clone(),
            version: after + i as u64 + 1,
            global_position: position + i as u64,
            recorded_at: p.event.recorded_at,
            schema_version: CURRENT_SCHEMA_VERSION,
            metadata: p.event.metadata,
            event: p.event.event,
        })
        .collect()
}
