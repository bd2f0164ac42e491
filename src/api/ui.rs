//! The dashboard (`docs/ui.md`): one page, its script, style sheet and icon, compiled into the
//! binary and served at `/ui`, outside the API's base path.
//!
//! The assets carry no data: everything the page shows it fetches from the API with the
//! caller's own credentials, under the API's access rules. That is why the guard lets exactly
//! these paths through without a token or an allowed uid ([`PATHS`], `docs/security.md`) — a
//! browser's navigation cannot send a bearer header. Every answer forbids inline script, framing
//! and content sniffing.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Every path this module serves, exactly; the guard exempts these and nothing else.
pub const PATHS: [&str; 5] = ["/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"];

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const ICON: &str = include_str!("ui/icon.svg");

/// Where the page finds the API: the one thing the page is told by the server.
const API_BASE_SLOT: &str = "{{API_BASE}}";

/// Scripts and styles from this origin only (no inline script, no `eval`), requests to this
/// origin only, no plugins, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, for an API served under `api_base` (e.g. `/api`, or `""`).
pub fn router(api_base: &str) -> Router {
    let index = INDEX.replace(API_BASE_SLOT, &html_attribute(api_base));
    let page = move || {
        let index = index.clone();
        async move { asset("text/html; charset=utf-8", index) }
    };
    Router::new()
        .route(PATHS[0], get(page.clone()))
        .route(PATHS[1], get(page))
        .route(
            PATHS[2],
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            PATHS[3],
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(PATHS[4], get(|| async { asset("image/svg+xml", ICON) }))
}

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let headers: [(HeaderName, HeaderValue); 8] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        // Small and embedded: always ask, so a new binary's page is picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body.into()).into_response()
}

/// Escapes text for a double-quoted HTML attribute.
fn html_attribute(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_asset_is_served_with_the_strict_headers() {
        let app = router("/api");
        for (path, kind) in [
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let (status, h, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(!body.is_empty(), "{path}");
            let hv = |name: HeaderName| h.get(name).unwrap().to_str().unwrap().to_string();
            assert!(hv(header::CONTENT_TYPE).starts_with(kind), "{path}");
            assert_eq!(hv(header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY);
            assert_eq!(hv(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(hv(header::X_FRAME_OPTIONS), "DENY");
        }
        assert!(PATHS.len() == 5, "the test covers every path");
        let (status, ..) = get(&app, "/ui/other.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_page_names_the_api_base_and_loads_nothing_inline() {
        let (_, _, page) = get(&router("/x\"y"), "/ui").await;
        assert!(page.contains("content=\"/x&quot;y\""), "{page}");
        assert!(!page.contains(API_BASE_SLOT));
        // The CSP refuses inline script and style: the page must not rely on either.
        assert!(!page.contains("<script>") && !page.contains(" style=\""));
        assert!(!page.contains("onclick") && !page.contains("<style"));
        let (_, _, page) = get(&router(""), "/ui").await;
        assert!(page.contains("name=\"provisr-api\" content=\"\""), "{page}");
    }

    #[test]
    fn the_policy_forbids_inline_script_and_framing() {
        let directives: Vec<&str> = CONTENT_SECURITY_POLICY.split("; ").collect();
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "connect-src 'self'",
        ] {
            assert!(directives.contains(&d), "{d}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
