//! The event contract: every fact syncjobs records, and the envelope the store wraps it in.
//!
//! Events are stored and published as JSON `{"type": "<EventType>", "data": {...}}`. The type
//! names are part of the wire contract (NATS subjects, exports, `syncjobs events`), so renaming
//! a variant is a breaking change: add a schema version and an upcaster instead (see
//! [`crate::upcast`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version written with every new event. Older versions are upcast on read.
pub const CURRENT_SCHEMA_VERSION: u32 = 2;

/// Cumulative entity counts of one sync run.
///
/// Counts are cumulative (not deltas) so that any single ProgressRecorded event tells the
/// whole truth and a lost or duplicated delivery cannot skew a subscriber's view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntityCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub kept: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl EntityCounts {
    /// Entities the source yielded that reached a verdict (Airweave's `entities_encountered`).
    pub fn encountered(&self) -> u64 {
        // Saturating: counts come from stored histories too, and a damaged one must not
        // overflow (a panic in a debug build, a wrong total in a release one).
        [self.updated, self.kept, self.skipped, self.failed]
            .into_iter()
            .fold(self.inserted, u64::saturating_add)
    }

    /// Every counter, for "did anything move" and "did anything go down" checks.
    pub fn total(&self) -> u64 {
        self.encountered().saturating_add(self.deleted)
    }

    /// True when no counter is smaller than in `earlier`: counts are cumulative and never shrink.
    pub fn dominates(&self, earlier: &EntityCounts) -> bool {
        self.inserted >= earlier.inserted
            && self.updated >= earlier.updated
            && self.deleted >= earlier.deleted
            && self.kept >= earlier.kept
            && self.skipped >= earlier.skipped
            && self.failed >= earlier.failed
    }

    /// The counts a final event records when the run's own report is lost (its process
    /// died, or the watchdog gave up on it): each counter is the larger of the last
    /// progress report (`self`) and what the destination durably holds for the job. The pipeline
    /// reports a write only after it commits, so a progress report is never ahead of the
    /// destination and the result is the destination's count; taking the larger one keeps
    /// counts from going down for what the destination does not track (`skipped`) or does
    /// not know (a job written before it kept per-job counts).
    pub fn reconciled_with(&self, durable: &EntityCounts) -> EntityCounts {
        EntityCounts {
            inserted: self.inserted.max(durable.inserted),
            updated: self.updated.max(durable.updated),
            deleted: self.deleted.max(durable.deleted),
            kept: self.kept.max(durable.kept),
            skipped: self.skipped.max(durable.skipped),
            failed: self.failed.max(durable.failed),
        }
    }
}

/// `skip_serializing_if` for flags that are false unless something unusual happened, so
/// events without it keep the exact bytes they always had.
fn is_false(b: &bool) -> bool {
    !*b
}

/// Everything that happens to a sync job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SyncJobEvent {
    /// A job exists and waits for a worker. Carries the run's inputs so that the job's stream
    /// alone is enough to run, replay or debug it.
    JobCreated {
        job_id: Uuid,
        source_connection_id: Uuid,
        organization_id: Uuid,
        short_name: String,
        #[serde(default)]
        config: serde_json::Value,
    },
    /// A worker took the job and its pipeline runs.
    JobStarted {
        #[serde(default)]
        worker: String,
    },
    /// A progress report: the counts so far (every N entities or T ms, never per entity).
    ProgressRecorded {
        counts: EntityCounts,
    },
    JobCompleted {
        counts: EntityCounts,
    },
    JobFailed {
        error: String,
        #[serde(default)]
        error_category: Option<String>,
        counts: EntityCounts,
        /// True when `counts` were read back from the destination because the run's own
        /// report was lost (see [`EntityCounts::reconciled_with`]). Absent means false.
        #[serde(default, skip_serializing_if = "is_false")]
        counts_reconciled: bool,
    },
    /// A client asked to stop the job. `timeout_seconds` is the watchdog timeout in force
    /// when the request was recorded, so that the deadline never moves afterwards.
    CancelRequested {
        requested_by: String,
        timeout_seconds: u64,
    },
    /// The job stopped on request: by its worker, or at once when it had none yet (pending).
    Cancelled {
        counts: EntityCounts,
        #[serde(default)]
        note: Option<String>,
        /// As on JobFailed.
        #[serde(default, skip_serializing_if = "is_false")]
        counts_reconciled: bool,
    },
    /// The worker did not confirm within the timeout; the watchdog ended the job.
    ForceCancelled {
        error: String,
        timeout_seconds: u64,
        requested_at: DateTime<Utc>,
        counts: EntityCounts,
        /// As on JobFailed: the stuck worker never reported, so the watchdog asks the
        /// destination what it wrote.
        #[serde(default, skip_serializing_if = "is_false")]
        counts_reconciled: bool,
    },
    /// The worker running the job was lost (declared dead, or this node restarted under it):
    /// the job is pending again, to be claimed as usual, and its next run starts its counts
    /// afresh (the destination dedups by content hash, so the resumed sync converges).
    /// `attempt` counts the resumes of this job (1 for the first); `counts` are what the lost
    /// run had reached, kept here for the history since the state's counts restart.
    JobResumed {
        attempt: u32,
        lost_worker: String,
        /// When the lost worker was last seen alive (its last heartbeat, or what the log
        /// shows of it).
        #[serde(default)]
        last_seen: Option<DateTime<Utc>>,
        #[serde(default)]
        counts: EntityCounts,
        /// As on JobFailed.
        #[serde(default, skip_serializing_if = "is_false")]
        counts_reconciled: bool,
        /// The worker was not lost but stopping: it handed the job back (a drain), which
        /// does not count against the resume limit (`attempt` stays what it was).
        #[serde(default, skip_serializing_if = "is_false")]
        handed_back: bool,
    },
}

impl SyncJobEvent {
    /// True for events after which the job may change no more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SyncJobEvent::JobCompleted { .. }
                | SyncJobEvent::JobFailed { .. }
                | SyncJobEvent::Cancelled { .. }
                | SyncJobEvent::ForceCancelled { .. }
        )
    }
}

/// A worker node's lifecycle, on its own stream (`worker-<id>`). Heartbeats are not events
/// (they would grow the log every few seconds for ever): they are a row per worker in the
/// store ([`crate::store::EventStore::heartbeat`]); the decisions taken from them are here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum WorkerEvent {
    /// A worker (re)started and will claim jobs. `capacity`: the most jobs it runs at once.
    WorkerStarted {
        id: String,
        host: String,
        pid: u32,
        #[serde(default)]
        capacity: Option<u64>,
    },
    /// A graceful stop: the worker stopped claiming, let its jobs finish up to a bound and
    /// handed the rest back (`handed_back` jobs resumed elsewhere).
    WorkerStopped {
        id: String,
        #[serde(default)]
        handed_back: u64,
    },
    /// The worker was silent for longer than the timeout: `detected_by` (a node id) declared
    /// it lost, once (expected version on the worker stream). Every node then rescues its jobs.
    WorkerLost {
        id: String,
        last_seen: DateTime<Utc>,
        timeout_seconds: u64,
        detected_by: String,
    },
}

/// Collections are event-sourced too: no second database of record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CollectionEvent {
    CollectionCreated {
        collection_id: Uuid,
        organization_id: Uuid,
        name: String,
        readable_id: String,
    },
    /// A `PATCH` of the collection (Airweave's `CollectionUpdate`). `name` is the new name
    /// when it changed; absent, the patch changed nothing, which Airweave still answers and
    /// announces (`collection.updated`), so it is recorded all the same.
    CollectionUpdated {
        collection_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    CollectionDeleted {
        collection_id: Uuid,
    },
}

/// Source connections: their definition and their removal. Their jobs live in job streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SourceConnectionEvent {
    SourceConnectionCreated {
        source_connection_id: Uuid,
        organization_id: Uuid,
        collection_id: Uuid,
        readable_collection_id: String,
        name: String,
        #[serde(default)]
        description: Option<String>,
        short_name: String,
        #[serde(default)]
        config: serde_json::Value,
        /// How it authenticates (`direct`, ...). Credentials themselves are never stored in events.
        auth_method: String,
        authenticated: bool,
    },
    SourceConnectionDeleted {
        source_connection_id: Uuid,
        /// Deleted because its collection was: Airweave announces only the collection's
        /// deletion then (`collection.deleted`, no `source_connection.deleted` for each
        /// connection it takes along). Absent means false.
        #[serde(default, skip_serializing_if = "is_false")]
        with_collection: bool,
    },
}

/// Organizations and their API keys. Keys are recorded only as SHA-256 hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccessEvent {
    OrganizationCreated {
        organization_id: Uuid,
        name: String,
    },
    ApiKeyCreated {
        key_id: Uuid,
        organization_id: Uuid,
        key_hash: String,
        /// A few leading characters, to tell keys apart in listings without revealing them.
        prefix: String,
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
    ApiKeyRevoked {
        key_id: Uuid,
    },
}

/// Webhook subscriptions (one stream each, see [`crate::webhook`]). The secret is recorded
/// in the creation: it signs every delivery, so it must be readable (unlike an API key,
/// which is only compared); the NATS relay and the server-sent events never carry these
/// events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum WebhookEvent {
    WebhookSubscriptionCreated {
        subscription_id: Uuid,
        organization_id: Uuid,
        url: String,
        event_types: Vec<String>,
        #[serde(default)]
        description: Option<String>,
        secret: String,
        /// Past messages of the organization since this time (that match `event_types`)
        /// are delivered to it too, in log order, before the ones that follow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover_since: Option<DateTime<Utc>>,
    },
    /// A patch: each present field replaces the subscription's.
    WebhookSubscriptionUpdated {
        organization_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disabled: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Only with `disabled: Some(false)`: the organization's messages since this time
        /// that the subscription wants and never got a delivery of (made while it was
        /// disabled) are delivered now, in log order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover_since: Option<DateTime<Utc>>,
    },
    /// The dispatcher disabled the subscription: every attempt failed for longer than the
    /// limit (`SYNCJOBS_WEBHOOK_DISABLE_AFTER_HOURS`, Svix's five days by default).
    WebhookSubscriptionDisabled {
        organization_id: Uuid,
        /// Why, in words (the first failure of the run and the last answer).
        reason: String,
        /// The first failed attempt after the last success.
        failing_since: DateTime<Utc>,
    },
    WebhookSubscriptionDeleted {
        organization_id: Uuid,
    },
    /// One POST of a message to a subscription, in the delivery's own stream
    /// (`webhook_delivery-<message>-<subscription>`, see [`crate::webhook::WebhookDelivery`]).
    WebhookAttemptRecorded {
        message_id: Uuid,
        subscription_id: Uuid,
        organization_id: Uuid,
        /// 1 for the first attempt; also the stream version it is recorded at.
        attempt: u32,
        url: String,
        /// The endpoint's HTTP status; 0 when none came (refused, timed out, broken).
        status_code: u16,
        /// The start of the endpoint's answer (at most 1 KiB), or why none came.
        response: String,
        /// When the next attempt is due; absent when this attempt ended the delivery
        /// (it succeeded, or it was the last one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// A failed delivery is to be tried again from now, on the schedule from its start
    /// (Airweave's `recover`).
    WebhookDeliveryRecovered {
        message_id: Uuid,
        subscription_id: Uuid,
        organization_id: Uuid,
    },
}

/// Any event of any stream. Each inner enum carries its own `type` tag; the tags are distinct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    Job(SyncJobEvent),
    Collection(CollectionEvent),
    SourceConnection(SourceConnectionEvent),
    Access(AccessEvent),
    Webhook(WebhookEvent),
    Worker(WorkerEvent),
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Job(e) => e.event_type(),
            Event::Collection(e) => e.event_type(),
            Event::SourceConnection(e) => e.event_type(),
            Event::Access(e) => e.event_type(),
            Event::Webhook(e) => e.event_type(),
            Event::Worker(e) => e.event_type(),
        }
    }

    /// Serialises the event body (`{"type":..,"data":..}`) for storage.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses a stored body written at `schema_version`, upcasting older versions first.
    pub fn from_stored(
        schema_version: u32,
        json: &str,
    ) -> Result<Event, crate::upcast::UpcastError> {
        crate::upcast::decode(schema_version, json)
    }

    /// [`Event::from_stored`] for a store that records each body's event type beside it:
    /// the same result, faster (see [`crate::upcast::decode_as`]).
    pub fn from_stored_as(
        schema_version: u32,
        event_type: &str,
        json: &str,
    ) -> Result<Event, crate::upcast::UpcastError> {
        crate::upcast::decode_as(schema_version, event_type, json)
    }
}

/// Which of the enums inside [`Event`] an event type belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFamily {
    Job,
    Collection,
    SourceConnection,
    Access,
    Webhook,
    Worker,
}

/// Builds, from the one table of event types below, each enum's `event_type()`,
/// [`EventFamily::of`] and the [`event_type`] constants.
macro_rules! event_types {
    ($($family:ident: $enum:ident { $($variant:ident = $constant:ident),+ $(,)? })+) => {
        /// Every event type name, as stored, published (the last token of a NATS subject) and
        /// shown. Each is its variant's own name, the `type` tag serde writes.
        pub mod event_type {
            $($(pub const $constant: &str = stringify!($variant);)+)+
        }

        $(impl $enum {
            /// The event's type name (one of [`event_type`]).
            pub fn event_type(&self) -> &'static str {
                match self {
                    $($enum::$variant { .. } => event_type::$constant,)+
                }
            }
        })+

        impl EventFamily {
            /// The family of an event type name (`JobCreated` -> `Job`); None for an unknown
            /// name.
            pub fn of(name: &str) -> Option<EventFamily> {
                match name {
                    $($(event_type::$constant)|+ => Some(EventFamily::$family),)+
                    _ => None,
                }
            }
        }
    };
}

// The table: every event type, by family. A variant missing here does not compile.
event_types! {
    Job: SyncJobEvent {
        JobCreated = JOB_CREATED,
        JobStarted = JOB_STARTED,
        ProgressRecorded = PROGRESS_RECORDED,
        JobCompleted = JOB_COMPLETED,
        JobFailed = JOB_FAILED,
        CancelRequested = CANCEL_REQUESTED,
        Cancelled = CANCELLED,
        ForceCancelled = FORCE_CANCELLED,
        JobResumed = JOB_RESUMED,
    }
    Collection: CollectionEvent {
        CollectionCreated = COLLECTION_CREATED,
        CollectionUpdated = COLLECTION_UPDATED,
        CollectionDeleted = COLLECTION_DELETED,
    }
    SourceConnection: SourceConnectionEvent {
        SourceConnectionCreated = SOURCE_CONNECTION_CREATED,
        SourceConnectionDeleted = SOURCE_CONNECTION_DELETED,
    }
    Access: AccessEvent {
        OrganizationCreated = ORGANIZATION_CREATED,
        ApiKeyCreated = API_KEY_CREATED,
        ApiKeyRevoked = API_KEY_REVOKED,
    }
    Webhook: WebhookEvent {
        WebhookSubscriptionCreated = WEBHOOK_SUBSCRIPTION_CREATED,
        WebhookSubscriptionUpdated = WEBHOOK_SUBSCRIPTION_UPDATED,
        WebhookSubscriptionDisabled = WEBHOOK_SUBSCRIPTION_DISABLED,
        WebhookSubscriptionDeleted = WEBHOOK_SUBSCRIPTION_DELETED,
        WebhookAttemptRecorded = WEBHOOK_ATTEMPT_RECORDED,
        WebhookDeliveryRecovered = WEBHOOK_DELIVERY_RECOVERED,
    }
    Worker: WorkerEvent {
        WorkerStarted = WORKER_STARTED,
        WorkerStopped = WORKER_STOPPED,
        WorkerLost = WORKER_LOST,
    }
}

impl From<SyncJobEvent> for Event {
    fn from(e: SyncJobEvent) -> Self {
        Event::Job(e)
    }
}
impl From<CollectionEvent> for Event {
    fn from(e: CollectionEvent) -> Self {
        Event::Collection(e)
    }
}
impl From<SourceConnectionEvent> for Event {
    fn from(e: SourceConnectionEvent) -> Self {
        Event::SourceConnection(e)
    }
}
impl From<AccessEvent> for Event {
    fn from(e: AccessEvent) -> Self {
        Event::Access(e)
    }
}
impl From<WebhookEvent> for Event {
    fn from(e: WebhookEvent) -> Self {
        Event::Webhook(e)
    }
}
impl From<WorkerEvent> for Event {
    fn from(e: WorkerEvent) -> Self {
        Event::Worker(e)
    }
}

/// Stream names. One stream per aggregate; the prefix is its category.
pub mod stream {
    use uuid::Uuid;

    pub const JOB_PREFIX: &str = "job-";
    pub const COLLECTION_PREFIX: &str = "collection-";
    pub const SOURCE_CONNECTION_PREFIX: &str = "source_connection-";
    /// All organizations and keys share one stream: key creation is rare and a single
    /// stream makes "is this hash known" a fold of one stream.
    pub const ACCESS: &str = "access";
    pub const WORKER_PREFIX: &str = "worker-";

    /// A worker node's lifecycle stream (its id as given by `SYNCJOBS_NODE_ID` or made at start).
    pub fn worker(id: &str) -> String {
        format!("{WORKER_PREFIX}{id}")
    }
    /// The worker id of a worker stream name, if it is one.
    pub fn worker_id(stream: &str) -> Option<&str> {
        stream.strip_prefix(WORKER_PREFIX)
    }

    pub fn job(id: Uuid) -> String {
        format!("{JOB_PREFIX}{id}")
    }
    pub fn collection(id: Uuid) -> String {
        format!("{COLLECTION_PREFIX}{id}")
    }
    pub const COLLECTION_NAME_PREFIX: &str = "collection_name-";
    /// The stream of a collection's readable id within its organization. The API appends a
    /// collection's CollectionCreated/CollectionUpdated/CollectionDeleted here (not to [`collection`]), so that
    /// creating a collection and claiming its readable id are one optimistic append: two racing
    /// creates of one readable id cannot both win, and a deleted id can be taken again.
    pub fn collection_name(organization_id: Uuid, readable_id: &str) -> String {
        format!("{COLLECTION_NAME_PREFIX}{organization_id}-{readable_id}")
    }
    pub fn source_connection(id: Uuid) -> String {
        format!("{SOURCE_CONNECTION_PREFIX}{id}")
    }
    pub const WEBHOOK_SUBSCRIPTION_PREFIX: &str = "webhook_subscription-";
    pub fn webhook_subscription(id: Uuid) -> String {
        format!("{WEBHOOK_SUBSCRIPTION_PREFIX}{id}")
    }
    pub const WEBHOOK_DELIVERY_PREFIX: &str = "webhook_delivery-";
    /// The attempts to deliver one message to one subscription.
    pub fn webhook_delivery(message_id: Uuid, subscription_id: Uuid) -> String {
        format!("{WEBHOOK_DELIVERY_PREFIX}{message_id}-{subscription_id}")
    }
    /// The job id of a job stream name, if it is one.
    pub fn job_id(stream: &str) -> Option<Uuid> {
        id_in(stream, JOB_PREFIX)
    }
    /// The collection id of a collection stream name, if it is one.
    pub fn collection_id(stream: &str) -> Option<Uuid> {
        id_in(stream, COLLECTION_PREFIX)
    }
    /// The connection id of a source connection stream name, if it is one.
    pub fn source_connection_id(stream: &str) -> Option<Uuid> {
        id_in(stream, SOURCE_CONNECTION_PREFIX)
    }
    /// The subscription id of a webhook subscription stream name, if it is one.
    pub fn webhook_subscription_id(stream: &str) -> Option<Uuid> {
        id_in(stream, WEBHOOK_SUBSCRIPTION_PREFIX)
    }
    /// The id a stream of `prefix`'s category names (`<prefix><uuid>`), if it is one.
    fn id_in(stream: &str, prefix: &str) -> Option<Uuid> {
        stream
            .strip_prefix(prefix)
            .and_then(|s| Uuid::parse_str(s).ok())
    }
}

/// Who or what caused an event, and why: enough to trace a chain of events back to a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The event or request id that directly caused this one.
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    /// The id shared by every event of one user-visible operation.
    #[serde(default)]
    pub correlation_id: Option<Uuid>,
    /// A principal: `api-key:<key id>`, `watchdog`, `worker:<name>`, `recovery`, `cli`.
    #[serde(default)]
    pub caused_by: String,
}

impl Metadata {
    /// Metadata naming only its principal (`cli`, `watchdog`, `api-key:<id>`, ...).
    pub fn caused_by(principal: impl Into<String>) -> Metadata {
        Metadata {
            causation_id: None,
            correlation_id: None,
            caused_by: principal.into(),
        }
    }

    /// With the id shared by every event of one operation (a request, a job).
    pub fn with_correlation(self, id: Uuid) -> Metadata {
        Metadata {
            correlation_id: Some(id),
            ..self
        }
    }

    /// With the id of the event or request that directly caused this one.
    pub fn with_causation(self, id: Uuid) -> Metadata {
        Metadata {
            causation_id: Some(id),
            ..self
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub event: Event,
}

impl NewEvent {
    pub fn new(event: impl Into<Event>, recorded_at: DateTime<Utc>, metadata: Metadata) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            recorded_at,
            metadata,
            event: event.into(),
        }
    }
}

/// An event as the store holds it: the envelope every reader sees.
///
/// `E` is the body: the typed [`Event`] everywhere but where a body is carried before it is
/// read (an exported line keeps its raw JSON until it is upcast), so that both share one
/// envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent<E = Event> {
    pub event_id: Uuid,
    pub stream_id: String,
    /// 1-based position within its stream.
    pub version: u64,
    /// 1-based position in the store's global log.
    pub global_position: u64,
    pub recorded_at: DateTime<Utc>,
    /// The schema version the event was written with (the body below is already upcast).
    pub schema_version: u32,
    #[serde(flatten)]
    pub metadata: Metadata,
    pub event: E,
}

impl<E> RecordedEvent<E> {
    /// The same envelope around another form of its body.
    pub fn with_event<F>(self, event: F) -> RecordedEvent<F> {
        RecordedEvent {
            event_id: self.event_id,
            stream_id: self.stream_id,
            version: self.version,
            global_position: self.global_position,
            recorded_at: self.recorded_at,
            schema_version: self.schema_version,
            metadata: self.metadata,
            event,
        }
    }
}

impl RecordedEvent {
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    pub fn job_event(&self) -> Option<&SyncJobEvent> {
        match &self.event {
            Event::Job(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_json_with_its_type_tag_and_family() {
        let now = Utc::now();
        let events: Vec<Event> = vec![
            SyncJobEvent::JobCreated {
                job_id: Uuid::nil(),
                source_connection_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                short_name: "timed".into(),
                config: serde_json::json!({"entity_count": 3}),
            }
            .into(),
            SyncJobEvent::JobStarted { worker: "w".into() }.into(),
            SyncJobEvent::ProgressRecorded {
                counts: EntityCounts {
                    inserted: 2,
                    ..Default::default()
                },
            }
            .into(),
            SyncJobEvent::JobCompleted {
                counts: EntityCounts::default(),
            }
            .into(),
            SyncJobEvent::JobFailed {
                error: "boom".into(),
                error_category: None,
                counts: EntityCounts::default(),
                counts_reconciled: true,
            }
            .into(),
            SyncJobEvent::CancelRequested {
                requested_by: "api-key:x".into(),
                timeout_seconds: 180,
            }
            .into(),
            SyncJobEvent::Cancelled {
                counts: EntityCounts::default(),
                note: None,
                counts_reconciled: false,
            }
            .into(),
            SyncJobEvent::ForceCancelled {
                error: "forced".into(),
                timeout_seconds: 180,
                requested_at: now,
                counts: EntityCounts::default(),
                counts_reconciled: true,
            }
            .into(),
            CollectionEvent::CollectionCreated {
                collection_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                name: "c".into(),
                readable_id: "c".into(),
            }
            .into(),
            CollectionEvent::CollectionUpdated {
                collection_id: Uuid::nil(),
                name: Some("d".into()),
            }
            .into(),
            CollectionEvent::CollectionUpdated {
                collection_id: Uuid::nil(),
                name: None,
            }
            .into(),
            CollectionEvent::CollectionDeleted {
                collection_id: Uuid::nil(),
            }
            .into(),
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                collection_id: Uuid::nil(),
                readable_collection_id: "c".into(),
                name: "s".into(),
                description: None,
                short_name: "timed".into(),
                config: serde_json::Value::Null,
                auth_method: "direct".into(),
                authenticated: true,
            }
            .into(),
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: Uuid::nil(),
                with_collection: false,
            }
            .into(),
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: Uuid::nil(),
                with_collection: true,
            }
            .into(),
            AccessEvent::OrganizationCreated {
                organization_id: Uuid::nil(),
                name: "o".into(),
            }
            .into(),
            AccessEvent::ApiKeyCreated {
                key_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                key_hash: "h".into(),
                prefix: "p".into(),
                expires_at: None,
            }
            .into(),
            AccessEvent::ApiKeyRevoked {
                key_id: Uuid::nil(),
            }
            .into(),
            WebhookEvent::WebhookSubscriptionCreated {
                subscription_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                url: "https://example.com/h".into(),
                event_types: vec!["sync.completed".into()],
                description: Some("d".into()),
                secret: "whsec_x".into(),
                recover_since: Some(now),
            }
            .into(),
            WebhookEvent::WebhookSubscriptionUpdated {
                organization_id: Uuid::nil(),
                url: None,
                event_types: Some(vec!["sync.failed".into()]),
                disabled: Some(false),
                description: None,
                recover_since: Some(now),
            }
            .into(),
            WebhookEvent::WebhookSubscriptionDisabled {
                organization_id: Uuid::nil(),
                reason: "failing".into(),
                failing_since: now,
            }
            .into(),
            WebhookEvent::WebhookSubscriptionDeleted {
                organization_id: Uuid::nil(),
            }
            .into(),
            WebhookEvent::WebhookAttemptRecorded {
                message_id: Uuid::nil(),
                subscription_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                attempt: 1,
                url: "https://example.com/h".into(),
                status_code: 500,
                response: "boom".into(),
                next_attempt_at: Some(now),
            }
            .into(),
            WebhookEvent::WebhookDeliveryRecovered {
                message_id: Uuid::nil(),
                subscription_id: Uuid::nil(),
                organization_id: Uuid::nil(),
            }
            .into(),
            SyncJobEvent::JobResumed {
                attempt: 1,
                lost_worker: "w".into(),
                last_seen: Some(now),
                counts: EntityCounts::default(),
                counts_reconciled: true,
                handed_back: false,
            }
            .into(),
            WorkerEvent::WorkerStarted {
                id: "w".into(),
                host: "h".into(),
                pid: 7,
                capacity: Some(4),
            }
            .into(),
            WorkerEvent::WorkerStopped {
                id: "w".into(),
                handed_back: 2,
            }
            .into(),
            WorkerEvent::WorkerLost {
                id: "w".into(),
                last_seen: now,
                timeout_seconds: 30,
                detected_by: "n".into(),
            }
            .into(),
        ];
        for e in events {
            let json = e.to_json().unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["type"], e.event_type(), "{json}");
            let family = match &e {
                Event::Job(_) => EventFamily::Job,
                Event::Collection(_) => EventFamily::Collection,
                Event::SourceConnection(_) => EventFamily::SourceConnection,
                Event::Access(_) => EventFamily::Access,
                Event::Webhook(_) => EventFamily::Webhook,
                Event::Worker(_) => EventFamily::Worker,
            };
            assert_eq!(EventFamily::of(e.event_type()), Some(family), "{json}");
            let back = Event::from_stored(CURRENT_SCHEMA_VERSION, &json).unwrap();
            assert_eq!(back, e);
            // The type the store recorded beside the body is a hint: the body decides, so
            // a type column that lies is caught by comparing it with the decoded event.
            for hint in [
                e.event_type(),
                "JobStarted",
                "CollectionDeleted",
                "SourceConnectionDeleted",
                "ApiKeyRevoked",
                "Nope",
            ] {
                let back = Event::from_stored_as(CURRENT_SCHEMA_VERSION, hint, &json).unwrap();
                assert_eq!(back, e, "hint {hint}: {json}");
            }
        }
    }

    #[test]
    fn the_reconciled_flag_is_written_only_when_set_and_absent_reads_as_false() {
        let failed = |counts_reconciled| SyncJobEvent::JobFailed {
            error: "x".into(),
            error_category: None,
            counts: EntityCounts::default(),
            counts_reconciled,
        };
        let plain = Event::from(failed(false)).to_json().unwrap();
        assert!(!plain.contains("counts_reconciled"), "{plain}");
        let marked = Event::from(failed(true)).to_json().unwrap();
        assert!(marked.contains(r#""counts_reconciled":true"#), "{marked}");
        // A body stored before the field existed.
        let old = r#"{"type":"ForceCancelled","data":{"error":"e","timeout_seconds":180,
            "requested_at":"2026-11-29T10:00:00Z","counts":{"inserted":3}}}"#;
        let Event::Job(SyncJobEvent::ForceCancelled {
            counts_reconciled, ..
        }) = Event::from_stored(CURRENT_SCHEMA_VERSION, old).unwrap()
        else {
            panic!("not a ForceCancelled");
        };
        assert!(!counts_reconciled);
    }

    #[test]
    fn reconciled_counts_take_the_destinations_and_never_go_down() {
        let reported = EntityCounts {
            inserted: 10,
            kept: 2,
            skipped: 1,
            ..Default::default()
        };
        let destination = EntityCounts {
            inserted: 14,
            updated: 3,
            kept: 2,
            failed: 1,
            ..Default::default()
        };
        let r = reported.reconciled_with(&destination);
        assert_eq!(
            r,
            EntityCounts {
                inserted: 14,
                updated: 3,
                kept: 2,
                skipped: 1, // the destination never sees skipped entities
                failed: 1,
                deleted: 0,
            }
        );
        assert!(r.dominates(&reported));
        // A destination that knows nothing of the job (written before it kept counts).
        assert_eq!(reported.reconciled_with(&EntityCounts::default()), reported);
    }

    #[test]
    fn counts_that_go_down_do_not_dominate() {
        let a = EntityCounts {
            inserted: 5,
            updated: 1,
            ..Default::default()
        };
        let b = EntityCounts {
            inserted: 4,
            updated: 3,
            ..Default::default()
        };
        assert!(a.dominates(&a));
        assert!(!b.dominates(&a));
        assert!(!a.dominates(&b));
    }
}
