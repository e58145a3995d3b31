//! Wiring: the read model (its database + catch-up), start-up keys, and the HTTP server.
//!
//! [`Application::build`] takes the event store as a parameter so that tests can inject one
//! (zero2prod's shape: build, read the bound port, `run_until_stopped`).

use crate::api::live::LiveJobs;
use crate::api::{self, error::extractor_error, AppState, HealthProbe};
use crate::app;
use crate::app::keys::{self, Bootstrap, KeysError, NewKey};
use crate::backend::ReadModelAt;
use crate::bus::{RelayConfig, RelayDuty, RelayMonitor};
use crate::config::{Role, Settings};
use crate::duty::{self, spawn_duty, DutyHandle, DutyMonitor};
use crate::metrics::{follow_jobs, MeteredStore, Metrics};
use crate::telemetry;
use crate::webhooks::dispatch::DispatcherDuty;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::KeepAlive;
use actix_web::middleware::{from_fn, Next, NormalizePath};
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_actors::pipeline::EntitySink;
use syncjobs_actors::{
    start_supervisor, JobSettings, Jobs, Recovery, SupervisorRole, SupervisorSettings, SyncRunner,
};
use syncjobs_domain::redact::redact;
use syncjobs_domain::{EventStore, SharedClock};
use syncjobs_projections::{
    spawn_projector, Projection, ProjectorConfig, ProjectorHandle, ReadError,
};
use tokio_util::sync::CancellationToken;

/// How long start-up waits for the read model to catch up with the log before serving.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a connection being closed (after an error answer, or a response to a request
/// whose body was not read) may linger so the client reads the answer before the reset.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the projector looks for events appended by other processes.
const EXTERNAL_WRITES_POLL: Duration = Duration::from_secs(1);

/// What the application is built from; tests pass their own.
pub struct Components {
    pub store: Arc<dyn EventStore>,
    pub clock: SharedClock,
    /// Where syncs write (counts for GET, purge for DELETE); the runner writes to it too.
    pub destination: Arc<dyn EntitySink>,
    /// What runs a sync: the pipeline over `destination` in production.
    pub runner: Arc<dyn SyncRunner>,
    pub job_settings: JobSettings,
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// Where the read model lives (with the store: see [`ReadModelAt`]).
    pub read_model: ReadModelAt,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("API keys: {0}")]
    Keys(#[from] KeysError),
    #[error("the read model did not catch up with the event log: {0}")]
    CatchUp(#[from] syncjobs_projections::Lagging),
    #[error("{0}")]
    ReadModel(#[from] ReadError),
    #[error("NATS relay: {0}")]
    Relay(String),
    #[error("webhook dispatcher: {0}")]
    Webhooks(String),
    /// A role or node setting this store cannot serve.
    #[error("{0}")]
    Node(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The relay's line on `/health`: its lease (`duty`), and while this node holds it, how
/// far it got.
struct RelayProbe {
    relay: RelayMonitor,
    duty: DutyMonitor,
}

impl HealthProbe for RelayProbe {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn status(&self) -> serde_json::Value {
        let mut line = serde_json::to_value(self.relay.status()).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(fields) = &mut line {
            fields.insert(
                "duty".into(),
                serde_json::to_value(self.duty.status()).unwrap_or(serde_json::Value::Null),
            );
        }
        line
    }

    /// While this node runs it: disconnected, or more events behind the log than the read
    /// model may be. A standby is healthy: another node relays.
    fn healthy(&self) -> bool {
        if !self.duty.holding() {
            return true;
        }
        let s = self.relay.status();
        s.connected && s.lag <= crate::api::health::MAX_HEALTHY_LAG
    }
}

/// The `duties` line on `/health`: for each duty, whether this node holds it or stands by.
struct DutiesProbe(Vec<DutyMonitor>);

impl HealthProbe for DutiesProbe {
    fn name(&self) -> &'static str {
        "duties"
    }

    fn status(&self) -> serde_json::Value {
        let mut all = serde_json::Map::new();
        for d in &self.0 {
            all.insert(
                d.name().into(),
                serde_json::to_value(d.status()).unwrap_or(serde_json::Value::Null),
            );
        }
        serde_json::Value::Object(all)
    }

    /// A duty nobody may be running: this node could not even ask for its lease.
    fn healthy(&self) -> bool {
        self.0.iter().all(|d| !d.status().unreachable)
    }
}

/// This node's line on `/health`: who it is and what it does.
struct NodeProbe {
    id: String,
    role: Role,
    capacity: Option<usize>,
}

impl HealthProbe for NodeProbe {
    fn name(&self) -> &'static str {
        "node"
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id, "role": self.role.as_str(), "capacity": self.capacity })
    }
}

/// A role other than `all` shares the store with other processes: only the PostgreSQL
/// store (with its read model and destination in the same database) is made for that. The
/// embedded store cannot be followed safely by another process, and on KurrentDB each node
/// would write its own destination.
pub fn check_role(role: Role, backend: &str) -> Result<(), StartupError> {
    if role == Role::All || backend == "postgres" {
        return Ok(());
    }
    Err(StartupError::Node(format!(
        "--role {} needs the PostgreSQL store that every node shares (SYNCJOBS_STORE=postgres://...); \
         this store is '{backend}', which another process cannot follow safely: run `--role all` on it",
        role.as_str()
    )))
}

fn supervisor_role(role: Role) -> SupervisorRole {
    match role {
        Role::All => SupervisorRole::All,
        Role::Api => SupervisorRole::Api,
        Role::Worker => SupervisorRole::Worker,
    }
}

pub struct Application {
    port: u16,
    server: Server,
    projector: ProjectorHandle,
    relay: Option<DutyHandle>,
    dispatcher: DutyHandle,
    jobs: Jobs,
    bootstrap: Bootstrap,
    state: web::Data<AppState>,
    metrics_stop: CancellationToken,
    /// A worker drains when it stops (None: another role, which does not).
    drain: Option<std::time::Duration>,
}

impl Application {
    pub async fn build(
        settings: &Settings,
        mut c: Components,
    ) -> Result<Application, StartupError> {
        check_role(settings.role, c.store.backend())?;
        let node_id = settings.node_id().map_err(StartupError::Node)?;
        let capacity = settings.capacity();
        tracing::info!(node_id = %node_id, role = settings.role.as_str(), ?capacity, "syncjobs node starting");
        c.job_settings.worker_name = node_id.clone();
        c.job_settings.max_resumes = settings.max_resumes;
        // Every append of this process, whatever the backend, is timed for /metrics.
        let metrics = Arc::new(Metrics::new());
        c.store = MeteredStore::wrap(c.store, metrics.clone());
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartupError::DataDir {
            path: settings.data_dir.display().to_string(),
            source,
        })?;

        // The read model: its database resumes from its stored position and follows the log.
        for legacy in settings.legacy_checkpoint_paths() {
            remove_legacy_checkpoint(&legacy);
        }
        let (projection, writer) = match &c.read_model {
            ReadModelAt::DataDir => {
                let path = settings.read_model_path();
                let head = *c.store.watch_head().borrow();
                tokio::task::spawn_blocking(move || Projection::open(&path, head))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??
            }
            ReadModelAt::Postgres(url, timeouts) => {
                Projection::open_postgres(url.expose(), false, *timeouts).await?
            }
        };
        // Set before the first fold: a rebuild makes no message past retention.
        writer
            .set_retention(settings.webhook_retention(c.clock.clone()))
            .await;
        let projector = spawn_projector(
            c.store.clone(),
            writer,
            ProjectorConfig {
                // Keys made by `syncjobs keys create` (another process) show up within this.
                poll_every: Some(EXTERNAL_WRITES_POLL),
            },
        );
        let head = *c.store.watch_head().borrow();
        let started = Instant::now();
        projection.wait_for(head, CATCH_UP_TIMEOUT).await?;
        tracing::info!(position = head, took = ?started.elapsed(), "read model caught up");

        let bootstrap =
            keys::bootstrap(&c.store, &c.clock, settings.bootstrap_api_key.as_deref()).await?;
        projection
            .wait_for(bootstrap.position, CATCH_UP_TIMEOUT)
            .await?;

        // The NATS relay, a reader of the log like the projector; it shows on /health.
        let mut probes = c.probes;
        probes.push(Arc::new(NodeProbe {
            id: node_id.clone(),
            role: settings.role,
            capacity,
        }));
        // The duties one node performs at a time (src/duty.rs): the NATS relay (a reader of
        // the log like the projector) and the webhook dispatcher. Each node contends for
        // both; the one holding a duty's lease runs it, the others stand by.
        let mut duties = Vec::new();
        let relay = match &settings.nats_url {
            Some(url) => {
                let mut cfg = RelayConfig::new(url.clone(), settings.relay_cursor_path());
                cfg.stream_name = settings.nats_stream.clone();
                cfg.subject_prefix = settings.nats_subject_prefix.clone();
                cfg.validate()
                    .map_err(|e| StartupError::Relay(redact(&e.to_string()).into_owned()))?;
                let duty = RelayDuty::new(c.store.clone(), cfg);
                let monitor = duty.monitor();
                let handle = spawn_duty(c.store.clone(), duty::RELAY, node_id.clone(), duty);
                probes.push(Arc::new(RelayProbe {
                    relay: monitor.clone(),
                    duty: handle.monitor(),
                }));
                metrics.watch_relay(monitor, handle.monitor());
                duties.push(handle.monitor());
                tracing::info!(url = %url, "NATS relay: contending for its lease");
                Some(handle)
            }
            None => None,
        };

        // Webhook deliveries: the read model has caught up with the log, so every attempt an
        // earlier process recorded is folded and none is made twice.
        let dispatcher_duty = DispatcherDuty::new(
            c.store.clone(),
            c.clock.clone(),
            projection.clone(),
            settings.webhooks(),
        )
        .map_err(|e| StartupError::Webhooks(e.to_string()))?;
        let dispatcher = spawn_duty(
            c.store.clone(),
            duty::DISPATCHER,
            node_id.clone(),
            dispatcher_duty,
        );
        duties.push(dispatcher.monitor());
        probes.push(Arc::new(DutiesProbe(duties.clone())));
        metrics.watch_duties(duties);

        // The write side: recovers unfinished jobs before it takes commands. The read model
        // has just caught up with the log's head, so it names them; each is then rebuilt from
        // its own stream.
        let folded = projection.position();
        let unfinished = projection.read(async |m| m.unfinished_jobs().await).await?;
        let metrics_stop = CancellationToken::new();
        follow_jobs(
            c.store.clone(),
            metrics.clone(),
            folded,
            unfinished.clone(),
            metrics_stop.clone(),
        );
        let jobs = start_supervisor(
            c.store.clone(),
            c.runner,
            c.clock.clone(),
            SupervisorSettings {
                cancel_timeout: settings.cancel_timeout(),
                job: c.job_settings,
                recovery: Recovery::Jobs(unfinished),
                role: supervisor_role(settings.role),
                capacity,
                // The read model named the unfinished jobs as of this position: the log is
                // followed from there, so no job created since is missed.
                follow_after: Some(folded),
                liveness: settings.liveness(),
            },
        );
        jobs.ready().await;

        // Started before the server takes requests: every live stream subscribes to it.
        let live = LiveJobs::start(c.store.clone());
        let state = web::Data::new(AppState {
            app: app::App {
                store: c.store,
                clock: c.clock,
                jobs: jobs.clone(),
                projection,
                destination: c.destination,
                settings: settings.app(),
            },
            http: settings.api(),
            probes,
            streams: Default::default(),
            live,
            metrics,
        });

        let listener = TcpListener::bind(&settings.bind).map_err(|source| StartupError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        let port = listener.local_addr()?.port();
        let server = serve(listener, state.clone(), settings)?;
        if settings.handle_signals {
            // actix stops on the same signals; the event streams must end for its graceful
            // stop to finish before the shutdown timeout.
            let streams = state.streams.clone();
            actix_web::rt::spawn(async move {
                stop_signal().await;
                streams.close_all();
            });
        }
        tracing::info!(address = %listener_address(settings, port), "syncjobs listening");
        Ok(Application {
            port,
            server,
            projector,
            relay,
            dispatcher,
            jobs,
            bootstrap,
            state,
            metrics_stop,
            drain: (settings.role == Role::Worker)
                .then(|| std::time::Duration::from_secs(settings.drain_seconds)),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key made at a first start with no key at all: the caller prints it once.
    pub fn take_generated_key(&mut self) -> Option<NewKey> {
        self.bootstrap.generated.take()
    }

    /// Stops the server from outside (tests); `stop(true)` lets in-flight requests finish.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until stopped (SIGTERM/SIGINT, or the handle): stops taking requests, lets
    /// in-flight ones (and their appends) finish, stops the job actors (unfinished jobs are
    /// recovered from the log at the next start), then stops the projector (whatever it
    /// folded is already committed).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("HTTP server stopped; stopping job actors and the projector");
        self.state.live.shutdown();
        self.metrics_stop.cancel();
        if let Some(bound) = self.drain {
            match self.jobs.drain(bound).await {
                Ok(handed_back) => tracing::info!(handed_back, "drained"),
                Err(error) => tracing::error!(%error, "drain did not finish; recovery decides"),
            }
        }
        self.jobs.shutdown().await;
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
        self.dispatcher.shutdown().await;
        self.projector.shutdown().await;
        result
    }
}

/// An earlier release's checkpoint (JSON or binary snapshot) is of no use to this one (the
/// read model lives in its database, rebuilt from the log when new): remove it rather than
/// leave a large file that nothing reads. A failure to remove it changes nothing else.
fn remove_legacy_checkpoint(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(
            path = %path.display(),
            "removed a read-model checkpoint of an earlier format; the read model is rebuilt from the log"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old read-model checkpoint")
        }
    }
}

/// SIGTERM or SIGINT (Ctrl-C). A signal that cannot be listened to never fires.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn listener_address(settings: &Settings, port: u16) -> String {
    match settings.bind.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{}:{port}", settings.bind),
    }
}

fn serve(
    listener: TcpListener,
    state: web::Data<AppState>,
    settings: &Settings,
) -> std::io::Result<Server> {
    let workers = settings
        .http_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let role = settings.role;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| extractor_error(e, "query string")),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| extractor_error(e, "path")))
            .configure(|cfg| match role {
                Role::Worker => api::configure_worker(cfg),
                Role::All | Role::Api => api::configure(cfg),
            })
            .default_service(web::to(api::not_found))
            // `/collections/` and `//collections` route as `/collections`.
            .wrap(NormalizePath::trim())
            .wrap(from_fn(crate::metrics::track_request))
            .wrap(from_fn(log_request))
    })
    .listen(listener)?
    .workers(workers)
    .shutdown_timeout(settings.shutdown_timeout_seconds)
    // The client timeouts, set here rather than left to actix's defaults (README,
    // "HTTP limits"): a slow first request head is cut with 408, an idle keep-alive
    // connection is closed, and each worker holds a bounded number of connections. Bodies
    // are bounded by the handlers that read them (`SYNCJOBS_BODY_TIMEOUT_MS`).
    .client_request_timeout(Duration::from_millis(settings.header_timeout_ms))
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    .keep_alive(match settings.keep_alive_seconds {
        0 => KeepAlive::Disabled,
        s => KeepAlive::Timeout(Duration::from_secs(s)),
    })
    .max_connections(settings.max_connections.max(1))
    // Nagle off: an event stream writes small messages one after another, and with Nagle
    // each one behind an unacknowledged one waited for the client's delayed ACK (40 ms on
    // Linux): bench #14 saw a job's `cancelled` reach its stream ~30 ms after a GET showed it.
    .tcp_nodelay(true);
    if !settings.handle_signals {
        server = server.disable_signals();
    }
    Ok(server.run())
}

/// The access log: one line per request ([`telemetry::access_log`]), with the path as the
/// client sent it (before `NormalizePath`). The URI is kept by reference count rather than
/// copied: this runs on every request.
async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = next.call(req).await?;
    let micros = started.elapsed().as_micros() as u64;
    telemetry::access_log(method.as_str(), uri.path(), res.status().as_u16(), micros);
    Ok(res)
}
