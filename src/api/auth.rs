//! Authentication: the `x-api-key` header resolved to an organization through the read
//! model (which holds only key hashes). The key itself is never logged or stored.
//!
//! [`ApiContext`] is an extractor listed first in every protected handler, so a request is
//! authenticated before its path or body is looked at (401/403 win over 422/413).

use super::error::ApiError;
use super::keys::{key_hash_into, KEY_HASH_LEN};
use super::AppState;
use actix_web::dev::Payload;
use actix_web::http::header::HeaderName;
use actix_web::{web, FromRequest, HttpRequest};
use std::cell::OnceCell;
use std::future::{ready, Ready};
use syncjobs_domain::Metadata;
use uuid::Uuid;

pub const API_KEY_HEADER: &str = "x-api-key";
/// The same, parsed once: a lookup by `&str` parses the name on every request.
const API_KEY: HeaderName = HeaderName::from_static(API_KEY_HEADER);

/// Who is asking: the organization every lookup is scoped to, and the key used.
#[derive(Debug)]
pub struct ApiContext {
    pub organization_id: Uuid,
    pub key_id: Uuid,
    /// One id per request, recorded as the correlation id of every event it causes; made
    /// when the first event needs it (most requests only read, and a v7 id is not free).
    request_id: OnceCell<Uuid>,
}

impl ApiContext {
    pub fn new(organization_id: Uuid, key_id: Uuid) -> Self {
        ApiContext {
            organization_id,
            key_id,
            request_id: OnceCell::new(),
        }
    }

    /// The request's id: the same for every event the request causes.
    pub fn request_id(&self) -> Uuid {
        *self.request_id.get_or_init(Uuid::now_v7)
    }

    /// The principal recorded in events (`api-key:<key id>`): traceable, not secret.
    pub fn principal(&self) -> String {
        format!("api-key:{}", self.key_id)
    }

    pub fn metadata(&self) -> Metadata {
        let request_id = self.request_id();
        Metadata::caused_by(self.principal())
            .with_causation(request_id)
            .with_correlation(request_id)
    }
}

fn authenticate(req: &HttpRequest) -> Result<ApiContext, ApiError> {
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
        m.authenticate(hash, now)
            .map(|k| (k.organization_id, k.key_id))
    });
    match found {
        Some((organization_id, key_id)) => Ok(ApiContext::new(organization_id, key_id)),
        None => {
            tracing::debug!("request with an unknown, revoked or expired API key");
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequest for ApiContext {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_a_request_carries_the_same_request_id() {
        let ctx = ApiContext::new(Uuid::now_v7(), Uuid::now_v7());
        let (first, second) = (ctx.metadata(), ctx.metadata());
        assert_eq!(first.correlation_id, second.correlation_id);
        assert_eq!(first.causation_id, Some(ctx.request_id()));
        let other = ApiContext::new(ctx.organization_id, ctx.key_id);
        assert_ne!(other.request_id(), ctx.request_id(), "one id per request");
    }
}
