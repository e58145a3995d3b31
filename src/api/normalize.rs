//! Trailing and repeated slashes: `/collections/` and `//collections` route as `/collections`.
//!
//! What actix's `NormalizePath::trim()` does, but it allocated a copy of every path and ran a
//! regex over it (1.5% of the CPU of `GET` one job, BENCHMARKS.md #2); here a path with
//! neither costs one scan, and only the rare one that has them is rebuilt.

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::uri::PathAndQuery;
use actix_web::http::Uri;
use actix_web::web::Bytes;
use actix_web::Error;
use std::future::{ready, Ready};

/// The middleware; wrap the `App` with it.
pub struct TrimPath;

impl<S, B> Transform<S, ServiceRequest> for TrimPath
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = TrimPathService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(TrimPathService { service }))
    }
}

pub struct TrimPathService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for TrimPathService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = S::Future;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        if let Some(uri) = normalized(req.path()).and_then(|p| with_path(req.uri(), p)) {
            // Routing has not started: the matcher's path is simply replaced.
            req.match_info_mut().get_mut().update(&uri);
            req.head_mut().uri = uri;
        }
        self.service.call(req)
    }
}

/// The path without trailing slashes and with runs of slashes merged (`/` if nothing is
/// left), when that differs from `path`. An empty path (no valid one) is left alone.
fn normalized(path: &str) -> Option<String> {
    let trailing = path.len() > 1 && path.ends_with('/');
    if path.is_empty() || (!trailing && !path.contains("//")) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.trim_end_matches('/').chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    (out != path).then_some(out)
}

/// `uri` with its path replaced, its query kept.
fn with_path(uri: &Uri, path: String) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::NormalizePath;
    use actix_web::{test, web, App, HttpRequest, HttpResponse};

    async fn echo(req: HttpRequest) -> HttpResponse {
        HttpResponse::Ok().body(format!(
            "{} {} {:?}",
            req.path(),
            req.query_string(),
            req.match_info().get("id")
        ))
    }

    /// Every path is routed and seen by the handler as actix's `NormalizePath::trim()`
    /// would have it.
    #[actix_web::test]
    async fn paths_route_as_with_actix_normalize_path_trim() {
        let ours = test::init_service(
            App::new()
                .wrap(TrimPath)
                .route("/things/{id}", web::get().to(echo))
                .default_service(web::to(echo)),
        )
        .await;
        let actix = test::init_service(
            App::new()
                .wrap(NormalizePath::trim())
                .route("/things/{id}", web::get().to(echo))
                .default_service(web::to(echo)),
        )
        .await;
        for uri in [
            "/",
            "//",
            "///",
            "/things/7",
            "/things/7/",
            "/things/7//",
            "//things//7",
            "/things//7/?a=1&b=/x//",
            "/things/7?q=//",
            "/things/%2F7/",
            "/th%20ings//",
            "/a/b/c",
            "/a//b///c////",
            "/%C3%A9//%C3%BC/",
            "*",
        ] {
            let get = |uri: &str| test::TestRequest::get().uri(uri).to_request();
            let a = test::call_and_read_body(&ours, get(uri)).await;
            let b = test::call_and_read_body(&actix, get(uri)).await;
            assert_eq!(a, b, "{uri}");
        }
    }
}
