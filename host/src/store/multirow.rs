//! A group commit on PostgreSQL in a handful of multi-row statements instead of several
//! round trips per event. Measured on this 2-core machine (`just bench throughput`, one
//! write and one publish per event): one statement per row ran 590 µs per event, most of
//! it waiting on the socket, against 220 µs on SQLite where a statement costs no trip.
//!
//! The checks of every unit are decided in memory, in chain order, against the values
//! read (and locked) once for the whole group, with each accepted unit's writes laid
//! over them, which is what [`Unit::apply`] would find one unit at a time; a listing is
//! read once with the locks held and decided the same way. A group with an event that
//! turned out claimed already returns None, and the caller applies it one unit at a
//! time. Listings went that way too until `just load 300` showed the committer busy all
//! the time on groups of 100–200 units taking 55–160 ms each: notif lists keys on many
//! events, and one such unit sent its whole group down the slow path.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Postgres, Transaction};

use super::group::{ChainResults, UnitResult};
use super::kv::prefix_end;
use super::outbox::{OUTBOX_CHANNEL, shard_of};
use super::staged::{Check, Unit, lock_id, merge_listing};
use super::{StoreError, Tx, TxInner, encode_headers, now_ms};

type Key = (String, String);
/// A timer a unit sets: id, due time (ms since the epoch), message.
type Timer = (String, i64, super::OutboundMessage);

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

/// Where a listing check sits: the unit's place in the group, the check's in the unit.
type ListingAt = (usize, usize);

/// Applies `chains` in `tx`, or None (nothing applied) when they need the one-by-one
/// path (an event turned out claimed already).
pub(crate) async fn apply(
    tx: &mut Tx,
    chains: &[Vec<Unit>],
    hot: &super::hot::HotKeys,
) -> Result<Option<Vec<Vec<UnitResult>>>, StoreError> {
    let TxInner::Postgres(pg) = &mut tx.inner else {
        return Ok(None);
    };
    // Text without parameters goes as one simple query, its statements in order.
    sqlx::Executor::execute(&mut **pg, locks(chains).as_str()).await?;

    // Each listing as the database has it, `fetch` rows as the unit read it. The group's
    // earlier writes are laid over them when the unit is decided. No wider read is
    // needed: `fetch` covers the answer and the unit's own hidden rows, so a deletion by
    // an earlier unit either removes a row of the answer (a conflict either way) or one
    // beyond it, and the answer's rows stay within what was read.
    let mut wanted: Vec<(ListingAt, &str, &str, &str, u32)> = Vec::new();
    for (at, unit) in chains.iter().flatten().enumerate() {
        for (i, check) in unit.checks.iter().enumerate() {
            if let Check::Listing {
                prefix, after, fetch, ..
            } = check
            {
                wanted.push(((at, i), unit.inbox.component.as_str(), prefix, after, *fetch));
            }
        }
    }
    let listings = listings(tx, &wanted).await?;

    let TxInner::Postgres(pg) = &mut tx.inner else {
        return Ok(None);
    };
    let origin = tx.signals.origin.clone();
    let applied = apply_pg(pg, chains, hot, &origin, listings).await?;
    if applied.is_some() {
        // Wake the relay, the timer pump and the delivery worker of this host at commit.
        let units = || chains.iter().flatten();
        tx.wrote_outbox |= units().any(|u| !u.outbox.is_empty());
        tx.wrote_timers |= units().any(|u| !u.timers.is_empty());
        tx.wrote_effects |= units().any(|u| !u.effects.is_empty());
    }
    Ok(applied)
}

/// The listings `wanted` (where, component, prefix, after, how many rows), in one
/// statement for those whose prefix has an upper bound, so the index scan of each stops
/// at its prefix's end (see [`super::kv`]); the rare others (an empty prefix) one each.
async fn listings(
    tx: &mut Tx,
    wanted: &[(ListingAt, &str, &str, &str, u32)],
) -> Result<HashMap<ListingAt, Vec<(String, Vec<u8>)>>, StoreError> {
    let mut out: HashMap<ListingAt, Vec<(String, Vec<u8>)>> = HashMap::new();
    let mut bounded = Vec::new();
    for &(at, component, prefix, after, rows) in wanted {
        match prefix_end(prefix) {
            Some(end) => bounded.push((at, component, prefix, after, end, rows)),
            None => {
                let listed = tx.list_prefix(component, prefix, Some(after), rows, usize::MAX).await?;
                out.insert(at, listed.unwrap_or_default());
            }
        }
    }
    if bounded.is_empty() {
        return Ok(out);
    }
    let TxInner::Postgres(pg) = &mut tx.inner else {
        return Ok(out);
    };
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
    .fetch_all(&mut **pg)
    .await?;
    for (at, ..) in &bounded {
        out.entry(*at).or_default();
    }
    for (n, key, value) in found {
        let at = bounded[usize::try_from(n - 1).expect("ordinality counts from 1")].0;
        out.entry(at).or_default().push((key, value));
    }
    Ok(out)
}

async fn apply_pg(
    tx: &mut Transaction<'static, Postgres>,
    chains: &[Vec<Unit>],
    hot: &super::hot::HotKeys,
    origin: &str,
    mut listings: HashMap<ListingAt, Vec<(String, Vec<u8>)>>,
) -> Result<Option<Vec<Vec<UnitResult>>>, StoreError> {
    let units = || chains.iter().flatten();

    // What the checked keys and timers hold now.
    let mut values: HashMap<Key, Option<Vec<u8>>> = HashMap::new();
    let mut timers: HashMap<Key, bool> = HashMap::new();
    for unit in units() {
        for check in &unit.checks {
            match check {
                Check::Key { key, .. } => {
                    values.insert((unit.inbox.component.clone(), key.clone()), None);
                }
                Check::Timer { id, .. } => {
                    timers.insert((unit.inbox.component.clone(), id.clone()), false);
                }
                Check::Listing { .. } => {} // fetched with the locks taken
            }
        }
    }
    if !values.is_empty() {
        let (components, keys): (Vec<String>, Vec<String>) = values.keys().cloned().unzip();
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
            values.insert((component, key), Some(value));
        }
    }
    if !timers.is_empty() {
        let (components, ids): (Vec<String>, Vec<String>) = timers.keys().cloned().unzip();
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
            timers.insert(key, true);
        }
    }

    // Decide every unit in order, laying accepted writes over what was read.
    let mut results = Vec::with_capacity(chains.len());
    let mut accepted: Vec<&Unit> = Vec::new();
    let mut at = 0;
    for chain in chains {
        let mut out = ChainResults::with_capacity(chain.len());
        for unit in chain {
            at += 1;
            if !out.decide_next() {
                continue;
            }
            let component = &unit.inbox.component;
            let failed = unit.checks.iter().enumerate().find(|(i, check)| match check {
                Check::Key { key, seen } => values.get(&(component.clone(), key.clone())).cloned().flatten() != *seen,
                Check::Timer { id, existed } => {
                    timers.get(&(component.clone(), id.clone())).copied().unwrap_or(false) != *existed
                }
                Check::Listing {
                    prefix, after, fetch, ..
                } => {
                    // What the database would list after the earlier units' writes: the
                    // rows read, with every key of the range `values` knows laid over them
                    // (accepted writes, and keys read as they stand), cut to `fetch`.
                    let over = values
                        .iter()
                        .filter(|((c, key), _)| c == component && key.starts_with(prefix.as_str()) && key > after)
                        .map(|((_, key), value)| (key.clone(), value.clone()));
                    let rows = listings.remove(&(at - 1, *i)).unwrap_or_default();
                    !check.lists_as_before(merge_listing(rows, over, *fetch))
                }
            });
            let failed = failed.map(|(_, check)| check);
            if let Some(Check::Key { key, .. }) = failed {
                hot.mark(component, key);
            }
            let holds = failed.is_none();
            if !holds {
                out.push(UnitResult::Conflict);
                continue;
            }
            for (key, value) in &unit.writes {
                values.insert((component.clone(), key.clone()), value.clone());
            }
            for id in &unit.cancels {
                timers.insert((component.clone(), id.clone()), false);
            }
            for (id, _, _) in &unit.timers {
                timers.insert((component.clone(), id.clone()), true);
            }
            accepted.push(unit);
            out.push(UnitResult::Committed);
        }
        results.push(out.into_vec());
    }
    if accepted.is_empty() {
        return Ok(Some(results));
    }

    // Claims: all or, if any event was claimed meanwhile, the one-by-one path decides.
    let claimed = claim(tx, &accepted).await?;
    if claimed < accepted.len() as u64 {
        return Ok(None);
    }
    write(tx, &accepted, origin).await?;
    Ok(Some(results))
}

async fn claim(tx: &mut Transaction<'static, Postgres>, units: &[&Unit]) -> Result<u64, StoreError> {
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
async fn write(tx: &mut Transaction<'static, Postgres>, units: &[&Unit], origin: &str) -> Result<(), StoreError> {
    let now = now_ms();
    // The last value per key wins, as it would one unit after another.
    let mut last: HashMap<Key, &Option<Vec<u8>>> = HashMap::new();
    for unit in units {
        for (key, value) in &unit.writes {
            last.insert((unit.inbox.component.clone(), key.clone()), value);
        }
    }
    let (mut put, mut delete): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for ((component, key), value) in last {
        match value {
            Some(value) => put.push((component, key, value.clone())),
            None => delete.push((component, key)),
        }
    }
    if !put.is_empty() {
        sqlx::query(
            "INSERT INTO kv (component, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
             ON CONFLICT (component, key) DO UPDATE SET value = excluded.value",
        )
        .bind(put.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
        .bind(put.iter().map(|p| p.1.clone()).collect::<Vec<_>>())
        .bind(put.into_iter().map(|p| p.2).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !delete.is_empty() {
        let (components, keys): (Vec<String>, Vec<String>) = delete.into_iter().unzip();
        // The `= ANY` conditions give the planner an index scan that no statistics turn
        // into a scan of the table (see the checked keys above); the pairs keep it exact.
        sqlx::query(
            "DELETE FROM kv WHERE component = ANY($1) AND key = ANY($2) \
             AND (component, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(components)
        .bind(keys)
        .execute(&mut **tx)
        .await?;
    }

    // Timers as they stand after every unit in turn (each unit cancels, then schedules):
    // a timer one unit sets and a later one cancels is never inserted, and every id any
    // unit cancelled is deleted before the survivors go in.
    let mut cancelled: Vec<(String, String)> = Vec::new();
    let mut last_timer: HashMap<Key, Option<(&String, &Timer)>> = HashMap::new();
    let mut order: Vec<Key> = Vec::new();
    for unit in units {
        let component = &unit.inbox.component;
        for id in &unit.cancels {
            let key = (component.clone(), id.clone());
            cancelled.push(key.clone());
            last_timer.insert(key, None);
        }
        for timer in &unit.timers {
            let key = (component.clone(), timer.0.clone());
            last_timer.insert(key.clone(), Some((component, timer)));
            order.push(key);
        }
    }
    if !cancelled.is_empty() {
        let (components, ids): (Vec<String>, Vec<String>) = cancelled.into_iter().unzip();
        // By index whatever the statistics say, as the deletes of keys above.
        sqlx::query(
            "DELETE FROM timers WHERE id = ANY($2) \
             AND (component, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(components)
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    }
    let mut seen = std::collections::HashSet::new();
    let timers: Vec<_> = order
        .iter()
        .filter(|key| seen.insert(*key))
        .filter_map(|key| last_timer.get(key).copied().flatten())
        .collect();
    if !timers.is_empty() {
        sqlx::query(
            "INSERT INTO timers (id, component, topic, msg_key, payload, headers, fire_at_ms, created_at_ms) \
             SELECT i, c, t, k, p, h, f, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
             $5::bytea[], $6::text[], $7::int8[]) AS u(i, c, t, k, p, h, f)",
        )
        .bind(timers.iter().map(|(_, (id, _, _))| id.clone()).collect::<Vec<_>>())
        .bind(timers.iter().map(|(c, _)| (*c).clone()).collect::<Vec<_>>())
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

    let outbox: Vec<_> = units
        .iter()
        .flat_map(|u| u.outbox.iter().map(|o| (&u.inbox.component, o)))
        .collect();
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
        .bind(outbox.iter().map(|(c, _)| (*c).clone()).collect::<Vec<_>>())
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

    let effects: Vec<_> = units
        .iter()
        .flat_map(|u| u.effects.iter().map(|e| (&u.inbox.component, e)))
        .collect();
    if !effects.is_empty() {
        sqlx::query(
            "INSERT INTO effects (id, component, kind, request, result_topic, result_event_id, result_headers, \
             context, max_attempts, initial_backoff_ms, max_backoff_ms, attempts, due_at_ms, created_at_ms) \
             SELECT i, c, k, r, rt, re, rh, cx, m, ib, mb, 0, $12, $12 FROM unnest($1::text[], $2::text[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int4[], $10::int8[], \
             $11::int8[]) AS u(i, c, k, r, rt, re, rh, cx, m, ib, mb)",
        )
        .bind(effects.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>())
        .bind(effects.iter().map(|(c, _)| (*c).clone()).collect::<Vec<_>>())
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
