//! Organizations and API keys: pure decisions over the `access` stream, and their appends.
//! The use cases over them (create, revoke, list, the start-up key) are `app::keys`,
//! re-exported here for the tests and the benchmarks that name them by this path.
//!
//! Keys are random strings shown once; the store and the read model hold only their SHA-256
//! hash and a short prefix to tell them apart. Every change is decided against the fold of
//! the whole `access` stream and appended at its exact version, so two racing commands
//! (two first starts, two `keys create` of one new organization) cannot both win.

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent,
    SharedClock, StoreError,
};
use uuid::Uuid;

pub use crate::app::keys::{
    bootstrap, create_key, list_keys, revoke_key, Bootstrap, NewKey, DEFAULT_ORGANIZATION,
};

/// Every generated key starts with this, so that a leaked one is easy to recognise.
pub const KEY_PREFIX: &str = "sjk_";
/// Characters of a key kept in clear (in events and listings) to tell keys apart.
const SHOWN_PREFIX_LEN: usize = 8;
/// Random characters after the prefix (~238 bits).
const KEY_RANDOM_LEN: usize = 40;
/// Optimistic retries before giving up on a hot `access` stream.
const MAX_ATTEMPTS: usize = 16;

/// The SHA-256 of a key, hex encoded: the only form in which a key is stored.
pub fn hash_key(key: &str) -> String {
    let mut hex = [0; KEY_HASH_LEN];
    key_hash_into(key, &mut hex).to_owned()
}

/// Length of [`hash_key`]'s hex text.
pub const KEY_HASH_LEN: usize = 64;

/// [`hash_key`] written into `out`, for the key check of every request: no allocation
/// (`hex::encode` builds its `String` a char at a time, 2% of a `GET`'s CPU, bench #2).
pub fn key_hash_into<'a>(key: &str, out: &'a mut [u8; KEY_HASH_LEN]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in Sha256::digest(key.as_bytes())
        .iter()
        .zip(out.chunks_exact_mut(2))
    {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Only ASCII digits were written: `from_utf8` cannot fail, and "" matches no key.
    std::str::from_utf8(out).unwrap_or_default()
}

/// A new random key.
pub fn generate_key() -> String {
    let mut key = String::from(KEY_PREFIX);
    Alphanumeric.append_string(&mut rand::rng(), &mut key, KEY_RANDOM_LEN);
    key
}

fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_PREFIX_LEN).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub organization_id: Uuid,
    pub organization: String,
    pub key_hash: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// The fold of the `access` stream: what the decisions need.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub version: u64,
    organizations: HashMap<String, Uuid>,
    organization_names: HashMap<Uuid, String>,
    keys: Vec<KeyInfo>,
}

impl Access {
    pub fn fold(events: &[RecordedEvent]) -> Access {
        let mut a = Access::default();
        for e in events {
            a.version = e.version;
            let Event::Access(event) = &e.event else {
                continue;
            };
            match event {
                AccessEvent::OrganizationCreated {
                    organization_id,
                    name,
                } => {
                    a.organizations.insert(name.clone(), *organization_id);
                    a.organization_names.insert(*organization_id, name.clone());
                }
                AccessEvent::ApiKeyCreated {
                    key_id,
                    organization_id,
                    key_hash,
                    prefix,
                    expires_at,
                } => a.keys.push(KeyInfo {
                    key_id: *key_id,
                    organization_id: *organization_id,
                    organization: a
                        .organization_names
                        .get(organization_id)
                        .cloned()
                        .unwrap_or_default(),
                    key_hash: key_hash.clone(),
                    prefix: prefix.clone(),
                    created_at: e.recorded_at,
                    expires_at: *expires_at,
                    revoked: false,
                }),
                AccessEvent::ApiKeyRevoked { key_id } => {
                    if let Some(k) = a.keys.iter_mut().find(|k| k.key_id == *key_id) {
                        k.revoked = true;
                    }
                }
            }
        }
        a
    }

    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }

    pub fn organization(&self, name: &str) -> Option<Uuid> {
        self.organizations.get(name).copied()
    }
}

/// What can be asked of the `access` stream. Ids are chosen by the caller so `decide` is pure.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessCommand {
    /// A new key for the named organization, creating the organization if it is new.
    CreateKey(NewKeyRecord),
    /// Records a key chosen outside (SYNCJOBS_BOOTSTRAP_API_KEY) unless its hash is known.
    RegisterKey(NewKeyRecord),
    /// Creates the key only if no key exists at all (the first start).
    CreateFirstKey(NewKeyRecord),
    /// Revokes the key with this id or this shown prefix.
    RevokeKey { selector: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewKeyRecord {
    pub organization: String,
    pub new_organization_id: Uuid,
    pub key_id: Uuid,
    pub key_hash: String,
    pub prefix: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("organization name must be 1 to 64 printable characters")]
    InvalidOrganization,
    #[error("an API key must be at least 16 printable characters without spaces")]
    InvalidKey,
    #[error("this key is already registered")]
    DuplicateKey,
    #[error("no API key matches {0:?}")]
    NoSuchKey(String),
    #[error("{0:?} matches more than one API key; use the key id")]
    AmbiguousKey(String),
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(Uuid),
    #[error("too many concurrent changes to API keys; try again")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn valid_organization(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control)
}

/// Checks a key chosen outside syncjobs (the bootstrap key) before it is registered.
pub fn validate_key(key: &str) -> Result<(), AccessError> {
    let ok = key.len() >= 16 && key.len() <= 256 && key.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(AccessError::InvalidKey)
    }
}

fn create_events(access: &Access, r: &NewKeyRecord) -> Result<Vec<AccessEvent>, AccessError> {
    if !valid_organization(&r.organization) {
        return Err(AccessError::InvalidOrganization);
    }
    let mut events = Vec::with_capacity(2);
    let organization_id = match access.organization(&r.organization) {
        Some(id) => id,
        None => {
            events.push(AccessEvent::OrganizationCreated {
                organization_id: r.new_organization_id,
                name: r.organization.clone(),
            });
            r.new_organization_id
        }
    };
    events.push(AccessEvent::ApiKeyCreated {
        key_id: r.key_id,
        organization_id,
        key_hash: r.key_hash.clone(),
        prefix: r.prefix.clone(),
        expires_at: r.expires_at,
    });
    Ok(events)
}

/// Decides what a command means for the stream as folded.
pub fn decide(access: &Access, command: &AccessCommand) -> Result<Vec<AccessEvent>, AccessError> {
    let known = |hash: &str| access.keys.iter().any(|k| k.key_hash == hash);
    match command {
        AccessCommand::CreateKey(r) => {
            if known(&r.key_hash) {
                return Err(AccessError::DuplicateKey);
            }
            create_events(access, r)
        }
        AccessCommand::RegisterKey(r) => {
            if known(&r.key_hash) {
                return Ok(vec![]);
            }
            create_events(access, r)
        }
        AccessCommand::CreateFirstKey(r) => {
            if !access.keys.is_empty() {
                return Ok(vec![]);
            }
            create_events(access, r)
        }
        AccessCommand::RevokeKey { selector } => {
            let by_id = Uuid::parse_str(selector).ok();
            let matches: Vec<&KeyInfo> = access
                .keys
                .iter()
                .filter(|k| Some(k.key_id) == by_id || k.prefix == *selector)
                .collect();
            match matches[..] {
                [] => Err(AccessError::NoSuchKey(selector.clone())),
                [k] if k.revoked => Err(AccessError::AlreadyRevoked(k.key_id)),
                [k] => Ok(vec![AccessEvent::ApiKeyRevoked { key_id: k.key_id }]),
                _ => Err(AccessError::AmbiguousKey(selector.clone())),
            }
        }
    }
}

/// Reads the stream, decides, appends at its exact version; on a conflict, does it again.
/// Returns the events appended (empty when there was nothing to do).
pub async fn execute(
    store: &Arc<dyn EventStore>,
    clock: &SharedClock,
    caused_by: &str,
    command: &AccessCommand,
) -> Result<Vec<RecordedEvent>, AccessError> {
    for _ in 0..MAX_ATTEMPTS {
        let access = Access::fold(&store.read_stream(stream::ACCESS, 0).await?);
        let events = decide(&access, command)?;
        if events.is_empty() {
            return Ok(vec![]);
        }
        let now = clock.now();
        let meta = Metadata {
            caused_by: caused_by.to_owned(),
            ..Default::default()
        };
        let new: Vec<NewEvent> = events
            .into_iter()
            .map(|e| NewEvent::new(e, now, meta.clone()))
            .collect();
        match store
            .append(stream::ACCESS, ExpectedVersion::Exact(access.version), new)
            .await
        {
            Ok(recorded) => return Ok(recorded),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AccessError::Contention)
}

/// The record of `key` for `organization`: fresh ids, and the key only as hash and prefix.
pub(crate) fn record_for(
    organization: &str,
    key: &str,
    expires_at: Option<DateTime<Utc>>,
) -> NewKeyRecord {
    NewKeyRecord {
        organization: organization.to_owned(),
        new_organization_id: Uuid::now_v7(),
        key_id: Uuid::now_v7(),
        key_hash: hash_key(key),
        prefix: shown_prefix(key),
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(org: &str, key: &str) -> NewKeyRecord {
        record_for(org, key, None)
    }

    #[test]
    fn key_hashes_are_the_stored_lowercase_hex_sha256() {
        // Stores written before keep matching: the form must never change.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut out = [0; KEY_HASH_LEN];
        assert_eq!(key_hash_into("abc", &mut out), hash_key("abc"));
    }

    fn folded(events: Vec<AccessEvent>) -> Access {
        let now = Utc::now();
        let recorded: Vec<RecordedEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| RecordedEvent {
                event_id: Uuid::now_v7(),
                stream_id: stream::ACCESS.into(),
                version: i as u64 + 1,
                global_position: i as u64 + 1,
                recorded_at: now,
                schema_version: 2,
                metadata: Metadata::default(),
                event: e.into(),
            })
            .collect();
        Access::fold(&recorded)
    }

    #[test]
    fn keys_are_stored_as_sha256_and_generated_keys_differ() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + KEY_RANDOM_LEN);
        assert!(validate_key(&a).is_ok());
        assert!(validate_key("short").is_err());
        assert!(validate_key("has a space in it, long enough").is_err());
    }

    #[test]
    fn a_key_for_a_new_organization_creates_the_organization_first() {
        let r = record("acme", "k1k1k1k1k1k1k1k1");
        let events = decide(&Access::default(), &AccessCommand::CreateKey(r.clone())).unwrap();
        assert!(matches!(&events[..], [
            AccessEvent::OrganizationCreated { name, .. },
            AccessEvent::ApiKeyCreated { key_hash, .. },
        ] if name == "acme" && *key_hash == r.key_hash));
        let access = folded(events);
        let again = decide(
            &access,
            &AccessCommand::CreateKey(record("acme", "k2k2k2k2k2k2k2k2")),
        )
        .unwrap();
        assert!(
            matches!(&again[..], [AccessEvent::ApiKeyCreated { organization_id, .. }]
            if Some(*organization_id) == access.organization("acme"))
        );
        assert!(matches!(
            decide(&access, &AccessCommand::CreateKey(r)),
            Err(AccessError::DuplicateKey)
        ));
        assert!(matches!(
            decide(
                &access,
                &AccessCommand::CreateKey(record(" ", "k3k3k3k3k3k3k3k3"))
            ),
            Err(AccessError::InvalidOrganization)
        ));
    }

    #[test]
    fn registering_a_known_key_or_a_first_key_when_one_exists_does_nothing() {
        let access = folded(
            decide(
                &Access::default(),
                &AccessCommand::CreateKey(record("x", "known-key-0000000")),
            )
            .unwrap(),
        );
        assert!(decide(
            &access,
            &AccessCommand::RegisterKey(record("default", "known-key-0000000"))
        )
        .unwrap()
        .is_empty());
        assert_eq!(
            decide(
                &access,
                &AccessCommand::RegisterKey(record("default", "other-key-0000000"))
            )
            .unwrap()
            .len(),
            2
        );
        assert!(decide(
            &access,
            &AccessCommand::CreateFirstKey(record("default", "first-key-0000000"))
        )
        .unwrap()
        .is_empty());
        assert_eq!(
            decide(
                &Access::default(),
                &AccessCommand::CreateFirstKey(record("default", "first-key-0000000"))
            )
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn revoke_finds_one_key_by_id_or_prefix_once() {
        let mut events = decide(
            &Access::default(),
            &AccessCommand::CreateKey(record("x", "sjk_aaaa1111111111")),
        )
        .unwrap();
        let access = folded(events.clone());
        events.extend(
            decide(
                &access,
                &AccessCommand::CreateKey(record("x", "sjk_aaaa2222222222")),
            )
            .unwrap(),
        );
        let access = folded(events.clone());
        let ambiguous = AccessCommand::RevokeKey {
            selector: "sjk_aaaa".into(),
        };
        assert!(matches!(
            decide(&access, &ambiguous),
            Err(AccessError::AmbiguousKey(_))
        ));
        let id = access.keys()[0].key_id;
        let by_id = AccessCommand::RevokeKey {
            selector: id.to_string(),
        };
        let revoked = decide(&access, &by_id).unwrap();
        assert_eq!(revoked, vec![AccessEvent::ApiKeyRevoked { key_id: id }]);
        events.extend(revoked);
        let access = folded(events);
        assert!(matches!(decide(&access, &by_id), Err(AccessError::AlreadyRevoked(k)) if k == id));
        let none = AccessCommand::RevokeKey {
            selector: "nope".into(),
        };
        assert!(matches!(
            decide(&access, &none),
            Err(AccessError::NoSuchKey(_))
        ));
    }
}
