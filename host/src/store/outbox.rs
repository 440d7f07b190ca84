//! The transactional outbox: messages committed with their invocation, relayed to Kafka
//! in id order and marked sent once the broker acknowledged them. A row the broker can
//! never take is parked with its reason, so it blocks nothing behind it.

use std::fs::File;

use super::{
    Db, OutboundMessage, Pool, StoreError, Tx, TxInner, decode_headers, encode_headers, now_ms, on_conn, on_pool,
};

/// An outbox row waiting for the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub component: String,
    pub message: OutboundMessage,
}

/// A row set aside because the broker refused it for good.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParkedRow {
    pub id: i64,
    pub event_id: String,
    pub component: String,
    pub topic: String,
    pub reason: String,
    pub parked_at_ms: i64,
}

type Row = (i64, String, String, String, Option<Vec<u8>>, Vec<u8>, String);

const UNSENT: &str = "SELECT id, event_id, component, topic, msg_key, payload, headers FROM outbox \
                      WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL AND id > $2 ORDER BY id LIMIT $1";
const UNSENT_IN: &str = "SELECT id, event_id, component, topic, msg_key, payload, headers FROM outbox \
                         WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL AND shard = ANY($2) AND id > $3 \
                         ORDER BY id LIMIT $1";

fn outbox_rows(rows: Vec<Row>) -> Result<Vec<OutboxRow>, StoreError> {
    rows.into_iter()
        .map(|(id, event_id, component, topic, key, payload, headers)| {
            Ok(OutboxRow {
                id,
                event_id,
                component,
                message: OutboundMessage {
                    topic,
                    key,
                    payload,
                    headers: decode_headers(&headers)?,
                },
            })
        })
        .collect()
}

/// The PostgreSQL notification channel of committed outbox rows.
pub const OUTBOX_CHANNEL: &str = "switchyard_outbox";

/// Shards of the outbox. Each is relayed by one host at a time, and the rows of one topic
/// and key are always in the same shard, so per-key order holds while the hosts share the
/// relaying (see [`RelayLock::rebalance`]).
pub const RELAY_SHARDS: i16 = 8;
/// Advisory lock keys on PostgreSQL: every relay holds [`MEMBER_LOCK`] shared, so the
/// relays can count each other, and `SHARD_LOCK_BASE + shard` for each shard it relays.
const MEMBER_LOCK: i64 = 7_243_100;
const SHARD_LOCK_BASE: i64 = 7_243_101;

/// The shard of a message: by topic and key, or by event id for a message without a key
/// (no order to keep).
pub fn shard_of(topic: &str, key: Option<&[u8]>, event_id: &str) -> i16 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(topic.as_bytes());
    hash.update([0]);
    match key {
        Some(key) => hash.update(key),
        None => hash.update(event_id.as_bytes()),
    }
    let digest = hash.finalize();
    (u16::from_be_bytes([digest[0], digest[1]]) % RELAY_SHARDS as u16) as i16
}

// Marking sent goes by id, never by range: ids are taken at insert, so a row with a
// lower id can still become visible after a batch was read.
const MARK_SENT_SQLITE: &str =
    "UPDATE outbox SET sent_at_ms = $1, relayed_by = $3 WHERE id IN (SELECT value FROM json_each($2))";
const MARK_SENT_PG: &str = "UPDATE outbox SET sent_at_ms = $1, relayed_by = $3 WHERE id = ANY($2)";

impl Tx {
    /// Marks outbox rows as delivered to Kafka by relay `by`, in one statement.
    pub(crate) async fn mark_sent(&mut self, ids: &[i64], by: &str) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            TxInner::Postgres(t) => {
                // Planned for its own ids each time (an unnamed statement: one more round
                // trip, off the saga's path). A plan cached while `outbox` was small kept
                // scanning the whole table until autovacuum analyzed it, a minute or more
                // on a new database: in a 15 s `just load` at 100 orders/s 2,090 marks took
                // 2.5 ms each, two thirds of PostgreSQL's statement time; planned each
                // time, 0.2 ms.
                sqlx::query(MARK_SENT_PG)
                    .persistent(false)
                    .bind(now_ms())
                    .bind(ids)
                    .bind(by)
                    .execute(&mut **t)
                    .await?;
            }
            TxInner::Sqlite(t) => {
                let list = serde_json::to_string(ids).expect("integers serialize");
                sqlx::query(MARK_SENT_SQLITE)
                    .bind(now_ms())
                    .bind(list)
                    .bind(by)
                    .execute(&mut **t)
                    .await?;
            }
            TxInner::SqliteReader(_) | TxInner::PostgresReader(_) => {
                return Err(StoreError::Commit(
                    "outbox rows marked outside a write transaction".into(),
                ));
            }
        }
        Ok(())
    }
    /// Queues a message for the relay, as part of this transaction.
    pub async fn insert_outbox(
        &mut self,
        event_id: &str,
        component: &str,
        message: &OutboundMessage,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO outbox (event_id, component, topic, msg_key, payload, headers, created_at_ms, \
                           shard) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let headers = encode_headers(&message.headers);
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(event_id)
            .bind(component)
            .bind(&message.topic)
            .bind(message.key.as_deref())
            .bind(&message.payload)
            .bind(&headers)
            .bind(now_ms())
            .bind(shard_of(&message.topic, message.key.as_deref(), event_id))
            .execute(c)
            .await?
            .rows_affected());
        if !self.wrote_outbox && self.is_postgres() {
            // Delivered at commit (NOTIFY is transactional) to the relay of whichever host
            // holds the lock, so rows written by other hosts go out without a poll.
            let origin = self.signals.origin.clone();
            on_conn!(self, |c| sqlx::query("SELECT pg_notify($1, $2)")
                .bind(OUTBOX_CHANNEL)
                .bind(origin)
                .execute(c)
                .await?
                .rows_affected());
        }
        self.wrote_outbox = true;
        Ok(())
    }
}

impl Db {
    /// On PostgreSQL, a listener woken whenever any host commits outbox rows.
    pub async fn outbox_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(OUTBOX_CHANNEL).await?;
                Ok(Some(listener))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }

    /// Unsent, unparked outbox rows in commit order, oldest first.
    pub async fn unsent_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.unsent_outbox_in(limit, None, 0).await
    }

    /// [`Db::unsent_outbox`] of some shards only (None: all), with ids above `after`.
    pub async fn unsent_outbox_in(
        &self,
        limit: i64,
        shards: Option<&[i16]>,
        after: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<Row> = match (&self.pool, shards) {
            (Pool::Postgres(pool), Some(shards)) => {
                sqlx::query_as(UNSENT_IN)
                    .bind(limit)
                    .bind(shards)
                    .bind(after)
                    .fetch_all(pool)
                    .await?
            }
            _ => on_pool!(self, |p| sqlx::query_as(UNSENT)
                .bind(limit)
                .bind(after)
                .fetch_all(p)
                .await?),
        };
        outbox_rows(rows)
    }

    /// Marks outbox rows as delivered to Kafka by relay `by`. On SQLite in the
    /// transaction of the next group commit (see [`super::group`]), or alone when no chain
    /// waits; on PostgreSQL in a statement of its own.
    ///
    /// SQLite has one write connection. Measured with marks in transactions of their
    /// own (30,000 full-effect events, durable): 175 marks, each its own transaction and
    /// fsync, took 10 ms apiece in the relay, and the groups' BEGIN waited 2.3–3.3 s of a
    /// 5–5.6 s run for the write connection (0.64 s in the no-op row, which has no
    /// marks). Riding on the group, alternating runs of the two builds gave 6,300 and
    /// 7,670 events/s against 5,930 and 5,500 (medians of 3). PostgreSQL moved within its
    /// noise, and there a mark alone is a 0.2 ms statement beside the group instead of a
    /// wait behind it, so it stays one.
    pub async fn mark_sent(&self, ids: &[i64], by: &str) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match &self.pool {
            Pool::Sqlite(_) => self.commit_marks(ids.to_vec(), by.to_string()).await,
            Pool::Postgres(pool) => {
                sqlx::query(MARK_SENT_PG)
                    .persistent(false)
                    .bind(now_ms())
                    .bind(ids)
                    .bind(by)
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// Sets a row aside that the broker will never take, with the reason.
    pub async fn park(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET parked_at_ms = $1, park_reason = $2 WHERE id = $3";
        on_pool!(self, |p| sqlx::query(SQL)
            .bind(now_ms())
            .bind(reason)
            .bind(id)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Rows parked by the relay, oldest first.
    pub async fn parked_outbox(&self, limit: i64) -> Result<Vec<ParkedRow>, StoreError> {
        const SQL: &str = "SELECT id, event_id, component, topic, COALESCE(park_reason, ''), parked_at_ms FROM outbox \
                           WHERE parked_at_ms IS NOT NULL ORDER BY id LIMIT $1";
        let rows: Vec<(i64, String, String, String, String, i64)> =
            on_pool!(self, |p| sqlx::query_as(SQL).bind(limit).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, event_id, component, topic, reason, parked_at_ms)| ParkedRow {
                id,
                event_id,
                component,
                topic,
                reason,
                parked_at_ms,
            })
            .collect())
    }

    /// Puts parked rows back in the queue (after the topic was created or its size limit
    /// raised); all of them without `id`. Returns how many.
    pub async fn requeue_parked(&self, id: Option<i64>) -> Result<u64, StoreError> {
        const ONE: &str =
            "UPDATE outbox SET parked_at_ms = NULL, park_reason = NULL WHERE parked_at_ms IS NOT NULL AND id = $1";
        const ALL: &str = "UPDATE outbox SET parked_at_ms = NULL, park_reason = NULL WHERE parked_at_ms IS NOT NULL";
        let n = match id {
            Some(id) => on_pool!(self, |p| sqlx::query(ONE).bind(id).execute(p).await?.rows_affected()),
            None => on_pool!(self, |p| sqlx::query(ALL).execute(p).await?.rows_affected()),
        };
        if n > 0 {
            self.signals.outbox.notify_one();
        }
        Ok(n)
    }

    /// Makes this host a relay. On PostgreSQL every host is one, and the shards are
    /// shared out among them ([`RelayLock::rebalance`]): a shard is a session advisory lock
    /// held by a connection of the relay's own, so a dead host's shards are free again
    /// when its session ends. On SQLite one process relays everything: an exclusive lock
    /// on a file beside the database, so a second `switchyard run` on the same data
    /// directory does not relay too; None when another process holds it.
    pub async fn try_relay_lock(&self) -> Result<Option<RelayLock>, StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => {
                let Some(db_path) = &self.sqlite_path else {
                    // An in-memory database belongs to this process alone.
                    return Ok(Some(RelayLock::Process));
                };
                let path = db_path.with_extension("relay.lock");
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|source| StoreError::Lock {
                        path: path.display().to_string(),
                        source,
                    })?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(RelayLock::File(file))),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock {
                        path: path.display().to_string(),
                        source,
                    }),
                }
            }
            Pool::Postgres(pool) => {
                // Detached from the pool: when the lock is dropped the session ends and
                // PostgreSQL releases its locks, instead of them lingering on a pooled connection.
                let mut conn = pool.acquire().await?.detach();
                sqlx::query("SELECT pg_advisory_lock_shared($1)")
                    .bind(MEMBER_LOCK)
                    .execute(&mut conn)
                    .await?;
                let mut lock = RelayLock::Postgres {
                    conn,
                    shards: Vec::new(),
                };
                lock.rebalance().await?;
                Ok(Some(lock))
            }
        }
    }
}

/// Membership among the outbox relays (see [`Db::try_relay_lock`]).
pub enum RelayLock {
    /// The session holding the member lock and the locks of `shards`.
    Postgres {
        conn: sqlx::PgConnection,
        shards: Vec<i16>,
    },
    /// The locked file; the lock goes with the file handle.
    File(File),
    Process,
}

impl RelayLock {
    /// The shards this relay sends; None: all of them.
    pub fn shards(&self) -> Option<&[i16]> {
        match self {
            RelayLock::Postgres { shards, .. } => Some(shards),
            RelayLock::File(_) | RelayLock::Process => None,
        }
    }

    /// The unsent rows of this relay's shards with ids above `after` (0: all), oldest
    /// first, at most `limit`. On
    /// PostgreSQL they are read on the session holding the shard locks: a session can die
    /// under the relay (a restarted server, a killed backend), and the server then frees
    /// its locks for other hosts to take, so a read that succeeds on it shows the shards
    /// are still this relay's, and an error that they may not be (drop the lock).
    pub async fn unsent(&mut self, db: &Db, limit: i64, after: i64) -> Result<Vec<OutboxRow>, StoreError> {
        match self {
            RelayLock::Postgres { conn, shards } => {
                let rows: Vec<Row> = sqlx::query_as(UNSENT_IN)
                    .bind(limit)
                    .bind(&shards[..])
                    .bind(after)
                    .fetch_all(conn)
                    .await?;
                outbox_rows(rows)
            }
            RelayLock::File(_) | RelayLock::Process => db.unsent_outbox_in(limit, None, after).await,
        }
    }

    /// Takes this relay's fair share of the shards: with N relays, at most ⌈shards / N⌉
    /// each. A relay over its share lets the extra shards go (between batches, so
    /// nothing of theirs is in flight); one under it takes free ones. Run every second by
    /// each relay, the shares settle within a second or two of a host joining or leaving.
    /// Returns whether the set changed; an error means the session is gone.
    pub async fn rebalance(&mut self) -> Result<bool, StoreError> {
        let RelayLock::Postgres { conn, shards } = self else {
            return Ok(false);
        };
        const MEMBERS: &str = "SELECT COUNT(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' \
                               AND objid = $1 AND granted \
                               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        let (members,): (i64,) = sqlx::query_as(MEMBERS).bind(MEMBER_LOCK).fetch_one(&mut *conn).await?;
        let members = members.max(1);
        let share = ((i64::from(RELAY_SHARDS) + members - 1) / members) as usize;
        let mut held = held_shards(conn).await?;
        let before = held.clone();
        while held.len() > share {
            let shard = held.pop().expect("longer than the share");
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(SHARD_LOCK_BASE + i64::from(shard))
                .execute(&mut *conn)
                .await?;
        }
        for shard in 0..RELAY_SHARDS {
            if held.len() >= share {
                break;
            }
            if held.contains(&shard) {
                continue;
            }
            let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(SHARD_LOCK_BASE + i64::from(shard))
                .fetch_one(&mut *conn)
                .await?;
            if taken {
                held.push(shard);
            }
        }
        held.sort_unstable();
        let changed = held != before;
        *shards = held;
        Ok(changed)
    }
}

/// The shards the session holds, in order.
async fn held_shards(conn: &mut sqlx::PgConnection) -> Result<Vec<i16>, StoreError> {
    const SQL: &str = "SELECT objid::int8 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
                       AND granted AND objid::int8 BETWEEN $1 AND $2";
    let rows: Vec<(i64,)> = sqlx::query_as(SQL)
        .bind(SHARD_LOCK_BASE)
        .bind(SHARD_LOCK_BASE + i64::from(RELAY_SHARDS) - 1)
        .fetch_all(conn)
        .await?;
    let mut shards: Vec<i16> = rows.into_iter().map(|(id,)| (id - SHARD_LOCK_BASE) as i16).collect();
    shards.sort_unstable();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite;
    use super::*;
    use crate::store::Table;

    fn message(topic: &str) -> OutboundMessage {
        OutboundMessage {
            topic: topic.into(),
            key: None,
            payload: b"p".to_vec(),
            headers: vec![("h".into(), "v".into())],
        }
    }

    #[tokio::test]
    async fn parked_rows_leave_the_queue_until_requeued() {
        let (_dir, db) = sqlite().await;
        let mut tx = db.begin().await.unwrap();
        for i in 0..3 {
            tx.insert_outbox(&format!("e{i}"), "a", &message("t")).await.unwrap();
        }
        tx.commit().await.unwrap();
        let rows = db.unsent_outbox(10).await.unwrap();
        db.park(rows[0].id, "message too large").await.unwrap();
        db.mark_sent(&[rows[1].id, rows[2].id], "test").await.unwrap();
        assert!(db.unsent_outbox(10).await.unwrap().is_empty());
        let parked = db.parked_outbox(10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].reason, "message too large");
        assert_eq!(db.count(Table::ParkedOutbox).await.unwrap(), 1);
        assert_eq!(db.requeue_parked(None).await.unwrap(), 1);
        assert_eq!(db.unsent_outbox(10).await.unwrap()[0].event_id, "e0");
    }

    #[tokio::test]
    async fn one_relay_per_sqlite_file() {
        let (dir, db) = sqlite().await;
        let other_process = Db::open(None, dir.path()).await.unwrap();
        let lock = db.try_relay_lock().await.unwrap();
        assert!(lock.is_some());
        assert!(other_process.try_relay_lock().await.unwrap().is_none());
        drop(lock);
        assert!(other_process.try_relay_lock().await.unwrap().is_some());
    }
}
