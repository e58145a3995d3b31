//! Where a job's history comes from (the store, a running server, an exported file) and the
//! JSON Lines format that carries a history from one deployment to any other.
//!
//! One line per event: the [`RecordedEvent`] envelope, with the body in its `{"type","data"}`
//! form and the schema versions that let any later build upcast it. Lines are plain
//! `RecordedEvent` serialisations plus one optional field, so a server answering with
//! `Vec<RecordedEvent>` speaks the same format (its bodies are already current while
//! `schema_version` may be older; that reads correctly only because upcasting a current
//! body changes nothing, so servers should prefer [`export_value`], which says so).

use super::cli::ServerArgs;
use super::ReplayError;
use serde::{Deserialize, Serialize};
use syncjobs_domain::events::stream;
use syncjobs_domain::{Event, EventStore, RecordedEvent, CURRENT_SCHEMA_VERSION};
use uuid::Uuid;

/// One exported event: the store's envelope with the body as raw JSON (read only once the
/// line says which schema it was written with), plus the schema of that body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLine {
    /// The envelope; its `schema_version` is the one the event was first written with, kept
    /// through export and import so that a history says which code wrote it. Its `event` is
    /// `{"type": .., "data": ..}`, kept as raw JSON until upcast.
    #[serde(flatten)]
    pub recorded: RecordedEvent<serde_json::Value>,
    /// The schema version of `event` as written in this line. Exports write bodies already
    /// upcast, so this is usually newer than `schema_version`. When absent (a line written by
    /// an older build, by hand, or a bare `RecordedEvent`) the body is read at
    /// `schema_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_schema_version: Option<u32>,
}

/// The export form of one event, as JSON (what `GET .../events` may answer, one per element).
pub fn export_value(e: &RecordedEvent) -> Result<serde_json::Value, ReplayError> {
    let body = serde_json::to_value(&e.event).map_err(std::io::Error::from)?;
    let line = ExportLine {
        recorded: e.clone().with_event(body),
        body_schema_version: Some(CURRENT_SCHEMA_VERSION),
    };
    Ok(serde_json::to_value(line).map_err(std::io::Error::from)?)
}

/// The export form of one event, as one line of JSON (no trailing newline).
pub fn export_line(e: &RecordedEvent) -> Result<String, ReplayError> {
    Ok(export_value(e)?.to_string())
}

/// Reads one exported event; `line` (1-based) names it in errors.
pub fn import_value(value: serde_json::Value, line: usize) -> Result<RecordedEvent, ReplayError> {
    let bad = |reason: String| ReplayError::BadLine { line, reason };
    let l: ExportLine =
        serde_json::from_value(value).map_err(|e| bad(format!("not an exported event: {e}")))?;
    let body_version = l.body_schema_version.unwrap_or(l.recorded.schema_version);
    let event = Event::from_stored(body_version, &l.recorded.event.to_string()).map_err(|e| {
        bad(format!(
            "unreadable event body (schema v{body_version}): {e}"
        ))
    })?;
    Ok(l.recorded.with_event(event))
}

/// Reads a JSON Lines export of one stream. Blank lines are skipped; anything else that is
/// not an event is an error naming its line.
pub fn import_jsonl(text: &str) -> Result<Vec<RecordedEvent>, ReplayError> {
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_start_matches('\u{feff}').trim();
        if raw.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| ReplayError::BadLine {
                line,
                reason: format!("not JSON: {e}"),
            })?;
        events.push(import_value(value, line)?);
    }
    one_stream(&events)?;
    Ok(events)
}

/// A replay folds one job: refuse a file that mixes streams rather than fold nonsense.
fn one_stream(events: &[RecordedEvent]) -> Result<(), ReplayError> {
    if let Some(first) = events.first() {
        if let Some(other) = events.iter().find(|e| e.stream_id != first.stream_id) {
            return Err(ReplayError::MixedStreams {
                first: first.stream_id.clone(),
                other: other.stream_id.clone(),
            });
        }
    }
    Ok(())
}

/// Every event of one job, from the store.
pub async fn load_job(
    store: &dyn EventStore,
    job_id: Uuid,
) -> Result<Vec<RecordedEvent>, ReplayError> {
    let events = store.read_stream(&stream::job(job_id), 0).await?;
    if events.is_empty() {
        return Err(ReplayError::JobNotFound(job_id));
    }
    Ok(events)
}

/// Every event of one job, from a running server:
/// `GET {server}/source-connections/{sc}/jobs/{job_id}/events`, a JSON array of export lines.
pub async fn fetch_job(args: &ServerArgs, job_id: Uuid) -> Result<Vec<RecordedEvent>, ReplayError> {
    let (Some(server), Some(sc)) = (&args.server, args.source_connection) else {
        return Err(ReplayError::Usage(
            "reading from a server needs --server URL and --source-connection ID".into(),
        ));
    };
    let url = format!(
        "{}/source-connections/{sc}/jobs/{job_id}/events",
        server.trim_end_matches('/')
    );
    let (status, body) = http_get(&url, args.api_key.as_deref()).await?;
    if status == 404 {
        return Err(ReplayError::JobNotFound(job_id));
    }
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body);
        return Err(ReplayError::Remote(format!(
            "GET {url}: HTTP {status}: {}",
            text.chars().take(500).collect::<String>()
        )));
    }
    let values: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ReplayError::Remote(format!("GET {url}: not a JSON array of events: {e}")))?;
    let events = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            import_value(v, i + 1).map_err(|e| match e {
                ReplayError::BadLine { line, reason } => {
                    ReplayError::Remote(format!("GET {url}: event #{line} of the answer: {reason}"))
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if events.is_empty() {
        return Err(ReplayError::JobNotFound(job_id));
    }
    one_stream(&events)?;
    Ok(events)
}

/// GET `url` with the API key: the status code and the body. Uses awc, actix's own client,
/// which shares actix-web's HTTP stack and so adds next to nothing to the build. Plain HTTP:
/// reach a TLS-only server through a tunnel, or export there and `replay --file` here.
async fn http_get(url: &str, api_key: Option<&str>) -> Result<(u16, Vec<u8>), ReplayError> {
    /// How long a debugging command waits for the server before giving up.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    /// The largest history a debugging command accepts over HTTP.
    const MAX_BODY: usize = 256 * 1024 * 1024;
    let failed = |e: &dyn std::fmt::Display| ReplayError::Remote(format!("GET {url}: {e}"));
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut request = client.get(url);
    if let Some(key) = api_key {
        request = request.insert_header(("x-api-key", key));
    }
    let mut response = request.send().await.map_err(|e| failed(&e))?;
    let status = response.status().as_u16();
    let body = response
        .body()
        .limit(MAX_BODY)
        .await
        .map_err(|e| failed(&e))?;
    Ok((status, body.to_vec()))
}
