//! Durable state on SQLite (the embedded default, a file under the data directory) or
//! PostgreSQL, one file per table: component key-value storage ([`kv`]), the inbox of
//! handled events ([`inbox`]), the outbox of messages on their way to Kafka
//! ([`outbox`]), timers ([`timers`]) and component versions ([`components`]).
//!
//! An invocation reads, and stages its writes ([`staged`]); its reads are checked, its inbox
//! claim, storage writes, published messages, timers and deliveries then commit
//! together or not at all, in one transaction shared with other events ([`group`]). SQL is written once with `$n`
//! placeholders, which both drivers accept; where the dialects differ, both texts stand
//! side by side.

mod components;
mod effects;
pub mod group;
mod held;
pub(crate) mod hot;
mod inbox;
mod kv;
mod multirow;
mod outbox;
mod spare;
pub mod staged;
pub mod timeline;
mod timers;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use held::Held;
use tokio::sync::Notify;

pub use components::{Activation, StoredVersion};
pub use effects::{ClaimedEffect, EffectStatus, NewEffect};
pub use group::{ChainResult, Settled, Submitted, UnitResult};
pub use inbox::InboxEntry;
pub use outbox::{OutboxRow, ParkedRow, RELAY_SHARDS, RelayLock, shard_of};
pub use staged::{InboxRecord, Overlay, Staged, StagedEffect, Unit};

use crate::protocol::Signer;

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
    #[error("cannot lock {path}: {source}")]
    Lock { path: String, source: std::io::Error },
    #[error("group commit failed: {0}")]
    Commit(String),
}

impl StoreError {
    /// True when the database refused the data itself (a value it cannot store, an index
    /// row over its size limit), so retrying the same event can never succeed; false
    /// for failures of the database or the connection, which pass.
    pub fn is_caused_by_data(&self) -> bool {
        let StoreError::Sql(sqlx::Error::Database(db)) = self else {
            return false;
        };
        let code = db.code().unwrap_or_default();
        // PostgreSQL: class 22 data exception (22021 a NUL or bad UTF-8 in text), class 54
        // program limit exceeded (an index row over ~2.7 kB). SQLite: 18 SQLITE_TOOBIG.
        code.starts_with("22") || code.starts_with("54") || code == "18"
    }

    /// True when no connection could be had in time (every one busy, or the server not
    /// answering): a passing condition, answered 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Sql(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
        )
    }
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

/// The database, embedded or server, and the in-process wake-ups of its readers.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: Pool,
    signals: Arc<Signals>,
    signer: Signer,
    /// The SQLite file, when there is one: the relay locks a file beside it.
    sqlite_path: Option<PathBuf>,
    /// SQLite connections that only read: invocations' reads and queries' snapshots, which so
    /// never wait for (or hold) the single write connection.
    readers: Option<SqlitePool>,
    /// The group committer ([`group`]), started at the first commit (on SQLite, or the
    /// first mark of relayed rows).
    committer: Arc<OnceLock<group::Committer>>,
    /// Keys partitions fought over, read in turns ([`hot`]).
    pub(crate) hot: Arc<hot::HotKeys>,
    /// Reader connections kept between invocations ([`spare`]).
    spare: Arc<spare::SpareReaders>,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Wake-ups for the relay and the timer pump, so they act as soon as a transaction
/// that gave them work commits instead of polling.
#[derive(Debug)]
pub struct Signals {
    /// A transaction with outbox rows committed.
    pub outbox: Notify,
    /// A transaction with new timers committed.
    pub timers: Notify,
    /// A transaction with outbound effects committed (the delivery worker).
    pub effects: Notify,
    /// This database handle's name in its PostgreSQL outbox notifications: its relay,
    /// woken in-process already, skips its own.
    pub origin: String,
}

impl Default for Signals {
    fn default() -> Signals {
        Signals {
            outbox: Notify::new(),
            timers: Notify::new(),
            effects: Notify::new(),
            origin: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// How a write transaction starts on SQLite: with the write lock taken at once, so two
/// processes on one file queue at `BEGIN` instead of failing at their first write.
const BEGIN_SQLITE: &str = "BEGIN IMMEDIATE";

/// One open transaction.
pub struct Tx {
    pub(crate) inner: TxInner,
    /// A snapshot (see [`Db::begin_snapshot`]): it takes no locks.
    pub(crate) read_only: bool,
    pub(crate) wrote_outbox: bool,
    pub(crate) wrote_timers: bool,
    pub(crate) wrote_effects: bool,
    signals: Arc<Signals>,
}

pub(crate) enum TxInner {
    Sqlite(Held<Sqlite>),
    Postgres(Held<Postgres>),
    /// A connection outside any transaction, each statement reading the latest commit
    /// (see [`Db::reader`]).
    SqliteReader(PoolConnection<Sqlite>),
    PostgresReader(PoolConnection<Postgres>),
}

/// The write connection a transaction ran on, kept for the next one (see [`held`]).
pub(crate) enum WriteConn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// Runs `$body` with `$c` bound to the transaction's connection, for either driver.
macro_rules! on_conn {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut ($tx).inner {
            $crate::store::TxInner::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxInner::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxInner::SqliteReader(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxInner::PostgresReader(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to the pool, for either driver.
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match &($db).pool {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::Postgres($p) => $body,
        }
    };
}

pub(crate) use {on_conn, on_pool};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(5);

/// sqlx pings every connection it hands out, a round trip before each transaction and
/// query. The pool already pings each connection when it comes back, so only one that
/// sat idle (where a restarted server or a dropped socket shows) is pinged again; one
/// that broke since fails its query, which the callers retry. It saves a round trip
/// per transaction; `just bench hop` did not show the saving apart from the noise.
fn ping_when_idle<DB: sqlx::Database>(options: sqlx::pool::PoolOptions<DB>) -> sqlx::pool::PoolOptions<DB> {
    use sqlx::Connection;
    options.test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_IDLE_AFTER {
                conn.ping().await?;
            }
            Ok(true)
        })
    })
}

impl Db {
    /// Opens PostgreSQL when `url` is given, else SQLite at `<data_dir>/switchyard.db`,
    /// and brings the schema up to date.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Db, StoreError> {
        let (pool, sqlite_path, readers) = match url {
            Some(url) if url.starts_with("postgres") => {
                let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                    url: redact(url),
                    source,
                })?;
                let pool = ping_when_idle(PgPoolOptions::new())
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact(url),
                        source,
                    })?;
                (Pool::Postgres(pool), None, None)
            }
            Some(url) => {
                let options = SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                    url: url.to_string(),
                    source,
                })?;
                let path = Some(options.get_filename().to_path_buf()).filter(|p| !p.as_os_str().is_empty());
                let writer = Self::sqlite(options.clone(), url).await?;
                let readers = Self::sqlite_readers(options, url).await?;
                (Pool::Sqlite(writer), path, Some(readers))
            }
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let path = data_dir.join("switchyard.db");
                let options = SqliteConnectOptions::new().filename(&path);
                let name = path.display().to_string();
                let writer = Self::sqlite(options.clone(), &name).await?;
                let readers = Self::sqlite_readers(options, &name).await?;
                (Pool::Sqlite(writer), Some(path), Some(readers))
            }
        };
        let mut db = Db {
            pool,
            signals: Arc::default(),
            signer: Signer::new(b""),
            sqlite_path,
            readers,
            committer: Arc::default(),
            hot: Arc::default(),
            spare: Arc::default(),
        };
        db.migrate().await?;
        db.signer = Signer::new(&db.host_secret().await?);
        Ok(db)
    }

    async fn sqlite(options: SqliteConnectOptions, url: &str) -> Result<SqlitePool, StoreError> {
        // SQLite has one writer. One pooled connection makes this process's transactions
        // queue on the pool (fair, no sleeping) instead of on SQLite's busy handler, which
        // backs off in milliseconds; the busy timeout and BEGIN IMMEDIATE (see `begin`)
        // still order writers of other processes on the same file (`switchyard invoke`).
        // synchronous=FULL: a commit is on disk before its Kafka offset is stored, so a
        // power loss cannot drop an effect whose event Kafka already counts as consumed
        // (NORMAL in WAL mode may lose the last commits).
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            // The group commit's multi-row statements come in up to seven sizes per kind
            // (`store/multirow/sqlite.rs`), about 60 texts beside the host's others: more
            // than sqlx's default of 100 kept prepared would evict and prepare them again.
            .statement_cache_capacity(400);
        ping_when_idle(SqlitePoolOptions::new())
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })
    }

    /// Read-only connections beside the writer. WAL mode lets them read a consistent
    /// snapshot while the writer commits; their number bounds invocations reading at once.
    async fn sqlite_readers(options: SqliteConnectOptions, url: &str) -> Result<SqlitePool, StoreError> {
        // The writer made the file and set WAL (a property of the file); a reader only
        // waits if a checkpoint briefly holds it.
        let options = options.read_only(true).busy_timeout(Duration::from_secs(30));
        ping_when_idle(SqlitePoolOptions::new())
            .max_connections(8)
            .min_connections(0)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })
    }

    /// This database without its committer handle: what the committer task itself holds,
    /// so the task ends once every other handle is gone.
    fn without_committer(&self) -> Db {
        Db {
            committer: Arc::default(),
            ..self.clone()
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// The key that signs the host's headers: made once per database, shared by every
    /// host using it.
    async fn host_secret(&self) -> Result<Vec<u8>, StoreError> {
        const INSERT: &str = "INSERT INTO host_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
        const SELECT: &str = "SELECT secret FROM host_secret WHERE id = 1";
        let fresh: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| *u.as_bytes())
            .collect();
        on_pool!(self, |p| sqlx::query(INSERT)
            .bind(&fresh)
            .execute(p)
            .await?
            .rows_affected());
        let (secret,): (Vec<u8>,) = on_pool!(self, |p| sqlx::query_as(SELECT).fetch_one(p).await?);
        Ok(secret)
    }

    /// Signs and checks the host's Kafka headers (see [`crate::protocol`]).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Wake-ups fired when transactions with outbox rows or timers commit.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Which engine, for logs and benchmarks.
    pub fn kind(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL pool, when that is the backend (tests, operators' queries).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, when that is the backend.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// Starts a transaction. SQLite takes the write lock up front so that two writers
    /// never deadlock upgrading from read to write.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        self.begin_on(None).await
    }

    /// [`Db::begin`] on `kept`, the connection of an earlier transaction, when given.
    pub(crate) async fn begin_on(&self, kept: Option<WriteConn>) -> Result<Tx, StoreError> {
        let inner = match (&self.pool, kept) {
            (_, Some(WriteConn::Sqlite(conn))) => TxInner::Sqlite(Held::begin(conn, Some(BEGIN_SQLITE)).await?),
            (_, Some(WriteConn::Postgres(conn))) => TxInner::Postgres(Held::begin(conn, None).await?),
            (Pool::Sqlite(pool), None) => {
                TxInner::Sqlite(Held::begin(pool.acquire().await?, Some(BEGIN_SQLITE)).await?)
            }
            (Pool::Postgres(pool), None) => TxInner::Postgres(Held::begin(pool.acquire().await?, None).await?),
        };
        Ok(Tx {
            inner,
            read_only: false,
            wrote_outbox: false,
            wrote_timers: false,
            wrote_effects: false,
            signals: self.signals.clone(),
        })
    }

    /// A connection for an invocation's reads, outside any transaction: each read sees
    /// the latest commit, and [`staged`] checks every one of them again at commit, so an
    /// invocation commits only if what it read still holds then. That needs no snapshot,
    /// which on PostgreSQL cost a `BEGIN` and a `ROLLBACK` round trip per invocation
    /// (18,448 of them for 20,644 invocations of `just load 300`). On SQLite a reader
    /// connection, so the Wasm call never holds the single writer.
    ///
    /// A spare connection ([`spare`]) is used first; [`Db::keep_reader`] gives it back.
    pub async fn reader(&self) -> Result<Tx, StoreError> {
        let inner = match (&self.pool, &self.readers) {
            (Pool::Sqlite(_), Some(readers)) => {
                TxInner::SqliteReader(self.spare.sqlite.take_or_acquire(readers).await?)
            }
            (Pool::Sqlite(pool), None) => TxInner::SqliteReader(pool.acquire().await?),
            (Pool::Postgres(pool), _) => TxInner::PostgresReader(self.spare.postgres.take_or_acquire(pool).await?),
        };
        Ok(Tx {
            inner,
            read_only: true,
            wrote_outbox: false,
            wrote_timers: false,
            wrote_effects: false,
            signals: self.signals.clone(),
        })
    }

    /// Takes back a connection from [`Db::reader`] that has nothing left on it: no read in
    /// flight and none failed. Kept for the next invocation instead of going back to the
    /// pool, which would ping it first. Anything else is dropped as usual: a transaction
    /// rolls back, and SQLite's single writer (a reader when there is no reader pool) is
    /// never kept out of its pool.
    pub(crate) fn keep_reader(&self, tx: Tx) {
        match tx.inner {
            TxInner::SqliteReader(conn) if self.readers.is_some() => self.spare.sqlite.put(conn),
            TxInner::PostgresReader(conn) => self.spare.postgres.put(conn),
            _ => {}
        }
    }

    /// How many reader connections are kept ([`spare`]).
    #[cfg(test)]
    pub(crate) fn spare_readers(&self) -> usize {
        self.spare.sqlite.len() + self.spare.postgres.len()
    }

    /// A read-only snapshot for one query: on SQLite a deferred transaction on a
    /// reader connection (its snapshot starts at the first read), on PostgreSQL a
    /// repeatable-read, read-only one. Everything read through it is one consistent state.
    pub async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        let inner = match (&self.pool, &self.readers) {
            (Pool::Sqlite(_), Some(readers)) => {
                TxInner::Sqlite(Held::begin(readers.acquire().await?, Some("BEGIN DEFERRED")).await?)
            }
            (Pool::Sqlite(pool), None) => {
                TxInner::Sqlite(Held::begin(pool.acquire().await?, Some("BEGIN DEFERRED")).await?)
            }
            (Pool::Postgres(pool), _) => TxInner::Postgres(
                Held::begin(
                    pool.acquire().await?,
                    Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
                )
                .await?,
            ),
        };
        Ok(Tx {
            inner,
            read_only: true,
            wrote_outbox: false,
            wrote_timers: false,
            wrote_effects: false,
            signals: self.signals.clone(),
        })
    }

    /// `component`'s value under `key` as last committed, outside any snapshot.
    pub(crate) async fn read_latest(&self, component: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        const SQL: &str = "SELECT value FROM kv WHERE component = $1 AND key = $2";
        let row: Option<(Vec<u8>,)> = match (&self.pool, &self.readers) {
            (Pool::Sqlite(_), Some(readers)) => {
                sqlx::query_as(SQL)
                    .bind(component)
                    .bind(key)
                    .fetch_optional(readers)
                    .await?
            }
            _ => on_pool!(self, |p| sqlx::query_as(SQL)
                .bind(component)
                .bind(key)
                .fetch_optional(p)
                .await?),
        };
        Ok(row.map(|(v,)| v))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.spare.clear();
        if let Some(readers) = &self.readers {
            readers.close().await;
        }
        on_pool!(self, |p| p.close().await)
    }

    /// Counts rows of a table (tests and operators' status output).
    pub async fn count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Kv => "SELECT COUNT(*) FROM kv",
            Table::Inbox => "SELECT COUNT(*) FROM inbox",
            Table::Outbox => "SELECT COUNT(*) FROM outbox",
            Table::UnsentOutbox => "SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL",
            Table::ParkedOutbox => "SELECT COUNT(*) FROM outbox WHERE parked_at_ms IS NOT NULL",
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

/// Tables [`Db::count`] can count.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Kv,
    Inbox,
    Outbox,
    /// Outbox rows still to send.
    UnsentOutbox,
    /// Outbox rows the broker refused for good, set aside.
    ParkedOutbox,
    Timers,
}

impl Tx {
    /// Commits, then wakes the relay or the timer pump if this transaction gave them work.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.commit_keeping().await.map(drop)
    }

    /// [`Tx::commit`], giving back the write connection for the next transaction.
    pub(crate) async fn commit_keeping(self) -> Result<Option<WriteConn>, StoreError> {
        let kept = match self.inner {
            TxInner::Sqlite(t) => Some(WriteConn::Sqlite(t.commit().await?)),
            TxInner::Postgres(t) => Some(WriteConn::Postgres(t.commit().await?)),
            TxInner::SqliteReader(_) | TxInner::PostgresReader(_) => None,
        };
        if self.wrote_outbox {
            self.signals.outbox.notify_one();
        }
        if self.wrote_timers {
            self.signals.timers.notify_one();
        }
        if self.wrote_effects {
            self.signals.effects.notify_one();
        }
        Ok(kept)
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        self.rollback_keeping().await.map(drop)
    }

    /// [`Tx::rollback`], giving back the write connection for the next transaction.
    pub(crate) async fn rollback_keeping(self) -> Result<Option<WriteConn>, StoreError> {
        Ok(match self.inner {
            TxInner::Sqlite(t) => Some(WriteConn::Sqlite(t.rollback().await?)),
            TxInner::Postgres(t) => Some(WriteConn::Postgres(t.rollback().await?)),
            TxInner::SqliteReader(_) | TxInner::PostgresReader(_) => None,
        })
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.inner, TxInner::Postgres(_) | TxInner::PostgresReader(_))
    }
}

fn encode_headers(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("string pairs always serialize")
}

fn decode_headers(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Sql(sqlx::Error::Decode(Box::new(e))))
}

/// A service URL (database, Redis) without its password, for messages and logs.
pub fn redact(url: &str) -> String {
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
pub(crate) mod tests {
    use super::*;

    pub(crate) async fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn the_signing_key_is_made_once_per_database() {
        let (dir, db) = sqlite().await;
        let again = Db::open(None, dir.path()).await.unwrap();
        let headers = vec![("switchyard-event-id".to_string(), "e".to_string())];
        let signature = db.signer().sign("t", None, b"p", &headers);
        assert_eq!(signature, again.signer().sign("t", None, b"p", &headers));
        let (_other_dir, other) = sqlite().await;
        assert_ne!(signature, other.signer().sign("t", None, b"p", &headers));
    }

    #[tokio::test]
    async fn a_commit_with_outbox_rows_wakes_the_relay() {
        let (_dir, db) = sqlite().await;
        let message = OutboundMessage {
            topic: "t".into(),
            key: None,
            payload: b"p".to_vec(),
            headers: vec![],
        };
        let woken = db.signals().outbox.notified();
        let mut tx = db.begin().await.unwrap();
        tx.insert_outbox("e1", "a", &message).await.unwrap();
        tx.commit().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("the relay is woken by the commit");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
