//! The REST API: Airweave's public routes for collections, source connections and sync jobs
//! (see /work/shared/API.md, the wire contract), served from the read model.
//!
//! - [`auth`]: `x-api-key` -> organization; [`keys`]: the flows that make and revoke keys
//!   (the access aggregate itself is `syncjobs_domain::access`).
//! - [`commands`]: runs a command through the one command path as the request's principal;
//!   readable ids from names.
//! - [`collections`], [`source_connections`], [`jobs`]: the handlers; [`health`], [`openapi`].
//! - [`history`]: a job's own events (JSON or server-sent events) and its state at any
//!   version; [`subscribe`]: Airweave's progress stream; [`sse`]: following a job's stream
//!   in the log, shared by both streams.
//! - [`input`]: bounded, typed reading of bodies, paths and queries; [`error`]: the one
//!   mapping of failures to HTTP; [`wire`]: response bodies.
//!
//! Commands append, then wait (bounded) until the projection has folded their own append
//! before answering, so a 200 is visible to the next GET of any client.

pub mod auth;
pub mod collections;
pub mod commands;
pub mod entities;
pub mod error;
pub mod health;
pub mod history;
pub mod input;
pub mod jobs;
pub mod keys;
pub mod openapi;
pub mod source_connections;
pub mod sources;
pub mod sse;
pub mod subscribe;
pub mod wire;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse, ResponseError, Route};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::pipeline::EntitySink;
use syncjobs_actors::Jobs;
use syncjobs_domain::{EventStore, SharedClock};
use syncjobs_projections::Projection;

pub use auth::ApiContext;
pub use error::ApiError;
pub use health::HealthProbe;

/// Limits and waits of the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a handler waits for a request body to arrive in full (then 408).
    pub body_timeout: Duration,
    /// How long a command waits for the read model to show its own append.
    pub read_your_writes_timeout: Duration,
    /// How long a delete waits for the syncs it cancelled to reach a final state.
    pub delete_wait: Duration,
    /// Time without a message after which a server-sent event stream sends a heartbeat.
    pub sse_heartbeat: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(5),
            read_your_writes_timeout: Duration::from_secs(5),
            delete_wait: Duration::from_secs(15),
            sse_heartbeat: sse::HEARTBEAT_EVERY,
        }
    }
}

/// Everything a handler needs; shared by all workers.
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub projection: Projection,
    pub clock: SharedClock,
    /// Where syncs write entities: counts for GET, purge for DELETE.
    pub destination: Arc<dyn EntitySink>,
    /// The write side of jobs (the supervisor actor).
    pub jobs: Jobs,
    pub settings: ApiSettings,
    /// Extra lines for `/health` (the NATS relay registers one here).
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// Server-sent event streams being served now (on `/health`: a leak shows there).
    pub streams: sse::OpenStreams,
}

impl AppState {
    /// Waits until the read model has folded the event at `position`. A command's events
    /// are durable already, so on a timeout it still answers; the lag is logged.
    pub async fn settle(&self, position: u64) {
        if position == 0 {
            return;
        }
        if let Err(lag) = self
            .projection
            .wait_for(position, self.settings.read_your_writes_timeout)
            .await
        {
            tracing::warn!(%lag, "read model lagging behind a command's append");
        }
    }
}

/// A JSON 200 response.
pub fn ok_json(body: &impl Serialize) -> Result<HttpResponse, ApiError> {
    // One job is ~400 bytes: start there rather than grow from serde_json's 128.
    let mut bytes = Vec::with_capacity(512);
    serde_json::to_writer(&mut bytes, body).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(bytes))
}

/// One served route. [`configure`] registers exactly these, and the OpenAPI test checks
/// the document against them.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub route: fn() -> Route,
}

pub fn endpoints() -> Vec<Endpoint> {
    let e = |method: Method, path: &'static str, route: fn() -> Route| Endpoint {
        method,
        path,
        route,
    };
    vec![
        e(Method::GET, "/health", || web::get().to(health::health)),
        e(Method::GET, "/openapi.json", || {
            web::get().to(openapi::document)
        }),
        e(Method::POST, "/collections", || {
            web::post().to(collections::create)
        }),
        e(Method::GET, "/collections", || {
            web::get().to(collections::list)
        }),
        e(Method::GET, "/collections/{readable_id}", || {
            web::get().to(collections::get)
        }),
        e(Method::DELETE, "/collections/{readable_id}", || {
            web::delete().to(collections::delete)
        }),
        e(Method::POST, "/source-connections", || {
            web::post().to(source_connections::create)
        }),
        e(Method::GET, "/source-connections", || {
            web::get().to(source_connections::list)
        }),
        e(
            Method::GET,
            "/source-connections/{source_connection_id}",
            || web::get().to(source_connections::get),
        ),
        e(
            Method::DELETE,
            "/source-connections/{source_connection_id}",
            || web::delete().to(source_connections::delete),
        ),
        e(
            Method::POST,
            "/source-connections/{source_connection_id}/run",
            || web::post().to(jobs::run),
        ),
        e(
            Method::GET,
            "/source-connections/{source_connection_id}/jobs",
            || web::get().to(jobs::list),
        ),
        e(
            Method::GET,
            "/source-connections/{source_connection_id}/jobs/{job_id}",
            || web::get().to(jobs::get),
        ),
        e(
            Method::POST,
            "/source-connections/{source_connection_id}/jobs/{job_id}/cancel",
            || web::post().to(jobs::cancel),
        ),
        e(
            Method::GET,
            "/source-connections/{source_connection_id}/jobs/{job_id}/events",
            || web::get().to(history::events),
        ),
        e(
            Method::GET,
            "/source-connections/{source_connection_id}/jobs/{job_id}/state",
            || web::get().to(history::state),
        ),
        e(Method::GET, "/sync/job/{job_id}/subscribe", || {
            web::get().to(subscribe::subscribe)
        }),
    ]
}

/// Registers every endpoint, with JSON 405s for other methods on a known path.
///
/// The paths are registered as a tree of `web::scope`s (one per shared leading segment)
/// rather than as a flat list: actix tries a list's resources in order, running a regex for
/// each one with a path parameter, so a flat list made `GET` one job run five regexes before
/// it found its own; the tree runs one per parameter (BENCHMARKS.md #2). A scope passes
/// unknown paths to the app's default service, so 404s and 405s answer as before.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let all = endpoints();
    let mut root = RouteNode::default();
    for e in &all {
        root.insert(e);
    }
    for child in root.children_in_match_order() {
        child.register(cfg, String::new());
    }
}

/// One path segment (`/jobs`, `/{job_id}`) of the route tree: the endpoints whose path ends
/// here and the longer paths that go on from here.
///
/// Within a scope actix tries each entry in turn (every try costs, a regex more so), so
/// entries go in a fixed order: bigger subtrees first (more of the traffic is likely to go
/// there), except that fixed segments come before parameters (a fixed one wins where both
/// could match, as everywhere); the scope's own path (`""`), which no child can match, goes
/// where its number of endpoints puts it, ahead of a child of the same size. Ties keep
/// `endpoints()`'s order.
#[derive(Default)]
struct RouteNode<'a> {
    segment: &'a str,
    endpoints: Vec<&'a Endpoint>,
    children: Vec<RouteNode<'a>>,
}

impl<'a> RouteNode<'a> {
    fn insert(&mut self, endpoint: &'a Endpoint) {
        let mut node = self;
        for segment in endpoint.path.split('/').skip(1) {
            let at = match node.children.iter().position(|c| c.segment == segment) {
                Some(at) => at,
                None => {
                    node.children.push(RouteNode {
                        segment,
                        ..Default::default()
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at];
        }
        node.endpoints.push(endpoint);
    }

    /// Endpoints here and below.
    fn size(&self) -> usize {
        self.endpoints.len() + self.children.iter().map(RouteNode::size).sum::<usize>()
    }

    fn children_in_match_order(&self) -> Vec<&RouteNode<'a>> {
        let mut children: Vec<&RouteNode<'a>> = self.children.iter().collect();
        children.sort_by_key(|c| (c.segment.starts_with('{'), std::cmp::Reverse(c.size())));
        children
    }

    /// Registers this node under `prefix` (the segments above it that have no routes and no
    /// other branch, folded into one pattern): a resource if the path ends here, a scope
    /// holding its own resource (`""`) and its children if it goes on.
    fn register(&self, cfg: &mut web::ServiceConfig, mut prefix: String) {
        prefix.push('/');
        prefix.push_str(self.segment);
        if self.children.is_empty() {
            cfg.service(Self::resource(&prefix, &self.endpoints));
        } else if self.endpoints.is_empty() && self.children.len() == 1 {
            self.children[0].register(cfg, prefix);
        } else {
            let children = self.children_in_match_order();
            // The scope's own path collides with no child: it goes where its size puts it.
            let own_at = children
                .iter()
                .position(|c| c.size() <= self.endpoints.len())
                .unwrap_or(children.len());
            let scope = web::scope(&prefix).configure(|cfg| {
                for (at, child) in children.iter().enumerate() {
                    if at == own_at && !self.endpoints.is_empty() {
                        cfg.service(Self::resource("", &self.endpoints));
                    }
                    child.register(cfg, String::new());
                }
                if own_at == children.len() && !self.endpoints.is_empty() {
                    cfg.service(Self::resource("", &self.endpoints));
                }
            });
            cfg.service(scope);
        }
    }

    fn resource(path: &str, endpoints: &[&Endpoint]) -> actix_web::Resource {
        let mut resource = web::resource(path);
        for e in endpoints {
            resource = resource.route((e.route)());
        }
        let allow = endpoints
            .iter()
            .map(|e| e.method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let allow = HeaderValue::from_str(&allow).ok();
        resource.default_service(web::to(move || {
            std::future::ready(method_not_allowed(allow.clone()))
        }))
    }
}

/// Unknown paths: FastAPI's JSON 404.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not Found".into()))
}

/// A known path with another method: 405 with the JSON `detail` and the `Allow` header
/// RFC 9110 requires (clients and fuzzers read it to learn what the path takes).
fn method_not_allowed(allow: Option<HeaderValue>) -> HttpResponse {
    let mut res = ApiError::MethodNotAllowed.error_response();
    if let Some(allow) = allow {
        res.headers_mut().insert(header::ALLOW, allow);
    }
    res
}
