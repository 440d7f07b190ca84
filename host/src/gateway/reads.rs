//! Balance, deposits and the caller's profile. Balance and profile belong to the
//! billing and user components and are read from them through their `query` export;
//! the gateway never reads a component's storage.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::{AuthUser, ROLE_USER};
use super::problem::{FieldError, Problem, ProblemJson};
use super::{Gateway, idempotency, publish, store_failure};
use crate::event::TraceContext;
use crate::store::now_ms;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DepositRequest {
    /// Major units, positive, at most two decimals.
    #[schema(example = 50.0)]
    pub amount: f64,
}

/// The 202 of a deposit: billing applies it once per `requestId`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DepositAccepted {
    pub request_id: String,
    pub amount: f64,
    /// Always `ACCEPTED`.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub username: String,
    pub roles: Vec<String>,
    pub profile: Profile,
}

/// The user component's `profile` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub registered_at: i64,
    pub source: Option<String>,
}

/// The billing component's `balance` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub username: String,
    /// Major units.
    #[schema(example = 20.29)]
    pub balance: f64,
    /// The same in cents, exact.
    #[schema(example = 2029)]
    pub balance_cents: i64,
}

/// Decodes a component's answer into the type the API documents; a mismatch is the
/// component's bug, logged and answered 500.
pub fn decode<T: serde::de::DeserializeOwned>(component: &str, answer: Value) -> Result<T, Problem> {
    serde_json::from_value(answer).map_err(|e| Problem::internal(&format!("decoding {component}'s answer"), &e))
}

/// A deposit amount in cents, or why not.
pub fn amount_minor(amount: f64) -> Result<i64, String> {
    if !amount.is_finite() || amount <= 0.0 {
        return Err(format!("must be a positive number, got {amount}"));
    }
    let cents = amount * 100.0;
    if cents > 1e13 {
        return Err(format!("{amount} is larger than a deposit can be (1e11)"));
    }
    if (cents - cents.round()).abs() > 1e-6 {
        return Err(format!("{amount} has more than two decimals"));
    }
    if cents.round() < 1.0 {
        return Err(format!("{amount} is less than a cent"));
    }
    Ok(cents.round() as i64)
}

/// `GET /billing/balance`
#[utoipa::path(get, path = "/billing/balance", tag = "billing",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the caller's account, from the billing component", body = Balance),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no account (yet: registration may be on its way)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "billing cannot be asked on this gateway", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn balance(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<AuthUser>,
) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    match gw
        .query("billing", "balance", json!({"username": user.username}))
        .await?
    {
        Value::Null => Err(Problem::not_found(format!(
            "{:?} has no account yet; it is opened shortly after registration",
            user.username
        ))),
        account => Ok(axum::Json(decode::<Balance>("billing", account)?).into_response()),
    }
}

/// `POST /billing/deposits`
#[utoipa::path(post, path = "/billing/deposits", tag = "billing",
    request_body = DepositRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key deposits once")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "queued; billing applies it once", body = DepositAccepted, headers(("Location" = String))),
        (status = 400, description = "malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "no account yet (retry after `Retry-After` seconds), or the same Idempotency-Key is in use", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid amount, or a reused Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "billing cannot be asked on this gateway", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn deposit(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<AuthUser>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    ProblemJson(req): ProblemJson<DepositRequest>,
) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    amount_minor(req.amount).map_err(|message| {
        Problem::invalid_fields(vec![FieldError {
            field: "amount".into(),
            message,
        }])
    })?;
    let key = idempotency::key_of(&headers)?;
    // billing retries a deposit for an account that does not exist yet and then
    // dead-letters it: refuse it here instead, while registration is on its way.
    if gw
        .query("billing", "balance", json!({"username": user.username}))
        .await?
        .is_null()
    {
        let problem = Problem::new(
            StatusCode::CONFLICT,
            "account-not-open",
            "Account not open yet",
            format!(
                "{:?} has no account yet; it opens shortly after registration: retry",
                user.username
            ),
        );
        let mut response = problem.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(response);
    }
    let fingerprint = serde_json::to_string(&req).expect("serializes");
    let request_id = uuid::Uuid::new_v4().to_string();
    let accepted = |request_id: &str| {
        serde_json::to_string(&DepositAccepted {
            request_id: request_id.to_string(),
            amount: req.amount,
            status: "ACCEPTED".into(),
        })
        .expect("serializes")
    };
    let mut tx = gw.db.begin().await.map_err(store_failure("queueing the deposit"))?;
    if let Some(key) = &key
        && !idempotency::claim(&mut tx, &user.username, key, &fingerprint, &request_id, 0)
            .await
            .map_err(store_failure("claiming the Idempotency-Key"))?
    {
        let _ = tx.rollback().await;
        let record = idempotency::find(&gw.db, &user.username, key)
            .await
            .map_err(store_failure("reading the Idempotency-Key"))?
            .ok_or_else(idempotency::conflict)?;
        if record.fingerprint != fingerprint {
            return Err(idempotency::mismatch());
        }
        return Ok(accepted_response(&record.request_id, accepted(&record.request_id)));
    }
    let payload = json!({
        "requestId": request_id, "username": user.username, "amount": req.amount, "requestedAt": now_ms()
    });
    publish(&mut tx, "billing.deposits", &user, &request_id, &trace, &payload)
        .await
        .map_err(store_failure("queueing the deposit"))?;
    tx.commit().await.map_err(store_failure("queueing the deposit"))?;
    tracing::Span::current().record("request_id", request_id.as_str());
    tracing::info!(amount = req.amount, "deposit requested");
    if let Some(key) = &key {
        let body = accepted(&request_id);
        idempotency::finish(&gw.db, &user.username, key, Some((202, body.as_str())))
            .await
            .map_err(store_failure("recording the answer"))?;
    }
    Ok(accepted_response(&request_id, accepted(&request_id)))
}

fn accepted_response(request_id: &str, body: String) -> Response {
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::LOCATION, HeaderValue::from_static("/billing/balance"));
    tracing::debug!(request_id, "deposit accepted");
    response
}

/// `GET /users/me`
#[utoipa::path(get, path = "/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "who the token says, and the user component's profile", body = Me),
        (status = 401, description = "missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token lacks the `user` role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no profile (yet)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the user component cannot be asked on this gateway", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(State(gw): State<Arc<Gateway>>, Extension(user): Extension<AuthUser>) -> Result<Response, Problem> {
    user.require(ROLE_USER)?;
    match gw.query("user", "profile", json!({"username": user.username})).await? {
        Value::Null => Err(Problem::not_found(format!("{:?} has no profile yet", user.username))),
        profile => Ok(axum::Json(Me {
            username: user.username,
            roles: user.roles,
            profile: decode("user", profile)?,
        })
        .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::amount_minor;

    #[test]
    fn deposit_amounts_are_whole_cents() {
        assert_eq!(amount_minor(0.29), Ok(29));
        assert_eq!(amount_minor(100.5), Ok(10050));
        assert_eq!(amount_minor(0.01), Ok(1));
        for bad in [0.0, -1.0, 1.005, f64::NAN, 1e12, 1e-9, 0.004] {
            assert!(amount_minor(bad).is_err(), "{bad}");
        }
    }
}
