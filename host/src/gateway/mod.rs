//! The HTTP gateway (the ADR's API-gateway and mini_auth): clients register, log in,
//! top up, place orders and read them over HTTP; requests become events in the outbox
//! and answers come back from `orders.status` through the status cache.
//!
//! It depends on the database ([`crate::store`]), the broker ([`crate::kafka`]) and the
//! cache, never on the Wasm runtime: data a component owns is read through the
//! [`ComponentQueries`] seam, which the binary implements on top of the runtime.
//!
//! - [`settings`]: flags and validated settings; [`problem`]: RFC 9457 errors.
//! - [`auth`]: register, login, the token middleware; [`orders`]: `POST /orders` and
//!   reads; [`reads`]: balance, deposits, profile; [`idempotency`]: `Idempotency-Key`.
//! - [`status`]: the `orders.status` consumer and the cache (Redis or in-process).
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers.

pub mod auth;
pub mod idempotency;
pub mod openapi;
pub mod orders;
pub mod problem;
pub mod reads;
pub mod settings;
pub mod status;

use crate::store::on_pool;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use crate::event::{TraceContext, headers};
use crate::kafka::relay;
use crate::store::{Db, OutboundMessage, StoreError, Tx};

pub use settings::{GatewayArgs, GatewayConfig};
pub use status::StatusCache;

use auth::AuthUser;
use problem::Problem;

/// The name outbox rows written by the gateway carry as their component.
pub const OUTBOX_SOURCE: &str = "gateway";

/// Why a component query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    #[error("component {0:?} is not loaded in this process")]
    NoComponent(String),
    #[error("component {component:?} has no query {name:?}")]
    UnknownQuery { component: String, name: String },
    #[error("query {name:?} of {component:?} refused its arguments: {reason}")]
    BadArguments {
        component: String,
        name: String,
        reason: String,
    },
    #[error("query {name:?} of {component:?} failed: {reason}")]
    Failed {
        component: String,
        name: String,
        reason: String,
    },
}

pub type QueryFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, QueryFailure>> + Send + 'a>>;

/// The seam to the components: runs a component's read-only `query` export with JSON
/// arguments and returns its JSON answer (`null`: nothing found).
pub trait ComponentQueries: Send + Sync + 'static {
    fn query<'a>(&'a self, component: &'a str, name: &'a str, args: Value) -> QueryFuture<'a>;
}

/// The gateway's shared state.
pub struct Gateway {
    pub config: GatewayConfig,
    pub db: Db,
    pub cache: Arc<StatusCache>,
    pub queries: Arc<dyn ComponentQueries>,
    /// Verified when a login names an unknown user (equal-time 401).
    pub decoy_hash: String,
    pub shutdown: watch::Receiver<bool>,
    /// Client settings for the broker, for `/ready`.
    pub kafka: ClientConfig,
    /// The last `/ready` check: what was down, and when it ran (see [`READY_REUSE`]).
    readiness: tokio::sync::Mutex<Option<(std::time::Instant, Down)>>,
}

/// What does not answer (database, cache, kafka), each with its cause for the log.
type Down = Vec<(&'static str, String)>;

impl Gateway {
    pub async fn new(
        config: GatewayConfig,
        db: Db,
        cache: Arc<StatusCache>,
        queries: Arc<dyn ComponentQueries>,
        kafka: ClientConfig,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Gateway>> {
        let decoy_hash = tokio::task::spawn_blocking(auth::decoy_hash).await?;
        Ok(Arc::new(Gateway {
            readiness: Default::default(),
            config,
            db,
            cache,
            queries,
            decoy_hash,
            shutdown,
            kafka,
        }))
    }

    /// Runs a component query, mapping failures to problems.
    pub async fn query(&self, component: &str, name: &str, args: Value) -> Result<Value, Problem> {
        self.queries.query(component, name, args).await.map_err(|e| match e {
            QueryFailure::NoComponent(_) | QueryFailure::UnknownQuery { .. } => {
                tracing::error!(error = %e, "component query unavailable");
                Problem::unavailable(format!("reading from {component} is not available on this gateway"))
            }
            other => Problem::internal(&format!("reading from {component}"), &other),
        })
    }
}

/// Every route; the protected ones behind [`auth::authenticate`].
pub fn router(gw: Arc<Gateway>) -> Router {
    let protected = Router::new()
        .route("/orders", post(orders::create_order).get(orders::list_orders))
        .route("/orders/{request_id}", get(orders::get_order))
        .route("/billing/balance", get(reads::balance))
        .route("/billing/deposits", post(reads::deposit))
        .route("/users/me", get(reads::me))
        .route_layer(middleware::from_fn_with_state(gw.clone(), auth::authenticate));
    Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi::document))
        .merge(protected)
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(gw.config.body_limit))
        .layer(middleware::from_fn_with_state(request_limit(&gw.config), bounded))
        .layer(middleware::from_fn(trace_request))
        .layer(middleware::from_fn(crate::observe::track_http))
        .with_state(gw)
}

/// How long past the reply timeout (the longest a request waits by design, for an
/// order's final status) a request may take before it is answered 503.
pub const REQUEST_MARGIN: Duration = Duration::from_secs(10);

/// The longest any request takes: a database that accepts and never answers (hung, or
/// cut off without a reset) would otherwise hold the client for as long as TCP retries,
/// about 15 minutes.
pub fn request_limit(config: &GatewayConfig) -> Duration {
    config.reply_timeout + REQUEST_MARGIN
}

async fn bounded(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(
                limit_ms = limit.as_millis() as u64,
                "request not answered in time; a dependency is not answering"
            );
            Problem::unavailable(format!(
                "not answered within {} s: a dependency (the database or the cache) is not answering; retry later",
                limit.as_secs()
            ))
            .into_response()
        }
    }
}

/// One span per request with its trace id (from `traceparent`, else a new trace) and,
/// once known, the username and `requestId`.
async fn trace_request(mut request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| {
            let state = request.headers().get(headers::TRACESTATE).and_then(|v| v.to_str().ok());
            TraceContext::parse(tp, state.unwrap_or(""))
        });
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
        username = tracing::field::Empty,
        // The method and route template, as OpenTelemetry names server spans; the method
        // alone for a path no route matched (`unmatched` in the metrics).
        otel.name = %match route.as_deref() {
            Some(route) => format!("{} {route}", request.method()),
            None => request.method().to_string(),
        },
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route.as_deref().unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
    );
    // The request's trace context is its exported span when traces are on.
    let trace = crate::observe::tracing::request_trace(&span, incoming);
    span.record("trace_id", tracing::field::display(&trace.trace_id));
    request.extensions_mut().insert(trace);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    response
}

/// Queues `payload` for `topic` in `tx`: keyed by the username, with a fresh event id,
/// the `requestId`, the trace context and the caller's `X-Username` / `X-Roles`.
pub async fn publish(
    tx: &mut Tx,
    topic: &str,
    user: &AuthUser,
    request_id: &str,
    trace: &TraceContext,
    payload: &Value,
) -> Result<String, StoreError> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let message = OutboundMessage {
        topic: topic.to_string(),
        key: Some(user.username.clone().into_bytes()),
        payload: serde_json::to_vec(payload).expect("JSON values serialize"),
        headers: vec![
            (headers::EVENT_ID.to_string(), event_id.clone()),
            (headers::REQUEST_ID.to_string(), request_id.to_string()),
            (headers::SOURCE.to_string(), OUTBOX_SOURCE.to_string()),
            // The request's own span is the parent of the events it causes.
            (headers::TRACEPARENT.to_string(), trace.traceparent()),
            ("X-Username".to_string(), user.username.clone()),
            ("X-Roles".to_string(), user.roles_header()),
        ],
    };
    tx.insert_outbox(&event_id, OUTBOX_SOURCE, &message).await?;
    Ok(event_id)
}

/// `GET /health`: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "the process is up", body = Object)))]
pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// How long `/ready` waits for the database: one that accepts and never answers is
/// reported down instead of holding the probe (Kafka and Redis have limits of their own).
const READY_CHECK_LIMIT: Duration = Duration::from_secs(2);

/// `GET /ready`: Kafka, the database and the cache all answer.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Object),
        (status = 503, description = "a dependency does not answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    // One check at a time, its answer reused for READY_REUSE: `/ready` is served without
    // a login, and each check holds a blocking thread (a new broker client) for up to 2 s,
    // threads that password hashing needs too; a flood of probes waits for one answer.
    let failures = {
        let mut last = gw.readiness.lock().await;
        match &*last {
            Some((at, failures)) if at.elapsed() < READY_REUSE => failures.clone(),
            _ => {
                let failures = check_dependencies(&gw).await;
                *last = Some((std::time::Instant::now(), failures.clone()));
                failures
            }
        }
    };
    if failures.is_empty() {
        axum::Json(serde_json::json!({"status": "ready", "database": gw.db.kind(), "cache": gw.cache.kind()}))
            .into_response()
    } else {
        tracing::warn!(failures = ?failures, "not ready");
        let down: Vec<&str> = failures.iter().map(|(what, _)| *what).collect();
        Problem::unavailable(format!(
            "not ready: {} (the server log has the causes)",
            down.join(", ")
        ))
        .with("down", &down)
        .into_response()
    }
}

/// How long one `/ready` check answers for.
const READY_REUSE: Duration = Duration::from_secs(1);

/// What does not answer, with the causes (for the log; the answer only names them).
async fn check_dependencies(gw: &Gateway) -> Down {
    let mut failures = Vec::new();
    let db_ok = tokio::time::timeout(READY_CHECK_LIMIT, async {
        on_pool!(&gw.db, |p| sqlx::query("SELECT 1").execute(p).await.map(|_| ()))
    })
    .await
    .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
    if let Err(err) = db_ok {
        failures.push(("database", err.to_string()));
    }
    if let Err(err) = gw.cache.check().await {
        failures.push(("cache", err));
    }
    let kafka = gw.kafka.clone();
    let broker = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let consumer: rdkafka::consumer::BaseConsumer = kafka.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(Some("orders.status"), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(err) = broker {
        failures.push(("kafka", err));
    }
    failures
}

/// Runs the gateway until `shutdown`, on the broker `kafka` (see
/// [`crate::kafka::Brokers::client_config`]): the `orders.status` consumer, the HTTP server,
/// and, when `with_relay`, the outbox relay (a standalone gateway wrote the rows, so it
/// sends them). Requests still waiting at shutdown are answered 202.
pub async fn serve(
    config: GatewayConfig,
    db: Db,
    kafka: ClientConfig,
    queries: Arc<dyn ComponentQueries>,
    with_relay: bool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr).await.with_context(|| {
        format!(
            "listening on {} (is another process using it? pass --http-addr)",
            config.addr
        )
    })?;
    serve_on(listener, config, db, kafka, queries, with_relay, shutdown).await
}

/// [`serve`] on a listener that is already bound (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    db: Db,
    base: ClientConfig,
    queries: Arc<dyn ComponentQueries>,
    with_relay: bool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cache = match &config.redis_url {
        Some(url) => StatusCache::redis(url, shutdown.clone())
            .await
            .with_context(|| format!("connecting the status cache to {}", crate::store::redact(url)))?,
        None => StatusCache::memory(),
    };
    let consumer: StreamConsumer = status::consumer_config(&base, &config.group)
        .create()
        .context("creating the orders.status consumer")?;
    consumer
        .subscribe(&["orders.status"])
        .context("subscribing to orders.status")?;
    let consumer_task = tokio::spawn(status::run_consumer(
        consumer,
        config.group.clone(),
        cache.clone(),
        shutdown.clone(),
    ));

    let (relay_stop, relay_shutdown) = watch::channel(false);
    let relay_task = if with_relay {
        Some(tokio::spawn(relay::run_relay(
            db.clone(),
            relay::relay_producer_config(&base),
            relay_shutdown,
        )))
    } else {
        None
    };

    let gw = Gateway::new(config.clone(), db, cache.clone(), queries, base, shutdown.clone()).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, cache = cache.kind(), relay = with_relay, "HTTP gateway listening");
    let mut stop = shutdown.clone();
    let result = axum::serve(listener, router(gw))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("serving HTTP");
    // Waiting requests were answered (202) by now; let the relay send what they wrote.
    let _ = relay_stop.send(true);
    if let Some(task) = relay_task {
        let _ = task.await;
    }
    let _ = consumer_task.await;
    tracing::info!("HTTP gateway stopped");
    result
}

/// Maps a store failure to a problem, logging the cause: 503 when no connection could be
/// had in time (the database busy or not answering), 500 otherwise.
pub fn store_failure(context: &str) -> impl FnOnce(StoreError) -> Problem + '_ {
    move |e| {
        if e.is_unavailable() {
            tracing::error!(error = %e, "{context}");
            Problem::unavailable(format!("{context} failed: the database is not answering; retry later"))
        } else {
            Problem::internal(context, &e)
        }
    }
}

/// The 503 a request gets while the gateway shuts down.
pub fn shutting_down() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting-down",
        "Shutting down",
        "the gateway is shutting down; retry against another replica",
    )
}
