//! Standard Webhooks signatures (what Svix sends): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//! decoded base64 part of the subscription's `whsec_` secret.
//!
//! Secrets are `whsec_` + base64 of random bytes: generated (24 bytes, Svix's size) unless
//! the subscriber gives one, which must have the same shape.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2_hmac::Sha256;
use syncjobs_domain::webhook::SECRET_PREFIX;

/// Random bytes of a generated secret (Svix's default size).
const SECRET_BYTES: usize = 24;
/// The range of key sizes a given secret may decode to (Svix takes 24 to 75 bytes).
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 75;

/// Why a given secret is refused (the text names the field for the API's 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret must be 'whsec_' followed by the base64 of {MIN_KEY} to {MAX_KEY} random bytes")]
pub struct BadSecret;

/// A new random secret, `whsec_<base64>`.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// A secret the subscriber chose, checked and written with its prefix (Svix also takes it
/// without `whsec_`).
pub fn normalize_secret(given: &str) -> Result<String, BadSecret> {
    let b64 = given.strip_prefix(SECRET_PREFIX).unwrap_or(given);
    let key = B64.decode(b64).map_err(|_| BadSecret)?;
    if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
        return Err(BadSecret);
    }
    Ok(format!("{SECRET_PREFIX}{b64}"))
}

/// The HMAC key of a stored secret.
fn key_of(secret: &str) -> Result<Vec<u8>, BadSecret> {
    B64.decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|_| BadSecret)
}

/// The `webhook-signature` value of one message: `v1,<base64 signature>`.
pub fn signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, BadSecret> {
    let key = key_of(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example (its README and every
    /// official library's tests).
    #[test]
    fn the_specifications_test_vector_signs_as_published() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_generated_and_checked_in_the_whsec_shape() {
        let s = generate_secret();
        assert!(s.starts_with("whsec_"), "{s}");
        assert_eq!(normalize_secret(&s).unwrap(), s);
        assert_ne!(generate_secret(), s);
        let bare = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(normalize_secret(bare).unwrap(), format!("whsec_{bare}"));
        for bad in [
            "whsec_",
            "whsec_short",
            "whsec_!!!notbase64!!!!!!!!!!!!!!!!!",
            "x",
        ] {
            assert_eq!(normalize_secret(bad), Err(BadSecret), "{bad}");
        }
    }
}
