//! A group commit in a handful of multi-row statements instead of several per event, on
//! both backends ([`postgres`], [`sqlite`]). Measured on this 2-core machine (`just bench
//! throughput`, one write and one publish per event): on PostgreSQL one statement per row
//! ran 590 µs per event, most of it waiting on the socket, against 220 µs on SQLite where a
//! statement costs no trip (but a hand-off to sqlx's thread and back; see [`sqlite`]).
//!
//! The checks of every unit are decided in memory, in chain order, against the values
//! read (and, on PostgreSQL, locked) once for the whole group, with each accepted unit's
//! writes laid over them, which is what [`Unit::apply`] would find one unit at a time; a
//! listing is read once with the locks held and decided the same way. A group with an
//! event that turned out claimed already returns None, and the caller applies it one unit
//! at a time. Listings went that way too until `just load 300` showed the committer busy
//! all the time on groups of 100–200 units taking 55–160 ms each: notif lists keys on many
//! events, and one such unit sent its whole group down the slow path.

mod postgres;
mod sqlite;

use std::collections::HashMap;

use super::group::{ChainResults, UnitResult};
use super::kv::prefix_end;
use super::staged::{Check, StagedEffect, Unit, merge_listing};
use super::{OutboundMessage, StoreError, Tx, TxInner};

type Key = (String, String);
/// A timer a unit sets: id, due time (ms since the epoch), message.
type Timer = (String, i64, OutboundMessage);
/// Where a listing check sits: the unit's place in the group, the check's in the unit.
type ListingAt = (usize, usize);
/// A listing to read: where, component, prefix, after, how many rows.
type Wanted<'a> = (ListingAt, &'a str, &'a str, &'a str, u32);
/// Listings as the database has them.
type Listings = HashMap<ListingAt, Vec<(String, Vec<u8>)>>;

/// Applies `chains` in `tx`, or None (nothing applied) when they need the one-by-one
/// path (an event turned out claimed already).
pub(crate) async fn apply(
    tx: &mut Tx,
    chains: &[Vec<Unit>],
    hot: &super::hot::HotKeys,
) -> Result<Option<Vec<Vec<UnitResult>>>, StoreError> {
    if let TxInner::Postgres(pg) = &mut tx.inner {
        postgres::lock(pg, chains).await?;
    }

    // Each listing as the database has it, `fetch` rows as the unit read it. The group's
    // earlier writes are laid over them when the unit is decided. No wider read is
    // needed: `fetch` covers the answer and the unit's own hidden rows, so a deletion by
    // an earlier unit either removes a row of the answer (a conflict either way) or one
    // beyond it, and the answer's rows stay within what was read.
    let mut wanted: Vec<Wanted<'_>> = Vec::new();
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

    // What the checked keys and timers hold now.
    let mut current = Current::default();
    for unit in chains.iter().flatten() {
        for check in &unit.checks {
            match check {
                Check::Key { key, .. } => {
                    current.values.insert((unit.inbox.component.clone(), key.clone()), None);
                }
                Check::Timer { id, .. } => {
                    current.timers.insert((unit.inbox.component.clone(), id.clone()), false);
                }
                Check::Listing { .. } => {} // read above
            }
        }
    }
    match &mut tx.inner {
        TxInner::Postgres(pg) => postgres::read(pg, &mut current).await?,
        TxInner::Sqlite(lite) => sqlite::read(lite, &mut current).await?,
        _ => return Ok(None), // a reader never commits
    }

    let (results, accepted) = decide(chains, hot, current, listings);
    if accepted.is_empty() {
        return Ok(Some(results));
    }
    // Claims: all or, if any event was claimed meanwhile, the one-by-one path decides.
    let claimed = match &mut tx.inner {
        TxInner::Postgres(pg) => postgres::claim(pg, &accepted).await?,
        TxInner::Sqlite(lite) => sqlite::claim(lite, &accepted).await?,
        _ => return Ok(None),
    };
    if claimed < accepted.len() as u64 {
        return Ok(None);
    }
    let writes = Writes::of(&accepted);
    let origin = tx.signals.origin.clone();
    match &mut tx.inner {
        TxInner::Postgres(pg) => postgres::write(pg, &writes, &origin).await?,
        TxInner::Sqlite(lite) => sqlite::write(lite, &writes).await?,
        _ => return Ok(None),
    }
    // Wake the relay, the timer pump and the delivery worker of this host at commit.
    tx.wrote_outbox |= !writes.outbox.is_empty();
    tx.wrote_timers |= !writes.timers.is_empty();
    tx.wrote_effects |= !writes.effects.is_empty();
    Ok(Some(results))
}

/// The listings `wanted`. On PostgreSQL those whose prefix has an upper bound go in one
/// statement, so the index scan of each stops at its prefix's end (see [`super::kv`]);
/// the rare others (an empty prefix), and every one on SQLite, where a statement costs
/// no round trip, go one each.
async fn listings(tx: &mut Tx, wanted: &[Wanted<'_>]) -> Result<Listings, StoreError> {
    let mut out = Listings::new();
    let mut bounded = Vec::new();
    for &(at, component, prefix, after, rows) in wanted {
        match prefix_end(prefix).filter(|_| tx.is_postgres()) {
            Some(end) => bounded.push((at, component, prefix, after, end, rows)),
            None => {
                let listed = tx.list_prefix(component, prefix, Some(after), rows, usize::MAX).await?;
                out.insert(at, listed.unwrap_or_default());
            }
        }
    }
    if let (TxInner::Postgres(pg), false) = (&mut tx.inner, bounded.is_empty()) {
        postgres::listings(pg, &bounded, &mut out).await?;
    }
    Ok(out)
}

/// What the group's checked keys (None: absent) and timers (whether set) hold.
#[derive(Default)]
struct Current {
    values: HashMap<Key, Option<Vec<u8>>>,
    timers: HashMap<Key, bool>,
}

/// Decides every unit in order, laying accepted writes over what was read: each chain's
/// results, and the units that commit.
fn decide<'a>(
    chains: &'a [Vec<Unit>],
    hot: &super::hot::HotKeys,
    current: Current,
    mut listings: Listings,
) -> (Vec<Vec<UnitResult>>, Vec<&'a Unit>) {
    let Current { mut values, mut timers } = current;
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
            if failed.is_some() {
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
    (results, accepted)
}

/// Everything the accepted units write, as it stands after each of them in turn.
struct Writes<'a> {
    /// The last value per key, as it would be one unit after another.
    put: Vec<(&'a str, &'a str, &'a [u8])>,
    delete: Vec<(&'a str, &'a str)>,
    /// Every timer any unit cancelled: deleted before the survivors go in.
    cancelled: Vec<(&'a str, &'a str)>,
    /// Timers set and not cancelled by a later unit, in the order first set.
    timers: Vec<(&'a str, &'a Timer)>,
    /// In the order the events ran, so the relay sends them in that order.
    outbox: Vec<(&'a str, &'a (String, OutboundMessage))>,
    effects: Vec<(&'a str, &'a StagedEffect)>,
}

impl<'a> Writes<'a> {
    fn of(units: &[&'a Unit]) -> Writes<'a> {
        let mut last: HashMap<(&str, &str), &Option<Vec<u8>>> = HashMap::new();
        let mut order: Vec<(&str, &str)> = Vec::new();
        for unit in units {
            for (key, value) in &unit.writes {
                let at = (unit.inbox.component.as_str(), key.as_str());
                if last.insert(at, value).is_none() {
                    order.push(at);
                }
            }
        }
        let (mut put, mut delete) = (Vec::new(), Vec::new());
        for at in order {
            match last[&at] {
                Some(value) => put.push((at.0, at.1, value.as_slice())),
                None => delete.push(at),
            }
        }

        // A timer one unit sets and a later one cancels is never inserted.
        let mut cancelled = Vec::new();
        let mut last_timer: HashMap<(&str, &str), Option<&Timer>> = HashMap::new();
        let mut set_order: Vec<(&str, &str)> = Vec::new();
        for unit in units {
            let component = unit.inbox.component.as_str();
            for id in &unit.cancels {
                cancelled.push((component, id.as_str()));
                last_timer.insert((component, id.as_str()), None);
            }
            for timer in &unit.timers {
                let at = (component, timer.0.as_str());
                last_timer.insert(at, Some(timer));
                set_order.push(at);
            }
        }
        let mut seen = std::collections::HashSet::new();
        let timers = set_order
            .into_iter()
            .filter(|at| seen.insert(*at))
            .filter_map(|at| last_timer[&at].map(|timer| (at.0, timer)))
            .collect();

        let outbox = units
            .iter()
            .flat_map(|u| u.outbox.iter().map(|o| (u.inbox.component.as_str(), o)))
            .collect();
        let effects = units
            .iter()
            .flat_map(|u| u.effects.iter().map(|e| (u.inbox.component.as_str(), e)))
            .collect();
        Writes {
            put,
            delete,
            cancelled,
            timers,
            outbox,
            effects,
        }
    }
}
