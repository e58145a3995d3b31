//! Logs: `tracing` to stderr, pretty or JSON, filtered by `SYNCJOBS_LOG`. Request logs carry
//! method, path, status and latency, never headers (API keys travel in one) or bodies.
//!
//! Lines reach stderr through tracing-appender's non-blocking writer: the thread that logs
//! only hands its line over, and one thread writes them, many lines per `write` (a buffer it
//! flushes whenever no more lines wait). One locked `write` per line took 8% of the server's
//! CPU at one access-log line per request (BENCHMARKS.md #2). No line is dropped: when
//! [`PENDING_LINES`] wait already, the logging thread waits too, which bounds the memory.
//! What is pending is written when the [`LogGuard`] of [`init`] is dropped (`serve` returning:
//! a SIGTERM's graceful stop, a failed start). Only a kill that skips that (SIGKILL, a
//! SIGTERM before the server listens) can lose lines, those of the last few milliseconds.

use crate::config::LogFormat;
use std::io::{self, BufWriter, IsTerminal, Write};
use tracing::Dispatch;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines waiting for the writer thread past which a logging thread waits for it: with lines
/// of 100-200 bytes, about a megabyte.
pub const PENDING_LINES: usize = 8_192;

/// Bytes the writer thread gathers before a `write`, when lines come faster than it writes.
const BATCH_BYTES: usize = 64 * 1024;

/// Keeps the log writer thread. Dropping it writes the pending lines and ends the thread;
/// later lines are lost, so hold it until the process is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber. A second call (tests) keeps the first one and returns a
/// guard holding nothing.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = batch_writer(io::stderr());
    let dispatch = subscriber(filter, format, io::stderr().is_terminal(), writer);
    match tracing::dispatcher::set_global_default(dispatch) {
        Ok(()) => LogGuard {
            _writer: Some(guard),
        },
        Err(_) => LogGuard { _writer: None },
    }
}

/// The writer of [`init`]: `out` written by a thread of its own, in batches, losing nothing.
fn batch_writer(out: impl Write + Send + Sync + 'static) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(PENDING_LINES)
        .thread_name("syncjobs-log")
        .finish(BufWriter::with_capacity(BATCH_BYTES, out))
}

/// tracing-subscriber's own formats (text lines or JSON objects, timestamps in UTC with
/// microseconds), colours only for a terminal.
fn subscriber<W>(filter: EnvFilter, format: LogFormat, ansi: bool, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => builder.finish().into(),
        LogFormat::Json => builder.json().finish().into(),
    }
}

/// Target of the access log, one line per request: `SYNCJOBS_LOG=info,syncjobs::access=warn`
/// keeps other `info` lines and drops these.
pub const ACCESS_LOG: &str = "syncjobs::access";

/// The access-log line of one request: method, path, status, latency. Never headers (API
/// keys travel in one) or bodies. An `error` for a 5xx, `info` otherwise.
pub fn access_log(method: &str, path: &str, status: u16, micros: u64) {
    if status >= 500 {
        tracing::error!(target: ACCESS_LOG, %method, %path, status, micros, "request");
    } else {
        tracing::info!(target: ACCESS_LOG, %method, %path, status, micros, "request");
    }
}

/// For tests: logs only when `TEST_LOG` is set, as zero2prod does. The writer is kept for
/// the whole test process (its last lines, at exit, may be lost).
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        std::mem::forget(init("info,syncjobs=debug", LogFormat::Pretty));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A destination the test reads back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What `emit` logs at `filter`, in `format`, through the writer [`init`] installs.
    fn render(filter: &str, format: LogFormat, emit: impl FnOnce()) -> String {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone());
        let dispatch = subscriber(EnvFilter::new(filter), format, false, writer);
        tracing::dispatcher::with_default(&dispatch, emit);
        drop(guard);
        sink.text()
    }

    /// `2026-04-23T10:00:00.123456Z` and the rest of the line.
    fn split_timestamp(line: &str) -> (&str, &str) {
        let (at, rest) = line.split_at(27);
        assert!(
            syncjobs_domain::time::parse(at).is_ok_and(|t| syncjobs_domain::time::micros(&t) == at),
            "UTC with microseconds: {line}"
        );
        (at, rest)
    }

    #[test]
    fn access_lines_carry_method_path_status_and_latency_in_text_and_json() {
        let requests = || {
            access_log("GET", "/source-connections/a/jobs/b", 200, 61);
            access_log("POST", "/collections?x=%20y", 503, 0);
        };
        let text = render("info", LogFormat::Pretty, requests);
        let lines: Vec<(&str, &str)> = text.lines().map(split_timestamp).collect();
        assert_eq!(
            lines.iter().map(|l| l.1).collect::<Vec<_>>(),
            [
                "  INFO syncjobs::access: request method=GET \
                 path=/source-connections/a/jobs/b status=200 micros=61",
                " ERROR syncjobs::access: request method=POST path=/collections?x=%20y \
                 status=503 micros=0",
            ]
        );
        let json = render("info", LogFormat::Json, requests);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        split_timestamp(first["timestamp"].as_str().unwrap());
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["target"], ACCESS_LOG);
        assert_eq!(
            first["fields"],
            serde_json::json!({"message": "request", "method": "GET",
                "path": "/source-connections/a/jobs/b", "status": 200, "micros": 61})
        );
        let quiet = render("info,syncjobs::access=warn", LogFormat::Pretty, requests);
        assert_eq!(quiet.lines().count(), 1, "only the 5xx: {quiet}");
    }

    #[test]
    fn every_line_logged_before_the_guard_drops_arrives_whole_and_in_order() {
        let text = render("info", LogFormat::Pretty, || {
            std::thread::scope(|s| {
                for t in 0..4 {
                    let dispatch = tracing::dispatcher::get_default(Clone::clone);
                    s.spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            for i in 0..5_000 {
                                tracing::info!(t, i, "line");
                            }
                        })
                    });
                }
            })
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4 * 5_000, "none lost past the pending bound");
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.split_once(&format!(" line t={t} i=")))
                .map(|(_, i)| i)
                .collect();
            let expected: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, whole and in its order");
        }
    }
}
