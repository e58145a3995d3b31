//! Logs: `tracing` to stderr, pretty or JSON, filtered by `SYNCJOBS_LOG`. Request logs carry
//! method, path, status and latency, never headers (API keys travel in one) or bodies.
//!
//! Lines reach stderr through a [`BatchWriter`]: one `write` per batch instead of one locked
//! `write` per line, which took 8% of the server's CPU at one access-log line per request
//! (BENCHMARKS.md #2). No line is dropped and the buffer is bounded; what is pending is
//! written at exit (`main` returning, `process::exit`, a SIGTERM's graceful stop) and before
//! a panic message. Only a kill that skips all of that (SIGKILL, a SIGTERM before the server
//! listens) can lose lines, those of the last few milliseconds.

use crate::config::LogFormat;
use std::cell::Cell;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The writer of the installed subscriber, for the exit and panic hooks.
static LOGS: OnceLock<BatchWriter> = OnceLock::new();

/// Writes the pending log lines when dropped: `main` holds it until everything else has
/// stopped, so the last lines come before a failure's message.
#[must_use = "dropping the guard writes the pending lines; hold it until the end of main"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Installs the global subscriber. A second call (tests) keeps the first one.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = BatchWriter::new(io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_timer(UtcMicros)
        .with_writer(writer.clone());
    let installed = match format {
        LogFormat::Pretty => builder.event_format(TextFormat::new(UtcMicros)).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_err() || LOGS.set(writer.clone()).is_err() {
        return LogGuard(());
    }
    // Without its thread (none could be started) the writer writes each line itself.
    if let Err(e) = writer.start() {
        tracing::warn!(error = %e, "cannot start the log writer thread; writing logs unbatched");
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The lines leading up to the panic go out before its message.
        if let Some(logs) = LOGS.get() {
            logs.write_pending();
        }
        previous(info);
    }));
    // SAFETY: registers a plain `extern "C" fn` taking no arguments, as atexit requires.
    if unsafe { libc::atexit(close_at_exit) } != 0 {
        tracing::warn!("cannot register the log flush at exit; the last lines may be lost");
    }
    LogGuard(())
}

/// Writes what is pending and makes later lines go straight out. Runs when `main` returns
/// or the process calls `exit`; no other thread is stopped yet, so their last lines count.
extern "C" fn close_at_exit() {
    // Unwinding out of an `extern "C"` fn aborts; there is nothing useful to do on a panic.
    let _ = std::panic::catch_unwind(|| {
        if let Some(logs) = LOGS.get() {
            logs.close();
        }
    });
}

/// Writes the log lines pending now (a caller about to write to stderr itself).
pub fn flush() {
    if let Some(logs) = LOGS.get() {
        logs.write_pending();
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

/// tracing's default text format, except that [`access_log`] lines (one per request) are
/// written straight into the line, without the generic field formatting and styling
/// machinery that made up most of their cost (5% of the CPU of a `GET`, bench #2). The
/// bytes are the same, which a test checks; with colours, or inside a span, the default
/// format writes them.
pub struct TextFormat<T> {
    timer: T,
    default: Format<Full, T>,
}

impl<T: FormatTime + Clone> TextFormat<T> {
    pub fn new(timer: T) -> Self {
        TextFormat {
            default: tracing_subscriber::fmt::format().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for TextFormat<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_LOG || writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.default.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(ACCESS_LOG)?;
        writer.write_str(": ")?;
        let mut fields = AccessFields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// Writes an access-log event's fields as tracing's default visitor does: `message` bare,
/// the others `name=value`, separated by spaces.
struct AccessFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl AccessFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }
}

impl Visit for AccessFields<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| {
                let mut digits = [0u8; 20];
                let mut at = digits.len();
                let mut rest = value;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (rest % 10) as u8;
                    rest /= 10;
                    if rest == 0 {
                        break;
                    }
                }
                let text = std::str::from_utf8(&digits[at..]).map_err(|_| fmt::Error)?;
                self.writer.write_str(text)
            });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            // `message` is access_log's own literal: nothing in it to escape.
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// For tests: logs only when `TEST_LOG` is set, as zero2prod does.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Dropped at once: the exit hook writes a test process's last lines.
        drop(init("info,syncjobs=debug", LogFormat::Pretty));
    }
}

/// After a write, the writer thread waits this long before the next one, so that lines
/// arriving meanwhile leave together. A line after a quiet spell goes out at once.
const LINGER: Duration = Duration::from_millis(10);

/// Pending bytes past which a line is not buffered: its thread writes the batch and the
/// line itself (the destination is slower than the logging), which bounds the memory.
const MAX_PENDING: usize = 1 << 20;

/// A log destination written in batches by a thread of its own, in the order lines came.
///
/// Until [`BatchWriter::start`] and after [`BatchWriter::close`] each line is written by the
/// thread that logs it, as a plain writer would.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread when a line arrives while it is idle.
    wake: Condvar,
    /// The destination. Taken before `pending` by whoever writes a batch, so batches (and
    /// direct lines) reach it in the order they were taken.
    out: Mutex<Box<dyn Write + Send>>,
}

struct Pending {
    lines: Vec<u8>,
    /// The writer thread waits on `wake`: the next line must wake it.
    idle: bool,
    /// No writer thread (not started, or closed): lines are written directly.
    direct: bool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while writing a log line leaves consistent bytes behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BatchWriter {
    pub fn new(out: impl Write + Send + 'static) -> BatchWriter {
        BatchWriter {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending {
                    lines: Vec::new(),
                    idle: false,
                    direct: true,
                }),
                wake: Condvar::new(),
                out: Mutex::new(Box::new(out)),
            }),
        }
    }

    /// Starts the writer thread; from then on lines are batched.
    pub fn start(&self) -> io::Result<()> {
        let shared = self.shared.clone();
        lock(&self.shared.pending).direct = false;
        let started = std::thread::Builder::new()
            .name("syncjobs-log".into())
            .spawn(move || shared.run());
        if started.is_err() {
            lock(&self.shared.pending).direct = true;
        }
        started.map(drop)
    }

    /// Writes the pending lines now.
    pub fn write_pending(&self) {
        self.shared.write_pending(&mut Vec::new());
    }

    /// Writes the pending lines and stops batching: later lines are written directly, and
    /// the writer thread ends.
    pub fn close(&self) {
        let mut out = lock(&self.shared.out);
        let lines = {
            let mut p = lock(&self.shared.pending);
            p.direct = true;
            std::mem::take(&mut p.lines)
        };
        self.shared.wake.notify_one();
        let _ = out.write_all(&lines);
        let _ = out.flush();
    }

    fn append(&self, line: &[u8]) -> io::Result<()> {
        let mut p = lock(&self.shared.pending);
        if p.direct {
            drop(p);
            return lock(&self.shared.out).write_all(line);
        }
        if p.lines.len() + line.len() > MAX_PENDING {
            // The destination is behind: this thread writes, and waits for it like others.
            drop(p);
            let mut out = lock(&self.shared.out);
            let earlier = std::mem::take(&mut lock(&self.shared.pending).lines);
            out.write_all(&earlier)?;
            return out.write_all(line);
        }
        p.lines.extend_from_slice(line);
        if p.idle {
            p.idle = false;
            drop(p);
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Shared {
    /// The writer thread: writes what is pending, lingers, and sleeps on `wake` when there
    /// is nothing; ends once the writer is closed and nothing is left.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut p = lock(&self.pending);
                while p.lines.is_empty() && !p.direct {
                    p.idle = true;
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                p.idle = false;
                if p.lines.is_empty() {
                    return;
                }
            }
            self.write_pending(&mut batch);
            std::thread::sleep(LINGER);
        }
    }

    /// Swaps the pending lines with `batch` (empty, its capacity reused) and writes them.
    fn write_pending(&self, batch: &mut Vec<u8>) {
        let mut out = lock(&self.out);
        std::mem::swap(&mut lock(&self.pending).lines, batch);
        if !batch.is_empty() {
            // Like tracing's own writers: a log line that cannot be written is not an error
            // of the request that logged it.
            let _ = out.write_all(batch);
            let _ = out.flush();
            batch.clear();
        }
    }
}

impl Write for &BatchWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// `2026-04-23T10:00:00.123456Z`, as tracing's default timer writes it, with the part up to
/// the second formatted once a second per thread rather than on every line.
#[derive(Clone, Copy)]
pub struct UtcMicros;

thread_local! {
    /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write_timestamp(w, now)
    }
}

fn write_timestamp(w: &mut impl fmt::Write, since_epoch: Duration) -> fmt::Result {
    let secs = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let Some(t) = i64::try_from(secs)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        else {
            return Err(fmt::Error);
        };
        let text = t.format("%Y-%m-%dT%H:%M:%S").to_string();
        match <[u8; 19]>::try_from(text.as_bytes()) {
            Ok(bytes) => {
                prefix = bytes;
                SECOND.set((secs, prefix));
            }
            // Years past 9999 do not fit the cache.
            Err(_) => return write!(w, "{text}.{:06}Z", since_epoch.subsec_micros()),
        }
    }
    let mut fraction = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
    w.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn log(w: &BatchWriter, line: &str) {
        (&mut &*w).write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_once_closed() {
        let sink = Sink::default();
        let w = BatchWriter::new(sink.clone());
        w.start().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        log(&w, &format!("thread {t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        w.close();
        log(&w, "after close\n");
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4 * 5_000 + 1);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..5_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, whole and in its order");
        }
        assert_eq!(lines.last(), Some(&"after close"));
    }

    #[test]
    fn pending_lines_are_written_on_demand_and_a_burst_past_the_bound_is_kept() {
        let sink = Sink::default();
        let w = BatchWriter::new(sink.clone());
        w.start().unwrap();
        let line = "x".repeat(999) + "\n";
        let count = 3 * MAX_PENDING / line.len();
        for _ in 0..count {
            log(&w, &line);
        }
        assert!(lock(&w.shared.pending).lines.len() <= MAX_PENDING);
        w.write_pending();
        assert_eq!(sink.text().len(), count * line.len());
    }

    #[test]
    fn an_unstarted_writer_writes_each_line_at_once() {
        let sink = Sink::default();
        let w = BatchWriter::new(sink.clone());
        log(&w, "one\n");
        assert_eq!(sink.text(), "one\n");
    }

    #[derive(Clone)]
    struct FixedTime;

    impl FormatTime for FixedTime {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-04-23T10:00:00.123456Z")
        }
    }

    /// What `emit` logs, through [`TextFormat`] (`fast`) or tracing's default format.
    fn render(fast: bool, ansi: bool, emit: &dyn Fn()) -> String {
        let sink = Sink::default();
        let out = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(ansi)
            .with_timer(FixedTime)
            .with_writer(move || out.clone());
        let dispatch: tracing::Dispatch = if fast {
            builder
                .event_format(TextFormat::new(FixedTime))
                .finish()
                .into()
        } else {
            builder.finish().into()
        };
        tracing::dispatcher::with_default(&dispatch, emit);
        sink.text()
    }

    #[test]
    fn access_lines_read_exactly_as_tracing_writes_them() {
        let requests = || {
            access_log("GET", "/source-connections/a/jobs/b", 200, 61);
            access_log("POST", "/collections?x=%20y", 503, 0);
            access_log("DELETE", "/", 404, u64::MAX);
            tracing::info!(other = 1, "not an access line");
        };
        let fast = render(true, false, &requests);
        assert_eq!(fast, render(false, false, &requests));
        assert!(
            fast.starts_with(
                "2026-04-23T10:00:00.123456Z  INFO syncjobs::access: request method=GET \
                 path=/source-connections/a/jobs/b status=200 micros=61\n"
            ),
            "{fast}"
        );
        assert!(fast.contains(" ERROR syncjobs::access: request method=POST"));
        let in_span = || tracing::info_span!("job", id = 7).in_scope(requests);
        assert_eq!(
            render(true, false, &in_span),
            render(false, false, &in_span)
        );
        assert_eq!(
            render(true, true, &requests),
            render(false, true, &requests)
        );
    }

    #[test]
    fn timestamps_read_like_rfc_3339_with_microseconds() {
        for (secs, nanos) in [
            (1_776_938_400, 123_456_789),
            (1_776_938_400, 0),
            (1_776_938_401, 999_999_999),
            (0, 1_000),
        ] {
            let t = Duration::new(secs, nanos);
            let mut text = String::new();
            write_timestamp(&mut text, t).unwrap();
            let expected = chrono::DateTime::from_timestamp(secs as i64, nanos)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(text, expected);
        }
    }
}
