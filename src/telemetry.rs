//! Logs: `tracing` to stderr, pretty or JSON, filtered by `SYNCJOBS_LOG`. Request logs carry
//! method, path, status and latency, never headers (API keys travel in one) or bodies.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (tests) keeps the first one.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// For tests: logs only when `TEST_LOG` is set, as zero2prod does.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("info,syncjobs=debug", LogFormat::Pretty);
    }
}
