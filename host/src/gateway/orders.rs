//! `POST /orders` (ADR "Создание заказа", steps 1-3 and 10-11): the request becomes an
//! `OrderCreationRequested` in the outbox, and the answer is the order's final
//! `OrderStatusUpdated` from the status cache, or 202 after the reply timeout.
//! `GET /orders/{requestId}` and `GET /orders` read the caller's own orders.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::{AuthUser, ROLE_USER};
use super::problem::{CONTENT_TYPE as PROBLEM_JSON, Problem, ProblemJson, ProblemPath};
use super::status::{OrderStatus, Subscription, Wait};
use super::{Gateway, QueryFailure, idempotency, publish, store_failure};
use crate::event::TraceContext;
use crate::store::now_ms;

/// One order line. Business rules (positive quantity, at most two decimals) are the
/// order component's: breaking them answers 422 with its reason.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderItem {
    #[schema(example = "book")]
    pub product_id: String,
    #[schema(example = 2)]
    pub quantity: i64,
    /// Unit price, major units, at most two decimals.
    #[schema(example = 9.99)]
    pub price: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRequest {
    pub items: Vec<OrderItem>,
    #[schema(example = "1 Main St")]
    pub delivery_address: String,
    #[schema(example = "card")]
    pub payment_method: String,
}

/// The 202 answer: the order is on its way; poll `Location`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub request_id: String,
    /// Always `PENDING`.
    pub status: String,
    pub location: String,
}

/// `GET /orders`: the order component's `orders` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrdersPage {
    pub username: String,
    /// Orders as the order component keeps them (docs/events.md, "Queries").
    #[schema(value_type = Vec<Object>)]
    pub orders: Vec<Value>,
}

/// `GET /orders/{requestId}`: the latest status the gateway saw and the order as the
/// order component keeps it (either may be null, not both).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub request_id: String,
    pub status: Option<OrderStatus>,
    #[schema(value_type = Option<Object>)]
    pub order: Option<Value>,
}

fn location(request_id: &str) -> String {
    format!("/orders/{request_id}")
}

/// The HTTP answer for a final status (or none: still pending), as status and body.
pub fn answer_of(request_id: &str, status: Option<&OrderStatus>) -> (u16, String) {
    let problem = |code: StatusCode, kind: &str, title: &str, detail: String, s: &OrderStatus| {
        let p = Problem::new(code, kind, title, detail).with("order", s);
        (code.as_u16(), serde_json::to_string(&p).expect("problems serialize"))
    };
    match status {
        None => (
            202,
            serde_json::to_string(&Accepted {
                request_id: request_id.to_string(),
                status: "PENDING".into(),
                location: location(request_id),
            })
            .expect("serializes"),
        ),
        Some(s) => match s.status.as_str() {
            "PAID" => (201, serde_json::to_string(s).expect("serializes")),
            "INSUFFICIENT_FUNDS" => {
                let why = s
                    .metadata
                    .get("failureReason")
                    .and_then(Value::as_str)
                    .unwrap_or("INSUFFICIENT_FUNDS");
                problem(
                    StatusCode::PAYMENT_REQUIRED,
                    "insufficient-funds",
                    "Payment refused",
                    format!("the order was not paid ({why}); top up with POST /billing/deposits"),
                    s,
                )
            }
            "PAYMENT_TIMEOUT" => problem(
                StatusCode::PAYMENT_REQUIRED,
                "payment-timeout",
                "Payment timed out",
                "billing did not answer in time; the order was cancelled".into(),
                s,
            ),
            _ => {
                let reason = s.metadata.get("reason").and_then(Value::as_str).unwrap_or("rejected");
                problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "order-rejected",
                    "Order rejected",
                    reason.to_string(),
                    s,
                )
            }
        },
    }
}

fn respond(request_id: &str, (code, body): (u16, String)) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if code >= 400 { PROBLEM_JSON } else { "application/json" };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(loc) = HeaderValue::from_str(&location(request_id)) {
        headers.insert(header::LOCATION, loc);
    }
    response
}

/// Waits for the final status of `request_id`.
async fn wait(gw: &Gateway, sub: Subscription, request_id: &str) -> Result<Option<Arc<OrderStatus>>, Problem> {
    match gw
        .cache
        .wait_final(sub, request_id, gw.config.reply_timeout, gw.shutdown.clone())
        .await
    {
        Ok(Wait::Final(status)) => Ok(Some(status)),
        Ok(Wait::Pending) => Ok(None),
        Err(err) => {
            // The order is queued; the client can still read it.
            tracing::error!(error = %err, "status cache failed while waiting");
            Ok(None)
        }
    }
}

fn lock_ms(gw: &Gateway) -> i64 {
    (gw.config.reply_timeout + Duration::from_secs(10)).as_millis() as i64
}

/// `POST /orders`
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = OrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries safe: the same key returns the same answer and never a second order")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "PAID", body = OrderStatus, headers(("Location" = String))),
        (status = 202, description = "no final status within the reply timeout; poll Location", body = Accepted, headers(("Location" = String))),
        (status = 400, description = "malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "INSUFFICIENT_FUNDS or PAYMENT_TIMEOUT; `order` has the status", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a request with this Idempotency-Key is still in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "REJECTED (`order` has the status), an invalid body, or a reused Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_order(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<AuthUser>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    ProblemJson(req): ProblemJson<OrderRequest>,
) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    let key = idempotency::key_of(&headers)?;
    let fingerprint = serde_json::to_string(&req).expect("serializes");
    // Subscribe before publishing, so the answer cannot slip past.
    let sub = gw.cache.subscribe();
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut tx = gw.db.begin().await.map_err(store_failure("queueing the order"))?;
    if let Some(key) = &key {
        let claimed = idempotency::claim(&mut tx, &user.username, key, &fingerprint, &request_id, lock_ms(&gw))
            .await
            .map_err(store_failure("claiming the Idempotency-Key"))?;
        if !claimed {
            let _ = tx.rollback().await;
            return retry(&gw, &user, &trace, key, &req, &fingerprint, sub).await;
        }
    }
    publish(
        &mut tx,
        "orders.requests",
        &user,
        &request_id,
        &trace,
        &order_request(&user, &request_id, &req),
    )
    .await
    .map_err(store_failure("queueing the order"))?;
    tx.commit().await.map_err(store_failure("queueing the order"))?;
    tracing::Span::current().record("request_id", request_id.as_str());
    tracing::info!("order requested");
    let status = wait(&gw, sub, &request_id).await?;
    let answer = answer_of(&request_id, status.as_deref());
    if let Some(key) = &key {
        let stored = status.is_some().then_some((answer.0, answer.1.as_str()));
        idempotency::finish(&gw.db, &user.username, key, stored)
            .await
            .map_err(store_failure("recording the answer"))?;
    }
    Ok(respond(&request_id, answer))
}

/// The `OrderCreationRequested` event of `req`.
fn order_request(user: &AuthUser, request_id: &str, req: &OrderRequest) -> Value {
    json!({
        "requestId": request_id,
        "username": user.username,
        "items": req.items,
        "deliveryAddress": req.delivery_address,
        "paymentMethod": req.payment_method,
        "createdAt": now_ms(),
    })
}

/// A request whose Idempotency-Key was claimed before.
async fn retry(
    gw: &Gateway,
    user: &AuthUser,
    trace: &TraceContext,
    key: &str,
    req: &OrderRequest,
    fingerprint: &str,
    sub: Subscription,
) -> Result<Response, Problem> {
    let record = idempotency::find(&gw.db, &user.username, key)
        .await
        .map_err(store_failure("reading the Idempotency-Key"))?
        .ok_or_else(idempotency::conflict)?;
    if record.fingerprint != fingerprint {
        return Err(idempotency::mismatch());
    }
    let request_id = record.request_id;
    tracing::Span::current().record("request_id", request_id.as_str());
    if let Some(answer) = record.response {
        return Ok(respond(&request_id, answer));
    }
    if record.locked_until_ms.is_some_and(|until| until > now_ms()) {
        return Err(idempotency::conflict());
    }
    // The first request answered 202 (or its gateway died): wait for the same order.
    if !idempotency::relock(&gw.db, &user.username, key, lock_ms(gw))
        .await
        .map_err(store_failure("locking the Idempotency-Key"))?
    {
        return Err(idempotency::conflict());
    }
    // The final status may have left the cache since (a restarted gateway, the cache's
    // retention): the same request again makes the order component publish it again
    // (its request index knows the order), or, still in progress, changes nothing.
    let cached = gw.cache.get(&request_id).await.ok().flatten();
    if !cached.is_some_and(|s| s.is_final()) {
        let mut tx = gw
            .db
            .begin()
            .await
            .map_err(store_failure("asking for the answer again"))?;
        publish(
            &mut tx,
            "orders.requests",
            user,
            &request_id,
            trace,
            &order_request(user, &request_id, req),
        )
        .await
        .map_err(store_failure("asking for the answer again"))?;
        tx.commit()
            .await
            .map_err(store_failure("asking for the answer again"))?;
    }
    let status = wait(gw, sub, &request_id).await?;
    let answer = answer_of(&request_id, status.as_deref());
    let stored = status.is_some().then_some((answer.0, answer.1.as_str()));
    idempotency::finish(&gw.db, &user.username, key, stored)
        .await
        .map_err(store_failure("recording the answer"))?;
    Ok(respond(&request_id, answer))
}

/// The order component's answer to a query, `None` when it has nothing or cannot be
/// asked on this gateway (the status cache may still know the order).
async fn order_record(gw: &Gateway, user: &AuthUser, request_id: &str) -> Result<Option<Value>, Problem> {
    let args = json!({"username": user.username, "requestId": request_id});
    match gw.queries.query("order", "order", args).await {
        Ok(Value::Null) => Ok(None),
        Ok(order) => Ok(Some(order)),
        Err(e @ (QueryFailure::NoComponent(_) | QueryFailure::UnknownQuery { .. })) => {
            tracing::warn!(error = %e, "order query unavailable; answering from the status cache");
            Ok(None)
        }
        Err(other) => Err(Problem::internal("reading the order", &other)),
    }
}

/// The longest `requestId` looked up; the gateway's own are UUIDs (36 bytes).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// `GET /orders/{requestId}`
#[utoipa::path(get, path = "/orders/{requestId}", tag = "orders",
    params(("requestId" = String, Path, description = "from the `Location` of `POST /orders`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order's latest status and record", body = OrderView),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<AuthUser>,
    ProblemPath(request_id): ProblemPath<String>,
) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    // Longer than any id an order can have (the order component's keys hold it, 512
    // bytes in all), or with control characters no database text takes: no such order.
    if request_id.len() > MAX_REQUEST_ID_BYTES || request_id.chars().any(char::is_control) {
        return Err(Problem::not_found(format!(
            "you have no order with that requestId (ids are at most {MAX_REQUEST_ID_BYTES} bytes, with no control characters)"
        )));
    }
    tracing::Span::current().record("request_id", request_id.as_str());
    let status = gw
        .cache
        .get(&request_id)
        .await
        .map_err(|e| Problem::internal("reading the status cache", &e))?
        // Someone else's order does not exist for this caller.
        .filter(|s| s.username == user.username);
    let order = order_record(&gw, &user, &request_id).await?;
    if status.is_none() && order.is_none() {
        return Err(Problem::not_found(format!(
            "you have no order with requestId {request_id:?}"
        )));
    }
    Ok(axum::Json(OrderView {
        request_id,
        status: status.map(|s| (*s).clone()),
        order,
    })
    .into_response())
}

/// `GET /orders`
#[utoipa::path(get, path = "/orders", tag = "orders",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the caller's orders, newest first, from the order component", body = OrdersPage),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the order component cannot be asked on this gateway", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_orders(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<AuthUser>,
) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    let answer = gw.query("order", "orders", json!({"username": user.username})).await?;
    let page: OrdersPage = if answer.is_null() {
        OrdersPage {
            username: user.username,
            orders: Vec::new(),
        }
    } else {
        super::reads::decode("order", answer)?
    };
    Ok(axum::Json(page).into_response())
}
