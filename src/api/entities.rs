//! The destination's side of a source connection: entity counts for `GET` and the purge
//! that `DELETE` performs (the one path that removes synced data; cancel never does).

use super::AppState;
use syncjobs_actors::pipeline::EntityStats;
use uuid::Uuid;

/// What the destination holds for a connection; zero (and a warning) if it cannot say.
pub async fn summary(state: &AppState, source_connection_id: Uuid) -> EntityStats {
    match state.destination.stats(source_connection_id).await {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%source_connection_id, %err, "entity counts unavailable");
            EntityStats::default()
        }
    }
}

/// Totals for a page of a listing, one per id, in order.
pub async fn totals(state: &AppState, ids: &[Uuid]) -> Vec<u64> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(summary(state, *id).await.total_entities);
    }
    out
}

/// Removes everything the destination holds for a deleted connection.
pub async fn purge(state: &AppState, source_connection_id: Uuid) {
    match state.destination.purge(source_connection_id).await {
        Ok(n) => {
            tracing::info!(%source_connection_id, entities_removed = n, "source connection entities purged")
        }
        Err(err) => {
            tracing::error!(%source_connection_id, %err, "source connection deleted; its entities were not purged")
        }
    }
}
