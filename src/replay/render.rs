//! Output for people and for machines.
//!
//! Text output is a table with aligned columns; every time is shown absolute (UTC, to the
//! millisecond) with the time since the job was created beside it, because "when" in a
//! debugging session usually means "how long after the start". With `color` (a terminal),
//! headers are bold and the final state is highlighted; without it the text is plain, so
//! that it can be piped, grepped and compared in tests. JSON output is JSON Lines.

use super::check::{Issue, Problem, VerifyReport};
use super::timeline::Replay;
use super::ReplayError;
use chrono::{DateTime, Duration, Utc};
use std::fmt::Write as _;
use syncjobs_domain::{EntityCounts, Event, JobState, JobStatus, RecordedEvent, SyncJobEvent};

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const CYAN: &str = "36";

/// ANSI styling that is a no-op when off.
#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn apply(self, text: &str, codes: &[&str]) -> String {
        if self.0 && !codes.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", codes.join(";"))
        } else {
            text.to_owned()
        }
    }
}

fn status_colour(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Completed => GREEN,
        JobStatus::Failed => RED,
        JobStatus::Cancelled | JobStatus::Cancelling => YELLOW,
        JobStatus::Running => CYAN,
        JobStatus::Pending => DIM,
    }
}

/// One cell: its text and the ANSI codes to show it with (on a terminal).
struct Cell {
    text: String,
    style: Vec<&'static str>,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell {
            text,
            style: Vec::new(),
        }
    }
}

/// Columns padded to their widest cell. Styles wrap the text only, never the padding, so
/// that escape codes never shift a column.
struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    fn new(columns: &[(&'static str, bool)]) -> Self {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn render(&self, out: &mut String, paint: Paint) {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.text.chars().count())
                .chain([self.header[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let header: Vec<Cell> = self
            .header
            .iter()
            .map(|h| Cell {
                text: (*h).to_owned(),
                style: vec![BOLD],
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i].saturating_sub(cell.text.chars().count()));
                let text = paint.apply(&cell.text, &cell.style);
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(&text);
                } else {
                    line.push_str(&text);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// `2025-01-01T00:00:02.301Z`.
pub fn absolute(t: DateTime<Utc>) -> String {
    syncjobs_domain::time::millis(&t)
}

/// `+2.301s`, `+182.400s`, `+1h02m03.004s`: seconds up to an hour (easy to compare with a
/// timeout given in seconds), hours and minutes beyond.
pub fn relative(d: Duration) -> String {
    let sign = if d < Duration::zero() { '-' } else { '+' };
    let ms = d.num_milliseconds().unsigned_abs();
    let (secs, ms) = (ms / 1000, ms % 1000);
    if secs < 3600 {
        format!("{sign}{secs}.{ms:03}s")
    } else {
        format!(
            "{sign}{}h{:02}m{:02}.{ms:03}s",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// The nonzero counters, `inserted=5 failed=1`, or `0`.
pub fn counts_text(c: &EntityCounts) -> String {
    let fields = [
        ("inserted", c.inserted),
        ("updated", c.updated),
        ("deleted", c.deleted),
        ("kept", c.kept),
        ("skipped", c.skipped),
        ("failed", c.failed),
    ];
    let parts: Vec<String> = fields
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "0".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Said after the counts of a final event that took them from the destination (the run's
/// own report was lost: a crash, a forced cancel), so a reader knows where they came from.
fn reconciled_text(reconciled: bool) -> &'static str {
    if reconciled {
        " (reconciled from the destination)"
    } else {
        ""
    }
}

/// What matters about an event, on one line.
pub fn essentials(e: &RecordedEvent) -> String {
    let Event::Job(event) = &e.event else {
        // Not a job event: a job stream holding one is already broken; show the raw data.
        return serde_json::to_value(&e.event)
            .ok()
            .and_then(|v| v.get("data").map(|d| d.to_string()))
            .unwrap_or_default();
    };
    match event {
        SyncJobEvent::JobCreated {
            source_connection_id,
            short_name,
            ..
        } => format!("source={short_name} source_connection={source_connection_id}"),
        SyncJobEvent::JobStarted { worker } if worker.is_empty() => String::new(),
        SyncJobEvent::JobStarted { worker } => format!("worker={worker}"),
        SyncJobEvent::ProgressRecorded { counts } | SyncJobEvent::JobCompleted { counts } => {
            format!("counts: {}", counts_text(counts))
        }
        SyncJobEvent::JobFailed {
            error,
            error_category,
            counts,
            counts_reconciled,
        } => {
            let category = error_category
                .as_deref()
                .map(|c| format!(" category={c}"))
                .unwrap_or_default();
            format!(
                "error={error:?}{category} counts: {}{}",
                counts_text(counts),
                reconciled_text(*counts_reconciled)
            )
        }
        SyncJobEvent::CancelRequested {
            requested_by,
            timeout_seconds,
        } => format!("requested_by={requested_by} timeout={timeout_seconds}s"),
        SyncJobEvent::Cancelled {
            counts,
            note,
            counts_reconciled,
        } => {
            let note = note
                .as_deref()
                .map(|n| format!(" note={n:?}"))
                .unwrap_or_default();
            format!(
                "counts: {}{}{note}",
                counts_text(counts),
                reconciled_text(*counts_reconciled)
            )
        }
        SyncJobEvent::JobResumed {
            attempt,
            lost_worker,
            last_seen,
            counts,
            counts_reconciled,
            handed_back,
        } => {
            let why = if *handed_back {
                format!("handed back by {lost_worker} (draining)")
            } else {
                let seen = last_seen
                    .map(|at| format!(" last_seen={}", absolute(at)))
                    .unwrap_or_default();
                format!("lost_worker={lost_worker}{seen}")
            };
            format!(
                "attempt={attempt} {why} counts: {}{}",
                counts_text(counts),
                reconciled_text(*counts_reconciled)
            )
        }
        SyncJobEvent::ForceCancelled {
            timeout_seconds,
            requested_at,
            counts,
            counts_reconciled,
            ..
        } => format!(
            "timeout={timeout_seconds}s requested_at={} counts: {}{}",
            absolute(*requested_at),
            counts_text(counts),
            reconciled_text(*counts_reconciled)
        ),
    }
}

/// The time relative times are measured from: when the job was created (its JobCreated),
/// or the first event of a stream that lacks one.
fn origin(events: &[RecordedEvent]) -> Option<DateTime<Utc>> {
    events
        .iter()
        .find(|e| matches!(e.job_event(), Some(SyncJobEvent::JobCreated { .. })))
        .or(events.first())
        .map(|e| e.recorded_at)
}

fn since(origin: Option<DateTime<Utc>>, t: DateTime<Utc>) -> String {
    origin.map(|o| relative(t - o)).unwrap_or_default()
}

fn dash() -> String {
    "-".to_owned()
}

/// `syncjobs events`: one line per event.
pub fn events_text(events: &[RecordedEvent], color: bool) -> String {
    let origin = origin(events);
    let mut table = Table::new(&[
        ("VER", true),
        ("RECORDED AT", false),
        ("SINCE CREATED", true),
        ("TYPE", false),
        ("BY", false),
        ("DETAILS", false),
    ]);
    for e in events {
        let by = if e.metadata.caused_by.is_empty() {
            dash()
        } else {
            e.metadata.caused_by.clone()
        };
        table.rows.push(vec![
            e.version.to_string().into(),
            absolute(e.recorded_at).into(),
            since(origin, e.recorded_at).into(),
            e.event_type().to_owned().into(),
            by.into(),
            essentials(e).into(),
        ]);
    }
    let mut out = String::new();
    table.render(&mut out, Paint(color));
    out
}

/// `syncjobs replay`: the state after each event, the state reached, then any problem.
/// `stream_end` is the stream's last version, to say when time travel stopped short of it.
pub fn replay_text(replay: &Replay, issues: &[Issue], stream_end: u64, color: bool) -> String {
    let paint = Paint(color);
    // The fold only accepts a stream that starts with JobCreated: the first step is the creation.
    let origin = replay.steps.first().map(|s| s.event.recorded_at);
    let mut table = Table::new(&[
        ("VER", true),
        ("RECORDED AT", false),
        ("SINCE CREATED", true),
        ("EVENT", false),
        ("STATUS", false),
        ("COUNTS", false),
        ("STARTED", true),
        ("ENDED", true),
        ("WATCHDOG DEADLINE", false),
    ]);
    let last = replay.steps.len().saturating_sub(1);
    for (i, step) in replay.steps.iter().enumerate() {
        let s = &step.state;
        let rel = |t: Option<DateTime<Utc>>| t.map(|t| since(origin, t)).unwrap_or_else(dash);
        let watchdog = s
            .watchdog_deadline()
            .map(|d| format!("{} ({})", absolute(d), since(origin, d)))
            .unwrap_or_else(dash);
        let status = Cell {
            text: s.status.to_string(),
            style: if i == last && replay.failure.is_none() {
                vec![BOLD, status_colour(s.status)]
            } else {
                Vec::new()
            },
        };
        table.rows.push(vec![
            step.event.version.to_string().into(),
            absolute(step.event.recorded_at).into(),
            since(origin, step.event.recorded_at).into(),
            step.event.event_type().to_owned().into(),
            status,
            counts_text(&s.counts).into(),
            rel(s.started_at).into(),
            rel(s.completed_at).into(),
            watchdog.into(),
        ]);
    }
    let mut out = String::new();
    table.render(&mut out, paint);

    if let Some(f) = &replay.failure {
        let line = format!(
            "v{} {} does not fold: {}",
            f.event.version,
            f.event.event_type(),
            f.error
        );
        let _ = writeln!(out, "\n{}", paint.apply(&line, &[BOLD, RED]));
    }
    if let Some(state) = replay.last_state() {
        out.push('\n');
        state_block(
            &mut out,
            state,
            origin,
            stream_end,
            replay.failure.is_some(),
            paint,
        );
    }
    // The failure line above already tells why the fold stopped; list everything else.
    let failed_at = replay.failure.as_ref().map(|f| f.event.global_position);
    let issues: Vec<&Issue> = issues
        .iter()
        .filter(|i| {
            !(i.global_position == failed_at
                && matches!(
                    i.problem,
                    Problem::DoesNotFold(_) | Problem::NotAJobEvent(_)
                ))
        })
        .collect();
    if !issues.is_empty() {
        let _ = writeln!(out, "\n{}", paint.apply("problems:", &[BOLD, RED]));
        for issue in issues {
            let _ = writeln!(out, "  {issue}");
        }
    }
    out
}

/// The state reached, every field on its own line.
fn state_block(
    out: &mut String,
    s: &JobState,
    origin: Option<DateTime<Utc>>,
    stream_end: u64,
    stopped_by_failure: bool,
    paint: Paint,
) {
    let heading = if stopped_by_failure {
        format!("state after v{} (the last event that folded):", s.version)
    } else if s.version < stream_end {
        format!(
            "state after v{} (time travel: the stream goes on to v{stream_end}):",
            s.version
        )
    } else if s.status.is_final() {
        format!("state after v{} (final):", s.version)
    } else {
        format!("state after v{} (latest, not final):", s.version)
    };
    let status = paint.apply(s.status.as_str(), &[BOLD, status_colour(s.status)]);
    let _ = writeln!(out, "{} {status}", paint.apply(&heading, &[BOLD]));
    let when = |t: DateTime<Utc>| format!("{}  {}", absolute(t), since(origin, t));
    let mut fields: Vec<(&str, String)> = vec![
        ("job", s.job_id.to_string()),
        (
            "source",
            format!("{} ({})", s.short_name, s.source_connection_id),
        ),
        ("counts", counts_text(&s.counts)),
        ("created", when(s.created_at)),
    ];
    if let Some(t) = s.started_at {
        fields.push(("started", when(t)));
    }
    if let Some(t) = s.cancel_requested_at {
        fields.push(("cancel requested", when(t)));
    }
    if let Some(t) = s.watchdog_deadline() {
        fields.push(("watchdog deadline", when(t)));
    }
    if let Some(t) = s.completed_at {
        fields.push(("ended", when(t)));
    }
    if let Some(d) = s.duration_seconds() {
        fields.push(("duration", format!("{d:.3}s")));
    }
    if let Some(e) = &s.error {
        let category = s
            .error_category
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        fields.push(("error", format!("{e}{category}")));
    }
    if let Some(d) = &s.error_details {
        fields.push(("details", d.to_string()));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
}

/// The state as JSON: the job state plus its watchdog deadline, which the fold derives.
fn state_json(s: &JobState) -> Result<serde_json::Value, ReplayError> {
    let mut v = serde_json::to_value(s).map_err(std::io::Error::from)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "watchdog_deadline".into(),
            serde_json::to_value(s.watchdog_deadline()).map_err(std::io::Error::from)?,
        );
    }
    Ok(v)
}

/// `syncjobs replay --json`: JSON Lines, one `{"kind":"step",..}` per event with the state
/// it produced, then `{"kind":"failure",..}` if the fold stopped and one
/// `{"kind":"problem",..}` per issue.
pub fn replay_json(replay: &Replay, issues: &[Issue]) -> Result<String, ReplayError> {
    let mut out = String::new();
    let origin = replay.steps.first().map(|s| s.event.recorded_at);
    for step in &replay.steps {
        let e = &step.event;
        let line = serde_json::json!({
            "kind": "step",
            "version": e.version,
            "global_position": e.global_position,
            "recorded_at": e.recorded_at,
            "since_created_ms": origin.map(|o| (e.recorded_at - o).num_milliseconds()),
            "type": e.event_type(),
            "caused_by": e.metadata.caused_by,
            "event": e.event,
            "state": state_json(&step.state)?,
        });
        let _ = writeln!(out, "{line}");
    }
    if let Some(f) = &replay.failure {
        let line = serde_json::json!({
            "kind": "failure",
            "version": f.event.version,
            "global_position": f.event.global_position,
            "type": f.event.event_type(),
            "error": f.error.to_string(),
        });
        let _ = writeln!(out, "{line}");
    }
    for issue in issues {
        let line = serde_json::json!({
            "kind": "problem",
            "stream": issue.stream,
            "version": issue.version,
            "global_position": issue.global_position,
            "problem": issue.problem.to_string(),
        });
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

/// `syncjobs verify`: a summary, then one line per problem.
pub fn verify_text(report: &VerifyReport, color: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checked {} events in {} streams (global log up to position {})",
        report.events, report.streams, report.head
    );
    if report.is_clean() {
        let ok = "ok: every stream folds and keeps its invariants";
        let _ = writeln!(out, "{}", paint.apply(ok, &[BOLD, GREEN]));
        return out;
    }
    out.push('\n');
    let mut table = Table::new(&[
        ("STREAM", false),
        ("VER", true),
        ("POSITION", true),
        ("PROBLEM", false),
    ]);
    let opt = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(dash);
    for issue in &report.issues {
        table.rows.push(vec![
            Cell {
                text: issue
                    .stream
                    .clone()
                    .unwrap_or_else(|| "(unreadable)".to_owned()),
                style: vec![RED],
            },
            opt(issue.version).into(),
            opt(issue.global_position).into(),
            issue.problem.to_string().into(),
        ]);
    }
    table.render(&mut out, paint);
    let bad = report.bad_streams().len();
    let unreadable = report.issues.iter().filter(|i| i.stream.is_none()).count();
    let mut summary = format!(
        "FAILED: {} problem{} in {bad} stream{}",
        report.issues.len(),
        plural(report.issues.len()),
        plural(bad)
    );
    if unreadable > 0 {
        let _ = write!(
            summary,
            " and {unreadable} unreadable event{}",
            plural(unreadable)
        );
    }
    let _ = writeln!(out, "\n{}", paint.apply(&summary, &[BOLD, RED]));
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
