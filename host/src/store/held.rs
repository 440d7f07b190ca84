//! A transaction on a pooled connection it owns, which it gives back at the end, so the
//! group committer ([`super::group`]) can run its next transaction on the same
//! connection instead of handing it to the pool and taking it again.
//!
//! sqlx pings a connection each time it goes back to its pool, from a task of its own: a
//! trip to SQLite's worker thread (or to PostgreSQL) and two wake-ups, which wait for a
//! core while the partition workers run Wasm. Measured with a probe in the committer
//! (`just bench throughput`, 20,000 no-op events on SQLite): taking the connection for a
//! group's `BEGIN` was 0.92 s of the committer's 1.53 s, 6.7 ms per group.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Database, TransactionManager};

/// An open transaction (the same calls as sqlx's `Transaction`, which keeps its
/// connection to the end); rolled back if dropped before it ended.
pub struct Held<DB: Database> {
    /// Taken out only when the transaction ended.
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Database> Held<DB> {
    /// Opens a transaction on `conn` with `statement` (the driver's `BEGIN` when None).
    pub async fn begin(mut conn: PoolConnection<DB>, statement: Option<&'static str>) -> Result<Held<DB>, sqlx::Error> {
        DB::TransactionManager::begin(&mut conn, statement.map(Into::into)).await?;
        Ok(Held { conn: Some(conn) })
    }

    /// Commits; the connection is free for the next transaction.
    pub async fn commit(mut self) -> Result<PoolConnection<DB>, sqlx::Error> {
        DB::TransactionManager::commit(self.deref_mut()).await?;
        Ok(self.conn.take().expect("open until it ends"))
    }

    pub async fn rollback(mut self) -> Result<PoolConnection<DB>, sqlx::Error> {
        DB::TransactionManager::rollback(self.deref_mut()).await?;
        Ok(self.conn.take().expect("open until it ends"))
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            // Queued on the connection, run before its next statement: like sqlx's own
            // transactions, one dropped half-way (an error) leaves nothing open.
            DB::TransactionManager::start_rollback(conn);
        }
    }
}

impl<DB: Database> Deref for Held<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn.as_ref().expect("open until it ends")
    }
}

impl<DB: Database> DerefMut for Held<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("open until it ends")
    }
}
