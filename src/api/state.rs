//! What every handler shares: the use cases' [`App`] and the HTTP side's own settings,
//! health probes, open streams and the follower that feeds them.

use super::health::HealthProbe;
use super::live::LiveJobs;
use super::sse;
use crate::app::App;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// Limits and timings of the HTTP side (the use cases' waits are [`crate::app::Settings`]).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a handler waits for a request body to arrive in full (then 408).
    pub body_timeout: Duration,
    /// Time without a message after which a server-sent event stream sends a heartbeat.
    pub sse_heartbeat: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(5),
            sse_heartbeat: sse::HEARTBEAT_EVERY,
        }
    }
}

/// Everything a handler needs; shared by all workers. Derefs to the [`App`] the use cases
/// run in, so a handler reads `state.projection` as a use case does.
pub struct AppState {
    pub app: App,
    pub http: ApiSettings,
    /// Extra lines for `/health` (the NATS relay registers one here).
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// Server-sent event streams being served now (on `/health`: a leak shows there).
    pub streams: sse::OpenStreams,
    /// The one follower of the log that feeds every live stream.
    pub live: LiveJobs,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}
