//! `GET /health`: Airweave's `{"status": "healthy"}`, with `degraded` and `down` beside it.
//!
//! Without a key (or with a key that is not valid: a load balancer's probe is never refused)
//! the answer is that one field, so an anonymous caller learns nothing about the tenants or
//! the infrastructure. With a valid `x-api-key` it adds what an operator wants to see: why
//! the status is what it is, the store, how far the read model lags behind it, the
//! supervisor (with the jobs this node runs, its capacity, and the pending jobs it sees),
//! how many server-sent event streams are open, every registered probe (the NATS relay
//! registers one; `node` says this node's id, role and capacity), and the counts of the key's own organization.
//!
//! `down` (503): the store is closed or the supervisor stopped; nothing works. `degraded`
//! (200): the store cannot write or has lost its database, the read model lags more than [`MAX_HEALTHY_LAG`] events,
//! or a probe says it is unhealthy; reads still work.

use super::AppState;
use crate::app::Caller;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::{json, Map, Value};
use syncjobs_projections::OrganizationCounts;

/// Events a follower of the log (the read model, the relay) may be behind its head before
/// the service says `degraded`: far more than a burst of appends leaves in flight, so only
/// a follower that is stuck or falling behind for good trips it.
pub const MAX_HEALTHY_LAG: u64 = 10_000;

/// A component that reports its own state on `/health`.
pub trait HealthProbe: Send + Sync + 'static {
    /// The key under which its status appears.
    fn name(&self) -> &'static str;
    /// A small JSON object; must not block.
    fn status(&self) -> Value;
    /// False while the component fails or lags: the service is then `degraded`. Must not
    /// block.
    fn healthy(&self) -> bool {
        true
    }
}

/// The one field every caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

pub async fn health(state: web::Data<AppState>, key: Option<Caller>) -> HttpResponse {
    let head_rx = state.store.watch_head();
    let head = *head_rx.borrow();
    // The store drops its head's sender once it is closed and its writer has stopped.
    let store_closed = head_rx.has_changed().is_err();
    let write_failure = state.store.write_failure();
    let connection_failure = state.store.connection_failure();
    let organization = key.as_ref().map(|k| k.organization_id);
    let position = state.projection.position();
    // Kept by the read model's fold (one row), never counted per call.
    let mut read_failure = None;
    let counts = match organization {
        Some(org) => Some(
            state
                .projection
                .read(async |m| m.organization_counts(org).await)
                .await
                .unwrap_or_else(|e| {
                    read_failure = Some(e.to_string());
                    OrganizationCounts::default()
                }),
        ),
        None => None,
    };
    let lag = head.saturating_sub(position);
    let supervisor = state.jobs.stats().await.ok();

    let mut down = Vec::new();
    if store_closed {
        down.push("the event store is closed".to_string());
    }
    if supervisor.is_none() {
        down.push("the job supervisor is not running".to_string());
    }
    let mut degraded = Vec::new();
    if let Some(cause) = &connection_failure {
        degraded.push(format!("the event store is unreachable: {cause}"));
    }
    if let Some(cause) = &write_failure {
        degraded.push(format!("the event store cannot write: {cause}"));
    }
    if let Some(cause) = &read_failure {
        degraded.push(format!("the read model cannot be read: {cause}"));
    }
    if lag > MAX_HEALTHY_LAG {
        degraded.push(format!("the read model is {lag} events behind the log"));
    }
    for probe in &state.probes {
        if !probe.healthy() {
            degraded.push(format!("{} is unhealthy", probe.name()));
        }
    }
    let status = if !down.is_empty() {
        Health::Down
    } else if !degraded.is_empty() {
        Health::Degraded
    } else {
        Health::Healthy
    };
    if status != Health::Healthy {
        tracing::debug!(?status, ?down, ?degraded, "health");
    }

    let mut body = Map::new();
    body.insert("status".into(), json!(status));
    if let Some(counts) = counts {
        down.extend(degraded);
        body.insert("reasons".into(), json!(down));
        body.insert(
            "store".into(),
            json!({
                "backend": state.store.backend(),
                "head": head,
                "writable": write_failure.is_none() && !store_closed,
                "write_failure": write_failure,
                "connected": connection_failure.is_none() && !store_closed,
                "connection_failure": connection_failure,
            }),
        );
        body.insert(
            "projection".into(),
            json!({
                "position": position,
                "lag": lag,
                "collections": counts.collections,
                "source_connections": counts.source_connections,
                "active_jobs": counts.active_jobs,
            }),
        );
        let jobs = match supervisor {
            Some(s) => {
                json!({
                    "status": "running",
                    "live_jobs": s.live_jobs,
                    "armed_watchdogs": s.armed_watchdogs,
                    "running": s.running,
                    "capacity": s.capacity,
                    "pending": s.pending,
                })
            }
            None => json!({ "status": "stopped" }),
        };
        body.insert("supervisor".into(), jobs);
        body.insert(
            "streams".into(),
            json!({
                "open": state.streams.open(),
                "subscriptions": state.live.subscriptions(),
                "overflows": state.live.overflows(),
            }),
        );
        for probe in &state.probes {
            let mut line = probe.status();
            if let Value::Object(fields) = &mut line {
                fields.insert("healthy".into(), json!(probe.healthy()));
            }
            body.insert(probe.name().into(), line);
        }
    }
    let code = match status {
        Health::Down => StatusCode::SERVICE_UNAVAILABLE,
        Health::Healthy | Health::Degraded => StatusCode::OK,
    };
    HttpResponse::build(code).json(body)
}
