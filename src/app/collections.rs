//! Creating a collection, and deleting one (its source connections first).

use super::{last_position, lookup, App, Caller, Error};
use crate::api::commands::{
    decide_create_collection, decide_delete_collection, readable_id_from_name, CollectionName,
};
use syncjobs_domain::events::stream;
use syncjobs_projections::{Collection, ReadModel};
use uuid::Uuid;

impl App {
    /// Creates a collection of the caller's organization under `readable_id` (derived from
    /// the name when none is given); of two racing creates of one readable id exactly one
    /// wins. Returns the collection as the read model shows it, or, if the read model lags
    /// past the read-your-writes bound, as its event recorded it.
    pub async fn create_collection(
        &self,
        caller: &Caller,
        name: &str,
        readable_id: Option<&str>,
    ) -> Result<Collection, Error> {
        let readable_id = readable_id.map_or_else(|| readable_id_from_name(name), str::to_owned);
        let org = caller.organization_id;
        let id = Uuid::now_v7();
        let recorded = self
            .execute(
                caller,
                &stream::collection_name(org, &readable_id),
                |s: &CollectionName| decide_create_collection(s, id, org, name, &readable_id),
            )
            .await?;
        let position = last_position(&recorded);
        self.settle(position).await;
        let at = recorded
            .first()
            .map_or_else(|| self.clock.now(), |r| r.recorded_at);
        tracing::info!(collection_id = %id, %readable_id, "collection created");
        let shown = self.projection.read(|m| {
            m.collection(org, &readable_id)
                .filter(|c| c.id == id)
                .cloned()
        });
        Ok(shown.unwrap_or_else(|| Collection {
            id,
            organization_id: org,
            name: name.to_owned(),
            readable_id,
            created_at: at,
            modified_at: at,
            created_position: position,
        }))
    }

    /// Deletes the caller's collection `readable_id`: each of its source connections as a
    /// delete of that connection does (syncs stopped, entities purged), then the collection,
    /// then any connection created in it meanwhile. Returns `before` of the collection as it
    /// was before anything was removed (what a client is answered).
    pub async fn delete_collection<R>(
        &self,
        caller: &Caller,
        readable_id: &str,
        before: impl FnOnce(&ReadModel, &Collection) -> R,
    ) -> Result<R, Error> {
        let (collection_id, before) = self
            .projection
            .read(|m| lookup::collection(m, caller, readable_id).map(|c| (c.id, before(m, c))))?;
        self.delete_source_connections_in(caller, collection_id)
            .await?;
        let recorded = self
            .execute(
                caller,
                &stream::collection_name(caller.organization_id, readable_id),
                |s: &CollectionName| decide_delete_collection(s, collection_id),
            )
            .await?;
        self.settle(last_position(&recorded)).await;
        // A source connection created in the collection while it was being deleted.
        self.delete_source_connections_in(caller, collection_id)
            .await?;
        tracing::info!(%collection_id, %readable_id, "collection deleted");
        Ok(before)
    }

    async fn delete_source_connections_in(
        &self,
        caller: &Caller,
        collection_id: Uuid,
    ) -> Result<(), Error> {
        let ids: Vec<Uuid> = self.projection.read(|m| {
            m.source_connections_in_collection(collection_id)
                .map(|sc| sc.id)
                .collect()
        });
        self.delete_source_connections(caller, &ids).await
    }
}
