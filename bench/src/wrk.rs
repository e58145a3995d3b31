//! Runs `wrk` (the HTTP load tool of #2) and reads its summary.

use crate::error::{BenchError, Result};
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Responses that were not 2xx/3xx: any makes the run invalid.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

pub struct Load<'a> {
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
}

/// Runs wrk once with `--latency` and parses its report.
pub async fn run(wrk: &Path, load: &Load<'_>) -> Result<WrkRun> {
    let mut cmd = Command::new(wrk);
    cmd.arg("--latency")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .kill_on_drop(true);
    for (name, value) in load.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(load.url);
    let out = cmd
        .output()
        .await
        .map_err(|e| BenchError::failed(format!("cannot run {}: {e}", wrk.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::failed(format!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse(&text).ok_or_else(|| BenchError::failed(format!("cannot read wrk's report:\n{text}")))
}

fn parse(text: &str) -> Option<WrkRun> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    Some(WrkRun {
        requests_per_sec: rps?,
        p50: p50?,
        p99: p99?,
        non_2xx,
        socket_errors,
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.02s`, `2.00m`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8001/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  512.00us  20.00ms   90.00%
    Req/Sec    26.00k     1.00k   28.00k    70.00%
  Latency Distribution
     50%    1.10ms
     75%    1.40ms
     90%    1.80ms
     99%  850.00us
  520000 requests in 10.00s, 300.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:  52000.12
Transfer/sec:     30.00MB
";

    #[test]
    fn reads_the_summary() {
        let r = parse(SAMPLE).unwrap();
        assert!((r.requests_per_sec - 52000.12).abs() < 1e-6);
        assert_eq!(r.p50, Duration::from_micros(1100));
        assert_eq!(r.p99, Duration::from_micros(850));
        assert_eq!((r.non_2xx, r.socket_errors), (3, 3));
    }

    #[test]
    fn a_report_without_a_rate_is_unreadable() {
        assert!(parse("Running 10s test").is_none());
    }
}
