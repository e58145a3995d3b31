//! Authentication: the `x-api-key` header resolved to an organization through the read
//! model (which holds only key hashes). The key itself is never logged or stored.
//!
//! The [`Caller`] is an extractor listed first in every protected handler, so a request is
//! authenticated before its path or body is looked at (401/403 win over 422/413).

use super::error::ApiError;
use super::keys::{key_hash_into, KEY_HASH_LEN};
use super::AppState;
use crate::app::Caller;
use actix_web::dev::Payload;
use actix_web::http::header::HeaderName;
use actix_web::{web, FromRequest, HttpRequest};
use std::future::{ready, Ready};

pub const API_KEY_HEADER: &str = "x-api-key";
/// The same, parsed once: a lookup by `&str` parses the name on every request.
const API_KEY: HeaderName = HeaderName::from_static(API_KEY_HEADER);

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("application state missing"))?;
    // Header names are case-insensitive in actix's HeaderMap.
    let Some(value) = req.headers().get(&API_KEY) else {
        return Err(ApiError::Unauthenticated);
    };
    let key = value.to_str().map_err(|_| ApiError::Forbidden)?.trim();
    if key.is_empty() {
        return Err(ApiError::Unauthenticated);
    }
    let mut hash = [0; KEY_HASH_LEN];
    let hash = key_hash_into(key, &mut hash);
    let now = state.clock.now();
    let found = state.projection.read(|m| {
        Ok::<_, ApiError>(
            m.authenticate(hash, now)?
                .map(|k| (k.organization_id, k.key_id)),
        )
    })?;
    match found {
        Some((organization_id, key_id)) => Ok(Caller::new(organization_id, key_id)),
        None => {
            tracing::debug!("request with an unknown, revoked or expired API key");
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}
