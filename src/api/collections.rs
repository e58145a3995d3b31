//! `/collections`: create, list, get, update, delete (which deletes its source connections
//! first).

use super::error::ApiError;
use super::input::{check_len, check_readable_id, check_text, read_json, Fields, Query, Text};
use super::wire::CollectionOut;
use super::{ok_json, AppState};
use crate::app::{lookup, Caller};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;

pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let name = f.req_str("name")?;
    check_len("name", name, 4, 64)?;
    check_text("name", name, Text::OneLine)?;
    let readable_id = f.opt_str("readable_id")?;
    if let Some(rid) = readable_id {
        check_readable_id(rid)?;
    }
    let created = state.create_collection(&caller, name, readable_id).await?;
    state
        .projection
        .read(async |m| ok_json(&CollectionOut::new(m, &created).await?))
        .await
}

pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let q = Query(&query);
    let skip = q.int("skip", 0, 0, i64::MAX)? as usize;
    let limit = q.int("limit", 100, 1, 1000)? as usize;
    let search = q.opt_str("search").map(str::to_lowercase);
    state
        .projection
        .read(async |m| {
            let rows = m
                .collections(caller.organization_id, skip, limit, |c| {
                    search.as_deref().is_none_or(|s| {
                        c.name.to_lowercase().contains(s) || c.readable_id.contains(s)
                    })
                })
                .await?;
            let mut page = Vec::with_capacity(rows.len());
            for c in &rows {
                page.push(CollectionOut::new(m, c).await?);
            }
            ok_json(&page)
        })
        .await
}

pub async fn get(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .projection
        .read(async |m| {
            let c = lookup::collection(m, &caller, &path).await?;
            ok_json(&CollectionOut::new(m, &c).await?)
        })
        .await
}

/// `PATCH /collections/{readable_id}`: Airweave's `CollectionUpdate`. `name` (4 to 64
/// characters; absent or null: unchanged) and `sync_config` (an object or null, accepted and
/// not stored, as on create: syncjobs has no per-collection sync settings); other fields are
/// ignored as Airweave ignores them (`readable_id` never changes). The body is checked before
/// the collection is looked up, as FastAPI validates before the handler runs.
pub async fn update(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let name = f.opt_str("name")?;
    if let Some(name) = name {
        check_len("name", name, 4, 64)?;
        check_text("name", name, Text::OneLine)?;
    }
    f.opt_object("sync_config")?;
    let updated = state.update_collection(&caller, &path, name).await?;
    state
        .projection
        .read(async |m| ok_json(&CollectionOut::new(m, &updated).await?))
        .await
}

pub async fn delete(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // The answer is the collection as it was before anything was removed.
    state
        .delete_collection(&caller, &path, async |m, c| {
            ok_json(&CollectionOut::new(m, c).await?)
        })
        .await?
}
