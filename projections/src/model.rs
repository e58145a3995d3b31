//! The rows the REST API serves, derived only from the global log (the database's
//! [`crate::db`] folds and stores them), and the statuses derived from them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use syncjobs_domain::JobState;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as the read model knows it: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: Uuid,
    pub organization_id: Uuid,
    pub key_hash: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Usable now: not revoked and not expired.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub readable_id: String,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    /// Global position of its creation: the order of listings, rebuilt identically.
    pub created_position: u64,
}

/// A webhook subscription (Airweave's `/webhooks/subscriptions`), secret included: the
/// dispatcher signs with it; the API shows it only when asked (`include_secret=true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSubscription {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub disabled: bool,
    pub description: Option<String>,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_position: u64,
    /// Why the dispatcher disabled it (`WebhookSubscriptionDisabled`), while disabled.
    pub disabled_reason: Option<String>,
    /// The first failed attempt since its last successful one (None: the last attempt
    /// succeeded, none was made, or it was enabled again since): what the automatic
    /// disabling measures.
    pub failing_since: Option<DateTime<Utc>>,
}

/// An event of the log as a webhook message (Airweave's `WebhookMessage`): every event that
/// has a webhook type becomes one, whether or not a subscription wants it. Its id is the
/// event's id, so a rebuild of the read model makes the same message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub event_type: String,
    /// The JSON body POSTed, exactly as sent.
    pub payload: String,
    pub timestamp: DateTime<Utc>,
    pub created_position: u64,
}

/// One recorded POST of a message to a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    /// The id of the event that recorded it.
    pub id: Uuid,
    pub message_id: Uuid,
    pub subscription_id: Uuid,
    pub organization_id: Uuid,
    pub attempt: u32,
    pub url: String,
    /// 0 when no HTTP answer came.
    pub status_code: u16,
    pub response: String,
    pub timestamp: DateTime<Utc>,
}

/// A delivery whose next attempt is due: everything the dispatcher needs to make it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub message_id: Uuid,
    pub subscription_id: Uuid,
    pub organization_id: Uuid,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts made before the last recovery (the retry schedule counts from there).
    pub round_start: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub url: String,
    pub secret: String,
    pub payload: String,
    /// The subscription's [`WebhookSubscription::failing_since`].
    pub failing_since: Option<DateTime<Utc>>,
}

/// Airweave's collection status, derived from the collection's source connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionStatus {
    Active,
    NeedsSource,
    Error,
}

impl CollectionStatus {
    /// The wire spelling (Airweave's, upper case with a space).
    pub fn as_str(&self) -> &'static str {
        match self {
            CollectionStatus::Active => "ACTIVE",
            CollectionStatus::NeedsSource => "NEEDS SOURCE",
            CollectionStatus::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceConnection {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub collection_id: Uuid,
    pub readable_collection_id: String,
    pub name: String,
    pub description: Option<String>,
    pub short_name: String,
    pub config: serde_json::Value,
    pub auth_method: String,
    pub authenticated: bool,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub created_position: u64,
    /// Jobs ever created for it, and how many of them completed or failed.
    pub total_runs: u64,
    pub successful_runs: u64,
    pub failed_runs: u64,
}

/// Source connection status on the wire (lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceConnectionStatus {
    Active,
    Syncing,
    Error,
    Inactive,
    PendingSync,
}

impl SourceConnectionStatus {
    /// From the connection's last job: pending/running/cancelling -> syncing, failed ->
    /// error, none yet -> pending_sync, else active; not authenticated -> inactive.
    pub fn of(sc: &SourceConnection, last: Option<&JobState>) -> Self {
        if !sc.authenticated {
            return SourceConnectionStatus::Inactive;
        }
        match last.map(|j| j.status) {
            None => SourceConnectionStatus::PendingSync,
            Some(s) if s.is_active() => SourceConnectionStatus::Syncing,
            Some(syncjobs_domain::JobStatus::Failed) => SourceConnectionStatus::Error,
            Some(_) => SourceConnectionStatus::Active,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SourceConnectionStatus::Active => "active",
            SourceConnectionStatus::Syncing => "syncing",
            SourceConnectionStatus::Error => "error",
            SourceConnectionStatus::Inactive => "inactive",
            SourceConnectionStatus::PendingSync => "pending_sync",
        }
    }
}

/// Every readable row of the model, each list in id order: what a rebuild from the log must
/// reproduce exactly (tests compare a resumed model with a fold of the whole log by it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelDump {
    pub position: u64,
    pub organizations: Vec<Organization>,
    pub api_keys: Vec<ApiKey>,
    pub collections: Vec<Collection>,
    pub source_connections: Vec<SourceConnection>,
    pub jobs: Vec<JobState>,
    /// `/health`'s counts per organization (collections, source connections, active jobs),
    /// all-zero ones left out.
    pub counts: Vec<(Uuid, [u64; 3])>,
    pub webhook_subscriptions: Vec<WebhookSubscription>,
    pub webhook_messages: Vec<WebhookMessage>,
    /// (message, subscription, status, attempts, round start, next attempt at).
    pub webhook_deliveries: Vec<WebhookDeliveryRow>,
    pub webhook_attempts: Vec<WebhookAttempt>,
}

/// A delivery row as stored: (message, subscription, status, attempts, round start, next
/// attempt at).
pub type WebhookDeliveryRow = (Uuid, Uuid, String, u32, u32, Option<String>);
