//! `/metrics`: the service's figures in the Prometheus text format.
//!
//! One [`Metrics`] per [`crate::startup::Application`] registers and describes every metric
//! (prometheus-client: an explicit registry rather than a global recorder, so two apps in one
//! test process keep their own figures). They are fed at a few points only:
//! - HTTP: [`track_request`], a middleware, labels by the matched route's pattern
//!   ([`RoutePattern`], set on each resource by `api::routes`), never the raw path.
//! - Appends: [`MeteredStore`] wraps whatever backend runs, so every write (the one command
//!   path, the bootstrap key) is timed once, generic over backends, and counts its events
//!   by type.
//! - Jobs by status and cancel latency: [`follow_jobs`], one follower of the log that keeps
//!   the unfinished jobs (folded with the job aggregate) and moves the gauges on each
//!   transition; it never re-reads history per scrape.
//! - Lags and open streams are read at scrape time from what already keeps them.
//!
//! `/metrics` needs no key: it holds totals only (no tenant, no job id), every label comes
//! from a fixed set, so a scrape is bounded and cheap.

use crate::api::AppState;
use crate::bus::RelayMonitor;
use crate::duty::DutyMonitor;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use syncjobs_domain::{
    Aggregate, Event, EventStore, ExpectedVersion, Job, JobStatus, NewEvent, RecordedEvent,
    StoreError, SyncJobEvent, WorkerEvent,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The encoder writes OpenMetrics text (Prometheus' text format with `# EOF` and `# UNIT`),
/// which Prometheus scrapes as such.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The matched route's label, put on each resource as app data: the middleware reads it
/// from the answered request without matching the path again.
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(&'static str);

impl RoutePattern {
    /// The label of an endpoint's path: its pattern with `{param}` written `:param`
    /// (`/source-connections/:source_connection_id/run`), since parsers of the text format
    /// that split labels at `}` are common. Fixed by the endpoint table, so bounded.
    pub fn of(path: &'static str) -> RoutePattern {
        static LABELS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
        let labels = LABELS.get_or_init(|| {
            crate::api::endpoints()
                .iter()
                .map(|e| (e.path, e.path.replace('{', ":").replace('}', "")))
                .collect()
        });
        RoutePattern(labels.get(path).map_or("unmatched", String::as_str))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the service exposes (README, "Metrics").
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    events: Family<TypeLabel, Counter>,
    jobs: Family<StatusLabel, Gauge>,
    cancel_latency: Histogram,
    force_cancels: Counter,
    job_resumes: Counter,
    workers_lost: Counter,
    append_duration: Histogram,
    append_batch: Histogram,
    projection_lag: Gauge,
    relay_lag: Gauge,
    sse_open: Gauge,
    relay: OnceLock<(RelayMonitor, DutyMonitor)>,
    duty_held: Family<DutyLabel, Gauge>,
    duty_taken: Family<DutyLabel, Gauge>,
    duties: OnceLock<Vec<DutyMonitor>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DutyLabel {
    duty: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~13 s: a GET answered from memory up to a slow append.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("syncjobs");
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            events: Family::default(),
            jobs: Family::default(),
            // 10 ms .. ~20 min: a cooperative cancel up to the watchdog's longest timeout.
            cancel_latency: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            force_cancels: Counter::default(),
            job_resumes: Counter::default(),
            workers_lost: Counter::default(),
            append_duration: latency_histogram(),
            append_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            projection_lag: Gauge::default(),
            relay_lag: Gauge::default(),
            sse_open: Gauge::default(),
            relay: OnceLock::new(),
            duty_held: Family::default(),
            duty_taken: Family::default(),
            duties: OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by method and route pattern",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        registry.register(
            "events",
            "Events this process appended to the log, by event type (a job's transitions)",
            m.events.clone(),
        );
        registry.register(
            "jobs",
            "Unfinished jobs in the log by status (pending, running, cancelling)",
            m.jobs.clone(),
        );
        registry.register_with_unit(
            "cancel_latency",
            "From a job's CancelRequested to its final event (recorded_at to recorded_at)",
            Unit::Seconds,
            m.cancel_latency.clone(),
        );
        registry.register(
            "force_cancels",
            "Jobs the watchdog force-cancelled (ForceCancelled events)",
            m.force_cancels.clone(),
        );
        registry.register(
            "job_resumes",
            "Jobs made pending again because their worker was lost, restarted or drained \
             (JobResumed events, followed in the log since this process started)",
            m.job_resumes.clone(),
        );
        registry.register(
            "workers_lost",
            "Workers declared lost (WorkerLost events, followed in the log since this \
             process started)",
            m.workers_lost.clone(),
        );
        registry.register_with_unit(
            "store_append_duration",
            "Time of one append to the event store, until durable",
            Unit::Seconds,
            m.append_duration.clone(),
        );
        registry.register(
            "store_append_batch_events",
            "Events per append to the event store",
            m.append_batch.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Events the read model is behind the log's head",
            m.projection_lag.clone(),
        );
        registry.register(
            "relay_lag_events",
            "Events the NATS relay is behind the log's head (0 without a relay)",
            m.relay_lag.clone(),
        );
        registry.register(
            "duty_held",
            "1 while this node holds the duty's lease and runs it (nats-relay, \
             webhook-dispatcher), 0 while it stands by",
            m.duty_held.clone(),
        );
        registry.register(
            "duty_taken",
            "How many times this node took the duty's lease since it started",
            m.duty_taken.clone(),
        );
        registry.register(
            "sse_streams_open",
            "Server-sent event streams being served",
            m.sse_open.clone(),
        );
        // Each status shows (at 0) before its first job.
        for status in [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Cancelling,
        ] {
            let _ = m.jobs.get_or_create(&StatusLabel {
                status: status.as_str(),
            });
        }
        Metrics { registry, ..m }
    }

    /// The relay whose lag `/metrics` shows while this node runs it (set once at start-up,
    /// when NATS is configured).
    pub fn watch_relay(&self, monitor: RelayMonitor, duty: DutyMonitor) {
        let _ = self.relay.set((monitor, duty));
    }

    /// The duties whose lease `/metrics` shows (set once at start-up).
    pub fn watch_duties(&self, duties: Vec<DutyMonitor>) {
        for d in &duties {
            let _ = self.duty_held.get_or_create(&DutyLabel { duty: d.name() });
        }
        let _ = self.duties.set(duties);
    }

    /// The registry in the text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn observe_request(&self, method: &Method, route: &'static str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    fn set_status(&self, status: JobStatus, by: i64) {
        if status.is_final() {
            return;
        }
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc_by(by);
    }

    /// Moves the gauges by one job event; `job` is the job before it, folded after it here.
    fn job_event(&self, job: &mut Job, event: &RecordedEvent) {
        let before = job.0.as_ref().map(|s| (s.status, s.cancel_requested_at));
        if let Err(e) = job.evolve(event) {
            tracing::warn!(stream = %event.stream_id, error = %e, "metrics: a job event does not fold");
            return;
        }
        let Some(after) = job.0.as_ref().map(|s| s.status) else {
            return;
        };
        if let Some((status, _)) = before {
            self.set_status(status, -1);
        }
        self.set_status(after, 1);
        if let Event::Job(e) = &event.event {
            if matches!(e, SyncJobEvent::ForceCancelled { .. }) {
                self.force_cancels.inc();
            }
            if matches!(e, SyncJobEvent::JobResumed { .. }) {
                self.job_resumes.inc();
            }
            if matches!(
                e,
                SyncJobEvent::Cancelled { .. } | SyncJobEvent::ForceCancelled { .. }
            ) {
                if let Some((_, Some(requested_at))) = before {
                    let seconds = (event.recorded_at - requested_at)
                        .to_std()
                        .map_or(0.0, |d| d.as_secs_f64());
                    self.cancel_latency.observe(seconds);
                }
            }
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    // A fixed set: an unknown method string must not make a new series.
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`.
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    let head = *state.store.watch_head().borrow();
    m.projection_lag
        .set(head.saturating_sub(state.projection.position()) as i64);
    if let Some((relay, duty)) = m.relay.get() {
        // A standby relays nothing: it lags nothing.
        let lag = if duty.holding() {
            relay.status().lag
        } else {
            0
        };
        m.relay_lag.set(lag as i64);
    }
    for d in m.duties.get().into_iter().flatten() {
        let label = DutyLabel { duty: d.name() };
        let s = d.status();
        m.duty_held
            .get_or_create(&label)
            .set(i64::from(s.state == crate::duty::DutyState::Holding));
        m.duty_taken.get_or_create(&label).set(s.taken as i64);
    }
    m.sse_open.set(state.streams.open() as i64);
    match m.encode() {
        Ok(body) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(body),
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot encode");
            HttpResponse::InternalServerError()
                .json(serde_json::json!({"detail": "cannot encode metrics"}))
        }
    }
}

/// The HTTP middleware: counts and times every request by its route pattern (`unmatched`
/// for a path no route serves). A stream's time is until its head is sent, not its end.
pub async fn track_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let res = next.call(req).await?;
    let req = res.request();
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        let route = req.app_data::<RoutePattern>().map_or("unmatched", |p| p.0);
        let seconds = started.elapsed().as_secs_f64();
        state
            .metrics
            .observe_request(req.method(), route, res.status().as_u16(), seconds);
    }
    Ok(res)
}

/// An [`EventStore`] that times each append and counts what it wrote; everything else
/// passes through.
pub struct MeteredStore {
    inner: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn EventStore>, metrics: Arc<Metrics>) -> Arc<dyn EventStore> {
        Arc::new(MeteredStore { inner, metrics })
    }
}

#[async_trait]
impl EventStore for MeteredStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let started = Instant::now();
        let n = events.len();
        let recorded = self.inner.append(stream, expected, events).await?;
        self.metrics
            .append_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.append_batch.observe(n as f64);
        for e in &recorded {
            self.metrics
                .events
                .get_or_create(&TypeLabel {
                    r#type: e.event.event_type(),
                })
                .inc();
        }
        Ok(recorded)
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    fn read_recent(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        self.inner.read_recent(after, limit)
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn write_failure(&self) -> Option<String> {
        self.inner.write_failure()
    }

    fn connection_failure(&self) -> Option<String> {
        self.inner.connection_failure()
    }

    async fn heartbeat(
        &self,
        worker: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner.heartbeat(worker, at).await
    }

    async fn heartbeats(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        self.inner.heartbeats().await
    }

    async fn forget_heartbeat(&self, worker: &str) -> Result<(), StoreError> {
        self.inner.forget_heartbeat(worker).await
    }

    async fn try_lease(
        &self,
        duty: &str,
        holder: &str,
    ) -> Result<syncjobs_domain::store::LeaseTry, StoreError> {
        self.inner.try_lease(duty, holder).await
    }
}

/// Keeps `syncjobs_jobs{status}` and the cancel figures from the log: first the jobs that
/// were unfinished at `position` (`unfinished`, named by the read model; each folded from
/// its own stream up to `position`), then every job event after it. Holds only unfinished
/// jobs. Stops when `stop` is cancelled or the store closes.
pub fn follow_jobs(
    store: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
    position: u64,
    unfinished: Vec<Uuid>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let run = async {
            let mut jobs: HashMap<String, Job> = HashMap::new();
            for id in unfinished {
                let stream = syncjobs_domain::events::stream::job(id);
                let events = match store.read_stream(&stream, 0).await {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "metrics: cannot read a job");
                        continue;
                    }
                };
                let mut job = Job::initial();
                for event in events.iter().filter(|e| e.global_position <= position) {
                    metrics.job_event(&mut job, event);
                }
                if job.0.as_ref().is_some_and(|s| !s.status.is_final()) {
                    jobs.insert(stream, job);
                }
            }
            let mut log = syncjobs_domain::follow_batches(store.clone(), position);
            while let Some(batch) = log.next().await {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: cannot read the log");
                        continue;
                    }
                };
                for event in &batch {
                    if let Event::Worker(WorkerEvent::WorkerLost { .. }) = event.event {
                        metrics.workers_lost.inc();
                    }
                    if !matches!(event.event, Event::Job(_)) {
                        continue;
                    }
                    let created =
                        matches!(event.event, Event::Job(SyncJobEvent::JobCreated { .. }));
                    let job = match jobs.get_mut(&event.stream_id) {
                        Some(job) => job,
                        None if created => jobs
                            .entry(event.stream_id.clone())
                            .or_insert_with(Job::initial),
                        // A job finished before we started following.
                        None => continue,
                    };
                    metrics.job_event(job, event);
                    if job.0.as_ref().is_some_and(|s| s.status.is_final()) {
                        jobs.remove(&event.stream_id);
                    }
                }
            }
        };
        tokio::select! {
            () = run => {}
            () = stop.cancelled() => {}
        }
    });
}
