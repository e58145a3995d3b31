//! The debugging subcommands: `events`, `replay`, `export`, `verify`.
//!
//! `main` parses [`DebugCommand`] (flattened into its own subcommands), opens the store if
//! it can, and calls [`run`] with stdout. Everything here only reads: debugging never
//! appends to the log it is looking at.

use super::check::{check_stream, verify};
use super::history::{export_line, fetch_job, import_jsonl, load_job};
use super::render::{events_text, replay_json, replay_text, verify_text};
use super::timeline::replay;
use super::ReplayError;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use syncjobs_domain::{EventStore, RecordedEvent};
use uuid::Uuid;

/// Reading a job's events from a running server instead of the local store.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ServerArgs {
    /// Base URL of a running syncjobs server (e.g. http://localhost:8001); without it the
    /// local store is read.
    #[arg(long, value_name = "URL", requires = "source_connection")]
    pub server: Option<String>,
    /// API key for --server.
    #[arg(
        long,
        env = "SYNCJOBS_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// The job's source connection (the server's job routes live under it).
    #[arg(long, value_name = "ID")]
    pub source_connection: Option<Uuid>,
}

/// "What happened to job X, and when?"
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum DebugCommand {
    /// List a job's events, one per line: version, recorded time, type, the essentials.
    Events {
        job_id: Uuid,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the state after each event of a job, folded by the service's own code.
    /// Exit code 1 if the history does not fold or breaks an invariant.
    Replay {
        /// The job to replay (from the store, or from --server).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        job_id: Option<Uuid>,
        /// Replay an exported history (`syncjobs export`) instead: no store needed.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Stop after this stream version (time travel).
        #[arg(long, value_name = "N")]
        to_version: Option<u64>,
        /// JSON Lines for machines: one object per step, then failures and problems.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a job's history as JSON Lines, to replay anywhere with `replay --file`.
    Export {
        job_id: Uuid,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replay every stream in the store through the current code; report each stream that
    /// does not fold or breaks an invariant. Exit code 1 if any.
    Verify,
}

/// Whether stdout deserves colour: a terminal, and the user did not opt out (NO_COLOR).
pub fn color_for_stdout() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Runs one debugging command, writing its output to `out`; `color` for a terminal.
///
/// `store` is the local event store, or why there is none (then only `replay --file` and
/// `--server` work, and the others say why). Returns the process exit code: 0, or 1 when `replay` or `verify`
/// found a broken history. An `Err` means the question could not be answered at all (no
/// such job, unreadable file, store or server down).
pub async fn run(
    cmd: DebugCommand,
    store: Result<Arc<dyn EventStore>, String>,
    out: &mut dyn Write,
    color: bool,
) -> Result<u8, ReplayError> {
    match cmd {
        DebugCommand::Events { job_id, server } => {
            let events = job_events(job_id, &server, &store).await?;
            out.write_all(events_text(&events, color).as_bytes())?;
            Ok(0)
        }
        DebugCommand::Replay {
            job_id,
            file,
            to_version,
            json,
            server,
        } => {
            let events = match (file, job_id) {
                (Some(path), _) => read_file(path).await?,
                (None, Some(job_id)) => job_events(job_id, &server, &store).await?,
                (None, None) => {
                    return Err(ReplayError::Usage("replay needs a job id or --file".into()))
                }
            };
            let stream_end = events.iter().map(|e| e.version).max().unwrap_or(0);
            let considered = match to_version {
                Some(n) if n == 0 || n > stream_end => {
                    return Err(ReplayError::NoSuchVersion {
                        requested: n,
                        last: stream_end,
                    })
                }
                Some(n) => &events[..events.iter().take_while(|e| e.version <= n).count()],
                None => &events[..],
            };
            let replayed = replay(considered, None);
            let issues = check_stream(considered);
            let text = if json {
                replay_json(&replayed, &issues)?
            } else {
                replay_text(&replayed, &issues, stream_end, color)
            };
            out.write_all(text.as_bytes())?;
            Ok(u8::from(replayed.failure.is_some() || !issues.is_empty()))
        }
        DebugCommand::Export { job_id, server } => {
            let events = job_events(job_id, &server, &store).await?;
            let mut text = String::new();
            for e in &events {
                text.push_str(&export_line(e)?);
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
            Ok(0)
        }
        DebugCommand::Verify => {
            let store = store.map_err(ReplayError::NoStore)?;
            let report = verify(store.as_ref()).await?;
            out.write_all(verify_text(&report, color).as_bytes())?;
            Ok(u8::from(!report.is_clean()))
        }
    }
}

async fn job_events(
    job_id: Uuid,
    server: &ServerArgs,
    store: &Result<Arc<dyn EventStore>, String>,
) -> Result<Vec<RecordedEvent>, ReplayError> {
    if server.server.is_some() {
        return fetch_job(server, job_id).await;
    }
    let store = store
        .as_ref()
        .map_err(|why| ReplayError::NoStore(why.clone()))?;
    load_job(store.as_ref(), job_id).await
}

/// Reads an export off the async workers (a file read blocks).
async fn read_file(path: PathBuf) -> Result<Vec<RecordedEvent>, ReplayError> {
    let shown = path.display().to_string();
    let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
        .await
        .map_err(|e| ReplayError::ReadFile {
            path: shown.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| ReplayError::ReadFile {
            path: shown.clone(),
            source,
        })?;
    let events = import_jsonl(&text)?;
    if events.is_empty() {
        return Err(ReplayError::Usage(format!("{shown} holds no events")));
    }
    Ok(events)
}
