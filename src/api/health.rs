//! `GET /health`: Airweave's `{"status": "healthy"}`, plus what an operator wants to see:
//! the store, how far the read model lags behind it, how many server-sent event streams are
//! open, and any registered probe (the NATS relay registers one). Needs no key, like Airweave's.

use super::{ok_json, ApiError, AppState};
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

/// A component that reports its own state on `/health`.
pub trait HealthProbe: Send + Sync + 'static {
    /// The key under which its status appears.
    fn name(&self) -> &'static str;
    /// A small JSON object; must not block.
    fn status(&self) -> Value;
}

pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let head = *state.store.watch_head().borrow();
    let stats = state.projection.read(|m| m.stats());
    let mut body = Map::new();
    body.insert("status".into(), json!("healthy"));
    body.insert(
        "store".into(),
        json!({ "backend": state.store.backend(), "head": head }),
    );
    body.insert(
        "projection".into(),
        json!({
            "position": stats.position,
            "lag": head.saturating_sub(stats.position),
            "collections": stats.collections,
            "source_connections": stats.source_connections,
            "active_jobs": stats.active_jobs,
        }),
    );
    let jobs = match state.jobs.stats().await {
        Ok(s) => {
            json!({ "status": "running", "live_jobs": s.live_jobs, "armed_watchdogs": s.armed_watchdogs })
        }
        Err(_) => json!({ "status": "stopped" }),
    };
    body.insert("supervisor".into(), jobs);
    body.insert("streams".into(), json!({ "open": state.streams.open() }));
    for probe in &state.probes {
        body.insert(probe.name().into(), probe.status());
    }
    ok_json(&body)
}
