//! `/source-connections`: create (and start a first sync), list, get, delete (which stops
//! its syncs first and removes what they wrote).

use super::error::ApiError;
use super::input::{check_len, check_text, path_uuid, read_json, Fields, Query, Text};
use super::wire::{SourceConnectionListItemOut, SourceConnectionOut};
use super::{ok_json, AppState};
use crate::app::source_connections::NewSourceConnection;
use crate::app::{lookup, Caller};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;
use syncjobs_actors::pipeline::EntityStats;
use syncjobs_projections::{ReadView, SourceConnection};
use uuid::Uuid;

pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.http).await?;
    let f = Fields(&body);
    let short_name = f.req_str("short_name")?;
    check_text("short_name", short_name, Text::OneLine)?;
    let readable_collection_id = f.req_str("readable_collection_id")?;
    check_text(
        "readable_collection_id",
        readable_collection_id,
        Text::OneLine,
    )?;
    let name = f.opt_str("name")?;
    if let Some(name) = name {
        check_len("name", name, 4, 42)?;
        check_text("name", name, Text::OneLine)?;
    }
    let description = f.opt_str("description")?;
    if let Some(d) = description {
        check_len("description", d, 0, 255)?;
        check_text("description", d, Text::MultiLine)?;
    }
    let new = NewSourceConnection {
        short_name,
        readable_collection_id,
        name,
        description,
        config: f.opt_object("config")?,
        authentication: f.opt_object("authentication")?,
        sync_immediately: f.opt_bool("sync_immediately")?.unwrap_or(true),
    };
    let id = state.create_source_connection(&caller, new).await?;
    respond(&state, &caller, id, &EntityStats::default()).await
}

/// The connection as the read model shows it now, with the destination's `entities`.
async fn respond(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    entities: &EntityStats,
) -> Result<HttpResponse, ApiError> {
    state
        .projection
        .read(async |m| {
            let sc = lookup::source_connection(m, caller, id).await?;
            connection_json(m, &sc, entities).await
        })
        .await
}

/// The connection with its last job and status, as JSON.
async fn connection_json(
    m: &ReadView<'_>,
    sc: &SourceConnection,
    entities: &EntityStats,
) -> Result<HttpResponse, ApiError> {
    let last = m.last_job(sc.id).await?;
    ok_json(&SourceConnectionOut::new(sc, last.as_ref(), entities))
}

pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let q = Query(&query);
    let skip = q.int("skip", 0, 0, i64::MAX)? as usize;
    let limit = q.int("limit", 100, 1, 1000)? as usize;
    let collection = q.opt_str("collection");
    let org = caller.organization_id;
    let page: Vec<Uuid> = state
        .projection
        .read(async |m| {
            let rows = m
                .source_connections(org, skip, limit, |sc| {
                    collection.is_none_or(|c| sc.readable_collection_id == c)
                })
                .await?;
            Ok::<_, ApiError>(rows.into_iter().map(|sc| sc.id).collect())
        })
        .await?;
    let totals = state.entity_totals(&page).await;
    state
        .projection
        .read(async |m| {
            let mut rows = Vec::with_capacity(page.len());
            for (id, total) in page.iter().zip(totals) {
                if let Some(sc) = m.source_connection(org, *id).await? {
                    rows.push((sc, total));
                }
            }
            let mut items = Vec::with_capacity(rows.len());
            for (sc, total) in &rows {
                items.push(SourceConnectionListItemOut::new(m, sc, *total).await?);
            }
            ok_json(&items)
        })
        .await
}

/// The id of an existing source connection of the caller's organization, or 404.
async fn existing(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Uuid, ApiError> {
    let id = path_uuid("source_connection_id", raw_id)?;
    state
        .projection
        .read(async |m| lookup::source_connection(m, caller, id).await.map(|_| id))
        .await
        .map_err(ApiError::from)
}

pub async fn get(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing(&state, &caller, &path).await?;
    let stats = state.entity_stats(id).await;
    respond(&state, &caller, id, &stats).await
}

pub async fn delete(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("source_connection_id", &path)?;
    // The answer is the connection as it was, before its syncs were stopped.
    state
        .delete_source_connection(&caller, id, connection_json)
        .await?
}
