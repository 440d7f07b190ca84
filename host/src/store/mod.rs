//! Durable state: component key-value storage, the inbox, the outbox and timers, on
//! SQLite (the embedded default, a file under the data directory) or PostgreSQL.
//!
//! An invocation runs inside one [`Tx`]: its inbox claim, storage writes, published
//! messages and timers commit together or not at all. SQL is written once with `$n`
//! placeholders, which both drivers accept; where the dialects differ, both texts stand
//! side by side.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// A storage failure at the library boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}; check the URL and that the server is running")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("value under {key:?} is not a decimal integer ({found:?}); increment only works on counters")]
    NotANumber { key: String, found: String },
    #[error("counter {key:?} would overflow i64")]
    Overflow { key: String },
}

/// A message on its way to Kafka: published by a component, fired by a timer, or a
/// dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// An outbox row waiting for the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub component: String,
    pub message: OutboundMessage,
}

/// Where an event sat when the inbox recorded it.
#[derive(Debug, Clone)]
pub struct InboxEntry<'a> {
    pub component: &'a str,
    pub event_id: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The database, embedded or server.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// One open transaction.
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the transaction's connection, for either driver.
macro_rules! on_conn {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to the pool, for either driver.
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    /// Opens PostgreSQL when `url` is given, else SQLite at `<data_dir>/switchyard.db`,
    /// and brings the schema up to date.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Db, StoreError> {
        let db = match url {
            Some(url) if url.starts_with("postgres") => {
                let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                    url: redact(url),
                    source,
                })?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact(url),
                        source,
                    })?;
                Db::Postgres(pool)
            }
            Some(url) => Db::Sqlite(
                Self::sqlite(
                    SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                        url: url.to_string(),
                        source,
                    })?,
                    url,
                )
                .await?,
            ),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let path = data_dir.join("switchyard.db");
                let options = SqliteConnectOptions::new().filename(&path);
                Db::Sqlite(Self::sqlite(options, &path.display().to_string()).await?)
            }
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn sqlite(options: SqliteConnectOptions, url: &str) -> Result<SqlitePool, StoreError> {
        // SQLite has one writer. One pooled connection makes this process's transactions
        // queue on the pool (fair, no sleeping) instead of on SQLite's busy handler, which
        // backs off in milliseconds; the busy timeout and BEGIN IMMEDIATE (see `begin`)
        // still order writers of other processes on the same file (`switchyard invoke`).
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Which engine, for logs and benchmarks.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Starts a transaction. SQLite takes the write lock up front so that two writers
    /// never deadlock upgrading from read to write.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Starts a transaction for reading only (read-only queries). PostgreSQL refuses any
    /// write in it, behind the host's own read-only checks; SQLite begins it deferred, so
    /// it takes no write lock from writers in other processes.
    pub async fn begin_read_only(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN DEFERRED").await?),
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
                Tx::Postgres(tx)
            }
        })
    }

    /// Unsent outbox rows in commit order, oldest first.
    pub async fn unsent_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        const SQL: &str = "SELECT id, event_id, component, topic, msg_key, payload, headers FROM outbox \
                           WHERE sent_at_ms IS NULL ORDER BY id LIMIT $1";
        type Row = (i64, String, String, String, Option<Vec<u8>>, Vec<u8>, String);
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(SQL).bind(limit).fetch_all(p).await?);
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

    /// Marks outbox rows as delivered to Kafka.
    pub async fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        // By id, never by range: ids are taken at insert, so a row with a lower id can
        // still become visible after this batch was read.
        const SQL: &str = "UPDATE outbox SET sent_at_ms = $1 WHERE id = $2";
        const SQL_PG: &str = "UPDATE outbox SET sent_at_ms = $1 WHERE id = ANY($2)";
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                sqlx::query(SQL_PG).bind(now_ms()).bind(ids).execute(pool).await?;
                Ok(())
            }
            Db::Sqlite(_) => {
                let mut tx = self.begin().await?;
                for id in ids {
                    on_conn!(&mut tx, |c| sqlx::query(SQL)
                        .bind(now_ms())
                        .bind(id)
                        .execute(c)
                        .await?
                        .rows_affected());
                }
                tx.commit().await
            }
        }
    }

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
        let sql = if matches!(tx, Tx::Postgres(_)) { DUE_PG } else { DUE };
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

    /// On PostgreSQL, several hosts share one outbox; only the holder of this lock
    /// relays it, so rows go out in commit order. The lock lives as long as the returned
    /// connection (a dead host's lock vanishes with its session). SQLite has one host.
    pub async fn try_relay_lock(&self) -> Result<Option<RelayLock>, StoreError> {
        match self {
            Db::Sqlite(_) => Ok(Some(RelayLock { _session: None })),
            Db::Postgres(pool) => {
                // Detached from the pool: when the lock is dropped the session ends and
                // PostgreSQL releases the lock, instead of it lingering on a pooled connection.
                let mut conn = pool.acquire().await?.detach();
                let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(7243001)")
                    .fetch_one(&mut conn)
                    .await?;
                Ok(locked.then(|| RelayLock { _session: Some(conn) }))
            }
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }

    /// Counts rows of a table (tests and operators' status output).
    pub async fn count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Kv => "SELECT COUNT(*) FROM kv",
            Table::Inbox => "SELECT COUNT(*) FROM inbox",
            Table::Outbox => "SELECT COUNT(*) FROM outbox",
            Table::UnsentOutbox => "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL",
            Table::Timers => "SELECT COUNT(*) FROM timers",
        };
        let (n,): (i64,) = on_pool!(self, |p| sqlx::query_as(sql).fetch_one(p).await?);
        Ok(n)
    }

    /// Reads a component's value outside any invocation (tests, `invoke` output).
    pub async fn peek(&self, component: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut tx = self.begin().await?;
        let value = tx.get(component, key).await?;
        tx.rollback().await?;
        Ok(value)
    }
}

/// Proof of being the one outbox relay (see [`Db::try_relay_lock`]).
pub struct RelayLock {
    /// The session holding the advisory lock (PostgreSQL only); kept open, never read.
    _session: Option<sqlx::PgConnection>,
}

/// Tables [`Db::count`] can count.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Kv,
    Inbox,
    Outbox,
    UnsentOutbox,
    Timers,
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }

    /// Records that `entry.component` handles `entry.event_id`. False when it already
    /// did: the caller must then skip the event. On PostgreSQL a concurrent claim of the
    /// same id waits for the first transaction and then sees it.
    pub async fn claim_inbox(&mut self, entry: &InboxEntry<'_>) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO inbox (component, event_id, topic, partition, \"offset\", handled_at_ms) \
                           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (component, event_id) DO NOTHING";
        let result = on_conn!(self, |c| sqlx::query(SQL)
            .bind(entry.component)
            .bind(entry.event_id)
            .bind(entry.topic)
            .bind(entry.partition)
            .bind(entry.offset)
            .bind(now_ms())
            .execute(c)
            .await?
            .rows_affected());
        Ok(result == 1)
    }

    pub async fn get(&mut self, component: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        const SQL: &str = "SELECT value FROM kv WHERE component = $1 AND key = $2";
        let row: Option<(Vec<u8>,)> = on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(component)
            .bind(key)
            .fetch_optional(c)
            .await?);
        Ok(row.map(|(v,)| v))
    }

    pub async fn put(&mut self, component: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO kv (component, key, value) VALUES ($1, $2, $3) \
                           ON CONFLICT (component, key) DO UPDATE SET value = excluded.value";
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(component)
            .bind(key)
            .bind(value)
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

    pub async fn delete(&mut self, component: &str, key: &str) -> Result<bool, StoreError> {
        const SQL: &str = "DELETE FROM kv WHERE component = $1 AND key = $2";
        let n = on_conn!(self, |c| sqlx::query(SQL)
            .bind(component)
            .bind(key)
            .execute(c)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Keys with `prefix` after `start_after`, in byte order, at most `limit`.
    pub async fn list_prefix(
        &mut self,
        component: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // `key >= prefix` lets the primary key index start at the prefix; the substr test
        // stops at its end without LIKE's escaping rules.
        const SQL: &str = "SELECT key, value FROM kv WHERE component = $1 AND key >= $2 AND key > $3 \
                           AND substr(key, 1, length($2)) = $2 ORDER BY key LIMIT $4";
        let after = start_after.unwrap_or("");
        let rows: Vec<(String, Vec<u8>)> = on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(component)
            .bind(prefix)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?);
        Ok(rows)
    }

    /// Adds `delta` to the decimal counter under `key` (absent is 0) and returns it.
    /// Built on compare-and-swap, so concurrent increments from other partitions (other
    /// transactions on PostgreSQL) are never lost: a lost race reads again and retries.
    pub async fn increment(&mut self, component: &str, key: &str, delta: i64) -> Result<i64, StoreError> {
        loop {
            let current = self.get(component, key).await?;
            let value = match &current {
                None => 0,
                Some(bytes) => {
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    text.trim().parse::<i64>().map_err(|_| StoreError::NotANumber {
                        key: key.to_string(),
                        found: text.clone(),
                    })?
                }
            };
            let next = value
                .checked_add(delta)
                .ok_or_else(|| StoreError::Overflow { key: key.to_string() })?;
            let next_text = next.to_string();
            if self
                .compare_and_swap(component, key, current.as_deref(), Some(next_text.as_bytes()))
                .await?
            {
                return Ok(next);
            }
        }
    }

    /// Swaps `key` from `expected` to `new` (none: absent / delete) if it matches. Each
    /// case is one conditional statement, atomic against concurrent transactions: on
    /// PostgreSQL an UPDATE re-checks its condition after waiting for a row lock, and an
    /// insert of an absent key conflicts with a concurrent one.
    pub async fn compare_and_swap(
        &mut self,
        component: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        const INSERT: &str = "INSERT INTO kv (component, key, value) VALUES ($1, $2, $3) \
                              ON CONFLICT (component, key) DO NOTHING";
        const UPDATE: &str = "UPDATE kv SET value = $3 WHERE component = $1 AND key = $2 AND value = $4";
        const DELETE: &str = "DELETE FROM kv WHERE component = $1 AND key = $2 AND value = $3";
        let changed = match (expected, new) {
            (None, Some(new)) => on_conn!(self, |c| sqlx::query(INSERT)
                .bind(component)
                .bind(key)
                .bind(new)
                .execute(c)
                .await?
                .rows_affected()),
            (Some(old), Some(new)) => on_conn!(self, |c| sqlx::query(UPDATE)
                .bind(component)
                .bind(key)
                .bind(new)
                .bind(old)
                .execute(c)
                .await?
                .rows_affected()),
            (Some(old), None) => on_conn!(self, |c| sqlx::query(DELETE)
                .bind(component)
                .bind(key)
                .bind(old)
                .execute(c)
                .await?
                .rows_affected()),
            (None, None) => return Ok(self.get(component, key).await?.is_none()),
        };
        Ok(changed == 1)
    }

    /// Queues a message for the relay, as part of this transaction.
    pub async fn insert_outbox(
        &mut self,
        event_id: &str,
        component: &str,
        message: &OutboundMessage,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO outbox (event_id, component, topic, msg_key, payload, headers, created_at_ms) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let headers = encode_headers(&message.headers);
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(event_id)
            .bind(component)
            .bind(&message.topic)
            .bind(message.key.as_deref())
            .bind(&message.payload)
            .bind(&headers)
            .bind(now_ms())
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

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
        Ok(())
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

fn encode_headers(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("string pairs always serialize")
}

fn decode_headers(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Sql(sqlx::Error::Decode(Box::new(e))))
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn namespaces_are_separate_and_prefix_listing_is_exact() {
        let (_dir, db) = sqlite().await;
        let mut tx = db.begin().await.unwrap();
        tx.put("a", "user/1", b"x").await.unwrap();
        tx.put("a", "user/2", b"y").await.unwrap();
        tx.put("a", "users", b"z").await.unwrap();
        tx.put("b", "user/3", b"w").await.unwrap();
        let keys: Vec<String> = tx
            .list_prefix("a", "user/", None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["user/1", "user/2"]);
        let page: Vec<String> = tx
            .list_prefix("a", "user/", Some("user/1"), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(page, vec!["user/2"]);
        assert_eq!(tx.get("b", "user/1").await.unwrap(), None);
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn increment_and_compare_and_swap() {
        let (_dir, db) = sqlite().await;
        let mut tx = db.begin().await.unwrap();
        assert_eq!(tx.increment("a", "n", 5).await.unwrap(), 5);
        assert_eq!(tx.increment("a", "n", -2).await.unwrap(), 3);
        tx.put("a", "s", b"text").await.unwrap();
        assert!(matches!(
            tx.increment("a", "s", 1).await,
            Err(StoreError::NotANumber { .. })
        ));
        assert!(!tx.compare_and_swap("a", "k", Some(b"v"), Some(b"w")).await.unwrap());
        assert!(tx.compare_and_swap("a", "k", None, Some(b"v")).await.unwrap());
        assert!(tx.compare_and_swap("a", "k", Some(b"v"), None).await.unwrap());
        assert_eq!(tx.get("a", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn inbox_claims_once_and_rollback_forgets() {
        let (_dir, db) = sqlite().await;
        let entry = InboxEntry {
            component: "a",
            event_id: "e1",
            topic: "t",
            partition: 0,
            offset: 7,
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
    }

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
        db.mark_sent(&[rows[0].id]).await.unwrap();
        assert!(db.unsent_outbox(10).await.unwrap().is_empty());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
