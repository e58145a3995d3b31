//! The API test suite: the whole application on a random port (zero2prod's spawn_app),
//! driven over HTTP like any client would.

mod auth;
mod cancel;
mod collections;
mod deletes;
mod faults;
mod health;
mod helpers;
mod history;
mod input;
mod jobs;
mod lifecycle;
mod metrics;
mod openapi;
mod process;
mod protocol;
mod refusals;
mod restart;
mod shutdown;
mod source_connections;
mod sse_client;
mod subscribe;
mod ui;
mod webhook_delivery;
mod webhook_payloads;
mod webhooks;
