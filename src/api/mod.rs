//! The REST API: Airweave's public routes for collections, source connections and sync jobs
//! (see /work/shared/API.md, the wire contract), served from the read model. A handler
//! parses its input, calls one use case of [`crate::app`], and maps the result.
//!
//! - [`routes`]: the endpoint table and its registration; [`state`]: what handlers share.
//! - [`auth`]: `x-api-key` -> the [`crate::app::Caller`]; [`keys`]: the key flows and the
//!   key hash under the names the tests use (`app::keys`, `syncjobs_domain::access`).
//! - [`collections`], [`source_connections`], [`jobs`]: the handlers; [`health`], [`openapi`]
//!   (`/metrics` is [`crate::metrics`]).
//! - [`history`]: a job's own events (JSON or server-sent events) and its state at any
//!   version; [`subscribe`]: Airweave's progress stream; [`sse`]: following a job's stream
//!   in the log, shared by both streams; [`live`]: the one follower of the log that fans
//!   each job's events out to its open streams.
//! - [`webhooks`]: Airweave's `/webhooks/subscriptions` routes.
//! - [`ui`]: the dashboard at `/ui`, static files from `src/ui/` embedded in the binary.
//! - [`input`]: bounded, typed reading of bodies, paths and queries; [`error`]: the one
//!   mapping of failures to HTTP statuses and texts; [`wire`]: response bodies and
//!   [`respond`]: their 200s.
//!
//! Commands answer only once the read model shows their own appends (the use cases wait,
//! bounded), so a 200 is visible to the next GET of any client.

pub mod auth;
pub mod collections;
pub mod error;
pub mod health;
pub mod history;
pub mod input;
pub mod jobs;
pub mod keys;
pub mod live;
pub mod openapi;
pub mod respond;
pub mod routes;
pub mod source_connections;
pub mod sse;
pub mod state;
pub mod subscribe;
pub mod ui;
pub mod webhooks;
pub mod wire;

pub use error::ApiError;
pub use health::HealthProbe;
pub use respond::ok_json;
pub use routes::{configure, configure_worker, endpoints, not_found, Endpoint, WORKER_PATHS};
pub use state::{ApiSettings, AppState};
