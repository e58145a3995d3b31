//! The `syncjobs` command: `serve` (the default), `keys create|revoke|list`,
//! `rebuild-read-model`, and the debugging commands `events`, `replay`, `export`, `verify`
//! (see `syncjobs::replay`).
//!
//! The CLI prints its results on stdout (a new key is printed once, alone on its line, so
//! scripts can capture it); the server logs through `tracing` on stderr.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use syncjobs::app::keys;
use syncjobs::backend::{self, Mode, ReadModelAt, StoreConfig};
use syncjobs::config::Settings;
use syncjobs::datadir::{self, DataDirLock};
use syncjobs::replay::{self, DebugCommand};
use syncjobs::startup::{Application, Components};
use syncjobs::telemetry;
use syncjobs_actors::Pipeline;
use syncjobs_domain::{EventStore, SharedClock, SystemClock};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "syncjobs",
    version,
    about = "Sync jobs as event-sourced actors, behind Airweave's REST API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of `serve`, which runs when no command is given.
    #[command(flatten)]
    serve: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and run sync jobs (the default).
    Serve(Settings),
    /// Manage API keys (stored only as SHA-256 hashes).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Rebuild the read model (`read_model.db`) from the event log, while no server runs on
    /// the data directory. A start does it by itself when the read model's layout changed.
    RebuildReadModel(Settings),
    #[command(flatten)]
    Debug(DebugCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for an organization (created if new) and print it, once.
    Create {
        /// Organization name.
        #[arg(long, default_value = keys::DEFAULT_ORGANIZATION)]
        org: String,
        /// Days until the key expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        store: StoreConfig,
    },
    /// Revoke a key by its id or its shown prefix.
    Revoke {
        key: String,
        #[command(flatten)]
        store: StoreConfig,
    },
    /// List keys: id, prefix, organization, state. Never the keys themselves.
    List {
        #[command(flatten)]
        store: StoreConfig,
    },
}

fn main() -> ExitCode {
    // Before any TLS configuration is built (NATS, the KurrentDB client): with KurrentDB's
    // aws-lc-rs beside async-nats' ring, rustls cannot choose a provider by itself.
    #[cfg(feature = "kurrentdb")]
    syncjobs_store_kurrentdb::install_crypto_provider();
    datadir::private_files();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    // Held until everything else has stopped: dropping it writes the last log lines.
    let logs = match &command {
        Command::Serve(settings) => Some(telemetry::init(&settings.log, settings.log_format)),
        _ => None,
    };
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Command::Serve(settings) => serve(settings).await.map(|()| ExitCode::SUCCESS),
            Command::Keys { action } => keys_command(action).await.map(|()| ExitCode::SUCCESS),
            Command::RebuildReadModel(settings) => rebuild_read_model(settings)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Debug(cmd) => Ok(debug_command(cmd).await),
        }
    });
    // The log lines before a failure come first, then the failure.
    drop(logs);
    result.unwrap_or_else(|message| {
        eprintln!("syncjobs: {message}");
        ExitCode::FAILURE
    })
}

/// Opens the configured store for a command (see `syncjobs::backend`).
fn open_store(config: &StoreConfig, mode: Mode) -> Result<Arc<dyn EventStore>, String> {
    backend::open(config, mode)
        .map(|opened| opened.store)
        .map_err(|e| e.to_string())
}

/// Serves until a signal stops the server. Logs go through the writer `main` installed.
async fn serve(settings: Settings) -> Result<(), String> {
    // Before anything is opened or created: a role that shares the store needs PostgreSQL.
    syncjobs::startup::check_role(
        settings.role,
        backend::backend_name(&settings.store_config()),
    )
    .map_err(|e| e.to_string())?;
    // Before anything touches the directory: a second server on it must not recover the
    // first one's jobs. Held until `serve` returns.
    let _owner = DataDirLock::acquire(&settings.data_dir).map_err(|e| e.to_string())?;
    // Held, like the lock, until `serve` returns.
    let opened = backend::open(&settings.store_config(), Mode::Serve).map_err(|e| e.to_string())?;
    let clock: SharedClock = Arc::new(SystemClock);
    let sink = backend::open_destination(&settings.store_config(), &settings.destination_dir())
        .map_err(|e| e.to_string())?;
    let runner = Arc::new(Pipeline::new(sink.clone(), Pipeline::default_workers()));
    // Sync runs (source streams, hashing, worker pools) get their own threads so that a busy
    // pipeline never delays the actors' mailboxes, the watchdog or the projector.
    let runs = RunThreads(Some(
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("syncjobs-run")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the sync-run threads: {e}"))?,
    ));
    let components = Components {
        store: opened.store.clone(),
        read_model: opened.read_model.clone(),
        clock,
        destination: sink,
        runner,
        job_settings: syncjobs_actors::JobSettings {
            run_handle: runs.0.as_ref().map(|rt| rt.handle().clone()),
            ..Default::default()
        },
        probes: vec![],
    };
    let mut app = Application::build(&settings, components)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(key) = app.take_generated_key() {
        println!(
            "No API key existed, so one was created for the organization '{}'.",
            keys::DEFAULT_ORGANIZATION
        );
        println!("It is shown only this once; store it now:");
        println!();
        println!("    {}", key.key);
        println!();
    }
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// Empties the read model and folds the whole log into it again. Refused while a server
/// holds the data directory (its projector is the read model's only writer); on
/// PostgreSQL every node sharing the database must be stopped first.
async fn rebuild_read_model(settings: Settings) -> Result<(), String> {
    let _owner = DataDirLock::acquire(&settings.data_dir).map_err(|e| e.to_string())?;
    let opened =
        backend::open(&settings.store_config(), Mode::Existing).map_err(|e| e.to_string())?;
    let store = opened.store;
    let path = settings.read_model_path();
    let (projection, writer, place) = match &opened.read_model {
        ReadModelAt::DataDir => {
            syncjobs_projections::db::reset(&path).map_err(|e| e.to_string())?;
            let head = *store.watch_head().borrow();
            let (projection, writer) =
                syncjobs_projections::Projection::open(&path, head).map_err(|e| e.to_string())?;
            (projection, writer, path.display().to_string())
        }
        ReadModelAt::Postgres(url, timeouts) => {
            let (projection, writer) =
                syncjobs_projections::Projection::open_postgres(url.expose(), true, *timeouts)
                    .await
                    .map_err(|e| e.to_string())?;
            (
                projection,
                writer,
                "the PostgreSQL store's database".to_owned(),
            )
        }
    };
    // Messages past retention are not made again.
    writer
        .set_retention(settings.webhook_retention(Arc::new(SystemClock)))
        .await;
    loop {
        let events = store
            .read_all(projection.position(), REBUILD_BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            break;
        }
        writer
            .apply_batch(events)
            .await
            .map_err(|e| e.to_string())?;
    }
    println!(
        "read model rebuilt from the log: {} events, in {place}",
        projection.position(),
    );
    Ok(())
}

/// Events folded per transaction by `rebuild-read-model`.
const REBUILD_BATCH: usize = 4096;

/// The sync runs' runtime. Dropping a runtime inside an async context panics, so on every
/// way out of `serve` (a failed start included) it is let go without waiting: runs still
/// going were abandoned with their actors, and the next start's recovery handles their jobs.
struct RunThreads(Option<tokio::runtime::Runtime>);

impl Drop for RunThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The debugging commands read the store of SYNCJOBS_STORE, else the one under
/// SYNCJOBS_DATA_DIR (default ./data), if there is one; `replay --file` and `--server` need
/// none.
async fn debug_command(cmd: DebugCommand) -> ExitCode {
    let store = open_store(&StoreConfig::from_env(), Mode::Existing);
    let mut out = std::io::stdout().lock();
    match replay::run(cmd, store, &mut out, replay::color_for_stdout()).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("syncjobs: {e}");
            ExitCode::from(2)
        }
    }
}

async fn keys_command(action: KeysCommand) -> Result<(), String> {
    let clock: SharedClock = Arc::new(SystemClock);
    match action {
        KeysCommand::Create {
            org,
            expires_in_days,
            store,
        } => {
            let store = open_store(&store, Mode::Create)?;
            let expires_at =
                expires_in_days.map(|d| clock.now() + chrono::Duration::days(i64::from(d)));
            let key = keys::create_key(&store, &clock, &org, expires_at, "cli")
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", key.key);
            eprintln!(
                "created API key {} ({}...) for organization '{org}'{}; it is shown only this once",
                key.key_id,
                key.prefix,
                expires_at.map_or(String::new(), |t| format!(
                    ", expires {}",
                    syncjobs_domain::time::micros(&t)
                ))
            );
            Ok(())
        }
        KeysCommand::Revoke { key, store } => {
            let store = open_store(&store, Mode::Existing)?;
            let id = keys::revoke_key(&store, &clock, &key, "cli")
                .await
                .map_err(|e| e.to_string())?;
            println!("revoked API key {id}");
            Ok(())
        }
        KeysCommand::List { store } => {
            let store = open_store(&store, Mode::Existing)?;
            let all = keys::list_keys(&store).await.map_err(|e| e.to_string())?;
            for k in all {
                let state = if k.revoked {
                    "revoked".to_owned()
                } else {
                    match k.expires_at {
                        Some(t) if t <= clock.now() => "expired".to_owned(),
                        Some(t) => format!("expires {}", syncjobs_domain::time::micros(&t)),
                        None => "active".to_owned(),
                    }
                };
                println!(
                    "{}  {}...  {}  {}",
                    k.key_id, k.prefix, k.organization, state
                );
            }
            Ok(())
        }
    }
}
