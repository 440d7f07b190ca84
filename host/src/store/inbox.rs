//! The inbox: which component handled which event id. A claim joins the invocation's
//! transaction, so an event's effects and its "handled" mark commit together. Claims
//! older than the dedup window are pruned.

use std::collections::HashSet;
use std::time::Duration;

use super::{Db, OutboundMessage, Pool, StoreError, Tx, now_ms, on_conn, on_pool};

/// Where an event sat when the inbox recorded it, and what ran it.
#[derive(Debug, Clone, Default)]
pub struct InboxEntry<'a> {
    pub component: &'a str,
    pub event_id: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The component version that ran the event, and the activation that made it active.
    pub version: Option<&'a str>,
    pub activation: Option<i64>,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    /// `committed` or `dead-lettered`.
    pub outcome: &'a str,
}

impl Tx {
    /// Records that `entry.component` handles `entry.event_id`. False when it already
    /// did: the caller must then skip the event. On PostgreSQL a concurrent claim of the
    /// same id waits for the first transaction and then sees it.
    pub async fn claim_inbox(&mut self, entry: &InboxEntry<'_>) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO inbox (component, event_id, topic, partition, \"offset\", handled_at_ms, \
                           version, activation, request_id, trace_id, outcome) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (component, event_id) DO NOTHING";
        let result = on_conn!(self, |c| sqlx::query(SQL)
            .bind(entry.component)
            .bind(entry.event_id)
            .bind(entry.topic)
            .bind(entry.partition)
            .bind(entry.offset)
            .bind(now_ms())
            .bind(entry.version)
            .bind(entry.activation)
            .bind(entry.request_id)
            .bind(entry.trace_id)
            .bind(entry.outcome)
            .execute(c)
            .await?
            .rows_affected());
        Ok(result == 1)
    }
}

/// Where and when an event id was first handled, for the log line of a skipped duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstHandled {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub handled_at_ms: i64,
}

impl Db {
    /// Records `entry` as handled and queues its dead letter, atomically: a redelivery
    /// of the event is then skipped, and the dead letter is sent exactly once. False when
    /// the event was handled before (nothing is queued).
    pub async fn dead_letter(
        &self,
        entry: &InboxEntry<'_>,
        dead_letter_id: &str,
        message: &OutboundMessage,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !tx.claim_inbox(entry).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.insert_outbox(dead_letter_id, entry.component, message).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Which of `event_ids` `component` handled already: checked before running a group
    /// of events, so a redelivered event costs no run (the commit still checks again).
    pub async fn handled(&self, component: &str, event_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        const SQL: &str =
            "SELECT event_id FROM inbox WHERE component = $1 AND event_id IN (SELECT value FROM json_each($2))";
        const SQL_PG: &str = "SELECT event_id FROM inbox WHERE component = $1 AND event_id = ANY($2)";
        if event_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(String,)> = match (&self.pool, &self.readers) {
            (Pool::Postgres(pool), _) => {
                sqlx::query_as(SQL_PG)
                    .bind(component)
                    .bind(event_ids)
                    .fetch_all(pool)
                    .await?
            }
            (Pool::Sqlite(pool), readers) => {
                let list = serde_json::to_string(event_ids).expect("strings serialize");
                let pool = readers.as_ref().unwrap_or(pool);
                sqlx::query_as(SQL).bind(component).bind(list).fetch_all(pool).await?
            }
        };
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Where `component` first handled `event_id`, if it did.
    pub async fn first_handled(&self, component: &str, event_id: &str) -> Result<Option<FirstHandled>, StoreError> {
        const SQL: &str = "SELECT topic, partition, \"offset\", handled_at_ms FROM inbox \
                           WHERE component = $1 AND event_id = $2";
        let row: Option<(String, i32, i64, i64)> = on_pool!(self, |p| sqlx::query_as(SQL)
            .bind(component)
            .bind(event_id)
            .fetch_optional(p)
            .await?);
        Ok(row.map(|(topic, partition, offset, handled_at_ms)| FirstHandled {
            topic,
            partition,
            offset,
            handled_at_ms,
        }))
    }

    /// Deletes inbox claims, sent outbox rows and the gateway's Idempotency-Key records
    /// older than `window` (parked rows stay until an operator deals with them; a key
    /// still locked by its request stays too), in bounded batches so no statement holds
    /// the write lock for long. Returns how many rows went.
    ///
    /// The window is the dedup horizon: an event redelivered later than `window` after
    /// it was handled runs again, so keep it longer than any redelivery you expect
    /// (Kafka retention of the input topics, replays of old offsets).
    pub async fn prune(&self, window: Duration, batch: i64) -> Result<u64, StoreError> {
        const INBOX: &str = "DELETE FROM inbox WHERE (component, event_id) IN \
                             (SELECT component, event_id FROM inbox WHERE handled_at_ms < $1 LIMIT $2)";
        const OUTBOX: &str = "DELETE FROM outbox WHERE id IN \
                              (SELECT id FROM outbox WHERE sent_at_ms IS NOT NULL AND sent_at_ms < $1 LIMIT $2)";
        const IDEMPOTENCY: &str = "DELETE FROM gateway_idempotency WHERE (username, idem_key) IN \
                                   (SELECT username, idem_key FROM gateway_idempotency WHERE created_at_ms < $1 \
                                   AND (locked_until_ms IS NULL OR locked_until_ms < $1) LIMIT $2)";
        let before = now_ms() - window.as_millis() as i64;
        let mut total = 0;
        for sql in [INBOX, OUTBOX, IDEMPOTENCY] {
            loop {
                let n = on_pool!(self, |p| sqlx::query(sql)
                    .bind(before)
                    .bind(batch)
                    .execute(p)
                    .await?
                    .rows_affected());
                total += n;
                if n < batch as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite;
    use super::*;
    use crate::store::Table;

    #[tokio::test]
    async fn inbox_claims_once_and_rollback_forgets() {
        let (_dir, db) = sqlite().await;
        let entry = InboxEntry {
            component: "a",
            event_id: "e1",
            topic: "t",
            partition: 0,
            offset: 7,
            ..Default::default()
        };
        let mut tx = db.begin().await.unwrap();
        assert!(tx.claim_inbox(&entry).await.unwrap());
        tx.put("a", "k", b"v").await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(db.peek("a", "k").await.unwrap(), None);

        let mut tx = db.begin().await.unwrap();
        assert!(tx.claim_inbox(&entry).await.unwrap());
        tx.commit().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        assert!(!tx.claim_inbox(&entry).await.unwrap());
        tx.rollback().await.unwrap();
        let first = db.first_handled("a", "e1").await.unwrap().unwrap();
        assert_eq!((first.topic.as_str(), first.offset), ("t", 7));
    }

    #[tokio::test]
    async fn retention_keeps_the_inbox_and_outbox_bounded() {
        let (_dir, db) = sqlite().await;
        let message = OutboundMessage {
            topic: "t".into(),
            key: None,
            payload: vec![],
            headers: vec![],
        };
        // 300 handled events, each with a sent outbox row, and one unsent row.
        for i in 0..300 {
            let mut tx = db.begin().await.unwrap();
            let id = format!("e{i}");
            let entry = InboxEntry {
                component: "a",
                event_id: &id,
                topic: "t",
                partition: 0,
                offset: i,
                ..Default::default()
            };
            assert!(tx.claim_inbox(&entry).await.unwrap());
            tx.insert_outbox(&format!("o{i}"), "a", &message).await.unwrap();
            tx.commit().await.unwrap();
        }
        let sent: Vec<i64> = db.unsent_outbox(1000).await.unwrap().iter().map(|r| r.id).collect();
        db.mark_sent(&sent, "test").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.insert_outbox("unsent", "a", &message).await.unwrap();
        tx.commit().await.unwrap();
        // And one Idempotency-Key record of the gateway, its request answered.
        on_pool!(&db, |p| sqlx::query(
            "INSERT INTO gateway_idempotency (username, idem_key, fingerprint, request_id, created_at_ms) \
             VALUES ('u', 'k', '{}', 'r', $1)"
        )
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());

        // Within the window nothing goes; past it everything handled and sent goes, in
        // batches smaller than the backlog, and the unsent row stays.
        assert_eq!(db.prune(Duration::from_secs(3600), 64).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(db.prune(Duration::ZERO, 64).await.unwrap(), 601);
        assert_eq!(db.count(Table::Inbox).await.unwrap(), 0);
        assert_eq!(db.count(Table::Outbox).await.unwrap(), 1);
        assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 1);
    }
}
