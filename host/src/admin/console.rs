//! The web console at `/` of the admin listener: one HTML page, a stylesheet and a
//! script, embedded in the binary (no CDN, no build step). The page itself holds no
//! data and is served without the token; it asks the operator for the admin token, keeps
//! it in the tab's `sessionStorage` and sends it as a bearer token on every `/api` call
//! (`docs/console.md`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// A strict policy: the page runs its own script and style only and talks to its origin.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `/`, `/console.js` and `/console.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Every asset carries the strict policy: no inline script, no other origin.
    #[tokio::test]
    async fn every_asset_is_served_under_the_strict_policy() {
        for path in ["/", "/console.js", "/console.css"] {
            let request = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
            let response = router::<()>().oneshot(request).await.unwrap();
            assert_eq!(response.status(), axum::http::StatusCode::OK, "{path}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], POLICY, "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
        assert!(POLICY.contains("default-src 'none'") && POLICY.contains("script-src 'self'"));
        assert!(
            !POLICY.contains("unsafe-inline") && !PAGE.contains("<script>"),
            "no inline script"
        );
    }
}
