//! The group commit's statements on SQLite: rows bound as parameters of multi-row
//! `VALUES` lists, one statement per table and piece.
//!
//! SQLite has no arrays to bind, and one statement per row, though it costs no network
//! trip, is handed to sqlx's SQLite thread and back: a full group of one write and one
//! publish per event was three such hand-offs per event, each waking a thread. In
//! pieces, `just bench throughput` went from 3,197–3,825 to 5,467–6,622 events/s with one
//! write and one publish, and from about 9,200 to 11,400–18,500 for a no-op (see
//! docs/benchmarks.md).
//!
//! A piece holds a power of two of rows, at most [`MOST_ROWS`], so each kind of statement
//! has at most seven texts, each written once ([`Texts`]) and kept prepared in sqlx's
//! statement cache; the widest (effects, 14 parameters a row) stays far below SQLite's
//! 32,766 parameters.

use std::sync::OnceLock;

use sqlx::Sqlite;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;

use super::super::outbox::shard_of;
use super::super::staged::Unit;
use super::super::{OutboundMessage, StoreError, encode_headers, now_ms};
use super::{Current, Writes};

type Lite = super::super::held::Held<Sqlite>;

/// Rows per statement, at most.
const MOST_ROWS: usize = 64;

/// `rows` split into pieces of a power of two rows each, largest first.
fn pieces<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = 1 << rest.len().min(MOST_ROWS).ilog2();
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// Piece sizes: 1, 2, 4 … [`MOST_ROWS`].
const SIZES: usize = MOST_ROWS.ilog2() as usize + 1;

/// The texts of one kind of statement, one per piece size, each written the first time
/// it is needed rather than on every commit.
struct Texts {
    make: fn(usize) -> String,
    made: [OnceLock<String>; SIZES],
}

impl Texts {
    const fn new(make: fn(usize) -> String) -> Texts {
        Texts {
            make,
            made: [const { OnceLock::new() }; SIZES],
        }
    }

    /// The text for a piece of `rows` rows (a power of two, see [`pieces`]).
    fn of(&'static self, rows: usize) -> &'static str {
        self.made[rows.ilog2() as usize].get_or_init(|| (self.make)(rows))
    }
}

static READ_KEYS: Texts = Texts::new(read_keys);
static READ_TIMERS: Texts = Texts::new(read_timers);
static CLAIM: Texts = Texts::new(claim_inbox);
static PUT: Texts = Texts::new(put_keys);
static DELETE_KEYS: Texts = Texts::new(delete_keys);
static DELETE_TIMERS: Texts = Texts::new(delete_timers);
static INSERT_TIMERS: Texts = Texts::new(insert_timers);
static INSERT_OUTBOX: Texts = Texts::new(insert_outbox);
static INSERT_EFFECTS: Texts = Texts::new(insert_effects);

/// `(?, ?), (?, ?)`: `rows` rows of `width` parameters.
fn values(rows: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; rows].join(", ")
}

// The pairs are joined to their table, `CROSS JOIN` keeping the list as the outer loop, so
// each pair is one probe of the primary key on any statistics and any SQLite version:
// `(component, key) IN (VALUES ...)` is probed by the bundled SQLite 3.46 but scanned the
// whole table under 3.40 (`the_statements_probe_by_key_and_never_scan_a_table`).

fn read_keys(rows: usize) -> String {
    format!(
        "SELECT kv.component, kv.key, kv.value FROM (VALUES {}) AS q \
         CROSS JOIN kv ON kv.component = q.column1 AND kv.key = q.column2",
        values(rows, 2)
    )
}

fn read_timers(rows: usize) -> String {
    format!(
        "SELECT t.component, t.id FROM (VALUES {}) AS q \
         CROSS JOIN timers AS t ON t.id = q.column2 AND t.component = q.column1",
        values(rows, 2)
    )
}

fn delete_keys(rows: usize) -> String {
    format!(
        "DELETE FROM kv WHERE rowid IN (SELECT kv.rowid FROM (VALUES {}) AS q \
         CROSS JOIN kv ON kv.component = q.column1 AND kv.key = q.column2)",
        values(rows, 2)
    )
}

fn delete_timers(rows: usize) -> String {
    format!(
        "DELETE FROM timers WHERE id IN (SELECT t.id FROM (VALUES {}) AS q \
         CROSS JOIN timers AS t ON t.id = q.column2 AND t.component = q.column1)",
        values(rows, 2)
    )
}

fn claim_inbox(rows: usize) -> String {
    format!(
        "INSERT INTO inbox (component, event_id, topic, partition, \"offset\", handled_at_ms, version, \
         activation, request_id, trace_id, outcome) VALUES {} ON CONFLICT (component, event_id) DO NOTHING",
        values(rows, 11)
    )
}

fn put_keys(rows: usize) -> String {
    format!(
        "INSERT INTO kv (component, key, value) VALUES {} \
         ON CONFLICT (component, key) DO UPDATE SET value = excluded.value",
        values(rows, 3)
    )
}

fn insert_timers(rows: usize) -> String {
    format!(
        "INSERT INTO timers (id, component, topic, msg_key, payload, headers, fire_at_ms, created_at_ms) \
         VALUES {}",
        values(rows, 8)
    )
}

fn insert_outbox(rows: usize) -> String {
    format!(
        "INSERT INTO outbox (event_id, component, topic, msg_key, payload, headers, created_at_ms, shard) \
         VALUES {}",
        values(rows, 8)
    )
}

fn insert_effects(rows: usize) -> String {
    format!(
        "INSERT INTO effects (id, component, kind, request, result_topic, result_event_id, result_headers, \
         context, max_attempts, initial_backoff_ms, max_backoff_ms, attempts, due_at_ms, created_at_ms) \
         VALUES {}",
        values(rows, 14)
    )
}

/// Binds a message's row: its id, component, topic, key, payload and headers.
fn bind_message<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    id: &'q str,
    component: &'q str,
    message: &'q OutboundMessage,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    query
        .bind(id)
        .bind(component)
        .bind(&message.topic)
        .bind(message.key.as_deref())
        .bind(&message.payload)
        .bind(encode_headers(&message.headers))
}

/// Reads what the checked keys and timers of `current` hold.
pub(super) async fn read(tx: &mut Lite, current: &mut Current) -> Result<(), StoreError> {
    let keys: Vec<(String, String)> = current.values.keys().cloned().collect();
    for piece in pieces(&keys) {
        let mut query = sqlx::query_as::<_, (String, String, Vec<u8>)>(READ_KEYS.of(piece.len()));
        for (component, key) in piece {
            query = query.bind(component).bind(key);
        }
        for (component, key, value) in query.fetch_all(&mut **tx).await? {
            current.values.insert((component, key), Some(value));
        }
    }
    let timers: Vec<(String, String)> = current.timers.keys().cloned().collect();
    for piece in pieces(&timers) {
        let mut query = sqlx::query_as::<_, (String, String)>(READ_TIMERS.of(piece.len()));
        for (component, id) in piece {
            query = query.bind(component).bind(id);
        }
        for at in query.fetch_all(&mut **tx).await? {
            current.timers.insert(at, true);
        }
    }
    Ok(())
}

/// Claims the events of `units`; how many were not claimed before.
pub(super) async fn claim(tx: &mut Lite, units: &[&Unit]) -> Result<u64, StoreError> {
    let now = now_ms();
    let mut claimed = 0;
    for piece in pieces(units) {
        let mut query = sqlx::query(CLAIM.of(piece.len()));
        for unit in piece {
            let r = &unit.inbox;
            query = query
                .bind(&r.component)
                .bind(&r.event_id)
                .bind(&r.topic)
                .bind(r.partition)
                .bind(r.offset)
                .bind(now)
                .bind(&r.version)
                .bind(r.activation)
                .bind(&r.request_id)
                .bind(&r.trace_id)
                .bind(r.outcome);
        }
        claimed += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(claimed)
}

/// Everything the accepted units write, in pieces per table.
pub(super) async fn write(tx: &mut Lite, writes: &Writes<'_>) -> Result<(), StoreError> {
    let now = now_ms();
    for piece in pieces(&writes.put) {
        let mut query = sqlx::query(PUT.of(piece.len()));
        for (component, key, value) in piece {
            query = query.bind(*component).bind(*key).bind(*value);
        }
        query.execute(&mut **tx).await?;
    }
    for (delete, rows) in [(&DELETE_KEYS, &writes.delete), (&DELETE_TIMERS, &writes.cancelled)] {
        for piece in pieces(rows) {
            let mut query = sqlx::query(delete.of(piece.len()));
            for (component, key) in piece {
                query = query.bind(*component).bind(*key);
            }
            query.execute(&mut **tx).await?;
        }
    }
    for piece in pieces(&writes.timers) {
        let mut query = sqlx::query(INSERT_TIMERS.of(piece.len()));
        for (component, (id, fire_at_ms, message)) in piece {
            query = bind_message(query, id, component, message).bind(*fire_at_ms).bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    // Rows of one `VALUES` list are inserted in their order, and the pieces go in turn:
    // ids follow the order the events ran, which the relay sends them in.
    for piece in pieces(&writes.outbox) {
        let mut query = sqlx::query(INSERT_OUTBOX.of(piece.len()));
        for (component, (id, message)) in piece {
            query = bind_message(query, id, component, message).bind(now).bind(shard_of(
                &message.topic,
                message.key.as_deref(),
                id,
            ));
        }
        query.execute(&mut **tx).await?;
    }
    for piece in pieces(&writes.effects) {
        let mut query = sqlx::query(INSERT_EFFECTS.of(piece.len()));
        for (component, e) in piece {
            query = query
                .bind(&e.id)
                .bind(*component)
                .bind(&e.kind)
                .bind(&e.request)
                .bind(&e.result_topic)
                .bind(&e.result_event_id)
                .bind(encode_headers(&e.result_headers))
                .bind(&e.context)
                .bind(e.max_attempts.min(i32::MAX as u32) as i32)
                .bind(e.initial_backoff_ms)
                .bind(e.max_backoff_ms)
                .bind(0_i32)
                .bind(now)
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement that finds rows by key, planned on a migrated database holding
    /// rows: each key is a probe of an index, never a scan of `kv` or `timers` (a scan of
    /// `kv` per commit is what made `list-prefix` slow down with the store's size).
    #[tokio::test]
    async fn the_statements_probe_by_key_and_never_scan_a_table() {
        let (_dir, db) = crate::store::tests::sqlite().await;
        let pool = db.sqlite_pool().expect("sqlite");
        for n in 0..200 {
            sqlx::query("INSERT INTO kv (component, key, value) VALUES ('c', ?, x'00')")
                .bind(format!("k{n}"))
                .execute(pool)
                .await
                .unwrap();
        }
        sqlx::query("ANALYZE").execute(pool).await.unwrap();
        for sql in [read_keys(4), read_timers(4), delete_keys(4), delete_timers(4)] {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
            for n in 0..8 {
                query = query.bind(format!("k{n}"));
            }
            let plan: Vec<String> = query.fetch_all(pool).await.unwrap().into_iter().map(|r| r.3).collect();
            assert!(plan.iter().any(|step| step.starts_with("SEARCH")), "{sql}: {plan:?}");
            assert!(
                !plan.iter().any(|step| ["SCAN kv", "SCAN t", "SCAN timers"]
                    .iter()
                    .any(|scan| step.starts_with(scan))),
                "{sql} scans a table: {plan:?}"
            );
        }
    }

    #[test]
    fn pieces_are_powers_of_two_in_order_and_cover_every_row() {
        let rows: Vec<usize> = (0..203).collect();
        let sizes: Vec<usize> = pieces(&rows).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![64, 64, 64, 8, 2, 1]);
        assert_eq!(pieces(&rows).flatten().copied().collect::<Vec<_>>(), rows);
        assert_eq!(pieces::<usize>(&[]).count(), 0);
    }
}
