//! Creating a collection, updating it, and deleting one (its source connections first).

use super::{last_position, lookup, App, Caller, Error};
use syncjobs_domain::events::stream;
use syncjobs_domain::{CollectionCommand, CollectionEvent, CollectionName, Event};
use syncjobs_projections::{Collection, ReadView};
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
        let create = CollectionCommand::Create {
            collection_id: id,
            organization_id: org,
            name: name.to_owned(),
            readable_id: readable_id.clone(),
        };
        let recorded = self
            .execute::<CollectionName>(caller, &stream::collection_name(org, &readable_id), &create)
            .await?;
        let position = last_position(&recorded);
        self.settle(position).await;
        let at = recorded
            .first()
            .map_or_else(|| self.clock.now(), |r| r.recorded_at);
        tracing::info!(collection_id = %id, %readable_id, "collection created");
        let shown = self
            .projection
            .read(async |m| {
                Ok::<_, Error>(
                    m.collection(org, &readable_id)
                        .await?
                        .filter(|c| c.id == id),
                )
            })
            .await?;
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

    /// Updates the caller's collection `readable_id` (Airweave's `PATCH`): `name`, already
    /// checked, replaces its name; `None` changes nothing but is still recorded, as Airweave
    /// still answers and announces it (`collection.updated`). The readable id never changes.
    /// Returns the collection as the read model shows it after the update, or, if the read
    /// model lags past the read-your-writes bound, as it was with the new name.
    pub async fn update_collection(
        &self,
        caller: &Caller,
        readable_id: &str,
        name: Option<&str>,
    ) -> Result<Collection, Error> {
        let before = self
            .projection
            .read(async |m| lookup::collection(m, caller, readable_id).await)
            .await?;
        let update = CollectionCommand::Update {
            collection_id: before.id,
            name: name.map(str::to_owned),
        };
        let recorded = self
            .execute::<CollectionName>(
                caller,
                &stream::collection_name(caller.organization_id, readable_id),
                &update,
            )
            .await?;
        self.settle(last_position(&recorded)).await;
        let renamed = recorded.iter().find_map(|r| match &r.event {
            Event::Collection(CollectionEvent::CollectionUpdated {
                name: Some(name), ..
            }) => Some((name.clone(), r.recorded_at)),
            _ => None,
        });
        tracing::info!(collection_id = %before.id, %readable_id, renamed = renamed.is_some(), "collection updated");
        let shown = self
            .projection
            .read(async |m| {
                Ok::<_, Error>(
                    m.collection(caller.organization_id, readable_id)
                        .await?
                        .filter(|c| c.id == before.id),
                )
            })
            .await?;
        let as_recorded = match renamed {
            Some((name, at)) => Collection {
                name,
                modified_at: at,
                ..before
            },
            None => before,
        };
        Ok(shown.unwrap_or(as_recorded))
    }

    /// Deletes the caller's collection `readable_id`: each of its source connections as a
    /// delete of that connection does (syncs stopped, entities purged), then the collection,
    /// then any connection created in it meanwhile. Returns `before` of the collection as it
    /// was before anything was removed (what a client is answered).
    pub async fn delete_collection<R>(
        &self,
        caller: &Caller,
        readable_id: &str,
        before: impl AsyncFnOnce(&ReadView<'_>, &Collection) -> R,
    ) -> Result<R, Error> {
        let (collection_id, before) = self
            .projection
            .read(async |m| {
                let c = lookup::collection(m, caller, readable_id).await?;
                Ok::<_, Error>((c.id, before(m, &c).await))
            })
            .await?;
        self.delete_source_connections_in(caller, collection_id)
            .await?;
        let delete = CollectionCommand::Delete { collection_id };
        let recorded = self
            .execute::<CollectionName>(
                caller,
                &stream::collection_name(caller.organization_id, readable_id),
                &delete,
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
        let ids: Vec<Uuid> = self
            .projection
            .read(async |m| {
                Ok::<_, Error>(
                    m.source_connections_in_collection(collection_id)
                        .await?
                        .into_iter()
                        .map(|sc| sc.id)
                        .collect(),
                )
            })
            .await?;
        self.delete_source_connections(caller, &ids).await
    }
}

/// Airweave's readable id from a name: lower-case, only `[a-z0-9]` and single hyphens,
/// then a random 6-character suffix (`Finance Data` -> `finance-data-ab12x9`).
pub fn readable_id_from_name(name: &str) -> String {
    use rand::distr::{Distribution, Uniform};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut slug = String::with_capacity(name.len() + 7);
    let mut pending_hyphen = false;
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_hyphen && !slug.is_empty() {
                slug.push('-');
            }
            pending_hyphen = false;
            slug.push(c);
        } else if c.is_whitespace() || c == '-' {
            pending_hyphen = true;
        }
        // anything else is dropped, as Airweave does
    }
    if !slug.is_empty() {
        slug.push('-');
    }
    let mut rng = rand::rng();
    if let Ok(pick) = Uniform::new(0, ALPHABET.len()) {
        for _ in 0..6 {
            slug.push(ALPHABET[pick.sample(&mut rng)] as char);
        }
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_ids_from_names_follow_airweave() {
        let id = readable_id_from_name("  Finance  Data (Q1)! ");
        assert!(id.starts_with("finance-data-q1-"), "{id}");
        assert_eq!(id.len(), "finance-data-q1-".len() + 6);
        assert!(crate::api::input::valid_readable_id(&id));
        let only_suffix = readable_id_from_name("!!!!");
        assert_eq!(only_suffix.len(), 6);
        assert!(crate::api::input::valid_readable_id(&only_suffix));
        assert_ne!(readable_id_from_name("same"), readable_id_from_name("same"));
    }
}
