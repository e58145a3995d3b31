//! Response bodies, field for field as the wire contract (and Airweave's SDKs) expect them.
//! They borrow from the read model and are serialised while its read lock is held, so a
//! GET copies nothing but the bytes it sends.
//!
//! Every field is always present (absent values are explicit `null`); timestamps are ISO
//! 8601 UTC with microseconds (`2026-04-23T10:00:00.123456Z`).

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use syncjobs_actors::pipeline::EntityStats;
use syncjobs_domain::JobState;
use syncjobs_projections::{Collection, ReadModel, SourceConnection};
use uuid::Uuid;

/// `2026-04-23T10:00:00.123456Z`.
pub fn format_ts(t: &DateTime<Utc>) -> String {
    let mut buf = [0; TS_LEN];
    match ts_into(t, &mut buf) {
        Some(text) => text.to_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

const TS_LEN: usize = "2026-04-23T10:00:00.123456Z".len();

/// [`format_ts`] written into `buf`, digit by digit: every response has a few timestamps,
/// and chrono's writer (or a strftime pattern, which it parses anew on every call) took a
/// few % of the CPU of a `GET` (BENCHMARKS.md #2). `None` for what only chrono spells right:
/// years outside 0..=9999 and leap seconds.
fn ts_into<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; TS_LEN]) -> Option<&'a str> {
    // UTC already: the naive value needs no offset applied for each field.
    let t = t.naive_utc();
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    *buf = *b"0000-00-00T00:00:00.000000Z";
    for (at, width, value) in [
        (0, 4, year),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 6, nanos / 1000),
    ] {
        let mut value = value;
        for digit in buf[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(buf).ok()
}

fn ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0; TS_LEN];
    match ts_into(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&format_ts(t)),
    }
}

/// A timestamp as a JSON string, or `null`.
fn write_opt_ts(out: &mut Vec<u8>, t: &Option<DateTime<Utc>>) {
    let Some(t) = t else {
        out.extend_from_slice(b"null");
        return;
    };
    let mut buf = [0; TS_LEN];
    out.push(b'"');
    match ts_into(t, &mut buf) {
        Some(text) => out.extend_from_slice(text.as_bytes()),
        None => out.extend_from_slice(format_ts(t).as_bytes()),
    }
    out.push(b'"');
}

fn opt_ts<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ts(t, s),
        None => s.serialize_none(),
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
    pub fn new(m: &'a ReadModel, c: &'a Collection) -> Self {
        CollectionOut {
            id: c.id,
            name: &c.name,
            readable_id: &c.readable_id,
            organization_id: c.organization_id,
            created_at: c.created_at,
            modified_at: c.modified_at,
            status: m.collection_status(c.id).as_str(),
            vector_size: VECTOR_SIZE,
            embedding_model_name: EMBEDDING_MODEL_NAME,
            sync_config: None,
            created_by_email: None,
            modified_by_email: None,
        }
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
    /// job is the API's most frequent answer (clients poll it), and serde took 4% of the CPU
    /// of `GET` one job (BENCHMARKS.md #2). A test compares the two.
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
        write_opt_ts(out, &self.started_at);
        out.extend_from_slice(b",\"completed_at\":");
        write_opt_ts(out, &self.completed_at);
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
    pub fn new(m: &'a ReadModel, sc: &'a SourceConnection, entities: &EntityStats) -> Self {
        let last = m.last_job(sc.id);
        let failed_last = last.filter(|j| j.status == syncjobs_domain::JobStatus::Failed);
        SourceConnectionOut {
            id: sc.id,
            organization_id: sc.organization_id,
            name: &sc.name,
            description: sc.description.as_deref(),
            short_name: &sc.short_name,
            readable_collection_id: &sc.readable_collection_id,
            status: m.source_connection_status(sc).as_str(),
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
    pub fn new(m: &'a ReadModel, sc: &'a SourceConnection, entity_count: u64) -> Self {
        SourceConnectionListItemOut {
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
            status: m.source_connection_status(sc).as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_are_iso_8601_utc_with_microseconds() {
        let t = Utc.timestamp_opt(1_776_938_400, 123_456_789).unwrap();
        assert_eq!(format_ts(&t), "2026-04-23T10:00:00.123456Z");
        let whole = Utc.timestamp_opt(1_776_938_400, 0).unwrap();
        assert_eq!(format_ts(&whole), "2026-04-23T10:00:00.000000Z");
    }

    #[test]
    fn a_job_is_written_as_serde_writes_it() {
        let at = |s| Some(Utc.timestamp_opt(s, 123_456_789).unwrap());
        let mut job = JobState {
            job_id: Uuid::now_v7(),
            source_connection_id: Uuid::now_v7(),
            organization_id: Uuid::now_v7(),
            short_name: "timed".into(),
            config: serde_json::json!({}),
            status: syncjobs_domain::JobStatus::Pending,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            counts: Default::default(),
            error: None,
            error_category: None,
            error_details: None,
            cancel_requested_at: None,
            cancel_timeout_seconds: None,
            version: 1,
        };
        let mut states = vec![job.clone()];
        job.status = syncjobs_domain::JobStatus::Running;
        job.started_at = at(1_776_938_400);
        job.counts.inserted = 7;
        states.push(job.clone());
        job.status = syncjobs_domain::JobStatus::Failed;
        job.completed_at = at(1_776_938_461);
        job.counts.updated = u64::MAX;
        job.error = Some("quote \" backslash \\ newline \n tab \t nul \u{0} é ✓".into());
        job.error_category = Some("source_error".into());
        job.error_details = Some(serde_json::json!({"retries": [1, 2.5, null], "why": "a\"b"}));
        states.push(job.clone());
        job.status = syncjobs_domain::JobStatus::Cancelled;
        job.completed_at = Some(Utc.timestamp_opt(253_402_300_800, 1).unwrap()); // year 10000
        states.push(job);
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

    #[test]
    fn timestamps_read_as_chrono_writes_them_at_any_instant() {
        let chrono_text = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut instants: Vec<DateTime<Utc>> = [
            (0, 0),
            (951_782_400, 999_999_999), // 2000-02-29, the last nanosecond of a second
            (-62_167_219_200, 1_000),   // year 0
            (-62_167_219_201, 0),       // year -1
            (253_402_300_799, 5_000),   // 9999-12-31T23:59:59
            (253_402_300_800, 0),       // year 10000
        ]
        .into_iter()
        .map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
        .collect();
        // A leap second, as chrono holds it.
        instants.push(
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        );
        // And a spread of ordinary ones.
        let mut s: i64 = 1;
        for _ in 0..2_000 {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                & i64::MAX;
            let secs = s % 4_102_444_800; // up to 2100
            instants.push(Utc.timestamp_opt(secs, (s % 1_000_000_000) as u32).unwrap());
        }
        for t in &instants {
            assert_eq!(format_ts(t), chrono_text(t), "{t:?}");
        }
    }
}
