//! `/webhooks/subscriptions` and `/webhooks/messages`: Airweave's webhook routes (list,
//! create, get with or without its secret, patch, delete a subscription; list messages by
//! event type, get one with its attempts), field for field as its `schemas/webhooks.py`.
//!
//! Airweave's subscription and message ids are Svix's strings, so a malformed id is just an
//! id that does not exist: 404, like an unknown one or another organization's.

use super::error::ApiError;
use super::input::{check_text, read_json, Fields, Query, Text};
use super::wire::{
    WebhookMessageOut, WebhookSubscriptionDetailOut, WebhookSubscriptionOut, HEALTH_WINDOW,
};
use super::{ok_json, AppState};
use crate::app::webhooks::NewSubscription;
use crate::app::{Caller, Error};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;
use syncjobs_domain::webhook::{SubscriptionPatch, EVENT_TYPES};
use uuid::Uuid;

/// The id of a path: a UUID written as syncjobs writes one (hyphenated or bare hex, any
/// case). Other spellings the parser would read (`{...}`, `urn:uuid:...`) are ids that do
/// not exist, as any other string: an id is compared, not interpreted.
fn path_id(raw: &str) -> Option<Uuid> {
    match raw.len() {
        32 | 36 => Uuid::parse_str(raw).ok(),
        _ => None,
    }
}

/// The subscription id of the path; anything else names no subscription.
fn subscription_id(raw: &str) -> Result<Uuid, ApiError> {
    path_id(raw).ok_or_else(|| Error::WebhookSubscriptionNotFound.into())
}

/// Attempts a subscription's detail shows (Svix's default page).
const RECENT_ATTEMPTS: usize = 100;

/// More event types than exist cannot all be known.
const MAX_EVENT_TYPES: usize = EVENT_TYPES.len() * 4;

fn description(f: &Fields<'_>) -> Result<Option<String>, ApiError> {
    let d = f.opt_str("description")?;
    if let Some(d) = d {
        check_text("description", d, Text::MultiLine)?;
    }
    Ok(d.map(str::to_owned))
}

pub async fn list(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .projection
        .read(async |m| {
            let rows = m.webhook_subscriptions(caller.organization_id).await?;
            let mut out = Vec::with_capacity(rows.len());
            for s in &rows {
                let recent = m.webhook_attempts(s.id, false, HEALTH_WINDOW).await?;
                out.push(WebhookSubscriptionOut::with_health(s, &recent));
            }
            ok_json(&out)
        })
        .await
}

pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let url = f.req_str("url")?.to_owned();
    let event_types = f
        .opt_str_list("event_types", MAX_EVENT_TYPES)?
        .ok_or_else(|| ApiError::Unprocessable("event_types: field required".into()))?;
    let new = NewSubscription {
        url,
        event_types,
        description: description(&f)?,
        secret: f.opt_str("secret")?.map(str::to_owned),
    };
    let created = state.create_webhook_subscription(&caller, new).await?;
    ok_json(&WebhookSubscriptionOut::new(&created))
}

pub async fn get(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let include_secret = Query(&query).bool("include_secret", false)?;
    let id = subscription_id(&path)?;
    let s = state.webhook_subscription(&caller, id).await?;
    state
        .projection
        .read(async |m| {
            let attempts = m.webhook_attempts(id, false, RECENT_ATTEMPTS).await?;
            ok_json(&WebhookSubscriptionDetailOut::new(
                &s,
                &attempts,
                include_secret,
            ))
        })
        .await
}

pub async fn patch(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let patch = SubscriptionPatch {
        url: f.opt_str("url")?.map(str::to_owned),
        event_types: f.opt_str_list("event_types", MAX_EVENT_TYPES)?,
        disabled: f.opt_bool("disabled")?,
        description: description(&f)?,
    };
    // Airweave: only when re-enabling, the failed messages since then are tried again.
    let recover_since = f.opt_datetime("recover_since")?;
    let enabling = patch.disabled == Some(false);
    let updated = state
        .update_webhook_subscription(&caller, id, patch)
        .await?;
    if let (true, Some(since)) = (enabling, recover_since) {
        state
            .recover_webhook_messages(&caller, id, since, None)
            .await?;
    }
    ok_json(&WebhookSubscriptionOut::new(&updated))
}

pub async fn delete(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    let deleted = state.delete_webhook_subscription(&caller, id).await?;
    ok_json(&WebhookSubscriptionOut::new(&deleted))
}

/// Messages listed at most (a syncjobs addition: Airweave passes Svix's page through).
const MAX_MESSAGES: i64 = 1000;

/// `GET /webhooks/messages?event_types=a&event_types=b&limit=N`: the organization's
/// messages, newest first.
pub async fn messages(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let types: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "event_types")
        .map(|(_, v)| v.clone())
        .collect();
    let last: HashMap<String, String> = query.iter().cloned().collect();
    let limit = Query(&last).int("limit", 100, 1, MAX_MESSAGES)? as usize;
    state
        .projection
        .read(async |m| {
            let rows = m
                .webhook_messages(caller.organization_id, &types, limit)
                .await?;
            let out = rows
                .iter()
                .map(WebhookMessageOut::new)
                .collect::<Result<Vec<_>, _>>()?;
            ok_json(&out)
        })
        .await
}

/// `GET /webhooks/messages/{message_id}?include_attempts=true`.
pub async fn message(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let include_attempts = Query(&query).bool("include_attempts", false)?;
    let not_found = || ApiError::NotFound("Message not found".into());
    let id = path_id(&path).ok_or_else(not_found)?;
    state
        .projection
        .read(async |m| {
            let Some(message) = m.webhook_message(caller.organization_id, id).await? else {
                return Err(not_found());
            };
            let attempts = match include_attempts {
                true => Some(m.webhook_attempts(id, true, RECENT_ATTEMPTS).await?),
                false => None,
            };
            ok_json(&WebhookMessageOut::with_attempts(
                &message,
                attempts.as_deref(),
            )?)
        })
        .await
}

/// `POST /webhooks/subscriptions/{id}/recover` `{"since": ..., "until"?: ...}`: tries the
/// failed deliveries of that window again. The answer is Airweave's `RecoveryTask`; the
/// recovery is recorded before it (`completed`), the deliveries follow.
pub async fn recover(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let since = f
        .opt_datetime("since")?
        .ok_or_else(|| ApiError::Unprocessable("since: field required".into()))?;
    let until = f.opt_datetime("until")?;
    state
        .recover_webhook_messages(&caller, id, since, until)
        .await?;
    ok_json(&serde_json::json!({"id": Uuid::now_v7(), "status": "completed"}))
}
