//! The seam to the destination's entities: counts for `GET /source-connections/{id}` and
//! the purge that `DELETE` performs (the one path that removes synced data).

use super::wire::EntitySummary;
use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
pub trait EntityIndex: Send + Sync + 'static {
    /// What the destination holds for this source connection.
    async fn summary(&self, source_connection_id: Uuid) -> Result<EntitySummary, String>;

    /// Removes everything the destination holds for it; returns how many entities went.
    async fn purge(&self, source_connection_id: Uuid) -> Result<u64, String>;

    /// Totals for a page of a listing (one per id, in order).
    async fn totals(&self, source_connection_ids: &[Uuid]) -> Vec<u64> {
        let mut out = Vec::with_capacity(source_connection_ids.len());
        for id in source_connection_ids {
            out.push(self.summary(*id).await.map_or(0, |s| s.total_entities));
        }
        out
    }
}

/// For a server without a destination (and unit tests of the routes): nothing stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEntities;

#[async_trait]
impl EntityIndex for NoEntities {
    async fn summary(&self, _: Uuid) -> Result<EntitySummary, String> {
        Ok(EntitySummary::default())
    }

    async fn purge(&self, _: Uuid) -> Result<u64, String> {
        Ok(0)
    }
}
