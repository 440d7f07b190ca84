//! Reader connections kept between invocations, so an invocation's reads start on a
//! connection at hand and giving it back costs nothing.
//!
//! sqlx pings every connection it takes back into its pool (see [`super::held`]): for an
//! invocation that read, a trip to PostgreSQL (or to SQLite's worker thread) and two
//! wake-ups per event, on a machine whose cores the saga keeps busy. A connection goes
//! back here instead only when nothing can be left on it: the invocation ended with no
//! read in flight and none failed ([`super::Staged`] says so). Any other goes back to the
//! pool, which pings it, or closes it when it broke.

use std::sync::Mutex;
use std::time::Instant;

use sqlx::Database;
use sqlx::pool::PoolConnection;

use super::PING_IDLE_AFTER;

/// How many connections are kept. Each is out of its pool while kept: on PostgreSQL the
/// pool (16) is shared with the committer, the relay and the timer pump, so a few.
const KEEP: usize = 4;

/// Spare reader connections of one pool, most recently used first out.
pub(crate) struct Spare<DB: Database> {
    kept: Mutex<Vec<(PoolConnection<DB>, Instant)>>,
}

impl<DB: Database> Default for Spare<DB> {
    fn default() -> Self {
        Spare {
            kept: Mutex::new(Vec::new()),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Spare<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare").field("kept", &self.len()).finish()
    }
}

impl<DB: Database> Spare<DB> {
    /// A kept connection, if one was used recently. One idle for longer goes back to the
    /// pool, whose ping finds out whether the server is still there.
    pub(crate) fn take(&self) -> Option<PoolConnection<DB>> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = kept.pop() {
            if since.elapsed() < PING_IDLE_AFTER {
                return Some(conn);
            }
            drop(conn); // the pool pings it
        }
        None
    }

    /// A kept connection ([`Spare::take`]), else one from `pool`.
    pub(crate) async fn take_or_acquire(&self, pool: &sqlx::Pool<DB>) -> Result<PoolConnection<DB>, sqlx::Error> {
        match self.take() {
            Some(conn) => Ok(conn),
            None => pool.acquire().await,
        }
    }

    /// Keeps `conn` if there is room, else gives it back to the pool.
    pub(crate) fn put(&self, conn: PoolConnection<DB>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEEP {
            kept.push((conn, Instant::now()));
        }
    }

    /// Gives every kept connection back to the pool (before it closes, which waits for
    /// all of them).
    pub(crate) fn clear(&self) {
        // Taken out first, so they are dropped after the lock is released.
        let drained = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        drop(drained);
    }

    pub(crate) fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The spare readers of whichever backend the database is.
#[derive(Debug, Default)]
pub(crate) struct SpareReaders {
    pub(crate) sqlite: Spare<sqlx::Sqlite>,
    pub(crate) postgres: Spare<sqlx::Postgres>,
}

impl SpareReaders {
    pub(crate) fn clear(&self) {
        self.sqlite.clear();
        self.postgres.clear();
    }
}
