//! `Idempotency-Key` (IETF draft-ietf-httpapi-idempotency-key-header): the first request
//! with a key claims it in the same transaction that queues its event, so a key never
//! makes two orders. A retry gets the stored answer; the same key with another body is
//! 422; a retry while the first request is still waiting is 409.

use crate::store::on_conn;
use crate::store::on_pool;
use axum::http::{HeaderMap, StatusCode};

use super::problem::Problem;
use crate::store::{Db, StoreError, Tx, now_ms};

pub const HEADER: &str = "idempotency-key";

/// The key of a request, if it sent one: 1 to 255 visible ASCII characters, optionally
/// as a quoted structured-field string (`"abc"`), as the draft writes it.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-idempotency-key",
            "Bad Idempotency-Key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters, e.g. a UUID",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let key = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

/// A key's record.
#[derive(Debug, Clone)]
pub struct Record {
    pub fingerprint: String,
    pub request_id: String,
    /// While the first request waits for its answer.
    pub locked_until_ms: Option<i64>,
    /// The final answer, once there is one.
    pub response: Option<(u16, String)>,
}

/// Claims `key` for `username` in `tx`; false if it was claimed before (the caller
/// then reads the record with [`find`]).
pub async fn claim(
    tx: &mut Tx,
    username: &str,
    key: &str,
    fingerprint: &str,
    request_id: &str,
    lock_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO gateway_idempotency (username, idem_key, fingerprint, request_id, locked_until_ms, created_at_ms) \
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username, idem_key) DO NOTHING";
    let now = now_ms();
    let n = on_conn!(tx, |c| sqlx::query(SQL)
        .bind(username)
        .bind(key)
        .bind(fingerprint)
        .bind(request_id)
        .bind(now + lock_ms)
        .bind(now)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

pub async fn find(db: &Db, username: &str, key: &str) -> Result<Option<Record>, StoreError> {
    const SQL: &str = "SELECT fingerprint, request_id, locked_until_ms, response_status, response_body \
                       FROM gateway_idempotency WHERE username = $1 AND idem_key = $2";
    type Row = (String, String, Option<i64>, Option<i32>, Option<String>);
    let row: Option<Row> = on_pool!(db, |p| sqlx::query_as(SQL)
        .bind(username)
        .bind(key)
        .fetch_optional(p)
        .await?);
    Ok(
        row.map(|(fingerprint, request_id, locked_until_ms, status, body)| Record {
            fingerprint,
            request_id,
            locked_until_ms,
            response: status.zip(body).map(|(s, b)| (s as u16, b)),
        }),
    )
}

/// Records the final answer (or, with `None`, just releases the lock after a 202).
pub async fn finish(db: &Db, username: &str, key: &str, response: Option<(u16, &str)>) -> Result<(), StoreError> {
    const SQL: &str = "UPDATE gateway_idempotency SET locked_until_ms = NULL, \
                       response_status = COALESCE($3, response_status), response_body = COALESCE($4, response_body) \
                       WHERE username = $1 AND idem_key = $2";
    let status = response.map(|(s, _)| i32::from(s));
    let body = response.map(|(_, b)| b);
    on_pool!(db, |p| sqlx::query(SQL)
        .bind(username)
        .bind(key)
        .bind(status)
        .bind(body)
        .execute(p)
        .await?
        .rows_affected());
    Ok(())
}

/// Takes the lock of a key whose first request has answered 202, so one retry at a
/// time waits for the answer; false if someone holds it.
pub async fn relock(db: &Db, username: &str, key: &str, lock_ms: i64) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE gateway_idempotency SET locked_until_ms = $3 \
                       WHERE username = $1 AND idem_key = $2 AND response_status IS NULL \
                       AND (locked_until_ms IS NULL OR locked_until_ms < $4)";
    let now = now_ms();
    let n = on_pool!(db, |p| sqlx::query(SQL)
        .bind(username)
        .bind(key)
        .bind(now + lock_ms)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
    Ok(n == 1)
}

pub fn conflict() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "request-in-progress",
        "Request in progress",
        "a request with this Idempotency-Key is still being processed; retry later",
    )
}

pub fn mismatch() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        "this Idempotency-Key was used with a different request body; use a new key",
    )
}
