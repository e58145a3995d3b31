//! Logs: `tracing` to stderr, pretty or JSON, filtered by `SYNCJOBS_LOG`. Request logs carry
//! method, path, status and latency, never headers (API keys travel in one) or bodies.
//!
//! Lines are handed to a dedicated writer thread: a request thread never waits on the stderr
//! lock or the pipe (under load that wait cost a sixth of the server's CPU, BENCHMARKS.md #2).
//! Nothing is dropped: when the writer falls a whole buffer behind, loggers wait for it.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (tests) keeps the first one. Keep the
/// returned guard alive until exit: dropping it flushes what is still queued.
pub fn init(filter: &str, format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("syncjobs-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}

/// For tests: logs only when `TEST_LOG` is set, as zero2prod does.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Tests end by exiting the process; what is queued then may go unwritten.
        std::mem::forget(init("info,syncjobs=debug", LogFormat::Pretty));
    }
}
