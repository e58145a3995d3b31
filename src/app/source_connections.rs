//! Creating a source connection (and starting its first sync), and deleting one: its syncs
//! are stopped first, and what they wrote is removed after.

use super::{last_position, lookup, App, Caller, Error};
use serde_json::{Map, Value};
use syncjobs_actors::pipeline::{validate_credentials, validate_source_config, EntityStats};
use syncjobs_domain::events::stream;
use syncjobs_domain::{SourceConnectionCommand, SourceConnectionEvent};
/// The aggregate (the read model's `SourceConnection` is the other one here).
type Aggregate = syncjobs_domain::SourceConnection;
use syncjobs_projections::{ReadView, SourceConnection};
use uuid::Uuid;

/// A source connection to create, as a client describes it (Airweave's shapes).
#[derive(Debug, Clone, Copy)]
pub struct NewSourceConnection<'a> {
    pub short_name: &'a str,
    pub readable_collection_id: &'a str,
    /// Default: "<Source> Connection".
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub config: Option<&'a Map<String, Value>>,
    pub authentication: Option<&'a Map<String, Value>>,
    /// Start a first sync right away (Airweave's default).
    pub sync_immediately: bool,
}

/// Airweave's authentication shapes; syncjobs' sources take direct credentials only.
fn auth_method(short_name: &str, auth: Option<&Map<String, Value>>) -> Result<&'static str, Error> {
    let Some(auth) = auth else {
        // Airweave would start an OAuth browser flow here; the test sources need no
        // secret, so a missing `authentication` means direct, authenticated.
        return Ok("direct");
    };
    match auth.get("credentials") {
        Some(Value::Object(credentials)) => {
            validate_credentials(short_name, credentials)?;
            Ok("direct")
        }
        Some(other) if !other.is_null() => Err(Error::CredentialsNotAnObject),
        _ => Err(Error::UnsupportedAuthentication {
            short_name: short_name.to_owned(),
        }),
    }
}

/// The display name Airweave gives a source (`timed` -> `Timed`), for default connection names.
fn display_name(short_name: &str) -> String {
    let mut c = short_name.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

impl App {
    /// Creates a source connection in one of the caller's collections and, unless told
    /// not to, starts its first sync. Checked in Airweave's order: the source, its
    /// authentication, its config, then the collection. Returns the new id once the read
    /// model shows the connection (and its job).
    pub async fn create_source_connection(
        &self,
        caller: &Caller,
        new: NewSourceConnection<'_>,
    ) -> Result<Uuid, Error> {
        let NewSourceConnection {
            short_name,
            readable_collection_id,
            ..
        } = new;
        let config = new.config.map_or(Value::Null, |m| Value::Object(m.clone()));
        // The pipeline's registry decides, so that what is stored is exactly what the
        // runner will accept; defaults are filled in.
        let config = validate_source_config(short_name, &config)?;
        let method = auth_method(short_name, new.authentication)?;
        let collection_id = self
            .projection
            .read(async |m| {
                lookup::collection(m, caller, readable_collection_id)
                    .await
                    .map(|c| c.id)
            })
            .await?;

        let id = Uuid::now_v7();
        let name = new.name.map_or_else(
            || format!("{} Connection", display_name(short_name)),
            str::to_owned,
        );
        let created = SourceConnectionEvent::SourceConnectionCreated {
            source_connection_id: id,
            organization_id: caller.organization_id,
            collection_id,
            readable_collection_id: readable_collection_id.to_owned(),
            name,
            description: new.description.map(str::to_owned),
            short_name: short_name.to_owned(),
            config: config.clone(),
            auth_method: method.to_owned(),
            authenticated: true,
        };
        let create = SourceConnectionCommand::Create(created);
        let stream = stream::source_connection(id);
        let recorded = self.execute::<Aggregate>(caller, &stream, &create).await?;
        let mut position = last_position(&recorded);
        tracing::info!(source_connection_id = %id, %short_name, "source connection created");
        if new.sync_immediately {
            // Its first job from what was just recorded, not from the read model: a read
            // model lagging past the wait's bound must not answer "not found" for it.
            let job = self
                .create_job(caller, id, short_name.to_owned(), config, None)
                .await?;
            position = position.max(job.position);
        }
        self.settle(position).await;
        Ok(id)
    }

    /// Deletes the caller's source connection: cancels its live jobs, waits (bounded) for
    /// them to end, records the deletion, stops any job that raced it, then purges what its
    /// syncs wrote. Returns `before` of the connection and its entities as they were before
    /// its syncs were stopped (what a client is answered).
    pub async fn delete_source_connection<R>(
        &self,
        caller: &Caller,
        id: Uuid,
        before: impl AsyncFnOnce(&ReadView<'_>, &SourceConnection, &EntityStats) -> R,
    ) -> Result<R, Error> {
        self.projection
            .read(async |m| lookup::source_connection(m, caller, id).await.map(|_| ()))
            .await?;
        let stats = self.entity_stats(id).await;
        let before = self
            .projection
            .read(async |m| {
                let sc = lookup::source_connection(m, caller, id).await?;
                Ok::<_, Error>(before(m, &sc, &stats).await)
            })
            .await?;
        let live = self.cancel_active(caller, id).await?;
        if !live.is_empty() {
            self.wait_for_jobs_to_end(&[id]).await;
        }
        self.delete_stopped(caller, id, &live, false).await?;
        Ok(before)
    }

    /// Deletes a collection's source connections, as taken along with it (their deletions
    /// announce no `source_connection.deleted`: Airweave's collection delete announces only
    /// `collection.deleted`): every live job of all of them is cancelled first and waited
    /// for once, so k stuck syncs cost one bounded wait, not k. One deleted meanwhile by
    /// someone else is skipped.
    pub(super) async fn delete_source_connections(
        &self,
        caller: &Caller,
        ids: &[Uuid],
    ) -> Result<(), Error> {
        let mut live = Vec::with_capacity(ids.len());
        for &id in ids {
            live.push(self.cancel_active(caller, id).await?);
        }
        if live.iter().any(|jobs| !jobs.is_empty()) {
            self.wait_for_jobs_to_end(ids).await;
        }
        for (&id, live) in ids.iter().zip(&live) {
            match self.delete_stopped(caller, id, live, true).await {
                Ok(_) | Err(Error::SourceConnectionNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The rest of a delete once the connection's `live` jobs were cancelled and waited for.
    async fn delete_stopped(
        &self,
        caller: &Caller,
        id: Uuid,
        live: &[Uuid],
        with_collection: bool,
    ) -> Result<(), Error> {
        let delete = SourceConnectionCommand::Delete {
            source_connection_id: id,
            with_collection,
        };
        let stream = stream::source_connection(id);
        let recorded = self.execute::<Aggregate>(caller, &stream, &delete).await?;
        self.settle(last_position(&recorded)).await;
        // A job started while the delete was under way has no connection any more: stop it
        // too before the purge, so that nothing it writes outlives the connection.
        let raced = self.cancel_active(caller, id).await?;
        if raced.iter().any(|j| !live.contains(j)) {
            self.wait_for_jobs_to_end(&[id]).await;
        }
        self.purge(id).await;
        tracing::info!(source_connection_id = %id, "source connection deleted");
        Ok(())
    }

    /// What the destination holds for a connection; zero (and a warning) if it cannot say.
    pub async fn entity_stats(&self, source_connection_id: Uuid) -> EntityStats {
        match self.destination.stats(source_connection_id).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%source_connection_id, %err, "entity counts unavailable");
                EntityStats::default()
            }
        }
    }

    /// Entity totals for a page of a listing, one per id, in order.
    pub async fn entity_totals(&self, ids: &[Uuid]) -> Vec<u64> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.entity_stats(*id).await.total_entities);
        }
        out
    }

    /// Removes everything the destination holds for a deleted connection: the one path
    /// that removes synced data (a cancel never does).
    async fn purge(&self, source_connection_id: Uuid) {
        match self.destination.purge(source_connection_id).await {
            Ok(n) => {
                tracing::info!(%source_connection_id, entities_removed = n, "source connection entities purged")
            }
            Err(err) => {
                tracing::error!(%source_connection_id, %err, "source connection deleted; its entities were not purged")
            }
        }
    }
}
