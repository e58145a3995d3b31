//! Response bodies, field for field as the wire contract (and Airweave's SDKs) expect them.
//! They borrow from the read model and are serialised while its read lock is held, so a
//! GET copies nothing but the bytes it sends.
//!
//! Every field is always present (absent values are explicit `null`); timestamps are ISO
//! 8601 UTC with microseconds (`2026-04-23T10:00:00.123456Z`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use syncjobs_actors::pipeline::EntityStats;
use syncjobs_domain::time::serde_micros::{optional as opt_ts, required as ts};
use syncjobs_domain::JobState;
use syncjobs_projections::{
    Collection, ReadError, ReadView, SourceConnection, SourceConnectionStatus, WebhookAttempt,
    WebhookMessage, WebhookSubscription,
};
use uuid::Uuid;

/// An optional timestamp through the one codec's serde helper, for [`JobOut::write_json`].
struct Micros<'a>(&'a Option<DateTime<Utc>>);

impl Serialize for Micros<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        opt_ts(self.0, s)
    }
}

/// Embedding facts of the destination: the embedded SQLite destination stores no vectors.
pub const VECTOR_SIZE: u32 = 0;
pub const EMBEDDING_MODEL_NAME: &str = "none";

#[derive(Serialize)]
pub struct CollectionOut<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub readable_id: &'a str,
    pub organization_id: Uuid,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub modified_at: DateTime<Utc>,
    pub status: &'static str,
    pub vector_size: u32,
    pub embedding_model_name: &'static str,
    pub sync_config: Option<()>,
    pub created_by_email: Option<()>,
    pub modified_by_email: Option<()>,
}

impl<'a> CollectionOut<'a> {
    /// The collection with its status (read from its connections' last jobs).
    pub async fn new(m: &ReadView<'_>, c: &'a Collection) -> Result<Self, ReadError> {
        Ok(CollectionOut {
            id: c.id,
            name: &c.name,
            readable_id: &c.readable_id,
            organization_id: c.organization_id,
            created_at: c.created_at,
            modified_at: c.modified_at,
            status: m.collection_status(c.id).await?.as_str(),
            vector_size: VECTOR_SIZE,
            embedding_model_name: EMBEDDING_MODEL_NAME,
            sync_config: None,
            created_by_email: None,
            modified_by_email: None,
        })
    }
}

/// A sync job (`SourceConnectionJob`); without `source_connection_id` as a `last_job`.
#[derive(Serialize)]
pub struct JobOut<'a> {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_connection_id: Option<Uuid>,
    pub status: &'static str,
    #[serde(serialize_with = "opt_ts")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "opt_ts")]
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<f64>,
    pub entities_inserted: u64,
    pub entities_updated: u64,
    pub entities_deleted: u64,
    pub entities_failed: u64,
    pub error: Option<&'a str>,
    pub error_category: Option<&'a str>,
    pub error_details: Option<&'a serde_json::Value>,
}

impl<'a> JobOut<'a> {
    pub fn new(j: &'a JobState) -> Self {
        JobOut {
            id: j.job_id,
            source_connection_id: Some(j.source_connection_id),
            status: j.status.as_str(),
            started_at: j.started_at,
            completed_at: j.completed_at,
            duration_seconds: j.duration_seconds(),
            entities_inserted: j.counts.inserted,
            entities_updated: j.counts.updated,
            entities_deleted: j.counts.deleted,
            entities_failed: j.counts.failed,
            error: j.error.as_deref(),
            error_category: j.error_category.as_deref(),
            error_details: j.error_details.as_ref(),
        }
    }

    /// The bytes `serde_json::to_writer(out, self)` writes, without serde's machinery per
    /// field (names are literals here; ids, statuses and timestamps need no escaping): one
    /// job is the API's most frequent answer (clients poll it), and the derive cost 4% of
    /// the CPU of `GET` one job (BENCHMARKS.md #2; kept by issue #12's 5% rule). A test
    /// compares the two.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut uuid = Uuid::encode_buffer();
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut uuid).as_bytes());
        if let Some(sc) = self.source_connection_id {
            out.extend_from_slice(b"\",\"source_connection_id\":\"");
            out.extend_from_slice(sc.hyphenated().encode_lower(&mut uuid).as_bytes());
        }
        out.extend_from_slice(b"\",\"status\":");
        serde_json::to_writer(&mut *out, self.status)?;
        out.extend_from_slice(b",\"started_at\":");
        serde_json::to_writer(&mut *out, &Micros(&self.started_at))?;
        out.extend_from_slice(b",\"completed_at\":");
        serde_json::to_writer(&mut *out, &Micros(&self.completed_at))?;
        out.extend_from_slice(b",\"duration_seconds\":");
        serde_json::to_writer(&mut *out, &self.duration_seconds)?;
        for (name, count) in [
            (&b",\"entities_inserted\":"[..], self.entities_inserted),
            (b",\"entities_updated\":", self.entities_updated),
            (b",\"entities_deleted\":", self.entities_deleted),
            (b",\"entities_failed\":", self.entities_failed),
        ] {
            out.extend_from_slice(name);
            serde_json::to_writer(&mut *out, &count)?;
        }
        out.extend_from_slice(b",\"error\":");
        serde_json::to_writer(&mut *out, &self.error)?;
        out.extend_from_slice(b",\"error_category\":");
        serde_json::to_writer(&mut *out, &self.error_category)?;
        out.extend_from_slice(b",\"error_details\":");
        serde_json::to_writer(&mut *out, &self.error_details)?;
        out.push(b'}');
        Ok(())
    }

    fn nested(j: &'a JobState) -> Self {
        JobOut {
            source_connection_id: None,
            ..JobOut::new(j)
        }
    }
}

#[derive(Serialize)]
pub struct AuthOut<'a> {
    pub method: &'a str,
    pub authenticated: bool,
    #[serde(serialize_with = "opt_ts")]
    pub authenticated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<()>,
    pub auth_url: Option<()>,
    pub auth_url_expires: Option<()>,
    pub redirect_url: Option<()>,
    pub claim_token: Option<()>,
    pub provider_readable_id: Option<()>,
    pub provider_id: Option<()>,
}

#[derive(Serialize)]
pub struct SyncOut<'a> {
    pub total_runs: u64,
    pub successful_runs: u64,
    pub failed_runs: u64,
    pub last_job: Option<JobOut<'a>>,
}

#[derive(Serialize)]
pub struct EntityTypeOut {
    pub count: u64,
    #[serde(serialize_with = "opt_ts")]
    pub last_updated: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
pub struct EntitiesOut {
    pub total_entities: u64,
    pub by_type: BTreeMap<String, EntityTypeOut>,
}

#[derive(Serialize)]
pub struct SourceConnectionOut<'a> {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub short_name: &'a str,
    pub readable_collection_id: &'a str,
    pub status: &'static str,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub modified_at: DateTime<Utc>,
    pub auth: AuthOut<'a>,
    pub config: &'a serde_json::Value,
    pub schedule: Option<()>,
    pub sync: SyncOut<'a>,
    pub sync_id: Option<()>,
    pub entities: EntitiesOut,
    pub error_category: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub provider_settings_url: Option<()>,
    pub provider_short_name: Option<()>,
    pub federated_search: bool,
}

impl<'a> SourceConnectionOut<'a> {
    /// The connection with its `last` job (its newest, if any).
    pub fn new(
        sc: &'a SourceConnection,
        last: Option<&'a JobState>,
        entities: &EntityStats,
    ) -> Self {
        let failed_last = last.filter(|j| j.status == syncjobs_domain::JobStatus::Failed);
        SourceConnectionOut {
            id: sc.id,
            organization_id: sc.organization_id,
            name: &sc.name,
            description: sc.description.as_deref(),
            short_name: &sc.short_name,
            readable_collection_id: &sc.readable_collection_id,
            status: SourceConnectionStatus::of(sc, last).as_str(),
            created_at: sc.created_at,
            modified_at: sc.modified_at,
            auth: AuthOut {
                method: &sc.auth_method,
                authenticated: sc.authenticated,
                authenticated_at: sc.authenticated.then_some(sc.created_at),
                expires_at: None,
                auth_url: None,
                auth_url_expires: None,
                redirect_url: None,
                claim_token: None,
                provider_readable_id: None,
                provider_id: None,
            },
            config: &sc.config,
            schedule: None,
            sync: SyncOut {
                total_runs: sc.total_runs,
                successful_runs: sc.successful_runs,
                failed_runs: sc.failed_runs,
                last_job: last.map(JobOut::nested),
            },
            sync_id: None,
            entities: EntitiesOut {
                total_entities: entities.total_entities,
                by_type: entities
                    .by_type
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            EntityTypeOut {
                                count: v.count,
                                last_updated: v.last_updated,
                            },
                        )
                    })
                    .collect(),
            },
            error_category: failed_last.and_then(|j| j.error_category.as_deref()),
            error_message: failed_last.and_then(|j| j.error.as_deref()),
            provider_settings_url: None,
            provider_short_name: None,
            federated_search: false,
        }
    }
}

#[derive(Serialize)]
pub struct SourceConnectionListItemOut<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub short_name: &'a str,
    pub readable_collection_id: &'a str,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub modified_at: DateTime<Utc>,
    pub is_authenticated: bool,
    pub entity_count: u64,
    pub federated_search: bool,
    pub auth_method: &'a str,
    pub status: &'static str,
}

impl<'a> SourceConnectionListItemOut<'a> {
    pub async fn new(
        m: &ReadView<'_>,
        sc: &'a SourceConnection,
        entity_count: u64,
    ) -> Result<Self, ReadError> {
        Ok(SourceConnectionListItemOut {
            id: sc.id,
            name: &sc.name,
            short_name: &sc.short_name,
            readable_collection_id: &sc.readable_collection_id,
            created_at: sc.created_at,
            modified_at: sc.modified_at,
            is_authenticated: sc.authenticated,
            entity_count,
            federated_search: false,
            auth_method: &sc.auth_method,
            status: m.source_connection_status(sc).await?.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> JobState {
        let created = syncjobs_domain::SyncJobEvent::JobCreated {
            job_id: Uuid::from_u128(1),
            source_connection_id: Uuid::from_u128(2),
            organization_id: Uuid::from_u128(3),
            short_name: "timed".into(),
            config: serde_json::json!({}),
        };
        JobState::created(created, Utc::now()).unwrap()
    }

    /// Field order, `null` for what is absent, integers, floats and timestamps with
    /// microseconds, byte for byte: what the SDKs parse.
    #[test]
    fn a_job_reads_exactly_as_the_wire_contract_spells_it() {
        let pending = job();
        assert_eq!(
            serde_json::to_string(&JobOut::new(&pending)).unwrap(),
            r#"{"id":"00000000-0000-0000-0000-000000000001","#.to_owned()
                + r#""source_connection_id":"00000000-0000-0000-0000-000000000002","#
                + r#""status":"pending","started_at":null,"completed_at":null,"#
                + r#""duration_seconds":null,"entities_inserted":0,"entities_updated":0,"#
                + r#""entities_deleted":0,"entities_failed":0,"error":null,"#
                + r#""error_category":null,"error_details":null}"#
        );
        let mut failed = job();
        failed.status = syncjobs_domain::JobStatus::Failed;
        failed.started_at = Some(Utc.timestamp_opt(1_776_938_400, 123_456_789).unwrap());
        failed.completed_at = Some(Utc.timestamp_opt(1_776_938_461, 500_000_000).unwrap());
        failed.counts.inserted = 7;
        failed.counts.updated = u64::MAX;
        failed.error = Some("quote \" newline \n é".into());
        failed.error_category = Some("source_error".into());
        failed.error_details = Some(serde_json::json!({"retries": [1, 2.5, null]}));
        assert_eq!(
            serde_json::to_string(&JobOut::nested(&failed)).unwrap(),
            r#"{"id":"00000000-0000-0000-0000-000000000001","status":"failed","#.to_owned()
                + r#""started_at":"2026-04-23T10:00:00.123456Z","#
                + r#""completed_at":"2026-04-23T10:01:01.500000Z","#
                + r#""duration_seconds":61.376543,"entities_inserted":7,"#
                + r#""entities_updated":18446744073709551615,"entities_deleted":0,"#
                + r#""entities_failed":0,"error":"quote \" newline \n é","#
                + r#""error_category":"source_error","error_details":{"retries":[1,2.5,null]}}"#
        );
    }

    #[test]
    fn the_hand_written_job_body_is_the_bytes_serde_writes() {
        let at = |s| Some(Utc.timestamp_opt(s, 123_456_789).unwrap());
        let mut j = job();
        let mut states = vec![j.clone()];
        j.status = syncjobs_domain::JobStatus::Running;
        j.started_at = at(1_776_938_400);
        j.counts.inserted = 7;
        states.push(j.clone());
        j.status = syncjobs_domain::JobStatus::Failed;
        j.completed_at = at(1_776_938_461);
        j.counts.updated = u64::MAX;
        j.error = Some("quote \" backslash \\ newline \n tab \t nul \u{0} é ✓".into());
        j.error_category = Some("source_error".into());
        j.error_details = Some(serde_json::json!({"retries": [1, 2.5, null], "why": "a\"b"}));
        states.push(j.clone());
        j.status = syncjobs_domain::JobStatus::Cancelled;
        j.completed_at = Some(Utc.timestamp_opt(253_402_300_800, 1).unwrap()); // year 10000
        states.push(j);
        for state in &states {
            for out in [JobOut::new(state), JobOut::nested(state)] {
                let mut written = Vec::new();
                out.write_json(&mut written).unwrap();
                let serde = serde_json::to_vec(&out).unwrap();
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }
}

/// A webhook subscription (Airweave's `WebhookSubscription`).
#[derive(Serialize)]
pub struct WebhookSubscriptionOut<'a> {
    pub id: Uuid,
    pub url: &'a str,
    pub filter_types: &'a [String],
    pub disabled: bool,
    pub description: Option<&'a str>,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// `healthy`, `degraded`, `failing` or `unknown` (no delivery attempt yet).
    pub health_status: &'static str,
}

/// Airweave's `compute_health_status` over recent attempts, newest first: none -> unknown;
/// the latest 3 or more failed in a row -> failing; all succeeded -> healthy; else degraded.
pub fn health_status(recent: &[WebhookAttempt]) -> &'static str {
    let ok = |a: &WebhookAttempt| (200..300).contains(&a.status_code);
    if recent.is_empty() {
        return "unknown";
    }
    if recent.iter().take_while(|a| !ok(a)).count() >= 3 {
        return "failing";
    }
    if recent.iter().all(ok) {
        "healthy"
    } else {
        "degraded"
    }
}

/// Recent attempts that make a subscription's health (Airweave reads 10).
pub const HEALTH_WINDOW: usize = 10;

/// One delivery attempt (Airweave's `DeliveryAttempt`).
#[derive(Serialize)]
pub struct DeliveryAttemptOut<'a> {
    pub id: Uuid,
    pub message_id: Uuid,
    pub endpoint_id: Uuid,
    pub response: &'a str,
    pub response_status_code: u16,
    /// `success` (2xx) or `failed`.
    pub status: &'static str,
    #[serde(serialize_with = "ts")]
    pub timestamp: DateTime<Utc>,
    pub url: &'a str,
}

impl<'a> DeliveryAttemptOut<'a> {
    pub fn new(a: &'a WebhookAttempt) -> Self {
        DeliveryAttemptOut {
            id: a.id,
            message_id: a.message_id,
            endpoint_id: a.subscription_id,
            response: &a.response,
            response_status_code: a.status_code,
            status: if (200..300).contains(&a.status_code) {
                "success"
            } else {
                "failed"
            },
            timestamp: a.timestamp,
            url: &a.url,
        }
    }
}

impl<'a> WebhookSubscriptionOut<'a> {
    pub fn with_health(s: &'a WebhookSubscription, recent: &[WebhookAttempt]) -> Self {
        WebhookSubscriptionOut {
            health_status: health_status(recent),
            ..Self::new(s)
        }
    }

    pub fn new(s: &'a WebhookSubscription) -> Self {
        WebhookSubscriptionOut {
            id: s.id,
            url: &s.url,
            filter_types: &s.event_types,
            disabled: s.disabled,
            description: s.description.as_deref(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            health_status: "unknown",
        }
    }
}

/// One subscription with its recent delivery attempts and, when asked for, its secret
/// (Airweave's `WebhookSubscriptionDetail`).
#[derive(Serialize)]
pub struct WebhookSubscriptionDetailOut<'a> {
    #[serde(flatten)]
    pub subscription: WebhookSubscriptionOut<'a>,
    pub delivery_attempts: Vec<DeliveryAttemptOut<'a>>,
    pub secret: Option<&'a str>,
}

impl<'a> WebhookSubscriptionDetailOut<'a> {
    /// `attempts`: the subscription's recent attempts, newest first.
    pub fn new(
        s: &'a WebhookSubscription,
        attempts: &'a [WebhookAttempt],
        include_secret: bool,
    ) -> Self {
        let recent = &attempts[..attempts.len().min(HEALTH_WINDOW)];
        WebhookSubscriptionDetailOut {
            subscription: WebhookSubscriptionOut::with_health(s, recent),
            delivery_attempts: attempts.iter().map(DeliveryAttemptOut::new).collect(),
            secret: include_secret.then_some(s.secret.as_str()),
        }
    }
}

/// A webhook message (Airweave's `WebhookMessage`, and `WebhookMessageWithAttempts` when
/// `delivery_attempts` is asked for).
#[derive(Serialize)]
pub struct WebhookMessageOut<'a> {
    pub id: Uuid,
    pub event_type: &'a str,
    /// The body POSTed, as an object.
    pub payload: serde_json::Value,
    #[serde(serialize_with = "ts")]
    pub timestamp: DateTime<Utc>,
    pub channels: [&'a str; 1],
    pub tags: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_attempts: Option<Option<Vec<DeliveryAttemptOut<'a>>>>,
}

impl<'a> WebhookMessageOut<'a> {
    pub fn new(m: &'a WebhookMessage) -> Result<Self, ReadError> {
        Ok(WebhookMessageOut {
            id: m.id,
            event_type: &m.event_type,
            payload: serde_json::from_str(&m.payload)
                .map_err(|e| ReadError::Decode(e.to_string()))?,
            timestamp: m.timestamp,
            channels: [&m.event_type],
            tags: None,
            delivery_attempts: None,
        })
    }

    /// With `delivery_attempts`: the list when asked for, else an explicit null.
    pub fn with_attempts(
        m: &'a WebhookMessage,
        attempts: Option<&'a [WebhookAttempt]>,
    ) -> Result<Self, ReadError> {
        Ok(WebhookMessageOut {
            delivery_attempts: Some(
                attempts.map(|a| a.iter().map(DeliveryAttemptOut::new).collect()),
            ),
            ..Self::new(m)?
        })
    }
}
