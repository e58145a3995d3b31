//! Organizations and API keys as an aggregate: the fold of the one `access` stream, and the
//! pure decisions over it.
//!
//! Keys are random strings shown once; the store and the read model hold only their SHA-256
//! hash and a short prefix to tell them apart. Every change is decided against the fold of
//! the whole `access` stream and appended at its exact version, so two racing commands
//! (two first starts, two `keys create` of one new organization) cannot both win.

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{AccessEvent, Event, RecordedEvent};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

/// The organization of keys made at first start or from SYNCJOBS_BOOTSTRAP_API_KEY.
pub const DEFAULT_ORGANIZATION: &str = "default";
/// Every generated key starts with this, so that a leaked one is easy to recognise.
pub const KEY_PREFIX: &str = "sjk_";
/// Characters of a key kept in clear (in events and listings) to tell keys apart.
const SHOWN_PREFIX_LEN: usize = 8;
/// Length of [`hash_key`]'s hex text.
pub const KEY_HASH_LEN: usize = 64;

/// The SHA-256 of a key, hex encoded: the only form in which a key is stored.
pub fn hash_key(key: &str) -> String {
    let mut hex = [0; KEY_HASH_LEN];
    key_hash_into(key, &mut hex).to_owned()
}

/// [`hash_key`] written into `out`, for the key check of every request: no allocation
/// (`hex::encode` builds its `String` a char at a time, 2% of a `GET`'s CPU, bench #2).
pub fn key_hash_into<'a>(key: &str, out: &'a mut [u8; KEY_HASH_LEN]) -> &'a str {
    // 32 bytes make exactly 64 hex digits: neither call can fail, and "" matches no key.
    if const_hex::encode_to_slice(Sha256::digest(key.as_bytes()), out).is_err() {
        return "";
    }
    std::str::from_utf8(out).unwrap_or_default()
}

/// The leading characters of a key kept in clear.
pub fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_PREFIX_LEN).collect()
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

fn valid_organization(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control)
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
    /// Every key, oldest first.
    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }

    pub fn into_keys(self) -> Vec<KeyInfo> {
        self.keys
    }

    pub fn organization(&self, name: &str) -> Option<Uuid> {
        self.organizations.get(name).copied()
    }

    fn create_events(&self, r: &NewKeyRecord) -> Result<Vec<AccessEvent>, AccessError> {
        if !valid_organization(&r.organization) {
            return Err(AccessError::InvalidOrganization);
        }
        let mut events = Vec::with_capacity(2);
        let organization_id = match self.organization(&r.organization) {
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

/// Why an access command was refused. The CLI and start-up print these texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

impl Aggregate for Access {
    const NAME: &'static str = "API keys";
    type Event = AccessEvent;
    type Command = AccessCommand;
    type Error = AccessError;

    fn initial() -> Self {
        Access::default()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn evolve(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        let Event::Access(event) = &e.event else {
            return Err(FoldError::Foreign(e.event_type()));
        };
        let does_not_fit = |why| FoldError::DoesNotFit {
            event: e.event_type(),
            why,
        };
        match event {
            AccessEvent::OrganizationCreated {
                organization_id,
                name,
            } => {
                if self.organizations.contains_key(name) {
                    return Err(does_not_fit("the organization exists"));
                }
                self.organizations.insert(name.clone(), *organization_id);
                self.organization_names
                    .insert(*organization_id, name.clone());
            }
            AccessEvent::ApiKeyCreated {
                key_id,
                organization_id,
                key_hash,
                prefix,
                expires_at,
            } => {
                let Some(organization) = self.organization_names.get(organization_id) else {
                    return Err(does_not_fit("no such organization"));
                };
                self.keys.push(KeyInfo {
                    key_id: *key_id,
                    organization_id: *organization_id,
                    organization: organization.clone(),
                    key_hash: key_hash.clone(),
                    prefix: prefix.clone(),
                    created_at: e.recorded_at,
                    expires_at: *expires_at,
                    revoked: false,
                });
            }
            AccessEvent::ApiKeyRevoked { key_id } => {
                let Some(k) = self.keys.iter_mut().find(|k| k.key_id == *key_id) else {
                    return Err(does_not_fit("no such key"));
                };
                k.revoked = true;
            }
        }
        self.version = e.version;
        Ok(())
    }

    fn decide(&self, command: &AccessCommand) -> Result<Vec<AccessEvent>, AccessError> {
        let known = |hash: &str| self.keys.iter().any(|k| k.key_hash == hash);
        match command {
            AccessCommand::CreateKey(r) => {
                if known(&r.key_hash) {
                    return Err(AccessError::DuplicateKey);
                }
                self.create_events(r)
            }
            AccessCommand::RegisterKey(r) => {
                if known(&r.key_hash) {
                    return Ok(vec![]);
                }
                self.create_events(r)
            }
            AccessCommand::CreateFirstKey(r) => {
                if !self.keys.is_empty() {
                    return Ok(vec![]);
                }
                self.create_events(r)
            }
            AccessCommand::RevokeKey { selector } => {
                let by_id = Uuid::parse_str(selector).ok();
                let matches: Vec<&KeyInfo> = self
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateTest;

    type Given = AggregateTest<Access>;

    fn record(org: &str, key: &str) -> NewKeyRecord {
        NewKeyRecord {
            organization: org.to_owned(),
            new_organization_id: Uuid::now_v7(),
            key_id: Uuid::now_v7(),
            key_hash: hash_key(key),
            prefix: shown_prefix(key),
            expires_at: None,
        }
    }

    /// The events of a new key for a new organization.
    fn key_in_new_org(org: &str, key: &str) -> Vec<AccessEvent> {
        Given::given([])
            .when(AccessCommand::CreateKey(record(org, key)))
            .accepted()
            .0
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
        assert_eq!(shown_prefix("sjk_abcdefgh"), "sjk_abcd");
        assert!(validate_key("short").is_err());
        assert!(validate_key("has a space in it, long enough").is_err());
        assert!(validate_key("sjk_0123456789abcdef").is_ok());
    }

    #[test]
    fn a_key_for_a_new_organization_creates_the_organization_first() {
        let r = record("acme", "k1k1k1k1k1k1k1k1");
        let (events, access) = Given::given([])
            .when(AccessCommand::CreateKey(r.clone()))
            .accepted();
        assert!(matches!(&events[..], [
            AccessEvent::OrganizationCreated { name, .. },
            AccessEvent::ApiKeyCreated { key_hash, .. },
        ] if name == "acme" && *key_hash == r.key_hash));
        assert_eq!(access.keys()[0].organization, "acme");
        let g = Given::given(events);
        let again = g
            .when(AccessCommand::CreateKey(record("acme", "k2k2k2k2k2k2k2k2")))
            .accepted()
            .0;
        assert!(
            matches!(&again[..], [AccessEvent::ApiKeyCreated { organization_id, .. }]
            if Some(*organization_id) == access.organization("acme"))
        );
        g.when(AccessCommand::CreateKey(r))
            .then_err(AccessError::DuplicateKey);
        g.when(AccessCommand::CreateKey(record(" ", "k3k3k3k3k3k3k3k3")))
            .then_err(AccessError::InvalidOrganization);
    }

    #[test]
    fn registering_a_known_key_or_a_first_key_when_one_exists_does_nothing() {
        let g = Given::given(key_in_new_org("x", "known-key-0000000"));
        g.when(AccessCommand::RegisterKey(record(
            "default",
            "known-key-0000000",
        )))
        .then([]);
        assert_eq!(
            g.when(AccessCommand::RegisterKey(record(
                "default",
                "other-key-0000000"
            )))
            .accepted()
            .0
            .len(),
            2
        );
        g.when(AccessCommand::CreateFirstKey(record(
            "default",
            "first-key-0000000",
        )))
        .then([]);
        assert_eq!(
            Given::given([])
                .when(AccessCommand::CreateFirstKey(record(
                    "default",
                    "first-key-0000000"
                )))
                .accepted()
                .0
                .len(),
            2
        );
    }

    #[test]
    fn revoke_finds_one_key_by_id_or_prefix_once() {
        let mut events = key_in_new_org("x", "sjk_aaaa1111111111");
        events.extend(
            Given::given(events.clone())
                .when(AccessCommand::CreateKey(record("x", "sjk_aaaa2222222222")))
                .accepted()
                .0,
        );
        let g = Given::given(events.clone());
        let ambiguous = AccessCommand::RevokeKey {
            selector: "sjk_aaaa".into(),
        };
        g.when(ambiguous)
            .then_err(AccessError::AmbiguousKey("sjk_aaaa".into()));
        let id = g.state().keys()[0].key_id;
        let by_id = AccessCommand::RevokeKey {
            selector: id.to_string(),
        };
        let after = g
            .when(by_id.clone())
            .then([AccessEvent::ApiKeyRevoked { key_id: id }]);
        assert!(after.keys()[0].revoked && !after.keys()[1].revoked);
        events.push(AccessEvent::ApiKeyRevoked { key_id: id });
        let g = Given::given(events);
        g.when(by_id).then_err(AccessError::AlreadyRevoked(id));
        g.when(AccessCommand::RevokeKey {
            selector: "nope".into(),
        })
        .then_err(AccessError::NoSuchKey("nope".into()));
    }

    #[test]
    fn a_stream_that_breaks_the_rules_does_not_fold() {
        let mut twice = key_in_new_org("x", "sjk_aaaa1111111111");
        twice.truncate(1);
        twice.push(twice[0].clone());
        assert!(matches!(
            Given::fold_error(twice),
            FoldError::DoesNotFit { .. }
        ));
        let mut orphan = key_in_new_org("x", "sjk_aaaa1111111111");
        orphan.remove(0);
        assert!(matches!(
            Given::fold_error(orphan),
            FoldError::DoesNotFit { .. }
        ));
        assert!(matches!(
            Given::fold_error([AccessEvent::ApiKeyRevoked {
                key_id: Uuid::nil()
            }]),
            FoldError::DoesNotFit { .. }
        ));
    }
}
