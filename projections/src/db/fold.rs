//! The fold: which rows each recorded event changes, written once for every engine.
//!
//! [`Fold::apply`] decides (skip rules, counts, run totals, the purge queue) and asks a
//! [`Rows`] for each row operation; an engine implements [`Rows`] on its open transaction
//! (SQLite's in `writer`, PostgreSQL's in `pg`) and commits the rows with the position.
//! The fold is idempotent by global position and never fails on an event: one that makes no
//! sense for the model (a late job event after a final state, a job of an unknown source
//! connection) is logged and skipped, the same way on every rebuild and on every engine.
//!
//! Only live jobs are held in memory (each event of a job is folded into its state there, and
//! the row is written once per batch); final jobs live only in the database.

use super::{time, ReadError};
use crate::model::{
    ApiKey, Collection, Organization, SourceConnection, WebhookAttempt, WebhookSubscription,
};
use chrono::{DateTime, Utc};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, Event, JobState, JobStatus, RecordedEvent, SharedClock,
    SourceConnectionEvent, SyncJobEvent, WebhookEvent,
};
use uuid::Uuid;

/// The fold's maps, keyed by ids: hashed with foldhash, not std's SipHash (no key here
/// comes from a client that could choose collisions: they are ids of recorded events), which
/// showed as 3% of a first start's CPU.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The job id of a job event's stream (None for any other event, or a job event outside a
/// job stream), parsed once per event: each batch's lookups and the fold ask for it.
fn job_of(e: &RecordedEvent) -> Option<Uuid> {
    match e.event {
        Event::Job(_) => stream::job_id(&e.stream_id),
        _ => None,
    }
}

/// What is left in a batch's event whose body the fold took: a body that allocates
/// nothing, never read again.
fn taken_event() -> Event {
    Event::Job(taken_job_event())
}

fn taken_job_event() -> SyncJobEvent {
    SyncJobEvent::JobStarted {
        worker: String::new(),
    }
}

/// Final job rows of deleted connections removed per purge transaction. A step holds the
/// writer, and a command waits for its own events to be folded (read-your-writes), so a
/// step's length is what a command can wait behind it: 1,000 rows took ~9 ms a step and
/// commands waited 15-43 ms during the purge of 100,000 jobs (bench #9); 250 rows take
/// ~2-3 ms. The projector folds before it purges, so a command waits one step at most.
pub const PURGE_BATCH: usize = 250;

/// Webhook messages past retention removed per transaction, with their deliveries and
/// attempts. A step holds the writer like a [`PURGE_BATCH`] step (a command's fold can wait
/// behind one), and a message is about three row deletions (message, delivery, attempt),
/// so this keeps a step to roughly the same few milliseconds.
pub const RETENTION_BATCH: usize = 250;
/// How often the retention purge looks for messages past retention (by the service's
/// clock, after a batch or the projector's timer): a minute late is nothing against days.
pub const RETENTION_EVERY: chrono::Duration = chrono::Duration::minutes(1);

/// A job not final yet, with the position of its creation (its row's order).
#[derive(Debug, Clone)]
pub(crate) struct LiveJob {
    pub state: JobState,
    pub created_position: u64,
    /// Whether the job has a row in the database (in this transaction or before): one
    /// created since has none, so its first write is a plain insert.
    pub stored: bool,
}

/// What a committed batch changed that readers may have cached. Computed from the events
/// themselves, folded here or not: on a shared database another node may have folded them,
/// and this node's caches must follow all the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub position: u64,
    /// A source connection was deleted: its final jobs vanished from reads.
    pub jobs_changed: bool,
    /// Organizations or keys changed: authentication must look again.
    pub keys_changed: bool,
}

impl Committed {
    /// The invalidations `events` call for.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Committed {
        let mut c = Committed::default();
        for e in events {
            c.position = c.position.max(e.global_position);
            match &e.event {
                Event::Access(_) => c.keys_changed = true,
                Event::SourceConnection(SourceConnectionEvent::SourceConnectionDeleted {
                    ..
                }) => c.jobs_changed = true,
                _ => {}
            }
        }
        c
    }
}

/// A table whose rows are keyed by `id` and belong to an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Collections,
    SourceConnections,
    WebhookSubscriptions,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Collections => "collections",
            Table::SourceConnections => "source_connections",
            Table::WebhookSubscriptions => "webhook_subscriptions",
        }
    }
}

/// A source connection's run counter: its index in [`RunCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    Total = 0,
    Successful = 1,
    Failed = 2,
}

/// Runs to add to a source connection: total, successful, failed.
pub(crate) type RunCounts = [i64; 3];

/// Deltas of an organization's `/health` counts: collections, connections, active jobs.
pub(crate) type OrgCounts = [i64; 3];

/// A job row as written (the state already encoded).
pub(crate) struct JobRow {
    /// No row of this job exists yet: an engine may insert it without an upsert's checks.
    pub new: bool,
    pub id: Uuid,
    pub source_connection_id: Uuid,
    pub organization_id: Uuid,
    pub active: bool,
    pub created_position: u64,
    pub state: Vec<u8>,
}

/// The row operations of the fold, on an engine's open transaction. Times are passed in
/// the model's text encoding ([`super::time`]), which both engines store.
///
/// The lookups a batch needs are asked for the whole batch at once and the counters are
/// summed in memory and written once at its end: on PostgreSQL each call is a round trip,
/// and one per event made a first start 44x slower than reading the log (bench #12).
pub(crate) trait Rows {
    async fn has_row(&self, table: Table, id: Uuid) -> Result<bool, ReadError>;
    /// Deletes the row; the organization it belonged to, if it existed.
    async fn remove_row(&self, table: Table, id: Uuid) -> Result<Option<Uuid>, ReadError>;
    /// Adds to organizations' `/health` counts (each organization once).
    async fn add_counts(&self, deltas: &[(Uuid, OrgCounts)]) -> Result<(), ReadError>;
    /// The organizations of those of `ids` that exist, as (connection, organization).
    async fn connection_organizations(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, ReadError>;
    /// Adds to source connections' run counters (each connection once; gone ones ignored).
    async fn count_runs(&self, runs: &[(Uuid, RunCounts)]) -> Result<(), ReadError>;
    /// The stored state of a job (live or final), if it has a row.
    async fn stored_job(&self, id: Uuid) -> Result<Option<JobState>, ReadError>;
    /// The jobs among `ids` that have a row (live or final), with their creation positions.
    async fn stored_jobs(&self, ids: &[Uuid]) -> Result<Vec<LiveJob>, ReadError>;
    /// Active job rows of a source connection.
    async fn active_jobs_of(&self, source_connection_id: Uuid) -> Result<i64, ReadError>;
    async fn delete_job(&self, id: Uuid) -> Result<(), ReadError>;
    /// Inserts or updates (`active`, `state`) these job rows.
    async fn write_jobs(&self, rows: &[JobRow]) -> Result<(), ReadError>;
    async fn enqueue_purge(&self, source_connection_id: Uuid) -> Result<(), ReadError>;
    async fn insert_collection(&self, c: &Collection) -> Result<(), ReadError>;
    /// Gives the collection a new name, modified at `at`; a missing row is left so.
    async fn rename_collection(&self, id: Uuid, name: &str, at: &str) -> Result<(), ReadError>;
    async fn insert_source_connection(&self, sc: &SourceConnection) -> Result<(), ReadError>;
    /// Inserts the organization unless it exists.
    async fn insert_organization(&self, o: &Organization, position: u64) -> Result<(), ReadError>;
    /// Inserts the key unless it exists.
    async fn insert_api_key(&self, k: &ApiKey, position: u64) -> Result<(), ReadError>;
    /// Marks the key revoked at `at` unless it already is.
    async fn revoke_api_key(&self, key_id: Uuid, at: &str) -> Result<(), ReadError>;
    async fn webhook_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<WebhookSubscription>, ReadError>;
    /// Inserts the subscription, or replaces the row of its id.
    async fn write_webhook_subscription(&self, s: &WebhookSubscription) -> Result<(), ReadError>;
    /// Ends the pending deliveries of a deleted subscription.
    async fn cancel_webhook_deliveries(&self, subscription_id: Uuid) -> Result<(), ReadError>;
    async fn source_connection_row(&self, id: Uuid) -> Result<Option<SourceConnection>, ReadError>;
    async fn collection_row(&self, id: Uuid) -> Result<Option<Collection>, ReadError>;
    /// The subscriptions of these organizations.
    async fn webhook_subscriptions_of(
        &self,
        organization_ids: &[Uuid],
    ) -> Result<Vec<WebhookSubscription>, ReadError>;
    /// Inserts the messages (those that exist are left as they are), in one statement
    /// where the engine can: one is written for every lifecycle event.
    async fn insert_webhook_messages(&self, m: &[NewMessage]) -> Result<(), ReadError>;
    /// Pending deliveries, unless they exist.
    async fn insert_webhook_deliveries(&self, d: &[NewDelivery]) -> Result<(), ReadError>;
    /// A pending delivery to `s`, due at `due`, of each of its organization's messages
    /// recorded at or after `since` of a type it lists that has none yet (a subscription
    /// asking for past events, or enabled again with `recover_since`). Their positions are
    /// the messages', so they go in log order.
    async fn deliver_past_messages(
        &self,
        s: &WebhookSubscription,
        since: &str,
        due: &str,
    ) -> Result<(), ReadError>;
    /// A failed delivery is pending again, due at `due`.
    async fn recover_webhook_delivery(
        &self,
        message_id: Uuid,
        subscription_id: Uuid,
        due: &str,
    ) -> Result<(), ReadError>;
    /// Records the attempt (unless known, or its message is gone: past retention) and moves
    /// its delivery on (`status` and the next due time) and its subscription's
    /// `failing_since` (cleared by a success, set by the first failure after one).
    async fn record_webhook_attempt(
        &self,
        a: &WebhookAttempt,
        status: &str,
        next_attempt_at: Option<&str>,
        position: u64,
    ) -> Result<(), ReadError>;
}

/// How long webhook messages are kept (`SYNCJOBS_WEBHOOK_RETENTION_DAYS`), by the
/// service's clock: an event older than that becomes no message when folded (a rebuild does
/// not bring back what the retention purge removed), and the purge removes older messages
/// with their deliveries and attempts.
#[derive(Clone)]
pub struct Retention {
    pub period: chrono::Duration,
    pub clock: SharedClock,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Retention {
    /// Messages recorded before this are past retention.
    pub fn cutoff(&self) -> DateTime<Utc> {
        self.clock
            .now()
            .checked_sub_signed(self.period)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// A message to store: its payload as stored ([`render_payload`] makes the JSON sent).
pub(crate) struct NewMessage {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
    pub timestamp: DateTime<Utc>,
    pub created_position: u64,
}

/// A delivery to create: a message to a subscription, due at `due` (model time text).
pub(crate) struct NewDelivery {
    pub message_id: Uuid,
    pub subscription_id: Uuid,
    pub organization_id: Uuid,
    pub due: String,
    pub created_position: u64,
}

/// What a batch writes at its end, gathered so that an engine can send it all at once
/// (PostgreSQL pipelines it with the position and the commit: one round trip where a
/// statement each made a command wait for several, bench #14).
#[derive(Default)]
pub(crate) struct Writes {
    pub messages: Vec<NewMessage>,
    pub deliveries: Vec<NewDelivery>,
    pub jobs: Vec<JobRow>,
    pub org_counts: Vec<(Uuid, OrgCounts)>,
    pub runs: Vec<(Uuid, RunCounts)>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.deliveries.is_empty()
            && self.jobs.is_empty()
            && self.org_counts.is_empty()
            && self.runs.is_empty()
    }

    /// Writes them one statement after another, in this order: messages before their
    /// deliveries, then jobs and counters.
    pub async fn write_to<R: Rows>(&self, rows: &R) -> Result<(), ReadError> {
        if !self.messages.is_empty() {
            rows.insert_webhook_messages(&self.messages).await?;
        }
        if !self.deliveries.is_empty() {
            rows.insert_webhook_deliveries(&self.deliveries).await?;
        }
        if !self.jobs.is_empty() {
            rows.write_jobs(&self.jobs).await?;
        }
        if !self.org_counts.is_empty() {
            rows.add_counts(&self.org_counts).await?;
        }
        if !self.runs.is_empty() {
            rows.count_runs(&self.runs).await?;
        }
        Ok(())
    }
}

/// The fold's memory between batches: the position folded, the live jobs, and what it
/// looked up before.
#[derive(Debug, Default)]
pub(crate) struct Fold {
    /// The global position of the last event folded and committed.
    pub position: u64,
    /// The last event what is held here has taken into account (folded here, or
    /// followed as another writer folded it); below `position` while this writer has yet
    /// to see events another writer folded.
    seen: u64,
    pub live: HashMap<Uuid, LiveJob>,
    /// Source connection -> its organization (None: it does not exist), as of `position`.
    /// A connection's organization never changes while it exists, so this is asked once,
    /// not once per batch: a job's end needs it, and on PostgreSQL each lookup is a round
    /// trip that a command waits for (bench #14).
    connections: HashMap<Uuid, Option<Uuid>>,
    /// What webhook messages read, kept between batches like `connections`.
    hooks: Hooks,
    /// The purge queue was found empty and no connection was deleted since: the purge
    /// need not look (on PostgreSQL a look is a transaction, and the projector made one
    /// after every batch, which the next batch's command then waited behind).
    pub purge_known_empty: bool,
    /// Every live job is in `live` (a single writer that loaded them all): a job missing
    /// there is not live, with nothing to ask. Else (a database shared with other
    /// writers) the live jobs a batch touches are loaded at its start.
    pub complete: bool,
    /// None: messages are kept for ever.
    pub retention: Option<Retention>,
    /// When the retention purge looks next (None: at the next chance).
    pub next_retention: Option<DateTime<Utc>>,
}

/// Entries a cache of the fold may hold before it is emptied (a bound on memory; the next
/// batches ask again).
const CACHE_LIMIT: usize = 100_000;

impl Fold {
    /// Forgets everything held between batches (the transaction that changed it rolled
    /// back, or the rows were changed by other means); what is held is then as of
    /// `position`.
    pub fn forget(&mut self) {
        self.seen = self.position;
        self.purge_known_empty = false;
        self.live.clear();
        self.connections.clear();
        self.hooks = Hooks::default();
    }

    /// Drops (or brings up to date) what an event folded by another writer (sharing the
    /// database) may have made stale. Every event of the log passes through this writer in
    /// order, folded here or not, so each cached entry is dealt with before any later event
    /// could read it; an event passed again (a re-read) is not taken twice (`seen`).
    fn forget_changed_by(&mut self, e: &RecordedEvent) {
        match &e.event {
            // A live job held here follows the event as the other writer folded it (the
            // same fold of the same state), so that the job's next event, often folded
            // here, needs no lookup of its row; anything else drops it.
            Event::Job(event) => {
                if let Some(id) = stream::job_id(&e.stream_id) {
                    let followed = self.live.get_mut(&id).is_some_and(|job| {
                        job.state.evolve_in_place(event, e.recorded_at).is_ok()
                            && !job.state.status.is_final()
                    });
                    if !followed {
                        self.live.remove(&id);
                    }
                }
            }
            Event::SourceConnection(sc) => {
                self.connections.remove(&connection_of(sc));
            }
            _ => {}
        }
        self.hooks.forget_changed_by(&e.event);
    }

    /// The cutoff to purge messages before, if the retention purge is due now.
    pub fn retention_due(&self) -> Option<DateTime<Utc>> {
        let r = self.retention.as_ref()?;
        let now = r.clock.now();
        if self.next_retention.is_some_and(|next| now < next) {
            return None;
        }
        Some(r.cutoff())
    }

    /// A retention step removed `removed` messages: when it was not a full batch, nothing
    /// is left to purge until the next look.
    pub fn retention_done(&mut self, removed: usize) {
        if removed >= RETENTION_BATCH {
            return;
        }
        if let Some(r) = &self.retention {
            self.next_retention = r.clock.now().checked_add_signed(RETENTION_EVERY);
        }
    }
}

impl Fold {
    /// Folds the events above [`Fold::position`] through `rows` (the caller's transaction,
    /// already holding the projection's lock at this position). Returns the new position
    /// and what readers may have cached; the caller stores the position and commits, or
    /// on an error rolls back and forgets `live` (it may hold the batch's changes).
    pub async fn apply<R: Rows>(
        &mut self,
        rows: &R,
        events: Vec<RecordedEvent>,
    ) -> Result<(Committed, Writes), ReadError> {
        let invalidations = Committed::of(&events);
        if invalidations.jobs_changed {
            self.purge_known_empty = false;
        }
        if self.connections.len() > CACHE_LIMIT || self.hooks.len() > CACHE_LIMIT {
            self.connections.clear();
            self.hooks = Hooks::default();
        }
        let (folded, seen) = (self.position, self.seen);
        for e in events
            .iter()
            .filter(|e| e.global_position > seen && e.global_position <= folded)
        {
            self.forget_changed_by(e);
        }
        if let Some(last) = events.iter().map(|e| e.global_position).max() {
            self.seen = self.seen.max(last);
        }
        let jobs: Vec<Option<Uuid>> = events.iter().map(job_of).collect();
        let stored_final = if self.complete {
            None
        } else {
            Some(self.load_touched(rows, &events, &jobs).await?)
        };
        self.load_connections(rows, &events, &jobs).await?;
        self.load_hooks(rows, &events, &jobs).await?;
        let message_cutoff = self.retention.as_ref().map(Retention::cutoff);
        let mut position = self.position;
        let mut batch = Batch {
            rows,
            live: &mut self.live,
            touched: HashSet::default(),
            finished: HashMap::default(),
            stored_final,
            connections: &mut self.connections,
            org_counts: HashMap::default(),
            runs: HashMap::default(),
            hooks: &mut self.hooks,
            job_applied: false,
            message_cutoff,
            messages: Vec::new(),
            deliveries: Vec::new(),
        };
        // Each event is folded where it lies: passed by value, an event (344 bytes) was
        // copied some ten times on its way into the fold's futures, the largest part of a
        // first start's memmove. What the fold keeps of an event it takes out of it.
        let mut events = events;
        for (e, job) in events.iter_mut().zip(jobs) {
            if e.global_position <= position {
                continue;
            }
            position = e.global_position;
            batch.apply(e, job).await?;
        }
        let (org_counts, runs) = batch.counts();
        let writes = Writes {
            messages: std::mem::take(&mut batch.messages),
            deliveries: std::mem::take(&mut batch.deliveries),
            jobs: batch.job_rows()?,
            org_counts,
            runs,
        };
        self.position = position;
        Ok((
            Committed {
                position,
                ..invalidations
            },
            writes,
        ))
    }

    /// Loads the rows of the jobs this batch's job events touch that are not in memory: the
    /// live ones into `live`; the statuses of the final ones are returned (a job of the
    /// batch in neither has no row).
    async fn load_touched<R: Rows>(
        &mut self,
        rows: &R,
        events: &[RecordedEvent],
        jobs: &[Option<Uuid>],
    ) -> Result<HashMap<Uuid, JobStatus>, ReadError> {
        // A job whose stream starts in this batch (its JobCreated is version 1, above the
        // folded position) has no row yet: no need to look for one. On a first start that is
        // nearly every job, and the lookup was a fifth of the fold's statements' time.
        let created_here: HashSet<Uuid> = events
            .iter()
            .zip(jobs)
            .filter(|(e, _)| e.global_position > self.position && e.version == 1)
            .filter(|(e, _)| matches!(e.event, Event::Job(SyncJobEvent::JobCreated { .. })))
            .filter_map(|(_, job)| *job)
            .collect();
        let mut ids: Vec<Uuid> = events
            .iter()
            .zip(jobs)
            .filter(|(e, _)| e.global_position > self.position)
            .filter_map(|(_, job)| *job)
            .filter(|id| !self.live.contains_key(id) && !created_here.contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut stored_final = HashMap::default();
        if ids.is_empty() {
            return Ok(stored_final);
        }
        for job in rows.stored_jobs(&ids).await? {
            if job.state.status.is_final() {
                stored_final.insert(job.state.job_id, job.state.status);
            } else {
                self.live.insert(job.state.job_id, job);
            }
        }
        Ok(stored_final)
    }

    /// The organizations of the source connections this batch's job events belong to (a
    /// job's creation and its end each need it) that are not known yet, as they are before
    /// the batch; `None` for those that do not exist.
    async fn load_connections<R: Rows>(
        &mut self,
        rows: &R,
        events: &[RecordedEvent],
        jobs: &[Option<Uuid>],
    ) -> Result<(), ReadError> {
        let mut ids: Vec<Uuid> = events
            .iter()
            .zip(jobs)
            .filter(|(e, _)| e.global_position > self.position)
            .filter_map(|(e, job)| match &e.event {
                Event::Job(SyncJobEvent::JobCreated {
                    source_connection_id,
                    ..
                }) => Some(*source_connection_id),
                Event::Job(_) => job
                    .and_then(|id| self.live.get(&id))
                    .map(|j| j.state.source_connection_id),
                _ => None,
            })
            .filter(|id| !self.connections.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let found: HashMap<Uuid, Uuid> = rows
            .connection_organizations(&ids)
            .await?
            .into_iter()
            .collect();
        for id in ids {
            self.connections.insert(id, found.get(&id).copied());
        }
        Ok(())
    }

    /// The subscriptions of the organizations this batch's webhook-typed events belong to
    /// that are not known yet, as they are before the batch (one lookup; an organization
    /// without any gets an empty list, so it costs nothing more). The organization of a
    /// deletion is on its row, read only when the event is folded.
    async fn load_hooks<R: Rows>(
        &mut self,
        rows: &R,
        events: &[RecordedEvent],
        jobs: &[Option<Uuid>],
    ) -> Result<(), ReadError> {
        let mut orgs: Vec<Uuid> = events
            .iter()
            .zip(jobs)
            .filter(|(e, _)| e.global_position > self.position)
            .filter(|(e, _)| syncjobs_domain::webhook::webhook_event_type(&e.event).is_some())
            .filter_map(|(e, job)| match &e.event {
                Event::Job(SyncJobEvent::JobCreated {
                    source_connection_id,
                    ..
                }) => self
                    .connections
                    .get(source_connection_id)
                    .copied()
                    .flatten(),
                Event::Job(_) => job
                    .and_then(|id| self.live.get(&id))
                    .map(|j| j.state.organization_id),
                Event::Collection(CollectionEvent::CollectionCreated {
                    organization_id, ..
                })
                | Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated {
                    organization_id,
                    ..
                }) => Some(*organization_id),
                _ => None,
            })
            .filter(|org| !self.hooks.subscriptions.contains_key(org))
            .collect();
        orgs.sort_unstable();
        orgs.dedup();
        if orgs.is_empty() {
            return Ok(());
        }
        for s in rows.webhook_subscriptions_of(&orgs).await? {
            self.hooks
                .subscriptions
                .entry(s.organization_id)
                .or_default()
                .push(s);
        }
        for org in orgs {
            self.hooks.subscriptions.entry(org).or_default();
        }
        Ok(())
    }
}

/// The envelope of an event that becomes a webhook message.
struct Meta {
    event_type: &'static str,
    event_id: Uuid,
    at: DateTime<Utc>,
    position: u64,
}

/// A message to make once its event is folded.
enum Pending {
    /// The job's payload, from its state after the event.
    Job(Uuid),
    /// Read before the event: what [`Batch::other_payload`] returns.
    Ready(Wanted, Vec<u8>),
}

/// The organization of a message and the enabled subscriptions to deliver it to.
struct Wanted {
    organization_id: Uuid,
    deliver_to: Vec<Uuid>,
}

/// What a `sync.*` message stores: its [`SyncPayload`] less what the message's columns hold
/// (type, time, organization) and the repeated source connection, as MessagePack arrays
/// (no keys). One is written for every lifecycle event: a fifth of its JSON's size.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSync<'a> {
    sync_job_id: Uuid,
    collection_id: Option<Uuid>,
    source_connection_id: Uuid,
    #[serde(borrow)]
    source_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    collection_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    collection_readable_id: std::borrow::Cow<'a, str>,
    /// Inserted, updated, deleted, skipped.
    counts: [u64; 4],
    #[serde(borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
}

/// The JSON body of a message (what is POSTed and shown) from its stored payload: JSON as
/// is (every payload but `sync.*`'s, which starts with `{`), or a [`StoredSync`] with the
/// message's own columns.
pub(crate) fn render_payload(
    event_type: &str,
    organization_id: Uuid,
    timestamp: &DateTime<Utc>,
    stored: &[u8],
) -> Result<String, ReadError> {
    if stored.first() == Some(&b'{') {
        return String::from_utf8(stored.to_vec()).map_err(|e| ReadError::Decode(e.to_string()));
    }
    let s: StoredSync<'_> =
        rmp_serde::from_slice(stored).map_err(|e| ReadError::Decode(e.to_string()))?;
    let timestamp = syncjobs_domain::time::micros(timestamp);
    let payload = SyncPayload {
        event_type,
        timestamp: &timestamp,
        organization_id,
        // Airweave's sync is one per source connection here.
        sync_id: s.source_connection_id,
        sync_job_id: s.sync_job_id,
        collection_id: s.collection_id,
        source_connection_id: s.source_connection_id,
        source_type: &s.source_type,
        collection_name: &s.collection_name,
        collection_readable_id: &s.collection_readable_id,
        entities_inserted: s.counts[0],
        entities_updated: s.counts[1],
        entities_deleted: s.counts[2],
        entities_skipped: s.counts[3],
        chunks_written: 0,
        error: s.error.as_deref(),
    };
    serde_json::to_string(&payload).map_err(|e| ReadError::Decode(e.to_string()))
}

/// Airweave's `SyncLifecycleEvent`, field for field (`model_dump`: every field, defaults
/// included), and nothing more: clients read these keys by name.
#[derive(serde::Serialize)]
struct SyncPayload<'a> {
    event_type: &'a str,
    timestamp: &'a str,
    organization_id: Uuid,
    sync_id: Uuid,
    sync_job_id: Uuid,
    collection_id: Option<Uuid>,
    source_connection_id: Uuid,
    source_type: &'a str,
    collection_name: &'a str,
    collection_readable_id: &'a str,
    entities_inserted: u64,
    entities_updated: u64,
    entities_deleted: u64,
    entities_skipped: u64,
    chunks_written: u64,
    error: Option<&'a str>,
}

/// One batch's work in progress.
struct Batch<'t, R> {
    rows: &'t R,
    live: &'t mut HashMap<Uuid, LiveJob>,
    /// Jobs whose row must be written at commit.
    touched: HashSet<Uuid>,
    /// Jobs that became final in this batch (no longer in `live`).
    finished: HashMap<Uuid, LiveJob>,
    /// When the batch's job rows were loaded at its start (a shared database): the final
    /// ones' statuses; a job of the batch in none of `live`, `finished` and this has no row.
    stored_final: Option<HashMap<Uuid, JobStatus>>,
    /// Source connection -> its organization if it exists ([`Fold`]'s, loaded at the
    /// batch's start and kept up to date by its events).
    connections: &'t mut HashMap<Uuid, Option<Uuid>>,
    /// Counter changes, written once at the batch's end.
    org_counts: HashMap<Uuid, OrgCounts>,
    runs: HashMap<Uuid, RunCounts>,
    /// What webhook messages need: who wants them, and their payloads' rows.
    hooks: &'t mut Hooks,
    /// The last job event was folded into its job (not skipped): only then is it a message.
    job_applied: bool,
    /// Events recorded before this become no message (past retention).
    message_cutoff: Option<DateTime<Utc>>,
    /// Messages and deliveries made and not written yet: written together, before any
    /// webhook event (which may read them) and at the batch's end.
    messages: Vec<NewMessage>,
    deliveries: Vec<NewDelivery>,
}

/// What webhook messages read from the model, in the batch-level lookup design of the rest
/// of the fold: the subscriptions of the organizations the batch's webhook-typed events
/// belong to are asked once at its start (one statement for the batch), anything else at
/// first use and kept (between batches too). Each change folded, here or by another writer,
/// drops what it changes.
#[derive(Debug, Default)]
struct Hooks {
    /// Source connection -> its collection's id and readable id (immutable while it exists).
    connections: HashMap<Uuid, Option<(Uuid, String)>>,
    /// Collection -> its name.
    collections: HashMap<Uuid, Option<String>>,
    /// Organization -> its subscriptions.
    subscriptions: HashMap<Uuid, Vec<WebhookSubscription>>,
}

/// The source connection an event of source connections is about.
fn connection_of(event: &SourceConnectionEvent) -> Uuid {
    match event {
        SourceConnectionEvent::SourceConnectionCreated {
            source_connection_id,
            ..
        }
        | SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id,
            ..
        } => *source_connection_id,
    }
}

impl Hooks {
    /// Drops what `event` changes (looked up again when next needed).
    fn forget_changed_by(&mut self, event: &Event) {
        match event {
            Event::Webhook(
                WebhookEvent::WebhookSubscriptionCreated {
                    organization_id, ..
                }
                | WebhookEvent::WebhookSubscriptionUpdated {
                    organization_id, ..
                }
                | WebhookEvent::WebhookSubscriptionDisabled {
                    organization_id, ..
                }
                | WebhookEvent::WebhookSubscriptionDeleted {
                    organization_id, ..
                },
            ) => {
                self.subscriptions.remove(organization_id);
            }
            Event::Collection(c) => {
                let id = match c {
                    CollectionEvent::CollectionCreated { collection_id, .. }
                    | CollectionEvent::CollectionUpdated { collection_id, .. }
                    | CollectionEvent::CollectionDeleted { collection_id } => *collection_id,
                };
                self.collections.remove(&id);
            }
            Event::SourceConnection(sc) => {
                self.connections.remove(&connection_of(sc));
            }
            _ => {}
        }
    }

    fn len(&self) -> usize {
        self.connections.len() + self.collections.len() + self.subscriptions.len()
    }
}

impl<R: Rows> Batch<'_, R> {
    /// The organization of an existing source connection (looked up once, then kept).
    async fn connection_organization(&mut self, id: Uuid) -> Result<Option<Uuid>, ReadError> {
        if let Some(org) = self.connections.get(&id) {
            return Ok(*org);
        }
        let org = self
            .rows
            .connection_organizations(&[id])
            .await?
            .first()
            .map(|(_, org)| *org);
        self.connections.insert(id, org);
        Ok(org)
    }

    fn add_counts(&mut self, organization_id: Uuid, deltas: OrgCounts) {
        let counts = self.org_counts.entry(organization_id).or_default();
        for (c, d) in counts.iter_mut().zip(deltas) {
            *c += d;
        }
    }

    fn count_run(&mut self, source_connection_id: Uuid, run: Run) {
        self.runs.entry(source_connection_id).or_default()[run as usize] += 1;
    }

    /// The summed counters of organizations and of source connections, in id order (so
    /// that two writers lock rows alike).
    #[allow(clippy::type_complexity)]
    fn counts(&mut self) -> (Vec<(Uuid, OrgCounts)>, Vec<(Uuid, RunCounts)>) {
        let mut orgs: Vec<(Uuid, OrgCounts)> = self
            .org_counts
            .drain()
            .filter(|(_, d)| d.iter().any(|n| *n != 0))
            .collect();
        orgs.sort_unstable_by_key(|(id, _)| *id);
        let mut runs: Vec<(Uuid, RunCounts)> = self.runs.drain().collect();
        runs.sort_unstable_by_key(|(id, _)| *id);
        (orgs, runs)
    }

    /// Folds `e`, which may take its body's contents (the batch does not read an event
    /// after folding it); `job` is its job id ([`job_of`]).
    async fn apply(&mut self, e: &mut RecordedEvent, job: Option<Uuid>) -> Result<(), ReadError> {
        let at = e.recorded_at;
        let position = e.global_position;
        let hook = syncjobs_domain::webhook::webhook_event_type(&e.event)
            .filter(|_| self.message_cutoff.is_none_or(|cutoff| at >= cutoff));
        // A job event's payload is the job after it; any other's is read now (a deleted
        // row is gone after the event), without copying the event.
        let pending = match hook {
            None => None,
            Some(event_type) => {
                let meta = Meta {
                    event_type,
                    event_id: e.event_id,
                    at,
                    position,
                };
                match &e.event {
                    Event::Job(_) => job.map(|job_id| (meta, Pending::Job(job_id))),
                    event => self
                        .other_payload(&meta, event)
                        .await?
                        .map(|(wanted, payload)| (meta, Pending::Ready(wanted, payload))),
                }
            }
        };
        if matches!(e.event, Event::Webhook(_)) {
            // It may read or change this batch's messages and deliveries.
            self.write_messages().await?;
        }
        self.hooks.forget_changed_by(&e.event);
        self.apply_event(e, job).await?;
        if let Some((meta, pending)) = pending {
            let ready = match pending {
                Pending::Ready(wanted, payload) => Some((wanted, payload)),
                // An event the fold skipped is no message.
                Pending::Job(job_id) if self.job_applied => self.job_payload(&meta, job_id).await?,
                Pending::Job(_) => None,
            };
            if let Some((wanted, payload)) = ready {
                self.webhook_message(&meta, wanted, payload);
            }
        }
        Ok(())
    }

    async fn apply_event(
        &mut self,
        e: &mut RecordedEvent,
        job: Option<Uuid>,
    ) -> Result<(), ReadError> {
        self.job_applied = false;
        let at = e.recorded_at;
        let position = e.global_position;
        if let Event::Job(job_event) = &mut e.event {
            match job {
                Some(job_id) => self.apply_job(job_id, job_event, at, position).await?,
                None => tracing::warn!(
                    stream = %e.stream_id,
                    position,
                    "job event outside a job stream; skipped"
                ),
            }
            return Ok(());
        }
        // Any other event is rare: taken out whole (its strings move into rows), leaving a
        // body that allocates nothing.
        let event = std::mem::replace(&mut e.event, taken_event());
        match event {
            Event::Job(_) => {}
            Event::Collection(c) => self.apply_collection(c, at, position).await?,
            Event::SourceConnection(s) => {
                self.apply_source_connection(s, &e.stream_id, e.version, at, position)
                    .await?
            }
            Event::Access(a) => self.apply_access(a, at, position).await?,
            Event::Webhook(w) => {
                self.apply_webhook(w, &e.stream_id, e.event_id, at, position)
                    .await?
            }
            // Worker lifecycles are not part of what the API reads; what they do to jobs
            // (JobResumed, JobFailed, Cancelled) is on the jobs' own streams.
            Event::Worker(_) => {}
        }
        Ok(())
    }

    /// The job's state if it is known at all: live, final in this batch, or a stored row.
    async fn known_status(&self, job_id: Uuid) -> Result<Option<JobStatus>, ReadError> {
        if let Some(j) = self.live.get(&job_id).or(self.finished.get(&job_id)) {
            return Ok(Some(j.state.status));
        }
        if let Some(stored_final) = &self.stored_final {
            return Ok(stored_final.get(&job_id).copied());
        }
        Ok(self.rows.stored_job(job_id).await?.map(|s| s.status))
    }

    async fn apply_job(
        &mut self,
        job_id: Uuid,
        event: &mut SyncJobEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        if let SyncJobEvent::JobCreated { .. } = event {
            return self.job_created(job_id, event, at, position).await;
        }
        let Some(job) = self.live.get_mut(&job_id) else {
            match self.known_status(job_id).await? {
                Some(status) => tracing::warn!(
                    %job_id,
                    %status,
                    event = event.event_type(),
                    "event after a final state; skipped"
                ),
                None => {
                    tracing::debug!(%job_id, event = event.event_type(), "event of an unknown job; skipped")
                }
            }
            return Ok(());
        };
        if let Err(err) = job.state.evolve_in_place(event, at) {
            tracing::error!(%job_id, %err, "job event does not fold; skipped");
            return Ok(());
        }
        self.job_applied = true;
        let status = job.state.status;
        if !status.is_final() {
            self.touched.insert(job_id);
            return Ok(());
        }
        let Some(job) = self.live.remove(&job_id) else {
            return Ok(());
        };
        let sc_id = job.state.source_connection_id;
        match self.connection_organization(sc_id).await? {
            Some(org) => {
                let run = match status {
                    JobStatus::Completed => Some(Run::Successful),
                    JobStatus::Failed => Some(Run::Failed),
                    _ => None,
                };
                if let Some(run) = run {
                    self.count_run(sc_id, run);
                }
                self.add_counts(org, [0, 0, -1]);
                self.finished.insert(job_id, job);
                self.touched.insert(job_id);
            }
            // Its connection is gone: nobody can read the job any more.
            None => {
                self.touched.remove(&job_id);
                self.rows.delete_job(job_id).await?;
            }
        }
        Ok(())
    }

    /// Takes the creation's contents out of `event` into the job's state.
    async fn job_created(
        &mut self,
        job_id: Uuid,
        event: &mut SyncJobEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        if self.known_status(job_id).await?.is_some() {
            tracing::warn!(%job_id, "JobCreated for a known job; skipped");
            return Ok(());
        }
        let event = std::mem::replace(event, taken_job_event());
        let Ok(state) = JobState::created(event, at) else {
            return Ok(());
        };
        let sc_id = state.source_connection_id;
        self.live.insert(
            job_id,
            LiveJob {
                state,
                created_position: position,
                stored: false,
            },
        );
        self.job_applied = true;
        self.touched.insert(job_id);
        if let Some(org) = self.connection_organization(sc_id).await? {
            self.count_run(sc_id, Run::Total);
            self.add_counts(org, [0, 0, 1]);
        }
        Ok(())
    }

    /// The row of every job the batch changed since the last call: each is written once
    /// per batch (and again only if a later event of the batch needs the rows as they are
    /// by then).
    fn job_rows(&mut self) -> Result<Vec<JobRow>, ReadError> {
        let mut rows = Vec::with_capacity(self.touched.len());
        for id in self.touched.drain() {
            let Some(job) = self.live.get_mut(&id).or(self.finished.get_mut(&id)) else {
                continue;
            };
            let new = !job.stored;
            job.stored = true;
            let s = &job.state;
            rows.push(JobRow {
                new,
                id: s.job_id,
                source_connection_id: s.source_connection_id,
                organization_id: s.organization_id,
                active: s.status.is_active(),
                created_position: job.created_position,
                state: super::encode_job(s)?,
            });
        }
        Ok(rows)
    }

    /// Writes the job rows changed so far (a later event reads the rows).
    async fn write_jobs(&mut self) -> Result<(), ReadError> {
        let rows = self.job_rows()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.rows.write_jobs(&rows).await
    }

    async fn apply_collection(
        &mut self,
        event: CollectionEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            CollectionEvent::CollectionCreated {
                collection_id,
                organization_id,
                name,
                readable_id,
            } => {
                if self.rows.has_row(Table::Collections, collection_id).await? {
                    tracing::warn!(%collection_id, "CollectionCreated for a known collection; skipped");
                    return Ok(());
                }
                let c = Collection {
                    id: collection_id,
                    organization_id,
                    name,
                    readable_id,
                    created_at: at,
                    modified_at: at,
                    created_position: position,
                };
                self.rows.insert_collection(&c).await?;
                self.add_counts(organization_id, [1, 0, 0]);
            }
            // A patch that changed nothing changes no row (Airweave's `modified_at` stays).
            CollectionEvent::CollectionUpdated {
                collection_id,
                name: Some(name),
            } => {
                self.rows
                    .rename_collection(collection_id, &name, &time(&at))
                    .await?;
            }
            CollectionEvent::CollectionUpdated { name: None, .. } => {}
            CollectionEvent::CollectionDeleted { collection_id } => {
                if let Some(org) = self
                    .rows
                    .remove_row(Table::Collections, collection_id)
                    .await?
                {
                    self.add_counts(org, [-1, 0, 0]);
                }
            }
        }
        Ok(())
    }

    /// `stream_id` and `version`: where the event lies. A connection is created by its own
    /// stream only (as a webhook subscription is), so the first event of that stream finds
    /// no row of it (rows are of events at or below the folded position) and is not looked
    /// up: a first start on PostgreSQL spent a round trip on each connection's lookup
    /// before it folded any job.
    async fn apply_source_connection(
        &mut self,
        event: SourceConnectionEvent,
        stream_id: &str,
        version: u64,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id,
                organization_id,
                collection_id,
                readable_collection_id,
                name,
                description,
                short_name,
                config,
                auth_method,
                authenticated,
            } => {
                let own = stream::source_connection_id(stream_id) == Some(source_connection_id);
                if !own
                    || (version > 1
                        && self
                            .rows
                            .has_row(Table::SourceConnections, source_connection_id)
                            .await?)
                {
                    tracing::warn!(%source_connection_id, stream = stream_id, "SourceConnectionCreated for a known one or on another stream; skipped");
                    return Ok(());
                }
                let sc = SourceConnection {
                    id: source_connection_id,
                    organization_id,
                    collection_id,
                    readable_collection_id,
                    name,
                    description,
                    short_name,
                    config,
                    auth_method,
                    authenticated,
                    created_at: at,
                    modified_at: at,
                    created_position: position,
                    total_runs: 0,
                    successful_runs: 0,
                    failed_runs: 0,
                };
                self.rows.insert_source_connection(&sc).await?;
                self.add_counts(organization_id, [0, 1, 0]);
                self.connections
                    .insert(source_connection_id, Some(organization_id));
            }
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: id,
                ..
            } => {
                let Some(org) = self.rows.remove_row(Table::SourceConnections, id).await? else {
                    return Ok(());
                };
                self.connections.insert(id, None);
                // Its final jobs vanish from reads now (a job is readable while its
                // connection exists or while it is active) and their rows go in later
                // transactions; live ones stay findable until they end. The rows are
                // written first, so that the count sees this batch's jobs too.
                self.write_jobs().await?;
                let live = self.rows.active_jobs_of(id).await?;
                self.add_counts(org, [0, -1, -live]);
                self.rows.enqueue_purge(id).await?;
            }
        }
        Ok(())
    }

    /// Who a message of this type of this organization goes to now: each enabled
    /// subscription of the organization that lists the type. The message is made all the
    /// same (the messages API is the organization's event history, and a subscription made
    /// later may ask for past messages).
    async fn wanted(
        &mut self,
        organization_id: Uuid,
        event_type: &str,
    ) -> Result<Wanted, ReadError> {
        if !self.hooks.subscriptions.contains_key(&organization_id) {
            let found = self
                .rows
                .webhook_subscriptions_of(&[organization_id])
                .await?;
            self.hooks.subscriptions.insert(organization_id, found);
        }
        let subscriptions = self
            .hooks
            .subscriptions
            .get(&organization_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let deliver_to = subscriptions
            .iter()
            .filter(|s| !s.disabled && s.event_types.iter().any(|t| t == event_type))
            .map(|s| s.id)
            .collect();
        Ok(Wanted {
            organization_id,
            deliver_to,
        })
    }

    /// The message an event with a webhook type becomes, and a pending delivery of it for
    /// each enabled subscription of its organization that wants that type now (written by
    /// [`Batch::write_messages`]).
    fn webhook_message(&mut self, meta: &Meta, wanted: Wanted, payload: Vec<u8>) {
        if !wanted.deliver_to.is_empty() {
            let due = time(&meta.at);
            for id in wanted.deliver_to {
                self.deliveries.push(NewDelivery {
                    message_id: meta.event_id,
                    subscription_id: id,
                    organization_id: wanted.organization_id,
                    due: due.clone(),
                    created_position: meta.position,
                });
            }
        }
        self.messages.push(NewMessage {
            id: meta.event_id,
            organization_id: wanted.organization_id,
            event_type: meta.event_type,
            payload,
            timestamp: meta.at,
            created_position: meta.position,
        });
    }

    /// Writes the messages and deliveries made since the last call: a statement each.
    async fn write_messages(&mut self) -> Result<(), ReadError> {
        if !self.messages.is_empty() {
            self.rows.insert_webhook_messages(&self.messages).await?;
            self.messages.clear();
        }
        if !self.deliveries.is_empty() {
            self.rows
                .insert_webhook_deliveries(&self.deliveries)
                .await?;
            self.deliveries.clear();
        }
        Ok(())
    }

    /// Airweave's `SyncLifecycleEvent` payload of the job as it is after the event, and who
    /// it goes to (None: the job is unknown).
    async fn job_payload(
        &mut self,
        meta: &Meta,
        job_id: Uuid,
    ) -> Result<Option<(Wanted, Vec<u8>)>, ReadError> {
        let Some((sc_id, org)) = self
            .live
            .get(&job_id)
            .or(self.finished.get(&job_id))
            .map(|j| (j.state.source_connection_id, j.state.organization_id))
        else {
            return Ok(None);
        };
        let wanted = self.wanted(org, meta.event_type).await?;
        if !self.hooks.connections.contains_key(&sc_id) {
            let row = self.rows.source_connection_row(sc_id).await?;
            self.hooks.connections.insert(
                sc_id,
                row.map(|r| (r.collection_id, r.readable_collection_id)),
            );
        }
        let collection_id = self.hooks.connections[&sc_id].as_ref().map(|c| c.0);
        if let Some(id) = collection_id {
            if !self.hooks.collections.contains_key(&id) {
                let row = self.rows.collection_row(id).await?;
                self.hooks.collections.insert(id, row.map(|c| c.name));
            }
        }
        let Some(job) = self.live.get(&job_id).or(self.finished.get(&job_id)) else {
            return Ok(None);
        };
        let job = &job.state;
        let sc = self.hooks.connections[&sc_id].as_ref();
        let name = collection_id
            .and_then(|id| self.hooks.collections.get(&id))
            .and_then(Option::as_deref);
        let error = match job.status {
            JobStatus::Failed | JobStatus::Cancelled => job.error.as_deref(),
            _ => None,
        };
        let stored = StoredSync {
            sync_job_id: job.job_id,
            collection_id,
            source_connection_id: sc_id,
            source_type: job.short_name.as_str().into(),
            collection_name: name.unwrap_or("").into(),
            collection_readable_id: sc.map_or("", |s| s.1.as_str()).into(),
            counts: [
                job.counts.inserted,
                job.counts.updated,
                job.counts.deleted,
                job.counts.skipped,
            ],
            error: error.map(Into::into),
        };
        let bytes = rmp_serde::to_vec(&stored).map_err(|e| ReadError::Decode(e.to_string()))?;
        Ok(Some((wanted, bytes)))
    }

    /// The payload of a collection's or source connection's creation or deletion (Airweave's
    /// `core/events` models, field for field) and its organization; read before the event is
    /// folded, since a deletion removes the row it names.
    async fn other_payload(
        &mut self,
        meta: &Meta,
        event: &Event,
    ) -> Result<Option<(Wanted, Vec<u8>)>, ReadError> {
        use serde_json::json;
        let timestamp = syncjobs_domain::time::micros(&meta.at);
        let (org, payload) = match event {
            Event::Collection(CollectionEvent::CollectionCreated {
                collection_id,
                organization_id,
                name,
                readable_id,
            }) => (
                *organization_id,
                json!({
                    "event_type": meta.event_type,
                    "timestamp": timestamp,
                    "organization_id": organization_id,
                    "collection_id": collection_id,
                    "collection_name": name,
                    "collection_readable_id": readable_id,
                }),
            ),
            Event::Collection(
                CollectionEvent::CollectionDeleted { collection_id }
                | CollectionEvent::CollectionUpdated { collection_id, .. },
            ) => {
                let Some(c) = self.rows.collection_row(*collection_id).await? else {
                    return Ok(None);
                };
                // An update's payload names the collection as the update leaves it.
                let name = match event {
                    Event::Collection(CollectionEvent::CollectionUpdated {
                        name: Some(name),
                        ..
                    }) => name,
                    _ => &c.name,
                };
                (
                    c.organization_id,
                    json!({
                        "event_type": meta.event_type,
                        "timestamp": timestamp,
                        "organization_id": c.organization_id,
                        "collection_id": c.id,
                        "collection_name": name,
                        "collection_readable_id": c.readable_id,
                    }),
                )
            }
            Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id,
                organization_id,
                readable_collection_id,
                short_name,
                authenticated,
                ..
            }) => (
                *organization_id,
                json!({
                    "event_type": meta.event_type,
                    "timestamp": timestamp,
                    "organization_id": organization_id,
                    "source_connection_id": source_connection_id,
                    "collection_readable_id": readable_collection_id,
                    "source_type": short_name,
                    "is_authenticated": authenticated,
                }),
            ),
            Event::SourceConnection(SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id,
                ..
            }) => {
                let Some(sc) = self
                    .rows
                    .source_connection_row(*source_connection_id)
                    .await?
                else {
                    return Ok(None);
                };
                (
                    sc.organization_id,
                    json!({
                        "event_type": meta.event_type,
                        "timestamp": timestamp,
                        "organization_id": sc.organization_id,
                        "source_connection_id": sc.id,
                        "collection_readable_id": sc.readable_collection_id,
                        "source_type": sc.short_name,
                        "is_authenticated": false,
                    }),
                )
            }
            Event::Job(_) | Event::Access(_) | Event::Webhook(_) | Event::Worker(_) => {
                return Ok(None)
            }
        };
        let wanted = self.wanted(org, meta.event_type).await?;
        Ok(Some((wanted, payload.to_string().into_bytes())))
    }

    async fn apply_webhook(
        &mut self,
        event: WebhookEvent,
        stream_id: &str,
        event_id: Uuid,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        if let WebhookEvent::WebhookAttemptRecorded {
            message_id,
            subscription_id,
            organization_id,
            attempt,
            url,
            status_code,
            response,
            next_attempt_at,
        } = event
        {
            let status = match (status_code, next_attempt_at) {
                (200..=299, _) => "success",
                (_, Some(_)) => "pending",
                (_, None) => "failed",
            };
            let a = WebhookAttempt {
                id: event_id,
                message_id,
                subscription_id,
                organization_id,
                attempt,
                url,
                status_code,
                response,
                timestamp: at,
            };
            let next = next_attempt_at.map(|t| time(&t));
            return self
                .rows
                .record_webhook_attempt(&a, status, next.as_deref(), position)
                .await;
        }
        if let WebhookEvent::WebhookDeliveryRecovered {
            message_id,
            subscription_id,
            ..
        } = event
        {
            return self
                .rows
                .recover_webhook_delivery(message_id, subscription_id, &time(&at))
                .await;
        }
        let Some(id) = stream::webhook_subscription_id(stream_id) else {
            tracing::warn!(stream = %stream_id, position, "webhook event outside a subscription stream; skipped");
            return Ok(());
        };
        match event {
            WebhookEvent::WebhookSubscriptionCreated {
                subscription_id,
                organization_id,
                url,
                event_types,
                description,
                secret,
                recover_since,
            } => {
                if subscription_id != id
                    || self.rows.has_row(Table::WebhookSubscriptions, id).await?
                {
                    tracing::warn!(%subscription_id, "WebhookSubscriptionCreated for a known one or another stream's; skipped");
                    return Ok(());
                }
                let s = WebhookSubscription {
                    id,
                    organization_id,
                    url,
                    event_types,
                    disabled: false,
                    description,
                    secret,
                    created_at: at,
                    updated_at: at,
                    created_position: position,
                    disabled_reason: None,
                    failing_since: None,
                };
                self.rows.write_webhook_subscription(&s).await?;
                if let Some(since) = recover_since {
                    self.rows
                        .deliver_past_messages(&s, &time(&since), &time(&at))
                        .await?;
                }
            }
            WebhookEvent::WebhookSubscriptionUpdated {
                url,
                event_types,
                disabled,
                description,
                recover_since,
                ..
            } => {
                let Some(mut s) = self.rows.webhook_subscription(id).await? else {
                    tracing::warn!(subscription_id = %id, "update of an unknown webhook subscription; skipped");
                    return Ok(());
                };
                if let Some(url) = url {
                    s.url = url;
                }
                if let Some(types) = event_types {
                    s.event_types = types;
                }
                if let Some(disabled) = disabled {
                    s.disabled = disabled;
                    // By hand: the dispatcher's reason is gone, and failures are counted
                    // afresh once enabled again.
                    s.disabled_reason = None;
                    s.failing_since = None;
                }
                if let Some(d) = description {
                    s.description = Some(d);
                }
                s.updated_at = at;
                self.rows.write_webhook_subscription(&s).await?;
                if let (Some(since), false) = (recover_since, s.disabled) {
                    self.rows
                        .deliver_past_messages(&s, &time(&since), &time(&at))
                        .await?;
                }
            }
            WebhookEvent::WebhookSubscriptionDisabled { reason, .. } => {
                let Some(mut s) = self.rows.webhook_subscription(id).await? else {
                    tracing::warn!(subscription_id = %id, "disabling of an unknown webhook subscription; skipped");
                    return Ok(());
                };
                s.disabled = true;
                s.disabled_reason = Some(reason);
                s.updated_at = at;
                self.rows.write_webhook_subscription(&s).await?;
            }
            WebhookEvent::WebhookSubscriptionDeleted { .. } => {
                self.rows
                    .remove_row(Table::WebhookSubscriptions, id)
                    .await?;
                self.rows.cancel_webhook_deliveries(id).await?;
            }
            WebhookEvent::WebhookAttemptRecorded { .. }
            | WebhookEvent::WebhookDeliveryRecovered { .. } => {}
        }
        Ok(())
    }

    async fn apply_access(
        &mut self,
        event: AccessEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            AccessEvent::OrganizationCreated {
                organization_id,
                name,
            } => {
                let o = Organization {
                    id: organization_id,
                    name,
                    created_at: at,
                };
                self.rows.insert_organization(&o, position).await?;
            }
            AccessEvent::ApiKeyCreated {
                key_id,
                organization_id,
                key_hash,
                prefix,
                expires_at,
            } => {
                let k = ApiKey {
                    key_id,
                    organization_id,
                    key_hash,
                    prefix,
                    created_at: at,
                    expires_at,
                    revoked_at: None,
                };
                self.rows.insert_api_key(&k, position).await?;
            }
            AccessEvent::ApiKeyRevoked { key_id } => {
                self.rows.revoke_api_key(key_id, &time(&at)).await?;
            }
        }
        Ok(())
    }
}
