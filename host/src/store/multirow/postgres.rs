//! The group commit's statements on PostgreSQL: arrays bound as parameters and
//! `unnest`ed, one statement per table, and the locks that keep other hosts out.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Postgres;

use super::super::outbox::{OUTBOX_CHANNEL, shard_of};
use super::super::staged::{Check, Unit, lock_id};
use super::super::{StoreError, encode_headers, now_ms};
use super::{Current, ListingAt, Listings, Writes};

type Pg = super::super::held::Held<Postgres>;

/// The statements that take the locks of `chains`, sent in one round trip. Locks go
/// namespaces first, then keys, each set sorted: the order every host takes them in. A
/// component one of whose units listed keys has its namespace locked exclusively, as
/// [`Unit::apply`] does, so no other host writes a key into the listed range before
/// this commit. Lock ids are integers, so the text needs no parameters. They follow the
/// `BEGIN` instead of riding on it: a lock that fails (a deadlock between hosts) would
/// leave the pooled connection in an aborted transaction that sqlx does not know of, as
/// `just load` with two hosts showed.
fn locks(chains: &[Vec<Unit>]) -> String {
    use std::fmt::Write;
    let units = || chains.iter().flatten();
    let mut namespaces: BTreeMap<i64, bool> = BTreeMap::new();
    for unit in units() {
        let listed = unit.checks.iter().any(|c| matches!(c, Check::Listing { .. }));
        *namespaces.entry(lock_id(&unit.inbox.component, None)).or_default() |= listed;
    }
    let keys: BTreeSet<i64> = units()
        .flat_map(|u| {
            let component = u.inbox.component.as_str();
            u.checks
                .iter()
                .filter_map(|c| match c {
                    Check::Key { key, .. } => Some(key),
                    _ => None,
                })
                .chain(u.writes.iter().map(|(key, _)| key))
                .map(move |key| lock_id(component, Some(key)))
        })
        .collect();
    let mut sql = String::new();
    for (id, exclusive) in namespaces {
        let function = if exclusive {
            "pg_advisory_xact_lock"
        } else {
            "pg_advisory_xact_lock_shared"
        };
        write!(sql, "SELECT {function}('{id}'::int8);").expect("writing to a string");
    }
    for id in keys {
        write!(sql, "SELECT pg_advisory_xact_lock('{id}'::int8);").expect("writing to a string");
    }
    sql
}

/// Takes the locks of `chains` (see [`locks`]), in one round trip.
pub(super) async fn lock(tx: &mut Pg, chains: &[Vec<Unit>]) -> Result<(), StoreError> {
    // Text without parameters goes as one simple query, its statements in order.
    sqlx::Executor::execute(&mut **tx, locks(chains).as_str()).await?;
    Ok(())
}

/// The bounded listings (where, component, prefix, after, end of the prefix, rows) in
/// one statement, into `out`.
pub(super) async fn listings(
    tx: &mut Pg,
    bounded: &[(ListingAt, &str, &str, &str, String, u32)],
    out: &mut Listings,
) -> Result<(), StoreError> {
    let found: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT q.n, l.key, l.value FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
         WITH ORDINALITY AS q(c, p, a, e, lim, n) CROSS JOIN LATERAL (SELECT key, value FROM kv \
         WHERE component = q.c AND key >= q.p AND key < q.e AND key > q.a AND substr(key, 1, length(q.p)) = q.p \
         ORDER BY key LIMIT q.lim) AS l ORDER BY q.n, l.key",
    )
    .bind(bounded.iter().map(|b| b.1).collect::<Vec<_>>())
    .bind(bounded.iter().map(|b| b.2).collect::<Vec<_>>())
    .bind(bounded.iter().map(|b| b.3).collect::<Vec<_>>())
    .bind(bounded.iter().map(|b| b.4.as_str()).collect::<Vec<_>>())
    .bind(bounded.iter().map(|b| i64::from(b.5)).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for (at, ..) in bounded {
        out.entry(*at).or_default();
    }
    for (n, key, value) in found {
        let at = bounded[usize::try_from(n - 1).expect("ordinality counts from 1")].0;
        out.entry(at).or_default().push((key, value));
    }
    Ok(())
}

/// Reads what the checked keys and timers of `current` hold, locking the timers.
pub(super) async fn read(tx: &mut Pg, current: &mut Current) -> Result<(), StoreError> {
    if !current.values.is_empty() {
        let (components, keys): (Vec<String>, Vec<String>) = current.values.keys().cloned().unzip();
        // One index probe per key, whatever the statistics say. As `(component, key) IN
        // (unnest ...)`, a plan cached while `kv` was small (a fresh database: autovacuum
        // analyzes once a minute at most) hashed the keys and scanned the whole table:
        // a 25 s `just load` at 100 orders/s ran 370 to 2,200 such scans, reading 0.2 to
        // 10 M rows (with 1 to 4 scans now). `OFFSET 0` keeps the subquery from being
        // flattened into a join the planner could hash again.
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT q.c, q.k, l.value FROM unnest($1::text[], $2::text[]) AS q(c, k) CROSS JOIN LATERAL \
             (SELECT value FROM kv WHERE component = q.c AND key = q.k OFFSET 0) AS l",
        )
        .bind(components)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await?;
        for (component, key, value) in rows {
            current.values.insert((component, key), Some(value));
        }
    }
    if !current.timers.is_empty() {
        let (components, ids): (Vec<String>, Vec<String>) = current.timers.keys().cloned().unzip();
        // Locked, so the timer pump (SKIP LOCKED) cannot fire one being cancelled.
        // Probed by index like the keys above (a subquery with FOR UPDATE is never flattened).
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT q.c, q.i FROM unnest($1::text[], $2::text[]) AS q(c, i) CROSS JOIN LATERAL \
             (SELECT 1 FROM timers WHERE component = q.c AND id = q.i FOR UPDATE) AS l",
        )
        .bind(components)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        for key in rows {
            current.timers.insert(key, true);
        }
    }
    Ok(())
}

pub(super) async fn claim(tx: &mut Pg, units: &[&Unit]) -> Result<u64, StoreError> {
    let rows = units.iter().map(|u| &u.inbox);
    let now = now_ms();
    let n = sqlx::query(
        "INSERT INTO inbox (component, event_id, topic, partition, \"offset\", handled_at_ms, version, \
         activation, request_id, trace_id, outcome) \
         SELECT c, e, t, p, o, $6, v, a, r, tr, oc FROM unnest($1::text[], $2::text[], $3::text[], \
         $4::int4[], $5::int8[], $7::text[], $8::int8[], $9::text[], $10::text[], $11::text[]) \
         AS u(c, e, t, p, o, v, a, r, tr, oc) ON CONFLICT (component, event_id) DO NOTHING",
    )
    .bind(rows.clone().map(|r| r.component.clone()).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.event_id.clone()).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.topic.clone()).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.partition).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.offset).collect::<Vec<_>>())
    .bind(now)
    .bind(rows.clone().map(|r| r.version.clone()).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.activation).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.request_id.clone()).collect::<Vec<_>>())
    .bind(rows.clone().map(|r| r.trace_id.clone()).collect::<Vec<_>>())
    .bind(rows.map(|r| r.outcome.to_string()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n)
}

/// Everything the accepted units write, one statement per table.
pub(super) async fn write(tx: &mut Pg, writes: &Writes<'_>, origin: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let text = |s: &str| s.to_string();
    if !writes.put.is_empty() {
        sqlx::query(
            "INSERT INTO kv (component, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
             ON CONFLICT (component, key) DO UPDATE SET value = excluded.value",
        )
        .bind(writes.put.iter().map(|p| text(p.0)).collect::<Vec<_>>())
        .bind(writes.put.iter().map(|p| text(p.1)).collect::<Vec<_>>())
        .bind(writes.put.iter().map(|p| p.2.to_vec()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !writes.delete.is_empty() {
        // The `= ANY` conditions give the planner an index scan that no statistics turn
        // into a scan of the table (see the checked keys above); the pairs keep it exact.
        sqlx::query(
            "DELETE FROM kv WHERE component = ANY($1) AND key = ANY($2) \
             AND (component, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(writes.delete.iter().map(|d| text(d.0)).collect::<Vec<_>>())
        .bind(writes.delete.iter().map(|d| text(d.1)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !writes.cancelled.is_empty() {
        // By index whatever the statistics say, as the deletes of keys above.
        sqlx::query(
            "DELETE FROM timers WHERE id = ANY($2) \
             AND (component, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(writes.cancelled.iter().map(|c| text(c.0)).collect::<Vec<_>>())
        .bind(writes.cancelled.iter().map(|c| text(c.1)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    let timers = &writes.timers;
    if !timers.is_empty() {
        sqlx::query(
            "INSERT INTO timers (id, component, topic, msg_key, payload, headers, fire_at_ms, created_at_ms) \
             SELECT i, c, t, k, p, h, f, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
             $5::bytea[], $6::text[], $7::int8[]) AS u(i, c, t, k, p, h, f)",
        )
        .bind(timers.iter().map(|(_, (id, _, _))| id.clone()).collect::<Vec<_>>())
        .bind(timers.iter().map(|(c, _)| text(c)).collect::<Vec<_>>())
        .bind(timers.iter().map(|(_, (_, _, m))| m.topic.clone()).collect::<Vec<_>>())
        .bind(timers.iter().map(|(_, (_, _, m))| m.key.clone()).collect::<Vec<_>>())
        .bind(
            timers
                .iter()
                .map(|(_, (_, _, m))| m.payload.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            timers
                .iter()
                .map(|(_, (_, _, m))| encode_headers(&m.headers))
                .collect::<Vec<_>>(),
        )
        .bind(timers.iter().map(|(_, (_, at, _))| *at).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }

    let outbox = &writes.outbox;
    if !outbox.is_empty() {
        // Ids follow the rows' order (WITH ORDINALITY), so the relay sends them in the
        // order the events ran.
        sqlx::query(
            "WITH inserted AS (INSERT INTO outbox (event_id, component, topic, msg_key, payload, headers, \
             created_at_ms, shard) SELECT e, c, t, k, p, h, $7, s FROM unnest($1::text[], $2::text[], $3::text[], \
             $4::bytea[], $5::bytea[], $6::text[], $8::int2[]) WITH ORDINALITY AS u(e, c, t, k, p, h, s, n) \
             ORDER BY n) SELECT pg_notify($9, $10)",
        )
        .bind(outbox.iter().map(|(_, (id, _))| id.clone()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|(c, _)| text(c)).collect::<Vec<_>>())
        .bind(outbox.iter().map(|(_, (_, m))| m.topic.clone()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|(_, (_, m))| m.key.clone()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|(_, (_, m))| m.payload.clone()).collect::<Vec<_>>())
        .bind(
            outbox
                .iter()
                .map(|(_, (_, m))| encode_headers(&m.headers))
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(
            outbox
                .iter()
                .map(|(_, (id, m))| shard_of(&m.topic, m.key.as_deref(), id))
                .collect::<Vec<_>>(),
        )
        // The notification rides on the insert (a trip less per commit); NOTIFY is
        // delivered at commit, to the relay of whichever host holds the rows' shards.
        .bind(OUTBOX_CHANNEL)
        .bind(origin)
        .execute(&mut **tx)
        .await?;
    }

    let effects = &writes.effects;
    if !effects.is_empty() {
        sqlx::query(
            "INSERT INTO effects (id, component, kind, request, result_topic, result_event_id, result_headers, \
             context, max_attempts, initial_backoff_ms, max_backoff_ms, attempts, due_at_ms, created_at_ms) \
             SELECT i, c, k, r, rt, re, rh, cx, m, ib, mb, 0, $12, $12 FROM unnest($1::text[], $2::text[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int4[], $10::int8[], \
             $11::int8[]) AS u(i, c, k, r, rt, re, rh, cx, m, ib, mb)",
        )
        .bind(effects.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>())
        .bind(effects.iter().map(|(c, _)| text(c)).collect::<Vec<_>>())
        .bind(effects.iter().map(|(_, e)| e.kind.clone()).collect::<Vec<_>>())
        .bind(effects.iter().map(|(_, e)| e.request.clone()).collect::<Vec<_>>())
        .bind(effects.iter().map(|(_, e)| e.result_topic.clone()).collect::<Vec<_>>())
        .bind(
            effects
                .iter()
                .map(|(_, e)| e.result_event_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            effects
                .iter()
                .map(|(_, e)| encode_headers(&e.result_headers))
                .collect::<Vec<_>>(),
        )
        .bind(effects.iter().map(|(_, e)| e.context.clone()).collect::<Vec<_>>())
        .bind(
            effects
                .iter()
                .map(|(_, e)| e.max_attempts.min(i32::MAX as u32) as i32)
                .collect::<Vec<_>>(),
        )
        .bind(effects.iter().map(|(_, e)| e.initial_backoff_ms).collect::<Vec<_>>())
        .bind(effects.iter().map(|(_, e)| e.max_backoff_ms).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
