//! Timers: messages a component scheduled, moved into the outbox once due.

use super::{Db, OutboundMessage, StoreError, Tx, decode_headers, encode_headers, now_ms, on_conn, on_pool};

impl Tx {
    /// Stores a timer that fires `message` at `fire_at_ms`.
    pub async fn insert_timer(
        &mut self,
        id: &str,
        component: &str,
        fire_at_ms: i64,
        message: &OutboundMessage,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO timers (id, component, topic, msg_key, payload, headers, fire_at_ms, created_at_ms) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let headers = encode_headers(&message.headers);
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(id)
            .bind(component)
            .bind(&message.topic)
            .bind(message.key.as_deref())
            .bind(&message.payload)
            .bind(&headers)
            .bind(fire_at_ms)
            .bind(now_ms())
            .execute(c)
            .await?
            .rows_affected());
        self.wrote_timers = true;
        Ok(())
    }

    /// Whether timer `id` of `component` is still pending. In a writing transaction on
    /// PostgreSQL the row stays locked until commit, so the timer pump (which skips
    /// locked rows) cannot fire a timer this transaction is about to cancel.
    pub async fn timer_exists(&mut self, component: &str, id: &str) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT id FROM timers WHERE component = $1 AND id = $2";
        const SQL_PG: &str = "SELECT id FROM timers WHERE component = $1 AND id = $2 FOR UPDATE";
        let sql = if self.is_postgres() && !self.read_only {
            SQL_PG
        } else {
            SQL
        };
        let row: Option<(String,)> = on_conn!(self, |c| sqlx::query_as(sql)
            .bind(component)
            .bind(id)
            .fetch_optional(c)
            .await?);
        Ok(row.is_some())
    }

    /// Cancels a pending timer of `component`; false if it fired or never existed.
    pub async fn cancel_timer(&mut self, component: &str, id: &str) -> Result<bool, StoreError> {
        const SQL: &str = "DELETE FROM timers WHERE component = $1 AND id = $2";
        let n = on_conn!(self, |c| sqlx::query(SQL)
            .bind(component)
            .bind(id)
            .execute(c)
            .await?
            .rows_affected());
        Ok(n > 0)
    }
}

impl Db {
    /// Moves every timer due by `now_ms` into the outbox, in one transaction per batch,
    /// so each fires exactly once even if the host dies halfway. Returns how many fired.
    pub async fn fire_due_timers(&self, now_ms: i64, limit: i64) -> Result<usize, StoreError> {
        const DUE: &str = "SELECT id, component, topic, msg_key, payload, headers FROM timers \
                           WHERE fire_at_ms <= $1 ORDER BY fire_at_ms, id LIMIT $2";
        const DUE_PG: &str = "SELECT id, component, topic, msg_key, payload, headers FROM timers \
                              WHERE fire_at_ms <= $1 ORDER BY fire_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED";
        const DELETE: &str = "DELETE FROM timers WHERE id = $1";
        type Row = (String, String, String, Option<Vec<u8>>, Vec<u8>, String);
        let mut tx = self.begin().await?;
        let sql = if tx.is_postgres() { DUE_PG } else { DUE };
        let due: Vec<Row> = on_conn!(&mut tx, |c| sqlx::query_as(sql)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(c)
            .await?);
        for (id, component, topic, key, payload, headers) in &due {
            let message = OutboundMessage {
                topic: topic.clone(),
                key: key.clone(),
                payload: payload.clone(),
                headers: decode_headers(headers)?,
            };
            // The timer id doubles as the fired event's id, so a retried firing is one event.
            tx.insert_outbox(id, component, &message).await?;
            on_conn!(&mut tx, |c| sqlx::query(DELETE)
                .bind(id)
                .execute(c)
                .await?
                .rows_affected());
        }
        tx.commit().await?;
        Ok(due.len())
    }

    /// When the earliest pending timer is due, if there is one.
    pub async fn next_timer_due(&self) -> Result<Option<i64>, StoreError> {
        let (due,): (Option<i64>,) = on_pool!(self, |p| sqlx::query_as("SELECT MIN(fire_at_ms) FROM timers")
            .fetch_one(p)
            .await?);
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite;
    use super::*;

    #[tokio::test]
    async fn due_timers_move_to_the_outbox_once() {
        let (_dir, db) = sqlite().await;
        let message = OutboundMessage {
            topic: "t".into(),
            key: None,
            payload: b"p".to_vec(),
            headers: vec![("h".into(), "v".into())],
        };
        let mut tx = db.begin().await.unwrap();
        tx.insert_timer("t1", "a", 1_000, &message).await.unwrap();
        tx.insert_timer("t2", "a", 5_000, &message).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(db.fire_due_timers(2_000, 100).await.unwrap(), 1);
        assert_eq!(db.fire_due_timers(2_000, 100).await.unwrap(), 0);
        let rows = db.unsent_outbox(10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, "t1");
        assert_eq!(rows[0].message, message);
        db.mark_sent(&[rows[0].id], "test").await.unwrap();
        assert!(db.unsent_outbox(10).await.unwrap().is_empty());
    }
}
