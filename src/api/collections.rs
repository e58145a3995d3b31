//! `/collections`: create, list, get, delete (which deletes its source connections first).

use super::auth::ApiContext;
use super::commands::{self, readable_id_from_name};
use super::error::ApiError;
use super::input::{check_len, check_text, read_json, valid_readable_id, Fields, Query, Text};
use super::wire::CollectionOut;
use super::{ok_json, source_connections, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;
use syncjobs_domain::events::stream;
use syncjobs_domain::{CollectionCommand, CollectionName, RecordedEvent};
use syncjobs_projections::Collection;
use uuid::Uuid;

/// Longest readable id accepted (Airweave sets none; ours bounds the stream name).
const MAX_READABLE_ID: usize = 128;

fn last_position(recorded: &[RecordedEvent]) -> u64 {
    recorded.last().map_or(0, |r| r.global_position)
}

pub async fn create(
    ctx: ApiContext,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.settings).await?;
    let f = Fields(&body);
    let name = f.req_str("name")?;
    check_len("name", name, 4, 64)?;
    check_text("name", name, Text::OneLine)?;
    let readable_id = match f.opt_str("readable_id")? {
        Some(rid) => {
            if !valid_readable_id(rid) {
                return Err(ApiError::Unprocessable(
                    "readable_id: must match ^[a-z0-9]+(-[a-z0-9]+)*$ (lower-case letters and \
                     digits, in groups separated by single hyphens)"
                        .into(),
                ));
            }
            check_len("readable_id", rid, 1, MAX_READABLE_ID)?;
            rid.to_owned()
        }
        None => readable_id_from_name(name),
    };
    let org = ctx.organization_id;
    let id = Uuid::now_v7();
    let create = CollectionCommand::Create {
        collection_id: id,
        organization_id: org,
        name: name.to_owned(),
        readable_id: readable_id.clone(),
    };
    let stream = stream::collection_name(org, &readable_id);
    let recorded = commands::execute::<CollectionName>(&state, &ctx, &stream, &create).await?;
    state.settle(last_position(&recorded)).await;
    let at = recorded
        .first()
        .map_or_else(|| state.clock.now(), |r| r.recorded_at);
    tracing::info!(collection_id = %id, %readable_id, "collection created");
    state
        .projection
        .read(|m| match m.collection(org, &readable_id) {
            Some(c) if c.id == id => ok_json(&CollectionOut::new(m, c)),
            // The projection lagged past the bound: answer from the event itself.
            _ => {
                let c = Collection {
                    id,
                    organization_id: org,
                    name: name.to_owned(),
                    readable_id: readable_id.clone(),
                    created_at: at,
                    modified_at: at,
                    created_position: last_position(&recorded),
                };
                ok_json(&CollectionOut::new(m, &c))
            }
        })
}

pub async fn list(
    ctx: ApiContext,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let q = Query(&query);
    let skip = q.int("skip", 0, 0, i64::MAX)? as usize;
    let limit = q.int("limit", 100, 1, 1000)? as usize;
    let search = q.opt_str("search").map(str::to_lowercase);
    state.projection.read(|m| {
        let page: Vec<CollectionOut> = m
            .collections(ctx.organization_id)
            .filter(|c| {
                search
                    .as_deref()
                    .is_none_or(|s| c.name.to_lowercase().contains(s) || c.readable_id.contains(s))
            })
            .skip(skip)
            .take(limit)
            .map(|c| CollectionOut::new(m, c))
            .collect();
        ok_json(&page)
    })
}

pub async fn get(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .projection
        .read(|m| match m.collection(ctx.organization_id, &path) {
            Some(c) => ok_json(&CollectionOut::new(m, c)),
            None => Err(ApiError::collection_not_found()),
        })
}

pub async fn delete(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = ctx.organization_id;
    let readable_id = path.into_inner();
    // The answer is the collection as it was before anything was removed.
    let (collection_id, before) = state
        .projection
        .read(|m| {
            m.collection(org, &readable_id)
                .map(|c| (c.id, ok_json(&CollectionOut::new(m, c))))
        })
        .ok_or_else(ApiError::collection_not_found)?;
    let before = before?;
    remove_source_connections(&state, &ctx, collection_id).await?;
    let delete = CollectionCommand::Delete { collection_id };
    let stream = stream::collection_name(org, &readable_id);
    let recorded = commands::execute::<CollectionName>(&state, &ctx, &stream, &delete).await?;
    state.settle(last_position(&recorded)).await;
    // A source connection created in the collection while it was being deleted.
    remove_source_connections(&state, &ctx, collection_id).await?;
    tracing::info!(%collection_id, %readable_id, "collection deleted");
    Ok(before)
}

/// Deletes every source connection of the collection the way `DELETE /source-connections/{id}` does.
async fn remove_source_connections(
    state: &AppState,
    ctx: &ApiContext,
    collection_id: Uuid,
) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = state.projection.read(|m| {
        m.source_connections_in_collection(collection_id)
            .map(|sc| sc.id)
            .collect()
    });
    source_connections::remove_all(state, ctx, &ids).await
}
