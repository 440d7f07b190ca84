//! The admin API of a running host (default `127.0.0.1:8081`): what `switchyard status`,
//! `deploy`, `rollback`, `reload` and `versions` call, and how the operator commands find
//! the host's brokers. Every route under `/api` needs the admin bearer token; errors are
//! problem details. [`client`] is the CLI's side; [`views`] holds the console's data and
//! [`console`] the page itself (served at `/` without the token: it asks for it).

pub mod client;
pub mod console;
pub mod views;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::gateway::problem::Problem;
use crate::live::registry::DeployError;
use crate::live::{Live, LiveError};

/// Largest artifact a deploy accepts.
pub const MAX_ARTIFACT_BYTES: usize = 64 << 20;

/// Where a running host's brokers are, so operator commands reach its embedded broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokersInfo {
    pub bootstrap_servers: String,
    /// The host's in-process broker: its topics follow the host's routing file.
    #[serde(default)]
    pub embedded: bool,
}

/// A rollback request: without `to`, the version active before the current one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub to: Option<String>,
}

/// A route to pause or resume, by its key (`topic -> component`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRequest {
    pub route: String,
}

/// Whether a pause or resume changed anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    pub changed: bool,
}

/// The gateway's JWT keys, when the admin API also accepts a token with the admin role.
#[derive(Clone)]
pub struct AdminJwt(pub Arc<crate::gateway::settings::JwtKeys>);

impl std::fmt::Debug for AdminJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminJwt({:?})", self.0.algorithm)
    }
}

struct Admin {
    live: Arc<Live>,
    token: Option<String>,
    jwt: Option<AdminJwt>,
}

/// The admin API over `live`, guarded by `token` (or a gateway JWT with the admin role
/// when `jwt` is given).
pub fn router(live: Arc<Live>, token: Option<String>, jwt: Option<AdminJwt>) -> Router {
    let admin = Arc::new(Admin { live, token, jwt });
    let api = Router::new()
        .route("/status", get(status))
        .route("/brokers", get(brokers))
        .route("/reload", post(reload))
        .route("/components/{name}/versions", get(versions))
        .route("/components/{name}/deploy", post(deploy))
        .route("/components/{name}/rollback", post(rollback))
        .route("/routes/pause", post(pause))
        .route("/routes/resume", post(resume))
        .merge(views::router(admin.live.clone()))
        .fallback(|| async { Problem::not_found("no such admin API path; see docs/operations.md") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ARTIFACT_BYTES))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .layer(middleware::from_fn(problems_only));
    Router::new()
        .nest("/api", api)
        .merge(console::router())
        .with_state(admin)
        // Prometheus scrapes without the admin token (docs/observability.md).
        .merge(crate::observe::router())
}

async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let Some(expected) = &admin.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(token) if admin.jwt.is_some() && token.matches('.').count() == 2 => {
            let keys = &admin.jwt.as_ref().expect("checked").0;
            match crate::gateway::auth::verify_token(keys, token).and_then(|user| user.require(crate::gateway::auth::ROLE_ADMIN)) {
                Ok(()) => next.run(request).await,
                Err(problem) => problem.into_response(),
            }
        }
        Some(_) => Problem::unauthorized("the admin token does not match; use the host's (SWITCHYARD_ADMIN_TOKEN or <data-dir>/admin-token)").into_response(),
        None => Problem::unauthorized("the admin API needs `Authorization: Bearer <admin token>` (SWITCHYARD_ADMIN_TOKEN or <data-dir>/admin-token)").into_response(),
    }
}

/// axum answers its own rejections (malformed JSON, a bad query or path, a body over
/// the limit, a method a route lacks) in plain text: here they become problem details
/// like every other error of the admin API, their text as the detail.
async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == crate::gateway::problem::CONTENT_TYPE.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let detail = if text.is_empty() { reason.to_string() } else { text };
    let kind = reason.to_ascii_lowercase().replace(' ', "-");
    Problem::new(status, &kind, reason, detail).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use hmac::Mac;
    // Comparing MACs of both sides under a fixed key: equal-time whatever the inputs.
    let tag = |bytes: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"switchyard-admin").expect("any key length");
        mac.update(bytes);
        mac.finalize().into_bytes()
    };
    tag(a) == tag(b)
}

fn problem(err: LiveError) -> Problem {
    match &err {
        LiveError::Deploy(DeployError::UnknownComponent(_)) | LiveError::UnknownRoute(_) => {
            Problem::not_found(err.to_string())
        }
        LiveError::Deploy(DeployError::UnknownVersion { .. }) | LiveError::Deploy(DeployError::NoEarlierVersion(_)) => {
            Problem::new(
                StatusCode::CONFLICT,
                "no-such-version",
                "No such version",
                err.to_string(),
            )
        }
        LiveError::Deploy(DeployError::Store(_)) => Problem::unavailable("the database failed; try again"),
        LiveError::Deploy(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "artifact-refused",
            "Artifact refused; the running version keeps serving",
            err.to_string(),
        ),
        LiveError::Rejected(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "routing-refused",
            "Routing edit refused; the running routing stays",
            err.to_string(),
        ),
    }
}

async fn status(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    Json(admin.live.status().await)
}

async fn brokers(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    Json(BrokersInfo {
        bootstrap_servers: admin.live.status().await.brokers,
        embedded: admin.live.embedded_brokers(),
    })
}

async fn reload(State(admin): State<Arc<Admin>>) -> Result<impl IntoResponse, Problem> {
    admin.live.reload("admin API").await.map(Json).map_err(problem)
}

async fn versions(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Result<impl IntoResponse, Problem> {
    admin.live.versions(&name).await.map(Json).map_err(problem)
}

async fn deploy(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, Problem> {
    admin.live.deploy(&name, &body).await.map(Json).map_err(problem)
}

async fn rollback(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> Result<impl IntoResponse, Problem> {
    let to = body.and_then(|Json(r)| r.to);
    admin
        .live
        .rollback(&name, to.as_deref())
        .await
        .map(Json)
        .map_err(problem)
}

async fn pause(State(admin): State<Arc<Admin>>, Json(req): Json<RouteRequest>) -> Result<impl IntoResponse, Problem> {
    let changed = admin.live.pause(&req.route).await.map_err(problem)?;
    Ok(Json(Changed { changed }))
}

async fn resume(State(admin): State<Arc<Admin>>, Json(req): Json<RouteRequest>) -> Result<impl IntoResponse, Problem> {
    let changed = admin.live.resume(&req.route).await.map_err(problem)?;
    Ok(Json(Changed { changed }))
}
