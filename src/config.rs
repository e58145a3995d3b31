//! Settings of `syncjobs serve`, from flags or `SYNCJOBS_*` environment variables (the
//! README's configuration table lists them). Defaults suit a laptop: bind to localhost,
//! keep data under `./data`.

use crate::api::ApiSettings;
use crate::backend::StoreConfig;
use std::path::PathBuf;
use std::time::Duration;
use syncjobs_domain::redact::redact_url;

/// A connection URL that may carry a password or token (`nats://user:password@host:4222`):
/// used as given, but `Debug` and `Display` mask the credentials, so printing the settings
/// (or a value in an error) never leaks them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its credentials, for the client that connects; never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl From<SecretUrl> for String {
    fn from(s: SecretUrl) -> Self {
        s.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What a `syncjobs serve` process does (README, "Roles").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The REST API and the jobs, in one process (the default).
    #[default]
    All,
    /// The REST API, event streams and replay routes; runs no job.
    Api,
    /// Runs jobs claimed from the log and the watchdog; serves only `/health` and `/metrics`.
    Worker,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }
}

/// Jobs a worker node runs at once unless `SYNCJOBS_WORKER_CAPACITY` says otherwise. A
/// node's destination writes through a pool of 8 PostgreSQL connections: two jobs per
/// connection keep the pool busy while some jobs wait on their sources, and more than that
/// would only queue at the pool while holding a source stream and memory each, and would
/// keep jobs from the other workers. An `all` node has no default bound (every job starts
/// at once, as a single process always did).
pub const DEFAULT_WORKER_CAPACITY: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// What this process does: `all` (API and jobs), `api` or `worker`. A role other than
    /// `all` needs the PostgreSQL store, which every node shares.
    #[arg(long, env = "SYNCJOBS_ROLE", value_enum, default_value = "all")]
    pub role: Role,

    /// This node's id: in JobStarted{worker} of the jobs it runs, in logs and on `/health`.
    /// Letters, digits, `.`, `_`, `-`, `:`; at most 64. Unset: one is made at each start. A
    /// worker that keeps its id across restarts resumes its own interrupted jobs at start.
    #[arg(long, env = "SYNCJOBS_NODE_ID")]
    pub node_id: Option<String>,

    /// The most jobs this node runs at once (at least 1). Default: 16 on a worker,
    /// no bound on an `all` node.
    #[arg(long, env = "SYNCJOBS_WORKER_CAPACITY", value_parser = clap::value_parser!(u32).range(1..))]
    pub worker_capacity: Option<u32>,

    /// Seconds between a worker's heartbeats, and between every job-running node's looks
    /// for silent workers (at least 1).
    #[arg(long, env = "SYNCJOBS_WORKER_HEARTBEAT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub worker_heartbeat_seconds: u64,

    /// Seconds of silence after which a worker is declared lost and its jobs rescued (at
    /// least 1; keep it a few heartbeats long, and well above the nodes' clock skew).
    #[arg(long, env = "SYNCJOBS_WORKER_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub worker_timeout_seconds: u64,

    /// How many times a job whose worker was lost (or whose process restarted) is resumed
    /// on another run before it fails naming the worker.
    #[arg(long, env = "SYNCJOBS_MAX_RESUMES", default_value_t = 1)]
    pub max_resumes: u32,

    /// Seconds a worker's graceful stop (SIGTERM/SIGINT) lets its running jobs finish
    /// before it hands the rest back.
    #[arg(long, env = "SYNCJOBS_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,

    /// Address to listen on (`host:port`; port 0 picks a free one).
    #[arg(long, env = "SYNCJOBS_BIND", default_value = "127.0.0.1:8001")]
    pub bind: String,

    /// Directory of the embedded event store, the read-model checkpoint and the destination.
    #[arg(long, env = "SYNCJOBS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The event store as a URL: `sqlite://DIR` is the embedded store in DIR,
    /// `postgres://USER@HOST:PORT/DB` a PostgreSQL database. Unset: the
    /// embedded store in the data directory.
    // Opened by `crate::backend::open`, as the `keys` commands' `StoreConfig` is.
    #[arg(
        long,
        env = "SYNCJOBS_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<SecretUrl>,

    /// An API key to accept (registered for the default organization if the store does not
    /// know it yet). For scripts and tests; never printed.
    #[arg(long, env = "SYNCJOBS_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_api_key: Option<String>,

    /// Seconds a cancelled job's worker has to confirm before the watchdog forces `cancelled`.
    #[arg(long, env = "SYNCJOBS_CANCEL_TIMEOUT_SECONDS", default_value_t = 180)]
    pub cancel_timeout_seconds: u64,

    /// Seconds a delete waits for the syncs it cancelled to reach a final state.
    #[arg(long, env = "SYNCJOBS_DELETE_WAIT_SECONDS", default_value_t = 15)]
    pub delete_wait_seconds: u64,

    /// Milliseconds a command waits for the read model to show its own write.
    #[arg(
        long,
        env = "SYNCJOBS_READ_YOUR_WRITES_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub read_your_writes_timeout_ms: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SYNCJOBS_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Milliseconds a handler waits for a request body to arrive in full; past it the answer
    /// is 408 and the connection is closed, so a client that promises a body and never sends
    /// it cannot hold a connection (and its handler) open.
    #[arg(long, env = "SYNCJOBS_BODY_TIMEOUT_MS", default_value_t = 5000)]
    pub body_timeout_ms: u64,

    /// Milliseconds a new connection has to send its first request's line and headers
    /// (actix's `client_request_timeout`); past it the server answers 408 and closes.
    /// 0 disables the limit.
    #[arg(long, env = "SYNCJOBS_HEADER_TIMEOUT_MS", default_value_t = 5000)]
    pub header_timeout_ms: u64,

    /// Seconds an idle keep-alive connection stays open between requests (0: no keep-alive).
    #[arg(long, env = "SYNCJOBS_KEEP_ALIVE_SECONDS", default_value_t = 5)]
    pub keep_alive_seconds: u64,

    /// Most connections each HTTP worker holds at once; beyond it new connections wait in
    /// the listen queue until one closes (event streams count while open).
    #[arg(long, env = "SYNCJOBS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SYNCJOBS_HTTP_WORKERS")]
    pub http_workers: Option<usize>,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SYNCJOBS_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    /// Milliseconds between heartbeats on a quiet server-sent event stream (Airweave: 30 s).
    /// A heartbeat also finds clients that went away, so their streams are dropped.
    #[arg(long, env = "SYNCJOBS_SSE_HEARTBEAT_MS", default_value_t = 30_000)]
    pub sse_heartbeat_ms: u64,

    /// Ignored, accepted so that existing deployments still start: the read model has no
    /// periodic checkpoint any more (it lives in `read_model.db` and commits every batch with
    /// its position).
    #[arg(long, env = "SYNCJOBS_CHECKPOINT_EVERY_SECONDS", default_value_t = 10)]
    pub checkpoint_every_seconds: u64,

    /// NATS server for the event relay (JetStream); without it no relay runs. May carry
    /// credentials (`nats://user:password@host:4222`, `nats://token@host:4222`): they are
    /// never printed, and `--help` does not show the variable's value.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<SecretUrl>,

    /// JetStream stream the relay publishes to (created if absent).
    #[arg(long, env = "SYNCJOBS_NATS_STREAM", default_value = crate::bus::DEFAULT_STREAM)]
    pub nats_stream: String,

    /// Subject prefix of the relayed events (`<prefix>.<organization_id>....`).
    #[arg(long, env = "SYNCJOBS_NATS_SUBJECT_PREFIX", default_value = crate::bus::DEFAULT_SUBJECT_PREFIX)]
    pub nats_subject_prefix: String,

    /// Milliseconds one webhook delivery attempt may take (connecting included); past it the
    /// attempt has failed and is retried on the schedule.
    #[arg(long, env = "SYNCJOBS_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,

    /// Seconds between a failed webhook attempt and the next, one number per retry,
    /// comma-separated (Svix's schedule by default); after the last, the delivery has failed.
    #[arg(
        long,
        env = "SYNCJOBS_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5,300,1800,7200,18000,36000",
        value_parser = parse_schedule
    )]
    pub webhook_retry_schedule: Schedule,

    /// Webhook delivery attempts in flight at once, over all subscriptions (each
    /// subscription has at most one).
    #[arg(long, env = "SYNCJOBS_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,

    /// Days webhook messages (the organization's event history) are kept, with their
    /// deliveries and attempts (Svix's 90 by default); 0 keeps them for ever.
    #[arg(long, env = "SYNCJOBS_WEBHOOK_RETENTION_DAYS", default_value_t = 90)]
    pub webhook_retention_days: u32,

    /// Hours a webhook subscription may fail every attempt (no success in between) before
    /// it is disabled (Svix's five days by default); 0 never disables one.
    #[arg(
        long,
        env = "SYNCJOBS_WEBHOOK_DISABLE_AFTER_HOURS",
        default_value_t = 120
    )]
    pub webhook_disable_after_hours: u32,

    /// Log filter (`info`, `syncjobs=debug,actix_web=info`, ...).
    #[arg(long, env = "SYNCJOBS_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        env = "SYNCJOBS_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// Handle SIGTERM/SIGINT (graceful stop). Off only for servers embedded in tests.
    #[arg(skip = true)]
    pub handle_signals: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            role: Role::All,
            node_id: None,
            worker_capacity: None,
            worker_heartbeat_seconds: 5,
            worker_timeout_seconds: 30,
            max_resumes: 1,
            drain_seconds: 20,
            bind: "127.0.0.1:8001".into(),
            data_dir: PathBuf::from("./data"),
            store: None,
            bootstrap_api_key: None,
            cancel_timeout_seconds: 180,
            delete_wait_seconds: 15,
            read_your_writes_timeout_ms: 5000,
            max_body_bytes: 256 * 1024,
            body_timeout_ms: 5000,
            header_timeout_ms: 5000,
            keep_alive_seconds: 5,
            max_connections: 10_000,
            http_workers: None,
            shutdown_timeout_seconds: 30,
            sse_heartbeat_ms: 30_000,
            checkpoint_every_seconds: 10,
            nats_url: None,
            nats_stream: crate::bus::DEFAULT_STREAM.into(),
            nats_subject_prefix: crate::bus::DEFAULT_SUBJECT_PREFIX.into(),
            webhook_timeout_ms: 15_000,
            webhook_retry_schedule: Schedule(crate::webhooks::dispatch::SVIX_SCHEDULE.to_vec()),
            webhook_concurrency: 32,
            webhook_retention_days: 90,
            webhook_disable_after_hours: 120,
            log: "info".into(),
            log_format: LogFormat::Pretty,
            handle_signals: true,
        }
    }
}

/// Delays between webhook attempts (`SYNCJOBS_WEBHOOK_RETRY_SCHEDULE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

/// `5,300,1800`: seconds, fractions allowed (`0.05`), each at most a week.
fn parse_schedule(s: &str) -> Result<Schedule, String> {
    if s.trim().is_empty() {
        return Ok(Schedule(Vec::new()));
    }
    s.split(',')
        .map(|part| {
            let secs: f64 = part
                .trim()
                .parse()
                .map_err(|_| format!("not a number of seconds: {part:?}"))?;
            if !(0.0..=7.0 * 86_400.0).contains(&secs) {
                return Err(format!("{secs} s is not between 0 and a week"));
            }
            Ok(Duration::from_secs_f64(secs))
        })
        .collect::<Result<_, _>>()
        .map(Schedule)
}

/// The read model's database file in the data directory.
pub const READ_MODEL_FILE: &str = "read_model.db";

impl Settings {
    pub fn api(&self) -> ApiSettings {
        ApiSettings {
            max_body_bytes: self.max_body_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            sse_heartbeat: Duration::from_millis(self.sse_heartbeat_ms),
        }
    }

    /// The use cases' waits on the read model.
    pub fn app(&self) -> crate::app::Settings {
        crate::app::Settings {
            read_your_writes_timeout: Duration::from_millis(self.read_your_writes_timeout_ms),
            delete_wait: Duration::from_secs(self.delete_wait_seconds),
        }
    }

    /// The webhook dispatcher's bounds and retry schedule.
    pub fn webhooks(&self) -> crate::webhooks::dispatch::DispatchConfig {
        crate::webhooks::dispatch::DispatchConfig {
            timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
            schedule: self.webhook_retry_schedule.0.clone(),
            concurrency: self.webhook_concurrency.max(1),
            disable_after: (self.webhook_disable_after_hours > 0)
                .then(|| Duration::from_secs(u64::from(self.webhook_disable_after_hours) * 3600)),
            ..Default::default()
        }
    }

    /// How long webhook messages are kept, by `clock` (None: for ever).
    pub fn webhook_retention(
        &self,
        clock: syncjobs_domain::SharedClock,
    ) -> Option<syncjobs_projections::Retention> {
        (self.webhook_retention_days > 0).then(|| syncjobs_projections::Retention {
            period: chrono::Duration::days(i64::from(self.webhook_retention_days)),
            clock,
        })
    }

    /// The jobs this node runs at once (None: no bound); see [`DEFAULT_WORKER_CAPACITY`].
    pub fn capacity(&self) -> Option<usize> {
        let set = self.worker_capacity.map(|c| c as usize);
        match self.role {
            Role::All => set,
            Role::Worker => Some(set.unwrap_or(DEFAULT_WORKER_CAPACITY)),
            Role::Api => None,
        }
    }

    /// `--node-id` if valid, else an error saying why; a new id when none is set.
    pub fn node_id(&self) -> Result<String, String> {
        match &self.node_id {
            None => Ok(format!(
                "node-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )),
            Some(id) => {
                let fits = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
                if fits {
                    Ok(id.clone())
                } else {
                    Err(format!(
                        "SYNCJOBS_NODE_ID {id:?}: use 1 to 64 letters, digits, '.', '_', '-' or ':'"
                    ))
                }
            }
        }
    }

    /// Heartbeat and timeout of worker liveness, for this process.
    pub fn liveness(&self) -> syncjobs_actors::supervisor::Liveness {
        syncjobs_actors::supervisor::Liveness {
            heartbeat: Duration::from_secs(self.worker_heartbeat_seconds.max(1)),
            timeout: Duration::from_secs(self.worker_timeout_seconds.max(1)),
            ..Default::default()
        }
    }

    pub fn cancel_timeout(&self) -> Duration {
        Duration::from_secs(self.cancel_timeout_seconds)
    }

    /// Where the event store is: `--store`, else the embedded store in the data directory.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            url: self.store.clone(),
            data_dir: self.data_dir.clone(),
        }
    }

    /// The read model's database (SQLite, beside the log).
    pub fn read_model_path(&self) -> PathBuf {
        self.data_dir.join(READ_MODEL_FILE)
    }

    /// Where earlier releases kept the read model's checkpoint (JSON, then a binary
    /// snapshot); never read now.
    pub fn legacy_checkpoint_paths(&self) -> [PathBuf; 2] {
        [
            self.data_dir.join("read_model.json"),
            self.data_dir.join("read_model.snapshot"),
        ]
    }

    /// The NATS relay's cursor file (its name predates the word: users' data dirs have it).
    pub fn relay_cursor_path(&self) -> PathBuf {
        self.data_dir.join(crate::bus::DEFAULT_CURSOR_FILE)
    }

    /// Where the embedded destination keeps synced entities (`entities.db`); on a
    /// PostgreSQL store they live in its database instead (`backend::open_destination`).
    pub fn destination_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn flag_defaults_match_the_default_settings() {
        let parsed = Cli::try_parse_from(["syncjobs"]).unwrap().settings;
        let d = Settings::default();
        // Environment variables of the test process could override; compare what they don't set.
        if std::env::var_os("SYNCJOBS_BIND").is_none() {
            assert_eq!(parsed.bind, d.bind);
        }
        assert_eq!(parsed.cancel_timeout_seconds, d.cancel_timeout_seconds);
        assert_eq!(parsed.delete_wait_seconds, d.delete_wait_seconds);
        assert_eq!(parsed.body_timeout_ms, d.body_timeout_ms);
        assert_eq!(parsed.header_timeout_ms, d.header_timeout_ms);
        assert_eq!(parsed.keep_alive_seconds, d.keep_alive_seconds);
        assert_eq!(parsed.max_connections, d.max_connections);
        assert!(parsed.handle_signals);
        assert_eq!(parsed.webhook_retry_schedule, d.webhook_retry_schedule);
        assert_eq!(parsed.webhook_timeout_ms, d.webhook_timeout_ms);
        assert_eq!(parsed.webhook_concurrency, d.webhook_concurrency);
        assert_eq!(parsed.webhook_retention_days, d.webhook_retention_days);
        assert_eq!(
            parsed.webhook_disable_after_hours,
            d.webhook_disable_after_hours
        );
        if std::env::var_os("SYNCJOBS_ROLE").is_none() {
            assert_eq!(parsed.role, Role::All);
        }
    }

    #[test]
    fn roles_capacities_and_node_ids() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("syncjobs").chain(args.iter().copied()))
                .map(|c| c.settings)
        };
        let worker = parse(&["--role", "worker"]).unwrap();
        assert_eq!(worker.role, Role::Worker);
        assert_eq!(worker.capacity(), Some(DEFAULT_WORKER_CAPACITY));
        let small = parse(&["--role", "worker", "--worker-capacity", "3"]).unwrap();
        assert_eq!(small.capacity(), Some(3));
        assert!(
            parse(&["--worker-capacity", "0"]).is_err(),
            "a worker that runs nothing"
        );
        assert!(parse(&["--role", "leader"]).is_err());
        let all = Settings::default();
        assert_eq!(all.capacity(), None, "an all node starts every job at once");

        let a = all.node_id().unwrap();
        let b = all.node_id().unwrap();
        assert!(a.starts_with("node-") && a != b, "{a} {b}");
        let named = Settings {
            node_id: Some("worker-3.eu:a_1".into()),
            ..Settings::default()
        };
        assert_eq!(named.node_id().unwrap(), "worker-3.eu:a_1");
        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            let s = Settings {
                node_id: Some(bad.into()),
                ..Settings::default()
            };
            assert!(s.node_id().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_retry_schedule_is_seconds_separated_by_commas() {
        assert_eq!(
            parse_schedule("0.05, 1,2").unwrap(),
            Schedule(vec![
                Duration::from_millis(50),
                Duration::from_secs(1),
                Duration::from_secs(2)
            ])
        );
        assert_eq!(parse_schedule("").unwrap(), Schedule(vec![]));
        assert!(parse_schedule("5,x").is_err());
        assert!(parse_schedule("-1").is_err());
        assert!(parse_schedule("1e12").is_err());
    }

    #[test]
    fn the_nats_url_keeps_its_credentials_but_never_prints_them() {
        let parsed = Cli::try_parse_from([
            "syncjobs",
            "--nats-url",
            "nats://relay:s3cret@nats.internal:4222",
        ])
        .unwrap()
        .settings;
        let url = parsed.nats_url.clone().unwrap();
        assert_eq!(url.expose(), "nats://relay:s3cret@nats.internal:4222");
        for shown in [format!("{parsed:?}"), format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("nats://relay:***@nats.internal:4222"),
                "{shown}"
            );
        }
        // `--help` would show `[env: NATS_URL=...]` with the value.
        use clap::CommandFactory;
        let cmd = Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "nats_url")
            .unwrap();
        assert!(arg.is_hide_env_values_set());
    }
}
