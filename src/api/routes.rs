//! The endpoint table and its registration as a tree of scopes; JSON 404s and 405s.

use super::error::ApiError;
use super::{
    collections, health, history, jobs, openapi, source_connections, subscribe, ui, webhooks,
};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse, ResponseError, Route};

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
        e(Method::GET, "/metrics", || {
            web::get().to(crate::metrics::scrape)
        }),
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
        e(Method::PATCH, "/collections/{readable_id}", || {
            web::patch().to(collections::update)
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
        e(Method::GET, "/webhooks/messages", || {
            web::get().to(webhooks::messages)
        }),
        e(Method::GET, "/webhooks/messages/{message_id}", || {
            web::get().to(webhooks::message)
        }),
        e(Method::GET, "/webhooks/subscriptions", || {
            web::get().to(webhooks::list)
        }),
        e(Method::POST, "/webhooks/subscriptions", || {
            web::post().to(webhooks::create)
        }),
        e(
            Method::GET,
            "/webhooks/subscriptions/{subscription_id}",
            || web::get().to(webhooks::get),
        ),
        e(
            Method::PATCH,
            "/webhooks/subscriptions/{subscription_id}",
            || web::patch().to(webhooks::patch),
        ),
        e(
            Method::DELETE,
            "/webhooks/subscriptions/{subscription_id}",
            || web::delete().to(webhooks::delete),
        ),
        e(
            Method::POST,
            "/webhooks/subscriptions/{subscription_id}/recover",
            || web::post().to(webhooks::recover),
        ),
    ]
}

/// Registers every endpoint, with JSON 405s for other methods on a known path, and the
/// dashboard.
///
/// The paths are registered as a tree of `web::scope`s (one per shared leading segment)
/// rather than as a flat list: actix tries a list's resources in order, running a regex for
/// each one with a path parameter, so a flat list made `GET` one job run five regexes before
/// it found its own; the tree runs one per parameter (BENCHMARKS.md #2). A scope passes
/// unknown paths to the app's default service, so 404s and 405s answer as before.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The dashboard's static files: not API endpoints (no key, not in the OpenAPI document).
    ui::configure(cfg);
    register(cfg, &endpoints());
}

/// What a worker node (`--role worker`) serves: its health and its metrics. Everything that
/// reads or changes collections, connections and jobs is an API node's.
pub const WORKER_PATHS: [&str; 2] = ["/health", "/metrics"];

/// Registers a worker node's routes ([`WORKER_PATHS`]); every other path answers 404.
pub fn configure_worker(cfg: &mut web::ServiceConfig) {
    let served: Vec<Endpoint> = endpoints()
        .into_iter()
        .filter(|e| WORKER_PATHS.contains(&e.path))
        .collect();
    register(cfg, &served);
}

fn register(cfg: &mut web::ServiceConfig, all: &[Endpoint]) {
    let mut root = RouteNode::default();
    for e in all {
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
        if let Some(e) = endpoints.first() {
            // The label of its requests on /metrics (the full pattern, not the scope's tail).
            resource = resource.app_data(crate::metrics::RoutePattern::of(e.path));
        }
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
    Err(ApiError::no_route())
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
