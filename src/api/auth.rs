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
use futures::future::{Either, LocalBoxFuture};
use std::future::{ready, Ready};
use syncjobs_projections::ApiKey;

pub const API_KEY_HEADER: &str = "x-api-key";
/// The same, parsed once: a lookup by `&str` parses the name on every request.
const API_KEY: HeaderName = HeaderName::from_static(API_KEY_HEADER);

/// What the caller's key resolves to: at once when the key cache knows it (the common case,
/// no future boxed), else after a read of the model.
enum Resolution {
    Known(Result<Caller, ApiError>),
    Lookup(String, chrono::DateTime<chrono::Utc>),
}

fn resolve(req: &HttpRequest) -> Resolution {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Resolution::Known(Err(ApiError::internal("application state missing")));
    };
    // Header names are case-insensitive in actix's HeaderMap.
    let Some(value) = req.headers().get(&API_KEY) else {
        return Resolution::Known(Err(ApiError::Unauthenticated));
    };
    let Ok(key) = value.to_str().map(str::trim) else {
        return Resolution::Known(Err(ApiError::Forbidden));
    };
    if key.is_empty() {
        return Resolution::Known(Err(ApiError::Unauthenticated));
    }
    let mut hash = [0; KEY_HASH_LEN];
    let hash = key_hash_into(key, &mut hash);
    let now = state.clock.now();
    match state.projection.authenticate_cached(hash, now) {
        Some(found) => Resolution::Known(caller(found)),
        None => Resolution::Lookup(hash.to_owned(), now),
    }
}

fn caller(found: Option<ApiKey>) -> Result<Caller, ApiError> {
    match found {
        Some(k) => Ok(Caller::new(k.organization_id, k.key_id)),
        None => {
            tracing::debug!("request with an unknown, revoked or expired API key");
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future =
        Either<Ready<Result<Self, ApiError>>, LocalBoxFuture<'static, Result<Self, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        match resolve(req) {
            Resolution::Known(answer) => Either::Left(ready(answer)),
            Resolution::Lookup(hash, now) => {
                let state = req.app_data::<web::Data<AppState>>().cloned();
                Either::Right(Box::pin(async move {
                    let state =
                        state.ok_or_else(|| ApiError::internal("application state missing"))?;
                    let found = state
                        .projection
                        .read(async |m| m.authenticate(&hash, now).await)
                        .await?;
                    caller(found)
                }))
            }
        }
    }
}
