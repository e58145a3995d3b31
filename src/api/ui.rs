//! The dashboard at `/ui`: plain HTML, CSS and ES modules from `src/ui/`, embedded in the
//! binary so that `cargo build` is the whole build and nothing is fetched at run time.
//!
//! The page itself needs no key (it asks the user for one, keeps it in `sessionStorage` and
//! sends it as `x-api-key` to the data routes, which keep their auth). The assets are not
//! part of the API: they are absent from `endpoints()` and from `/openapi.json`.
//!
//! Caching: `no-cache` with an `ETag` (a hash of the bytes), so a browser revalidates each
//! load (a 304 costs no body) and never runs the modules of an older binary. The
//! `Content-Security-Policy` lets the page talk to its own origin only: a stray link to a CDN
//! or a remote font fails in the browser rather than leaking out.

use super::error::ApiError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const fn asset(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        name,
        content_type,
        body,
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of the dashboard; `/ui` is `index.html`, `/ui/<name>` the others.
const ASSETS: &[Asset] = &[
    asset("index.html", HTML, include_bytes!("../ui/index.html")),
    asset("style.css", CSS, include_bytes!("../ui/style.css")),
    asset("favicon.svg", SVG, include_bytes!("../ui/favicon.svg")),
    asset("app.js", JS, include_bytes!("../ui/app.js")),
    asset("api.js", JS, include_bytes!("../ui/api.js")),
    asset("dom.js", JS, include_bytes!("../ui/dom.js")),
    asset("overview.js", JS, include_bytes!("../ui/overview.js")),
    asset("jobs.js", JS, include_bytes!("../ui/jobs.js")),
    asset("job.js", JS, include_bytes!("../ui/job.js")),
    asset("chart.js", JS, include_bytes!("../ui/chart.js")),
];

/// One ETag per asset, in [`ASSETS`]' order (computed once: the bytes never change).
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/ui")
            .route(web::get().to(index))
            .route(web::head().to(index))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/ui/{file}")
            .route(web::get().to(file))
            .route(web::head().to(file))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Other methods: the API's JSON 405, with the `Allow` header.
async fn method_not_allowed() -> HttpResponse {
    let mut res = ApiError::MethodNotAllowed.error_response();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    res
}

async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&req, "index.html")
}

async fn file(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&req, &path)
}

fn serve(req: &HttpRequest, name: &str) -> Result<HttpResponse, ApiError> {
    let at = ASSETS
        .iter()
        .position(|a| a.name == name)
        .ok_or_else(ApiError::no_route)?;
    let asset = &ASSETS[at];
    let etag = ETAGS[at].clone();
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP));
    if fresh {
        return Ok(res.finish());
    }
    Ok(res
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .body(asset.body))
}
