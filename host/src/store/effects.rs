//! Outbound effects (wit `outbound`): requests recorded in the invocation's transaction,
//! claimed with a lease by the delivery worker ([`crate::delivery`]), and finished once,
//! with their outcome event written to the outbox in the same transaction.

use super::{Db, OutboundMessage, StoreError, Tx, decode_headers, encode_headers, now_ms, on_conn, on_pool};

/// A request to record, as `deliver` made it.
#[derive(Debug, Clone)]
pub struct NewEffect<'a> {
    /// The delivery id, also the idempotency key.
    pub id: &'a str,
    pub component: &'a str,
    /// `http` or `email`.
    pub kind: &'a str,
    /// The request as JSON ([`crate::delivery::Request`]).
    pub request: &'a str,
    pub result_topic: &'a str,
    pub result_event_id: &'a str,
    /// The host headers of the outcome event, fixed at the call (trace, request id, cause).
    pub result_headers: &'a [(String, String)],
    pub context: &'a str,
    pub max_attempts: u32,
    pub initial_backoff_ms: i64,
    pub max_backoff_ms: i64,
}

/// A row a worker holds the lease of.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedEffect {
    pub id: String,
    pub component: String,
    pub kind: String,
    pub request: String,
    pub result_topic: String,
    pub result_event_id: String,
    pub result_headers: Vec<(String, String)>,
    pub context: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub initial_backoff_ms: i64,
    pub max_backoff_ms: i64,
}

/// Where a delivery stands (tests, `switchyard effects`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EffectStatus {
    pub id: String,
    pub component: String,
    pub kind: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// `delivered`, `failed` (refused for good) or `dead` (out of attempts); None: pending.
    pub outcome: Option<String>,
}

type ClaimRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i32,
    i32,
    i64,
    i64,
);

const COLUMNS: &str = "id, component, kind, request, result_topic, result_event_id, result_headers, context, \
                       attempts, max_attempts, initial_backoff_ms, max_backoff_ms";

impl Tx {
    /// Records a delivery to carry out once this transaction commits.
    pub async fn insert_effect(&mut self, effect: &NewEffect<'_>) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO effects (id, component, kind, request, result_topic, result_event_id, \
                           result_headers, context, max_attempts, initial_backoff_ms, max_backoff_ms, attempts, \
                           due_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $12)";
        let headers = encode_headers(effect.result_headers);
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(effect.id)
            .bind(effect.component)
            .bind(effect.kind)
            .bind(effect.request)
            .bind(effect.result_topic)
            .bind(effect.result_event_id)
            .bind(&headers)
            .bind(effect.context)
            .bind(effect.max_attempts.min(i32::MAX as u32) as i32)
            .bind(effect.initial_backoff_ms)
            .bind(effect.max_backoff_ms)
            .bind(now_ms())
            .execute(c)
            .await?
            .rows_affected());
        self.wrote_effects = true;
        Ok(())
    }
}

impl Db {
    /// Claims up to `limit` due deliveries for `lease_ms`: each gets its attempt counted
    /// and is invisible to other workers until the lease runs out. On PostgreSQL rows
    /// another host is claiming right now are skipped (SKIP LOCKED), not waited for; on
    /// SQLite the write lock orders claims.
    pub async fn claim_effects(&self, now: i64, lease_ms: i64, limit: i64) -> Result<Vec<ClaimedEffect>, StoreError> {
        let pick = "SELECT id FROM effects WHERE done_at_ms IS NULL AND due_at_ms <= $2 ORDER BY due_at_ms LIMIT $3";
        let lock = if self.kind() == "postgres" {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE effects SET due_at_ms = $1, attempts = attempts + 1 WHERE id IN ({pick}{lock}) RETURNING {COLUMNS}"
        );
        let rows: Vec<ClaimRow> = on_pool!(self, |p| sqlx::query_as(&sql)
            .bind(now.saturating_add(lease_ms))
            .bind(now)
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.into_iter()
            .map(
                |(
                    id,
                    component,
                    kind,
                    request,
                    result_topic,
                    result_event_id,
                    headers,
                    context,
                    attempts,
                    max_attempts,
                    initial_backoff_ms,
                    max_backoff_ms,
                )| {
                    Ok(ClaimedEffect {
                        id,
                        component,
                        kind,
                        request,
                        result_topic,
                        result_event_id,
                        result_headers: decode_headers(&headers)?,
                        context,
                        attempt: attempts.max(1) as u32,
                        max_attempts: max_attempts.max(1) as u32,
                        initial_backoff_ms,
                        max_backoff_ms,
                    })
                },
            )
            .collect()
    }

    /// A failed attempt: try again at `due_at_ms`, keeping why (see [`storable`]).
    pub async fn retry_effect(&self, id: &str, due_at_ms: i64, error: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE effects SET due_at_ms = $1, last_error = $2 WHERE id = $3 AND done_at_ms IS NULL";
        on_pool!(self, |p| sqlx::query(SQL)
            .bind(due_at_ms)
            .bind(storable(error))
            .bind(id)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Finishes a delivery with `outcome` and writes its outcome event to the outbox, in
    /// one transaction and only the first time: a second worker that delivered the same
    /// row after a lost lease finds it done and publishes nothing. True when this call
    /// finished it.
    pub async fn finish_effect(
        &self,
        effect: &ClaimedEffect,
        outcome: &str,
        error: Option<&str>,
        result: &OutboundMessage,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE effects SET done_at_ms = $1, outcome = $2, last_error = COALESCE($3, last_error) \
                           WHERE id = $4 AND done_at_ms IS NULL";
        let mut tx = self.begin().await?;
        let error = error.map(storable);
        let n = on_conn!(&mut tx, |c| sqlx::query(SQL)
            .bind(now_ms())
            .bind(outcome)
            .bind(error.as_deref())
            .bind(&effect.id)
            .execute(c)
            .await?
            .rows_affected());
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.insert_outbox(&effect.result_event_id, &effect.component, result)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// When the earliest pending delivery is due (its lease included), if any.
    pub async fn next_effect_due(&self) -> Result<Option<i64>, StoreError> {
        const SQL: &str = "SELECT MIN(due_at_ms) FROM effects WHERE done_at_ms IS NULL";
        let (due,): (Option<i64>,) = on_pool!(self, |p| sqlx::query_as(SQL).fetch_one(p).await?);
        Ok(due)
    }

    /// Deliveries of `component`, oldest first (tests and operators).
    pub async fn effects_of(&self, component: &str) -> Result<Vec<EffectStatus>, StoreError> {
        const SQL: &str = "SELECT id, component, kind, attempts, last_error, outcome FROM effects \
                           WHERE component = $1 ORDER BY created_at_ms, id";
        type StatusRow = (String, String, String, i32, Option<String>, Option<String>);
        let rows: Vec<StatusRow> = on_pool!(self, |p| sqlx::query_as(SQL).bind(component).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, component, kind, attempts, last_error, outcome)| EffectStatus {
                id,
                component,
                kind,
                attempts: attempts.max(0) as u32,
                last_error,
                outcome,
            })
            .collect())
    }

    /// Drops finished deliveries older than `before_ms`. Returns how many.
    pub async fn purge_effects(&self, before_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM effects WHERE done_at_ms IS NOT NULL AND done_at_ms < $1";
        Ok(on_pool!(self, |p| sqlx::query(SQL)
            .bind(before_ms)
            .execute(p)
            .await?
            .rows_affected()))
    }
}

/// A failure reason as a text column takes it on both databases: a receiver's error
/// body may hold a NUL (binary or UTF-16 bodies), which PostgreSQL refuses, and then
/// the delivery could never be finished or retried. Control characters other than line
/// breaks and tabs become U+FFFD.
fn storable(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite;
    use super::*;

    fn effect(id: &str) -> NewEffect<'_> {
        NewEffect {
            id,
            component: "notif",
            kind: "http",
            request: "{}",
            result_topic: "done",
            result_event_id: "r1",
            result_headers: &[],
            context: "ctx",
            max_attempts: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 100,
        }
    }

    #[tokio::test]
    async fn a_rolled_back_effect_never_exists_and_a_claimed_one_is_leased() {
        let (_dir, db) = sqlite().await;
        let mut tx = db.begin().await.unwrap();
        tx.insert_effect(&effect("gone")).await.unwrap();
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.insert_effect(&effect("d1")).await.unwrap();
        tx.commit().await.unwrap();

        let now = now_ms();
        let claimed = db.claim_effects(now, 1_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!((claimed[0].id.as_str(), claimed[0].attempt), ("d1", 1));
        // Leased: nobody else gets it until the lease runs out.
        assert!(db.claim_effects(now, 1_000, 10).await.unwrap().is_empty());
        let again = db.claim_effects(now + 1_001, 1_000, 10).await.unwrap();
        assert_eq!(again[0].attempt, 2);

        let result = OutboundMessage {
            topic: "done".into(),
            key: None,
            payload: b"{}".to_vec(),
            headers: vec![],
        };
        assert!(db.finish_effect(&again[0], "delivered", None, &result).await.unwrap());
        // The worker that lost the lease finishes too late: no second outcome event.
        assert!(!db.finish_effect(&claimed[0], "delivered", None, &result).await.unwrap());
        assert_eq!(db.unsent_outbox(10).await.unwrap().len(), 1);
        assert!(db.claim_effects(now + 10_000, 1_000, 10).await.unwrap().is_empty());
        assert_eq!(
            db.effects_of("notif").await.unwrap()[0].outcome.as_deref(),
            Some("delivered")
        );
    }
}
