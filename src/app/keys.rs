//! API keys: create, revoke, list, and the key handling of a start, over the `access`
//! aggregate of `syncjobs_domain::access`. The CLI (`syncjobs keys`) and the server's
//! start-up call these with the store alone: no read model, no supervisor.
//!
//! A key's clear text exists only here, for the moment it is made: the aggregate, the store
//! and the read model know only its hash and shown prefix.

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use std::sync::Arc;
use syncjobs_actors::command::{self, CommandError};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Access, AccessCommand, AccessError, AccessEvent, Aggregate, Event, EventStore, Metadata,
    NewKeyRecord, RecordedEvent, SharedClock,
};
use uuid::Uuid;

pub use syncjobs_domain::access::{
    hash_key, key_hash_into, shown_prefix, validate_key, KeyInfo, DEFAULT_ORGANIZATION,
    KEY_HASH_LEN, KEY_PREFIX,
};

/// Random characters after the prefix (~238 bits).
const KEY_RANDOM_LEN: usize = 40;

/// Why a key flow failed: the access aggregate's refusal, or the command path's trouble.
pub type KeysError = CommandError<AccessError>;

/// A new random key.
pub fn generate_key() -> String {
    let mut key = String::from(KEY_PREFIX);
    Alphanumeric.append_string(&mut rand::rng(), &mut key, KEY_RANDOM_LEN);
    key
}

/// Runs `command` on the `access` stream; the events appended (empty when there was
/// nothing to do).
async fn execute(
    store: &Arc<dyn EventStore>,
    clock: &SharedClock,
    caused_by: &str,
    command: &AccessCommand,
) -> Result<Vec<RecordedEvent>, KeysError> {
    let meta = Metadata::caused_by(caused_by);
    let executed =
        command::execute::<Access>(&**store, &**clock, stream::ACCESS, None, command, &meta)
            .await?;
    Ok(executed.events)
}

/// A key just made: the only moment its clear text exists.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: String,
    pub key_id: Uuid,
    pub organization_id: Uuid,
    pub prefix: String,
    /// Global position of the append (0 if nothing was appended).
    pub position: u64,
}

fn record_for(organization: &str, key: &str, expires_at: Option<DateTime<Utc>>) -> NewKeyRecord {
    NewKeyRecord {
        organization: organization.to_owned(),
        new_organization_id: Uuid::now_v7(),
        key_id: Uuid::now_v7(),
        key_hash: hash_key(key),
        prefix: shown_prefix(key),
        expires_at,
    }
}

fn new_key_from(key: String, recorded: &[RecordedEvent]) -> Option<NewKey> {
    recorded.iter().find_map(|r| match &r.event {
        Event::Access(AccessEvent::ApiKeyCreated {
            key_id,
            organization_id,
            prefix,
            ..
        }) => Some(NewKey {
            key: key.clone(),
            key_id: *key_id,
            organization_id: *organization_id,
            prefix: prefix.clone(),
            position: recorded.last().map_or(0, |l| l.global_position),
        }),
        _ => None,
    })
}

/// Makes a new key for `organization` (created if new) and returns it in clear, once.
pub async fn create_key(
    store: &Arc<dyn EventStore>,
    clock: &SharedClock,
    organization: &str,
    expires_at: Option<DateTime<Utc>>,
    caused_by: &str,
) -> Result<NewKey, KeysError> {
    let key = generate_key();
    let cmd = AccessCommand::CreateKey(record_for(organization, &key, expires_at));
    let recorded = execute(store, clock, caused_by, &cmd).await?;
    // A CreateKey that is not refused always records its key: this is only a guard.
    new_key_from(key, &recorded).ok_or_else(|| CommandError::Contention {
        stream: stream::ACCESS.to_owned(),
        aggregate: Access::NAME,
    })
}

/// What the start-up key handling did.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    /// A key generated because the store knew none: to be printed once, never logged.
    pub generated: Option<NewKey>,
    /// Whether SYNCJOBS_BOOTSTRAP_API_KEY was new to the store and got registered.
    pub registered: bool,
    /// Global position of whatever was appended (0 if nothing).
    pub position: u64,
}

/// At start-up: registers `bootstrap_key` for the default organization unless the store
/// knows it (whatever other keys exist); without one, makes a first key if there is none.
pub async fn bootstrap(
    store: &Arc<dyn EventStore>,
    clock: &SharedClock,
    bootstrap_key: Option<&str>,
) -> Result<Bootstrap, KeysError> {
    match bootstrap_key {
        Some(key) => {
            validate_key(key).map_err(CommandError::Rejected)?;
            let cmd = AccessCommand::RegisterKey(record_for(DEFAULT_ORGANIZATION, key, None));
            let recorded = execute(store, clock, "bootstrap", &cmd).await?;
            if !recorded.is_empty() {
                tracing::info!("bootstrap API key registered for the default organization");
            }
            Ok(Bootstrap {
                generated: None,
                registered: !recorded.is_empty(),
                position: recorded.last().map_or(0, |r| r.global_position),
            })
        }
        None => {
            let key = generate_key();
            let cmd = AccessCommand::CreateFirstKey(record_for(DEFAULT_ORGANIZATION, &key, None));
            let recorded = execute(store, clock, "bootstrap", &cmd).await?;
            let generated = new_key_from(key, &recorded);
            Ok(Bootstrap {
                position: generated.as_ref().map_or(0, |k| k.position),
                generated,
                registered: false,
            })
        }
    }
}

/// Revokes the key with this id or shown prefix.
pub async fn revoke_key(
    store: &Arc<dyn EventStore>,
    clock: &SharedClock,
    selector: &str,
    caused_by: &str,
) -> Result<Uuid, KeysError> {
    let cmd = AccessCommand::RevokeKey {
        selector: selector.to_owned(),
    };
    let recorded = execute(store, clock, caused_by, &cmd).await?;
    recorded
        .iter()
        .find_map(|r| match &r.event {
            Event::Access(AccessEvent::ApiKeyRevoked { key_id }) => Some(*key_id),
            _ => None,
        })
        .ok_or_else(|| CommandError::Rejected(AccessError::NoSuchKey(selector.to_owned())))
}

/// Every key the store knows, oldest first.
pub async fn list_keys(store: &Arc<dyn EventStore>) -> Result<Vec<KeyInfo>, KeysError> {
    let access = command::load::<Access>(&**store, stream::ACCESS).await?;
    Ok(access.into_keys())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncjobs_domain::{InMemoryStore, SystemClock};

    #[test]
    fn generated_keys_differ_and_are_valid_keys() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + KEY_RANDOM_LEN);
        assert!(validate_key(&a).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_first_starts_make_exactly_one_key() {
        let store: Arc<dyn EventStore> = InMemoryStore::new();
        let clock: SharedClock = Arc::new(SystemClock);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, clock) = (store.clone(), clock.clone());
                tokio::spawn(async move { bootstrap(&store, &clock, None).await.unwrap() })
            })
            .collect();
        let mut generated = 0;
        for t in tasks {
            generated += usize::from(t.await.unwrap().generated.is_some());
        }
        assert_eq!(generated, 1);
        let keys = list_keys(&store).await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].organization, DEFAULT_ORGANIZATION);
    }

    #[tokio::test]
    async fn the_bootstrap_key_is_registered_once_whatever_else_exists() {
        let store: Arc<dyn EventStore> = InMemoryStore::new();
        let clock: SharedClock = Arc::new(SystemClock);
        create_key(&store, &clock, "acme", None, "cli")
            .await
            .unwrap();
        let b = bootstrap(&store, &clock, Some("my-known-test-key-123"))
            .await
            .unwrap();
        assert!(b.registered && b.generated.is_none() && b.position > 0);
        let again = bootstrap(&store, &clock, Some("my-known-test-key-123"))
            .await
            .unwrap();
        assert!(!again.registered && again.position == 0);
        let keys = list_keys(&store).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].key_hash, hash_key("my-known-test-key-123"));
        assert_eq!(keys[1].organization, DEFAULT_ORGANIZATION);
        let stored = serde_json::to_string(&store.read_all(0, 100).await.unwrap()).unwrap();
        assert!(
            !stored.contains("my-known-test-key-123"),
            "keys are stored only as hashes"
        );
    }
}
