//! Which event store the process runs on: the one place a backend is chosen.
//!
//! `serve` and every CLI command open their store through [`open`], from a [`StoreConfig`]
//! (`SYNCJOBS_STORE`, else the embedded store under `SYNCJOBS_DATA_DIR`). Each backend is a
//! crate of its own (`stores/*`); adding one is that crate, one arm in [`open`]'s match and
//! its line in [`BACKENDS`]. `serve` opens the destination (synced entities) beside its
//! store through [`open_destination`].

use crate::config::SecretUrl;
use crate::datadir::{self, DataDirError, DataDirLock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use syncjobs_actors::pipeline::{DestinationError, EntitySink, SqliteDestination};
use syncjobs_domain::redact::redact_url;
use syncjobs_domain::{EventStore, StoreError};
use syncjobs_store_postgres::{PgDestination, PgStore, Schema};
use syncjobs_store_sqlite::{EmbeddedStore, DB_FILE};

/// The backends this build has, as an unknown one's error lists them.
#[cfg(feature = "kurrentdb")]
pub const BACKENDS: &str = "sqlite://DIR (the embedded SQLite store in DIR), \
    postgres://USER@HOST:PORT/DB or postgresql://... (PostgreSQL), \
    kurrentdb://HOST:PORT or esdb://... (KurrentDB, its connection string)";
#[cfg(not(feature = "kurrentdb"))]
pub const BACKENDS: &str = "sqlite://DIR (the embedded SQLite store in DIR), \
    postgres://USER@HOST:PORT/DB or postgresql://... (PostgreSQL); \
    KurrentDB (kurrentdb://, esdb://) needs a build with `--features kurrentdb`";

/// Where the event store is. The `keys` commands take it as flags; `serve` builds it from
/// its settings ([`crate::config::Settings::store_config`]); the debugging commands read it
/// from the environment ([`StoreConfig::from_env`]).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// The event store as a URL: `sqlite://DIR` is the embedded store in DIR,
    /// `postgres://USER@HOST:PORT/DB` a PostgreSQL database, `kurrentdb://HOST:PORT` or
    /// `esdb://...` a KurrentDB server (in a build with `--features kurrentdb`). Unset:
    /// the embedded store in the data directory.
    #[arg(
        long = "store",
        env = "SYNCJOBS_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: Option<SecretUrl>,

    /// Directory of the embedded event store.
    #[arg(long, env = "SYNCJOBS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl StoreConfig {
    /// `SYNCJOBS_STORE` and `SYNCJOBS_DATA_DIR` (default `./data`), for the commands that
    /// take no store flags.
    pub fn from_env() -> StoreConfig {
        StoreConfig {
            url: std::env::var_os("SYNCJOBS_STORE")
                .map(|v| SecretUrl::from(v.to_string_lossy().into_owned())),
            data_dir: std::env::var_os("SYNCJOBS_DATA_DIR")
                .map_or_else(|| PathBuf::from("./data"), PathBuf::from),
        }
    }
}

/// Where the read model lives: with the embedded store, its own SQLite file in the data
/// directory (`read_model.db`); with PostgreSQL, tables in the store's database, so that
/// every node serves the one read model and none holds history in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadModelAt {
    DataDir,
    /// The database, and the bounds on waiting for it (the store's).
    Postgres(SecretUrl, syncjobs_store_postgres::Timeouts),
}

/// What the store is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `serve`: created if needed, and owned: no second server runs on it.
    Serve,
    /// `keys create`: created if needed, beside a server that may be running.
    Create,
    /// The reading commands and `keys revoke|list`: it must exist already, and is never
    /// created.
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The URL names no backend of this build; `url` has its credentials masked.
    #[error("event store {url} (--store / SYNCJOBS_STORE): {reason}; this build has: {BACKENDS}")]
    Config { url: String, reason: String },
    /// The backend is known but the store would not open; `url` has its credentials masked.
    #[error("event store {url}: {source}")]
    Open { url: String, source: StoreError },
    /// The destination would not open (its error masks credentials).
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An open store; `serve` keeps it for as long as it serves.
pub struct OpenedStore {
    pub store: Arc<dyn EventStore>,
    /// Where the read model goes with this store.
    pub read_model: ReadModelAt,
    /// [`Mode::Serve`] on an embedded store outside the data directory: that directory's
    /// lock, held beside the data directory's.
    _owner: Option<DataDirLock>,
}

/// Opens the configured store. Blocking (file I/O, connecting): call it before serving or
/// on the blocking pool.
pub fn open(config: &StoreConfig, mode: Mode) -> Result<OpenedStore, BackendError> {
    let url = config.url.as_ref().map(SecretUrl::expose).unwrap_or("");
    if url.is_empty() {
        return sqlite(&config.data_dir, config, mode);
    }
    let fail = |reason: String| BackendError::Config {
        url: redact_url(url).into_owned(),
        reason,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail("not a URL".into()));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" if rest.is_empty() => Err(fail("sqlite:// names no directory".into())),
        "sqlite" => sqlite(Path::new(rest), config, mode),
        "postgres" | "postgresql" => postgres(url, mode),
        #[cfg(feature = "kurrentdb")]
        s if syncjobs_store_kurrentdb::SCHEMES.contains(&s) => kurrentdb(url),
        _ => Err(fail(format!("no backend '{scheme}'"))),
    }
}

/// The name [`EventStore::backend`] gives the store `config` names (`embedded` for the
/// default), without opening it: for checks made before anything is created.
pub fn backend_name(config: &StoreConfig) -> &'static str {
    let url = config.url.as_ref().map(SecretUrl::expose).unwrap_or("");
    match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
        Some(s) if s == "postgres" || s == "postgresql" => "postgres",
        Some(s) if s == "sqlite" => "embedded",
        None if url.is_empty() => "embedded",
        Some(s) if s.starts_with("kurrentdb") || s.starts_with("esdb") => "kurrentdb",
        _ => "unknown",
    }
}

/// Where syncs write entities, chosen with the store: on a PostgreSQL store, the same
/// database (every node's workers then write one set of entities); otherwise the embedded
/// SQLite destination (`entities.db`) in `data_dir`. Blocking, like [`open`].
pub fn open_destination(
    config: &StoreConfig,
    data_dir: &Path,
) -> Result<Arc<dyn EntitySink>, BackendError> {
    let url = config.url.as_ref().map(SecretUrl::expose).unwrap_or("");
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    Ok(match scheme.as_deref() {
        Some("postgres" | "postgresql") => PgDestination::open(url)?,
        _ => SqliteDestination::open(data_dir)?,
    })
}

/// The embedded store in `dir`.
fn sqlite(dir: &Path, config: &StoreConfig, mode: Mode) -> Result<OpenedStore, BackendError> {
    let owner = match mode {
        Mode::Existing => {
            datadir::require_store(dir, DB_FILE)?;
            None
        }
        Mode::Create => None,
        Mode::Serve => lock_unless_data_dir(dir, &config.data_dir)?,
    };
    let store: Arc<dyn EventStore> = EmbeddedStore::open(dir)?;
    Ok(OpenedStore {
        store,
        read_model: ReadModelAt::DataDir,
        _owner: owner,
    })
}

/// The PostgreSQL store at `url`. Its schema is created by `serve` and `keys create`; the
/// reading commands require it. The read model goes in the same database (shared by every
/// node); the data directory's lock (taken by `serve`) still guards what stays in the data
/// directory.
fn postgres(url: &str, mode: Mode) -> Result<OpenedStore, BackendError> {
    let schema = match mode {
        Mode::Serve | Mode::Create => Schema::Migrate,
        Mode::Existing => Schema::MustExist,
    };
    let store: Arc<dyn EventStore> =
        PgStore::open(url, schema).map_err(|source| BackendError::Open {
            url: redact_url(url).into_owned(),
            source,
        })?;
    Ok(OpenedStore {
        store,
        read_model: ReadModelAt::Postgres(url.to_owned().into(), Default::default()),
        _owner: None,
    })
}

/// The KurrentDB store at `url` (KurrentDB's connection string). Nothing is created on
/// opening (KurrentDB has no schema), whatever the mode; the data directory's lock (taken by
/// `serve`) still guards the read model and the destination.
#[cfg(feature = "kurrentdb")]
fn kurrentdb(url: &str) -> Result<OpenedStore, BackendError> {
    let store: Arc<dyn EventStore> =
        syncjobs_store_kurrentdb::KurrentStore::open(url).map_err(|source| BackendError::Open {
            url: redact_url(url).into_owned(),
            source,
        })?;
    Ok(OpenedStore {
        store,
        // In the data directory, in SQLite, as with the embedded store.
        read_model: ReadModelAt::DataDir,
        _owner: None,
    })
}

/// `serve` holds the data directory's lock already. A store kept elsewhere is locked too:
/// two servers with data directories of their own on one store would each recover the
/// other's running jobs.
fn lock_unless_data_dir(dir: &Path, data_dir: &Path) -> Result<Option<DataDirLock>, DataDirError> {
    let same = matches!(
        (std::fs::canonicalize(dir), std::fs::canonicalize(data_dir)),
        (Ok(a), Ok(b)) if a == b
    );
    if same {
        return Ok(None);
    }
    DataDirLock::acquire(dir).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, data_dir: &Path) -> StoreConfig {
        StoreConfig {
            url: Some(url.to_owned().into()),
            data_dir: data_dir.to_owned(),
        }
    }

    fn error(url: &str) -> String {
        let tmp = tempfile::tempdir().unwrap();
        match open(&config(url, tmp.path()), Mode::Create) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} opened a store"),
        }
    }

    #[test]
    fn an_unknown_backend_is_named_with_the_ones_this_build_has_and_no_password() {
        let e = error("mysql://app:s3cret@db.internal:3306/jobs");
        assert!(e.contains("no backend 'mysql'"), "{e}");
        assert!(e.contains("sqlite://DIR"), "{e}");
        assert!(e.contains("postgres://USER@HOST:PORT/DB"), "{e}");
        assert!(e.contains("SYNCJOBS_STORE"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("mysql://app:***@db.internal:3306/jobs"), "{e}");
    }

    #[test]
    fn an_unreachable_postgres_store_is_named_without_its_password() {
        // Port 1: nothing listens there, the connection is refused at once.
        for scheme in ["postgres", "postgresql"] {
            let e = error(&format!("{scheme}://app:s3cret@127.0.0.1:1/jobs"));
            assert!(
                e.contains(&format!("event store {scheme}://app:***@127.0.0.1:1/jobs")),
                "{e}"
            );
            assert!(e.contains("the database is unreachable"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[cfg(feature = "kurrentdb")]
    #[test]
    fn an_unreachable_kurrentdb_store_is_named_without_its_password() {
        // Port 1: nothing listens there, the connection is refused at once.
        for scheme in ["kurrentdb", "esdb", "ESDB"] {
            let e = error(&format!("{scheme}://admin:s3cret@127.0.0.1:1?tls=false"));
            assert!(
                e.contains(&format!("event store {scheme}://admin:***@127.0.0.1:1")),
                "{e}"
            );
            assert!(e.contains("KurrentDB is unreachable"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[cfg(not(feature = "kurrentdb"))]
    #[test]
    fn a_kurrentdb_url_says_which_build_has_that_backend() {
        let e = error("esdb://admin:s3cret@127.0.0.1:2113?tls=false");
        assert!(e.contains("no backend 'esdb'"), "{e}");
        assert!(e.contains("--features kurrentdb"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_password_given_as_a_setting_is_never_printed() {
        let e = error("host=db user=app password=s3cret dbname=jobs");
        assert!(e.contains("not a URL"), "{e}");
        assert!(e.contains("password=***"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = error("postgres://app@127.0.0.1:1/jobs?password=s3cret");
        assert!(e.contains("the database is unreachable"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_destination_is_in_the_data_directory_unless_the_store_is_postgres() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let elsewhere = format!("sqlite://{}", tmp.path().join("events").display());
        for url in [None, Some(elsewhere)] {
            let c = StoreConfig {
                url: url.map(SecretUrl::from),
                data_dir: data.clone(),
            };
            open_destination(&c, &data).unwrap();
            assert!(data
                .join(syncjobs_actors::pipeline::destination::ENTITIES_FILE)
                .is_file());
        }
        // A PostgreSQL store: the destination is its database, which is tried (and here
        // refused: port 1), and nothing is made in the data directory.
        let other = tmp.path().join("other-data");
        let c = config("postgres://app:s3cret@127.0.0.1:1/jobs", &other);
        let e = open_destination(&c, &other).err().unwrap().to_string();
        assert!(e.contains("postgres://app:***@127.0.0.1:1/jobs"), "{e}");
        assert!(e.contains("the database is unreachable"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(!other.exists());
    }

    #[test]
    fn a_plain_path_or_an_empty_sqlite_url_is_refused() {
        assert!(error("./data").contains("not a URL"));
        assert!(error("sqlite://").contains("names no directory"));
    }

    #[test]
    fn unset_or_empty_is_the_embedded_store_in_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        for url in [None, Some(String::new())] {
            let c = StoreConfig {
                url: url.map(SecretUrl::from),
                data_dir: tmp.path().to_owned(),
            };
            let opened = open(&c, Mode::Create).unwrap();
            assert_eq!(opened.store.backend(), "embedded");
            assert!(tmp.path().join(DB_FILE).is_file());
        }
    }

    #[test]
    fn a_sqlite_url_is_the_embedded_store_in_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("events");
        let url = format!("SQLite://{}", elsewhere.display());
        let c = config(&url, &tmp.path().join("data"));
        let e = open(&c, Mode::Existing).err().unwrap().to_string();
        assert!(e.contains("no event store in"), "{e}");
        assert!(
            !elsewhere.exists(),
            "a reading command created {elsewhere:?}"
        );
        open(&c, Mode::Create).unwrap();
        assert!(elsewhere.join(DB_FILE).is_file());
        assert!(!tmp.path().join("data").exists());
    }

    #[test]
    fn serving_a_store_outside_the_data_directory_locks_it_too() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let _data_lock = DataDirLock::acquire(&data).unwrap();
        // The data directory's own store: its lock is held already, and is not taken twice.
        let own = StoreConfig {
            url: None,
            data_dir: data.clone(),
        };
        open(&own, Mode::Serve).expect("the data directory's store");
        let shared = tmp.path().join("shared");
        let url = format!("sqlite://{}", shared.display());
        let _first = open(&config(&url, &data), Mode::Serve).unwrap();
        let other_data = tmp.path().join("other-data");
        let e = open(&config(&url, &other_data), Mode::Serve)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use by another syncjobs server"), "{e}");
        assert!(e.contains(&shared.display().to_string()), "{e}");
        // Commands beside a server do not take it.
        open(&config(&url, &other_data), Mode::Existing).unwrap();
    }
}
