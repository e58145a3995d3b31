//! API keys as the API and its tests name them: the key flows are `app::keys` (the CLI and
//! start-up call them there), the `access` aggregate and the key hash are
//! `syncjobs_domain::access`. Re-exported here for the tests and benchmarks that use this
//! path, and for the request authentication's hash.

pub use crate::app::keys::{
    bootstrap, create_key, generate_key, list_keys, revoke_key, Bootstrap, KeysError, NewKey,
};
pub use syncjobs_domain::access::{
    hash_key, key_hash_into, shown_prefix, validate_key, KeyInfo, DEFAULT_ORGANIZATION,
    KEY_HASH_LEN, KEY_PREFIX,
};
