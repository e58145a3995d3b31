//! The connection string and what follows from it: which streams are syncjobs', under which
//! names, and the filter that makes `$all` syncjobs' global log.
//!
//! The URL is KurrentDB's own connection string (`kurrentdb://`, `esdb://`, their `+discover`
//! forms, with `tls=false` and friends), plus one parameter of ours, taken out before the
//! client sees it: `syncjobsNamespace=NAME` keeps this store's streams apart from every other
//! stream on the server (a test's fresh store, or two deployments on one server).

use kurrentdb::{ClientSettings, SubscriptionFilter};
use std::borrow::Cow;
use syncjobs_domain::events::stream;
use syncjobs_domain::redact::redact;

/// The URL schemes KurrentDB's client accepts; `SYNCJOBS_STORE` with one of them opens this
/// store.
pub const SCHEMES: &[&str] = &["kurrentdb", "kurrentdb+discover", "esdb", "esdb+discover"];

/// The variable naming a server for the tests that need one (the contract suite here, the
/// API suite with `SYNCJOBS_TEST_STORE=kurrentdb`).
pub const URL_VAR: &str = "KURRENTDB_URL";

/// Our parameter in the connection string (case-insensitive, as KurrentDB's are).
pub const NAMESPACE_PARAM: &str = "syncjobsNamespace";

/// How long a namespace may be; it prefixes every stream name.
const NAMESPACE_MAX: usize = 64;

/// The prefixes of syncjobs' stream categories and its single streams: `$all` is filtered
/// to these. A stream kind added to `syncjobs_domain::events::stream` must be added here, or
/// followers on KurrentDB never see it (the test `every_domain_stream_is_in_the_log` names
/// the kinds it knows).
const CATEGORY_PREFIXES: &[&str] = &[
    stream::JOB_PREFIX,
    stream::COLLECTION_PREFIX,
    stream::COLLECTION_NAME_PREFIX,
    stream::SOURCE_CONNECTION_PREFIX,
    stream::WEBHOOK_SUBSCRIPTION_PREFIX,
    stream::WEBHOOK_DELIVERY_PREFIX,
];
const SINGLE_STREAMS: &[&str] = &[stream::ACCESS];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("not a KurrentDB connection string (expected {}://...)", SCHEMES.join("://, "))]
    Scheme,
    #[error(
        "{NAMESPACE_PARAM} must be 1 to {NAMESPACE_MAX} letters, digits, '_' or '-', got {0:?}"
    )]
    Namespace(String),
    /// The client's own complaint, with any password masked.
    #[error("invalid KurrentDB connection string: {0}")]
    Client(String),
}

/// Which streams of the server are this store's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Streams under their own names; the log is every stream of syncjobs' kinds.
    Syncjobs,
    /// Streams named `<namespace>.<name>`; the log is every stream under that prefix.
    Namespace(String),
}

impl Scope {
    /// The KurrentDB stream holding our `stream`.
    pub fn to_kurrent<'a>(&self, stream: &'a str) -> Cow<'a, str> {
        match self {
            Scope::Syncjobs => Cow::Borrowed(stream),
            Scope::Namespace(ns) => Cow::Owned(format!("{ns}.{stream}")),
        }
    }

    /// Our name of the KurrentDB stream `name`; None for a stream that is not this store's
    /// (the server's filter should have kept it away).
    pub fn from_kurrent<'a>(&self, name: &'a str) -> Option<&'a str> {
        match self {
            Scope::Syncjobs => is_syncjobs_stream(name).then_some(name),
            Scope::Namespace(ns) => name.strip_prefix(ns.as_str())?.strip_prefix('.'),
        }
    }

    /// The server-side filter of `$all` that leaves this store's events.
    pub fn filter(&self) -> SubscriptionFilter {
        match self {
            Scope::Syncjobs => SubscriptionFilter::on_stream_name().regex(syncjobs_regex()),
            Scope::Namespace(ns) => {
                SubscriptionFilter::on_stream_name().add_prefix(format!("{ns}."))
            }
        }
    }
}

/// A regular expression matching exactly syncjobs' stream names: its categories by prefix,
/// its single streams whole (a prefix filter on `access` would take `accessories` too).
fn syncjobs_regex() -> String {
    let alternatives: Vec<String> = CATEGORY_PREFIXES
        .iter()
        .map(|p| (*p).to_owned())
        .chain(SINGLE_STREAMS.iter().map(|s| format!("{s}$")))
        .collect();
    // The names are made of [a-z_-] only: nothing to escape (checked by a test).
    format!("^({})", alternatives.join("|"))
}

fn is_syncjobs_stream(name: &str) -> bool {
    CATEGORY_PREFIXES.iter().any(|p| name.starts_with(p)) || SINGLE_STREAMS.contains(&name)
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: ClientSettings,
    pub scope: Scope,
}

/// Whether `url` is a KurrentDB connection string (by its scheme).
pub fn is_kurrent_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Parses `url`: our namespace parameter out, the rest to the client's parser.
pub fn parse(url: &str) -> Result<Config, ConfigError> {
    if !is_kurrent_url(url) {
        return Err(ConfigError::Scheme);
    }
    let (client_url, namespace) = take_namespace(url)?;
    let settings = client_url
        .parse::<ClientSettings>()
        .map_err(|e| ConfigError::Client(redact(&e.to_string()).into_owned()))?;
    let scope = namespace.map_or(Scope::Syncjobs, Scope::Namespace);
    Ok(Config { settings, scope })
}

/// `url` without our parameter, and its value.
fn take_namespace(url: &str) -> Result<(String, Option<String>), ConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut namespace = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.eq_ignore_ascii_case(NAMESPACE_PARAM) {
            namespace = Some(valid_namespace(value)?);
        } else {
            kept.push(pair);
        }
    }
    let client_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((client_url, namespace))
}

fn valid_namespace(value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= NAMESPACE_MAX
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::Namespace(value.to_owned()))
    }
}

/// `url` with `syncjobsNamespace=namespace` added (a fresh store for a test).
pub fn with_namespace(url: &str, namespace: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{NAMESPACE_PARAM}={namespace}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn every_kurrentdb_scheme_is_accepted_and_others_are_not() {
        for scheme in SCHEMES {
            let url = format!("{scheme}://127.0.0.1:2113?tls=false");
            assert!(is_kurrent_url(&url), "{url}");
            let config = parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(config.scope, Scope::Syncjobs);
        }
        assert!(
            is_kurrent_url("ESDB://host:2113"),
            "schemes are case-insensitive"
        );
        for url in ["postgres://u@h/db", "sqlite:///tmp", "host:2113", ""] {
            assert_eq!(parse(url).unwrap_err(), ConfigError::Scheme, "{url}");
        }
    }

    #[test]
    fn the_namespace_is_ours_and_the_client_never_sees_it() {
        let url =
            "esdb://admin:changeit@db:2113?tls=false&syncjobsNamespace=t-1_a&nodePreference=leader";
        let (client, ns) = take_namespace(url).unwrap();
        assert_eq!(ns.as_deref(), Some("t-1_a"));
        assert_eq!(
            client,
            "esdb://admin:changeit@db:2113?tls=false&nodePreference=leader"
        );
        let config = parse(url).unwrap();
        assert_eq!(config.scope, Scope::Namespace("t-1_a".into()));
        assert!(!config.settings.is_secure_mode_enabled(), "tls=false kept");
        // Case-insensitive, alone in the query.
        let (client, ns) = take_namespace("esdb://db?SYNCJOBSNAMESPACE=x").unwrap();
        assert_eq!((client.as_str(), ns.as_deref()), ("esdb://db", Some("x")));
        assert_eq!(
            take_namespace("esdb://db").unwrap(),
            ("esdb://db".into(), None)
        );
    }

    #[test]
    fn a_namespace_that_could_not_be_a_plain_stream_prefix_is_refused() {
        for bad in ["", "a.b", "a b", "$all", "ä", &"x".repeat(65)] {
            let url = format!("esdb://db?syncjobsNamespace={bad}");
            assert_eq!(
                parse(&url).unwrap_err(),
                ConfigError::Namespace(bad.to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn with_namespace_makes_a_url_that_parses_to_that_namespace() {
        for base in ["esdb://db:2113", "esdb://db:2113?tls=false"] {
            let url = with_namespace(base, "test-abc");
            assert_eq!(
                parse(&url).unwrap().scope,
                Scope::Namespace("test-abc".into()),
                "{url}"
            );
        }
    }

    #[test]
    fn a_connection_string_the_client_refuses_is_reported_without_its_password() {
        // An unknown node preference is refused by the client's parser.
        let e = parse("esdb://admin:s3cret@db:2113?nodePreference=nowhere").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ConfigError::Client(_)), "{text}");
        assert!(text.contains("nowhere"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn namespaced_names_round_trip_and_foreign_streams_are_not_ours() {
        let scope = Scope::Namespace("t1".into());
        assert_eq!(scope.to_kurrent("job-1"), "t1.job-1");
        assert_eq!(scope.from_kurrent("t1.job-1"), Some("job-1"));
        assert_eq!(scope.from_kurrent("t1.a"), Some("a"));
        assert_eq!(scope.from_kurrent("t10.job-1"), None);
        assert_eq!(scope.from_kurrent("job-1"), None);
        let plain = Scope::Syncjobs;
        assert_eq!(plain.to_kurrent("job-1"), "job-1");
        assert_eq!(plain.from_kurrent("access"), Some("access"));
        for foreign in ["accessories", "orders-1", "$stats-127.0.0.1:2113", "jobs"] {
            assert_eq!(plain.from_kurrent(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn every_domain_stream_is_in_the_log() {
        let id = Uuid::new_v4();
        let streams = [
            stream::job(id),
            stream::collection(id),
            stream::collection_name(id, "readable-id"),
            stream::source_connection(id),
            stream::webhook_subscription(id),
            stream::webhook_delivery(id, id),
            stream::ACCESS.to_owned(),
        ];
        for s in &streams {
            assert_eq!(Scope::Syncjobs.from_kurrent(s), Some(s.as_str()), "{s}");
        }
        // The regular expression the server applies says the same as the check above: it is
        // a plain alternation of literal names (nothing in them a regex would read as an
        // operator), anchored at the start, the single streams also at the end.
        let re = syncjobs_regex();
        for name in CATEGORY_PREFIXES.iter().chain(SINGLE_STREAMS) {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-'),
                "{name} needs escaping in {re}"
            );
        }
        assert_eq!(
            re,
            "^(job-|collection-|collection_name-|source_connection-|webhook_subscription-|webhook_delivery-|access$)"
        );
    }
}
