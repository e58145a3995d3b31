//! syncjobs: the server and CLI, wiring the event-sourced core to the outside world.
//!
//! - [`backend`]: which EventStore the process runs on (`SYNCJOBS_STORE`); each backend is a
//!   crate of its own (`stores/sqlite`, the embedded default).
//! - [`bus`]: the NATS relay that publishes the global log.
//! - [`app`]: the use cases (create, delete, run, cancel, keys), called by the API and the CLI.
//! - [`api`]: actix-web routes speaking Airweave's public API: parse, call a use case, answer;
//!   and the dashboard at `/ui`, whose files (`src/ui/`) are embedded in the binary.
//! - [`replay`]: history, time travel and verification of the log.
//! - [`config`], [`startup`], [`telemetry`]: settings, wiring and logs.
//! - [`metrics`]: `/metrics` in the Prometheus text format, and the few points that feed it.
//! - [`datadir`]: one server per data directory (an OS lock), files for the owner only.
//! - [`webhooks`]: signed delivery of the log's events to an organization's subscriptions.

pub mod api;
pub mod app;
pub mod backend;
pub mod bus;
pub mod config;
pub mod datadir;
pub mod duty;
pub mod metrics;
pub mod replay;
pub mod startup;
pub mod telemetry;
pub mod webhooks;
