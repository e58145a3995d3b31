//! The dashboard's files at `/ui`: served without a key, each with its content type, every
//! file the page loads (followed from index.html through each module's imports) present in
//! the binary, revalidated by ETag, and the data routes still behind the key. The page itself
//! is tested in a real browser by `tests/ui/run`.

use crate::helpers::spawn_app;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use std::collections::BTreeSet;

/// The `/ui/...` paths a text names in `src="..."`, `href="..."` or `from './x.js'`.
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close) in [
        ("src=\"", '"'),
        ("href=\"", '"'),
        ("from '", '\''),
        ("import '", '\''),
    ] {
        for piece in text.split(open).skip(1) {
            let Some(target) = piece.split(close).next() else {
                continue;
            };
            if let Some(name) = target.strip_prefix("./") {
                out.push(format!("/ui/{name}"));
            } else if target.starts_with("/ui/") {
                out.push(target.to_string());
            }
        }
    }
    out
}

#[actix_web::test]
async fn the_dashboard_loads_without_a_key_with_every_file_it_needs_and_its_content_type() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec!["/ui".to_string(), "/ui/".to_string()];
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let res = client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path} without a key");
        let kind = res.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => "text/html; charset=utf-8",
        };
        assert_eq!(kind, expected, "{path}");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-cache", "{path}");
        let csp = res.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        let body = res.text().await.unwrap();
        // Nothing remote (SVG's namespace is a name, never fetched).
        let outside = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !outside.contains("http://") && !outside.contains("https://"),
            "{path} names a remote address"
        );
        queue.extend(referenced(&body));
    }
    // index.html (twice: with and without the slash), its style sheet and icon, and modules.
    for needed in [
        "/ui/app.js",
        "/ui/api.js",
        "/ui/job.js",
        "/ui/jobs.js",
        "/ui/style.css",
    ] {
        assert!(
            seen.contains(needed),
            "{needed} not reached from /ui: {seen:?}"
        );
    }
}

#[actix_web::test]
async fn a_browser_revalidates_with_the_etag_and_gets_304_without_a_body() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let res = client.get(app.url("/ui/app.js")).send().await.unwrap();
    let etag = res.headers()[ETAG].clone();
    let res = client
        .get(app.url("/ui/app.js"))
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()[ETAG], etag);
    assert_eq!(res.bytes().await.unwrap().len(), 0);
    // Another file's tag does not match.
    let res = client
        .get(app.url("/ui/jobs.js"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn unknown_files_and_other_methods_answer_json_and_data_routes_keep_their_key() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let res = client.get(app.url("/ui/secrets.js")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), r#"{"detail":"Not Found"}"#);
    let res = client.post(app.url("/ui")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"detail":"Method Not Allowed"}"#
    );
    // Loading the page unlocks nothing: the API still wants the key.
    let res = client.get(app.url("/collections")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}
