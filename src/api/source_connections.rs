//! `/source-connections`: create (and start a first sync), list, get, delete (which stops
//! its syncs first and removes what they wrote).

use super::auth::ApiContext;
use super::commands;
use super::error::ApiError;
use super::input::{check_len, check_text, path_uuid, read_json, Fields, Query, Text};
use super::wire::{SourceConnectionListItemOut, SourceConnectionOut};
use super::{entities, jobs, ok_json, sources, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};
use std::collections::HashMap;
use syncjobs_actors::pipeline::EntityStats;
use syncjobs_domain::events::stream;
use syncjobs_domain::{SourceConnection, SourceConnectionCommand, SourceConnectionEvent};
use uuid::Uuid;

/// Airweave's authentication shapes; syncjobs' sources take direct credentials only.
fn auth_method(
    short_name: &str,
    auth: Option<&Map<String, Value>>,
) -> Result<&'static str, ApiError> {
    let unsupported = || {
        ApiError::BadRequest(format!(
            "Source {short_name} does not support this authentication method. \
             Supported methods: ['direct']"
        ))
    };
    let Some(auth) = auth else {
        // Airweave would start an OAuth browser flow here; the timed source needs no
        // secret, so a missing `authentication` means direct, authenticated.
        return Ok("direct");
    };
    match auth.get("credentials") {
        Some(Value::Object(_)) => Ok("direct"),
        Some(other) if !other.is_null() => Err(ApiError::Unprocessable(
            "authentication.credentials: expected an object".into(),
        )),
        _ => Err(unsupported()),
    }
}

pub async fn create(
    ctx: ApiContext,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state.settings).await?;
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
    let config = f.opt_object("config")?;
    let authentication = f.opt_object("authentication")?;
    let sync_immediately = f.opt_bool("sync_immediately")?.unwrap_or(true);

    // Airweave's order: the source, its authentication, its config, then the collection.
    let config = sources::validate_config(short_name, config)?;
    let method = auth_method(short_name, authentication)?;
    let org = ctx.organization_id;
    let collection_id = state
        .projection
        .read(|m| m.collection(org, readable_collection_id).map(|c| c.id))
        .ok_or_else(ApiError::collection_not_found)?;

    let id = Uuid::now_v7();
    let name = name.map_or_else(
        || format!("{} Connection", sources::display_name(short_name)),
        str::to_owned,
    );
    let created = SourceConnectionEvent::SourceConnectionCreated {
        source_connection_id: id,
        organization_id: org,
        collection_id,
        readable_collection_id: readable_collection_id.to_owned(),
        name,
        description: description.map(str::to_owned),
        short_name: short_name.to_owned(),
        config: config.clone(),
        auth_method: method.to_owned(),
        authenticated: true,
    };
    let create = SourceConnectionCommand::Create(created);
    let stream = stream::source_connection(id);
    let recorded = commands::execute::<SourceConnection>(&state, &ctx, &stream, &create).await?;
    let mut position = recorded.last().map_or(0, |r| r.global_position);
    tracing::info!(source_connection_id = %id, %short_name, "source connection created");
    if sync_immediately {
        state.settle(position).await;
        position = position.max(jobs::start_job(&state, &ctx, id).await?.position);
    }
    state.settle(position).await;
    respond(&state, org, id, &EntityStats::default())
}

fn respond(
    state: &AppState,
    org: Uuid,
    id: Uuid,
    entities: &EntityStats,
) -> Result<HttpResponse, ApiError> {
    state
        .projection
        .read(|m| match m.source_connection(org, id) {
            Some(sc) => ok_json(&SourceConnectionOut::new(m, sc, entities)),
            None => Err(ApiError::source_connection_not_found()),
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
    let collection = q.opt_str("collection");
    let org = ctx.organization_id;
    let page: Vec<Uuid> = state.projection.read(|m| {
        m.source_connections(org)
            .filter(|sc| collection.is_none_or(|c| sc.readable_collection_id == c))
            .skip(skip)
            .take(limit)
            .map(|sc| sc.id)
            .collect()
    });
    let totals = entities::totals(&state, &page).await;
    state.projection.read(|m| {
        let items: Vec<SourceConnectionListItemOut> = page
            .iter()
            .zip(totals)
            .filter_map(|(id, total)| {
                m.source_connection(org, *id)
                    .map(|sc| SourceConnectionListItemOut::new(m, sc, total))
            })
            .collect();
        ok_json(&items)
    })
}

/// The id of an existing source connection of the caller's organization, or 404.
pub fn existing(state: &AppState, ctx: &ApiContext, raw_id: &str) -> Result<Uuid, ApiError> {
    let id = path_uuid("source_connection_id", raw_id)?;
    state
        .projection
        .read(|m| m.source_connection(ctx.organization_id, id).is_some())
        .then_some(id)
        .ok_or_else(ApiError::source_connection_not_found)
}

pub async fn get(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing(&state, &ctx, &path)?;
    let stats = entities::summary(&state, id).await;
    respond(&state, ctx.organization_id, id, &stats)
}

pub async fn delete(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing(&state, &ctx, &path)?;
    // The answer is the connection as it was, before its syncs were stopped.
    let stats = entities::summary(&state, id).await;
    let before = respond(&state, ctx.organization_id, id, &stats)?;
    remove(&state, &ctx, id).await?;
    Ok(before)
}

/// Deletes a source connection: cancels its live jobs, waits (bounded) for them to end,
/// records the deletion, stops any job that raced it, then purges what its syncs wrote.
/// Returns the deletion's position.
pub async fn remove(state: &AppState, ctx: &ApiContext, id: Uuid) -> Result<u64, ApiError> {
    let live = jobs::cancel_active(state, ctx, id).await;
    if !live.is_empty() {
        wait_for_jobs_to_end(state, &[id]).await;
    }
    remove_stopped(state, ctx, id, &live).await
}

/// Deletes several source connections (a collection's): every live job of all of them is
/// cancelled first and waited for once, so k stuck syncs cost one bounded wait, not k.
pub async fn remove_all(state: &AppState, ctx: &ApiContext, ids: &[Uuid]) -> Result<(), ApiError> {
    let mut live = Vec::with_capacity(ids.len());
    for &id in ids {
        live.push(jobs::cancel_active(state, ctx, id).await);
    }
    if live.iter().any(|jobs| !jobs.is_empty()) {
        wait_for_jobs_to_end(state, ids).await;
    }
    for (&id, live) in ids.iter().zip(&live) {
        match remove_stopped(state, ctx, id, live).await {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The rest of a delete once the connection's `live` jobs were cancelled and waited for.
async fn remove_stopped(
    state: &AppState,
    ctx: &ApiContext,
    id: Uuid,
    live: &[Uuid],
) -> Result<u64, ApiError> {
    let delete = SourceConnectionCommand::Delete {
        source_connection_id: id,
    };
    let stream = stream::source_connection(id);
    let recorded = commands::execute::<SourceConnection>(state, ctx, &stream, &delete).await?;
    let position = recorded.last().map_or(0, |r| r.global_position);
    state.settle(position).await;
    // A job started while the delete was under way has no connection any more: stop it
    // too before the purge, so that nothing it writes outlives the connection.
    let raced = jobs::cancel_active(state, ctx, id).await;
    if raced.iter().any(|j| !live.contains(j)) {
        wait_for_jobs_to_end(state, &[id]).await;
    }
    entities::purge(state, id).await;
    tracing::info!(source_connection_id = %id, "source connection deleted");
    Ok(position)
}

/// Airweave's barrier: wait (bounded) until the connections' cancelled syncs are final.
async fn wait_for_jobs_to_end(state: &AppState, ids: &[Uuid]) {
    let ended = state
        .projection
        .wait_until(
            |m| ids.iter().all(|id| m.active_jobs_of(*id).is_empty()),
            state.settings.delete_wait,
        )
        .await;
    if !ended {
        tracing::warn!(
            source_connections = ids.len(),
            wait = ?state.settings.delete_wait,
            "deleting source connections whose syncs have not stopped yet"
        );
    }
}
