//! Observability: Prometheus metrics ([`metrics`]), sampled gauges ([`sampler`]) and
//! OpenTelemetry traces over OTLP ([`tracing`]). Every metric family and span is
//! described in `docs/observability.md`.
//!
//! Code elsewhere calls in here with one line per place it instruments, so the hot
//! paths stay readable: `observe::metrics().event(&route, "retried")`.

pub mod metrics;
pub mod otlp;
pub mod sampler;
pub mod tracing;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::watch;

pub use metrics::{metrics, router};
pub use sampler::spawn_samplers;
pub use tracing::{TracingGuard, init_tracing};

/// Whether metrics are recorded and spans made; on unless a benchmark turns it off to
/// measure what they cost (`just bench-observe`).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording metrics and making spans on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// See [`set_enabled`].
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether spans are made, apart from metrics; see [`set_tracing`].
static TRACING: AtomicBool = AtomicBool::new(true);

/// Turns making spans on or off while metrics stay as [`set_enabled`] says, so a
/// benchmark can price the two apart.
pub fn set_tracing(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// Whether spans are made now: observability is enabled and tracing not turned off.
pub fn tracing_enabled() -> bool {
    enabled() && TRACING.load(Ordering::Relaxed)
}

/// Axum middleware timing each gateway request by method, route template and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    if !enabled() {
        return next.run(request).await;
    }
    // Any token is a method to hyper: only the standard ones get a series of their own,
    // so a client cannot add series without end by making methods up.
    let method = match *request.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS
        | Method::CONNECT
        | Method::TRACE => request.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics()
        .http_duration
        .get_or_create(&metrics::HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Binds `addr` and serves [`router`] there until `shutdown`: `--metrics-addr`, for a
/// scraper on a listener of its own (the admin listener of `run` serves `/metrics` too;
/// `switchyard gateway` has no other). Binding is done before this returns, so a taken or
/// bad address stops the start with the fix instead of a log line.
pub async fn serve_metrics(
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener to {addr} (choose a free --metrics-addr)"))?;
    tracing_log_bound(listener.local_addr().unwrap_or(addr));
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(err) = served {
            ::tracing::error!(error = %err, "serving /metrics failed");
        }
    }))
}

fn tracing_log_bound(addr: SocketAddr) {
    ::tracing::info!(%addr, "metrics at http://{addr}/metrics");
}
