//! What an invocation reads and writes, kept apart from the database until it commits.
//!
//! A [`Staged`] reads the latest commit through a connection taken at the first read (on
//! SQLite from the reader pool, so the Wasm call never holds the single write lock; a
//! query reads from a snapshot instead, see [`Staged::for_query`]) and keeps every write
//! in memory. When the guest returns ok, [`Staged::finish`] turns
//! it into a [`Unit`]: the inbox claim, the writes, the messages, timers and deliveries,
//! and the reads they were based on. The group committer ([`super::group`]) applies many
//! units in one transaction, checking each unit's reads first: a unit whose reads no
//! longer hold is not applied and its event runs again (optimistic concurrency), so each
//! event stays isolated while their commits share one fsync.
//!
//! Events of one partition run one after another before their group commits: an
//! [`Overlay`] carries the writes of the earlier, not yet committed events, so a later
//! one reads what an earlier one wrote. A partition's next chain may run while the last
//! one commits, over [`Overlay::after`] it. A read the overlay answers is checked at
//! commit like any other, so another partition's commit in between is a conflict.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Db, NewEffect, OutboundMessage, StoreError, Tx};

/// How long a read waits for the turn on a hot key (see [`super::hot`]) before it reads
/// without it: well under the 1 s default deadline. A holder keeps a turn until its chain
/// has committed. `just load 100 10` on Kafka + PostgreSQL: p50 258 ms with 100 ms (reads
/// gave up, conflicted and ran again), 124 ms with 500 ms.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The writes of a partition's earlier events that are not committed yet.
#[derive(Debug, Default)]
pub struct Overlay {
    /// Turns on hot keys (see [`super::hot`]) these events read: held until the chain
    /// has committed, which is when the overlay is dropped.
    turns: HashMap<String, tokio::sync::OwnedMutexGuard<()>>,
    /// A read of these events waited for a turn: the chain does not wait again, so two
    /// waits cannot add up past an event's deadline.
    waited: bool,
    /// Key → value (None: deleted), of the one component a partition feeds.
    kv: HashMap<String, Option<Vec<u8>>>,
    /// Timer id → whether it exists after those events.
    timers: HashMap<String, bool>,
    /// The same, after the chain before, which commits in a group of its own: a timer
    /// may fire between the two commits, so a read of these is checked.
    carried_timers: HashMap<String, bool>,
    /// Event ids those events claim.
    claimed: HashSet<String>,
}

impl Overlay {
    /// True when one of the earlier events of the group has the same id.
    pub fn claims(&self, event_id: &str) -> bool {
        self.claimed.contains(event_id)
    }

    /// True when these events hold a turn on a hot key (released at their commit).
    pub fn holds_turns(&self) -> bool {
        !self.turns.is_empty()
    }

    /// What a partition's next chain runs over while `chain` (one component's units, in
    /// order) commits: its writes, timers and claims, and no turn.
    pub fn after(chain: &[Unit]) -> Overlay {
        let mut overlay = Overlay::default();
        for unit in chain {
            for (key, value) in &unit.writes {
                overlay.kv.insert(key.clone(), value.clone());
            }
            for id in &unit.cancels {
                overlay.carried_timers.insert(id.clone(), false);
            }
            for (id, _, _) in &unit.timers {
                overlay.carried_timers.insert(id.clone(), true);
            }
            overlay.claimed.insert(unit.inbox.event_id.clone());
        }
        overlay
    }
}

/// A read whose answer the unit depends on, checked again at commit.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// `key` held `seen` (None: absent).
    Key { key: String, seen: Option<Vec<u8>> },
    /// `list-prefix` answered `answer`; `own` are the unit's own writes in the range at
    /// the time, merged over a database listing of `fetch` rows.
    Listing {
        prefix: String,
        after: String,
        fetch: u32,
        limit: u32,
        own: Vec<(String, Option<Vec<u8>>)>,
        answer: Vec<(String, Vec<u8>)>,
    },
    /// Timer `id` existed (or not).
    Timer { id: String, existed: bool },
}

/// A delivery to record, owned (see [`NewEffect`]).
#[derive(Debug, Clone)]
pub struct StagedEffect {
    pub id: String,
    pub kind: String,
    pub request: String,
    pub result_topic: String,
    pub result_event_id: String,
    pub result_headers: Vec<(String, String)>,
    pub context: String,
    pub max_attempts: u32,
    pub initial_backoff_ms: i64,
    pub max_backoff_ms: i64,
}

/// The inbox row of a unit, owned (see [`super::InboxEntry`]).
#[derive(Debug, Clone, Default)]
pub struct InboxRecord {
    pub component: String,
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub version: Option<String>,
    pub activation: Option<i64>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    /// `committed` or `dead-lettered`.
    pub outcome: &'static str,
}

impl InboxRecord {
    pub fn entry(&self) -> super::InboxEntry<'_> {
        super::InboxEntry {
            component: &self.component,
            event_id: &self.event_id,
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            version: self.version.as_deref(),
            activation: self.activation,
            request_id: self.request_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            outcome: self.outcome,
        }
    }
}

/// Everything one event commits, and the reads it must still find true.
#[derive(Debug)]
pub struct Unit {
    pub inbox: InboxRecord,
    pub(crate) checks: Vec<Check>,
    /// Final value per key (None: delete), in key order.
    pub(crate) writes: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) cancels: Vec<String>,
    pub(crate) timers: Vec<(String, i64, OutboundMessage)>,
    pub(crate) outbox: Vec<(String, OutboundMessage)>,
    pub(crate) effects: Vec<StagedEffect>,
}

impl Unit {
    /// A unit that only claims its event and queues one message (a dead letter).
    pub fn claim_and_send(inbox: InboxRecord, message_id: String, message: OutboundMessage) -> Unit {
        Unit {
            inbox,
            checks: Vec::new(),
            writes: Vec::new(),
            cancels: Vec::new(),
            timers: Vec::new(),
            outbox: vec![(message_id, message)],
            effects: Vec::new(),
        }
    }

    /// Checks the unit's reads against `tx`, then claims its event and applies it. A key
    /// whose check failed is marked hot in `hot`.
    pub(crate) async fn apply(&self, tx: &mut Tx, hot: &super::hot::HotKeys) -> Result<Applied, StoreError> {
        let component = self.inbox.component.as_str();
        if tx.is_postgres() {
            self.lock(tx).await?;
        }
        for check in &self.checks {
            if !check.holds(tx, component).await? {
                if let Check::Key { key, .. } = check {
                    hot.mark(component, key);
                }
                return Ok(Applied::Conflict);
            }
        }
        if !tx.claim_inbox(&self.inbox.entry()).await? {
            return Ok(Applied::Duplicate);
        }
        for (key, value) in &self.writes {
            match value {
                Some(value) => tx.put(component, key, value).await?,
                None => {
                    tx.delete(component, key).await?;
                }
            }
        }
        for id in &self.cancels {
            tx.cancel_timer(component, id).await?;
        }
        for (id, fire_at_ms, message) in &self.timers {
            tx.insert_timer(id, component, *fire_at_ms, message).await?;
        }
        for (id, message) in &self.outbox {
            tx.insert_outbox(id, component, message).await?;
        }
        for e in &self.effects {
            tx.insert_effect(&NewEffect {
                id: &e.id,
                component,
                kind: &e.kind,
                request: &e.request,
                result_topic: &e.result_topic,
                result_event_id: &e.result_event_id,
                result_headers: &e.result_headers,
                context: &e.context,
                max_attempts: e.max_attempts,
                initial_backoff_ms: e.initial_backoff_ms,
                max_backoff_ms: e.max_backoff_ms,
            })
            .await?;
        }
        Ok(Applied::Committed)
    }
}

impl Unit {
    /// On PostgreSQL, where other hosts commit at the same time: locks (until commit)
    /// every key the unit read or writes, so no other host's commit can slip between
    /// this unit's checks and its writes. A unit that listed keys locks its whole
    /// namespace; the others share that lock. (SQLite needs none: one writer at a time.)
    async fn lock(&self, tx: &mut Tx) -> Result<(), StoreError> {
        let component = self.inbox.component.as_str();
        let listed = self.checks.iter().any(|c| matches!(c, Check::Listing { .. }));
        let mut keys: Vec<i64> = self
            .checks
            .iter()
            .filter_map(|c| match c {
                Check::Key { key, .. } => Some(key),
                _ => None,
            })
            .chain(self.writes.iter().map(|(key, _)| key))
            .map(|key| lock_id(component, Some(key)))
            .collect();
        if keys.is_empty() && !listed {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        tx.advisory_locks(lock_id(component, None), listed, &keys).await
    }
}

/// The advisory lock id of `component`'s key (or, for None, of its namespace).
pub(crate) fn lock_id(component: &str, key: Option<&str>) -> i64 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(component.as_bytes());
    if let Some(key) = key {
        hash.update([0]);
        hash.update(key.as_bytes());
    }
    let digest = hash.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What applying one unit inside a group's transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Committed,
    /// The event id was claimed before: nothing applied.
    Duplicate,
    /// A read no longer holds: nothing applied, the event must run again.
    Conflict,
}

impl Check {
    /// For a listing: whether `rows`, the database's `fetch` rows of its range now, with
    /// the unit's own writes laid over them, give the answer the unit saw.
    pub(crate) fn lists_as_before(&self, rows: Vec<(String, Vec<u8>)>) -> bool {
        match self {
            Check::Listing { limit, own, answer, .. } => merge_listing(rows, own.iter().cloned(), *limit) == *answer,
            _ => false,
        }
    }

    async fn holds(&self, tx: &mut Tx, component: &str) -> Result<bool, StoreError> {
        Ok(match self {
            Check::Key { key, seen } => tx.get(component, key).await? == *seen,
            Check::Listing {
                prefix, after, fetch, ..
            } => {
                let rows = tx
                    .list_prefix(component, prefix, Some(after), *fetch, usize::MAX)
                    .await?
                    .unwrap_or_default();
                self.lists_as_before(rows)
            }
            Check::Timer { id, existed } => tx.timer_exists(component, id).await? == *existed,
        })
    }
}

/// Database rows of a listing with writes laid over them, in key order, at most `limit`.
pub(crate) fn merge_listing(
    rows: Vec<(String, Vec<u8>)>,
    over: impl Iterator<Item = (String, Option<Vec<u8>>)>,
    limit: u32,
) -> Vec<(String, Vec<u8>)> {
    let mut merged: BTreeMap<String, Vec<u8>> = rows.into_iter().collect();
    for (key, value) in over {
        match value {
            Some(v) => merged.insert(key, v),
            None => merged.remove(&key),
        };
    }
    merged.into_iter().take(limit as usize).collect()
}

/// An invocation's reads and writes (see the module docs).
pub struct Staged {
    db: Db,
    component: String,
    /// Where reads go, opened at the first one.
    reads: Option<Tx>,
    /// Reads from one snapshot, for a query, whose reads nothing checks afterwards.
    snapshot: bool,
    /// A read is in flight on `reads`, or one failed: the connection is not kept for the
    /// next invocation ([`Db::keep_reader`]), it goes back to its pool.
    reading: bool,
    base: Overlay,
    /// The unit's own writes, last one per key.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// What the database and the overlay answered per key, so a key read twice is read
    /// (and checked) once.
    seen: HashMap<String, Option<Vec<u8>>>,
    checks: Vec<Check>,
    /// Timer id → exists, after the unit's own schedules and cancels.
    own_timers: HashMap<String, bool>,
    cancels: Vec<String>,
    timers: Vec<(String, i64, OutboundMessage)>,
    outbox: Vec<(String, OutboundMessage)>,
    effects: Vec<StagedEffect>,
}

impl Staged {
    /// A view for `component` on top of `base`, the writes of its partition's earlier
    /// events not yet committed.
    pub fn new(db: &Db, component: &str, base: Overlay) -> Staged {
        Staged {
            db: db.clone(),
            component: component.to_string(),
            reads: None,
            snapshot: false,
            reading: false,
            base,
            writes: BTreeMap::new(),
            seen: HashMap::new(),
            checks: Vec::new(),
            own_timers: HashMap::new(),
            cancels: Vec::new(),
            timers: Vec::new(),
            outbox: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// A view for a read-only query of `component`: every read comes from one snapshot,
    /// since a query's reads are not checked at a commit.
    pub fn for_query(db: &Db, component: &str) -> Staged {
        Staged {
            snapshot: true,
            ..Staged::new(db, component, Overlay::default())
        }
    }

    /// The read connection, opened at the first read. Each caller clears [`Staged::reading`]
    /// once its read returned ok.
    async fn reads(&mut self) -> Result<&mut Tx, StoreError> {
        self.reading = true;
        if self.reads.is_none() {
            self.reads = Some(match self.snapshot {
                true => self.db.begin_snapshot().await?,
                false => self.db.reader().await?,
            });
        }
        Ok(self.reads.as_mut().expect("just opened"))
    }

    /// `key` as the database and the earlier events of the group left it.
    async fn base_value(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.seen.get(key) {
            return Ok(value.clone());
        }
        let value = match self.base.kv.get(key) {
            Some(value) => value.clone(),
            None => {
                let hot = self.db.hot.turn(&self.component, key);
                let is_hot = hot.is_some();
                // Partitions fought over this key: wait for the turn, held to the commit,
                // and read what the last holder committed.
                if let Some(turn) = hot.filter(|_| !self.base.turns.contains_key(key)) {
                    // Waiting is bounded, so turns never deadlock: a chain holding one
                    // turn that wants another, or a holder that waits for the permit a
                    // waiter holds. Without the turn the read is only checked at commit.
                    let guard = if self.base.turns.is_empty() && !self.base.waited {
                        self.base.waited = true;
                        tokio::time::timeout(TURN_WAIT, turn.lock_owned()).await.ok()
                    } else {
                        turn.try_lock_owned().ok()
                    };
                    if let Some(guard) = guard {
                        self.base.turns.insert(key.to_string(), guard);
                    }
                }
                let component = self.component.clone();
                if is_hot && self.snapshot {
                    // A query's snapshot may be older than the last holder's commit.
                    self.db.read_latest(&component, key).await?
                } else {
                    // An invocation's reads see the latest commit already.
                    let value = self.reads().await?.get(&component, key).await?;
                    self.reading = false;
                    value
                }
            }
        };
        self.seen.insert(key.to_string(), value.clone());
        self.checks.push(Check::Key {
            key: key.to_string(),
            seen: value.clone(),
        });
        Ok(value)
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.base_value(key).await,
        }
    }

    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.writes.insert(key.to_string(), Some(value.to_vec()));
    }

    /// Deletes `key`; true when it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let existed = self.get(key).await?.is_some();
        self.writes.insert(key.to_string(), None);
        Ok(existed)
    }

    /// Keys with `prefix` after `start_after`, in byte order, at most `limit`, as the
    /// group's view has them; None when they would exceed `max_bytes`.
    pub async fn list_prefix(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Option<Vec<(String, Vec<u8>)>>, StoreError> {
        let after = start_after.unwrap_or("").to_string();
        let in_range = |key: &str| key.starts_with(prefix) && key > after.as_str();
        // Deleted keys hide database rows: fetch that many more so `limit` still fills.
        let hidden = self.base.kv.iter().filter(|(k, v)| v.is_none() && in_range(k)).count()
            + self.writes.iter().filter(|(k, v)| v.is_none() && in_range(k)).count();
        let fetch = limit.saturating_add(hidden.min(u32::MAX as usize) as u32);
        let component = self.component.clone();
        let rows = self
            .reads()
            .await?
            .list_prefix(&component, prefix, Some(&after), fetch, max_bytes)
            .await?;
        self.reading = false;
        let Some(rows) = rows else { return Ok(None) };
        let base: Vec<(String, Option<Vec<u8>>)> = self
            .base
            .kv
            .iter()
            .filter(|(k, _)| in_range(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let own: Vec<(String, Option<Vec<u8>>)> = self
            .writes
            .iter()
            .filter(|(k, _)| in_range(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let answer = merge_listing(rows, base.into_iter().chain(own.iter().cloned()), limit);
        if answer.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > max_bytes {
            return Ok(None);
        }
        self.checks.push(Check::Listing {
            prefix: prefix.to_string(),
            after,
            fetch,
            limit,
            own,
            answer: answer.clone(),
        });
        Ok(Some(answer))
    }

    /// Adds `delta` to the decimal counter under `key` (absent is 0) and returns it.
    pub async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let current = self.get(key).await?;
        let next = super::kv::incremented(key, current.as_deref(), delta)?;
        self.put(key, next.to_string().as_bytes());
        Ok(next)
    }

    /// Swaps `key` from `expected` to `new` (None: absent / delete) if it matches. The
    /// read is checked at commit, so a concurrent change makes the event run again
    /// rather than both swaps succeed.
    pub async fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        if self.get(key).await?.as_deref() != expected {
            return Ok(false);
        }
        self.writes.insert(key.to_string(), new.map(<[u8]>::to_vec));
        Ok(true)
    }

    /// Queues a message for the relay.
    pub fn insert_outbox(&mut self, event_id: &str, message: OutboundMessage) {
        self.outbox.push((event_id.to_string(), message));
    }

    /// Sets a timer that fires `message` at `fire_at_ms`.
    pub fn insert_timer(&mut self, id: &str, fire_at_ms: i64, message: OutboundMessage) {
        self.own_timers.insert(id.to_string(), true);
        self.timers.push((id.to_string(), fire_at_ms, message));
    }

    /// Cancels a pending timer; false if it fired or never existed.
    pub async fn cancel_timer(&mut self, id: &str) -> Result<bool, StoreError> {
        let exists = match self.own_timers.get(id) {
            Some(exists) => *exists,
            None => match self.base.timers.get(id) {
                Some(exists) => *exists,
                None => {
                    let existed = match self.base.carried_timers.get(id) {
                        Some(existed) => *existed,
                        None => {
                            let component = self.component.clone();
                            let existed = self.reads().await?.timer_exists(&component, id).await?;
                            self.reading = false;
                            existed
                        }
                    };
                    self.checks.push(Check::Timer {
                        id: id.to_string(),
                        existed,
                    });
                    existed
                }
            },
        };
        if exists {
            self.own_timers.insert(id.to_string(), false);
            match self.timers.iter().position(|(t, _, _)| t == id) {
                Some(at) => {
                    self.timers.remove(at);
                }
                None => self.cancels.push(id.to_string()),
            }
        }
        Ok(exists)
    }

    /// Records a delivery to carry out once the unit commits.
    pub fn insert_effect(&mut self, effect: StagedEffect) {
        self.effects.push(effect);
    }

    /// Gives the read connection back and hands back the overlay, keeping nothing (a
    /// failed or dry run).
    pub async fn discard(mut self) -> Overlay {
        self.give_back_reads().await;
        self.base
    }

    /// Ends the read connection: an invocation's goes to the spare readers when nothing
    /// is left on it, a query's snapshot is rolled back.
    async fn give_back_reads(&mut self) {
        if let Some(tx) = self.reads.take() {
            if self.snapshot || self.reading {
                let _ = tx.rollback().await;
            } else {
                self.db.keep_reader(tx);
            }
        }
    }

    /// Gives the read connection back; returns the unit to commit and the overlay with
    /// this unit's writes laid over it, for the partition's next event.
    pub async fn finish(mut self, inbox: InboxRecord) -> (Unit, Overlay) {
        self.give_back_reads().await;
        let mut base = self.base;
        for (key, value) in &self.writes {
            base.kv.insert(key.clone(), value.clone());
        }
        for (id, exists) in &self.own_timers {
            base.timers.insert(id.clone(), *exists);
        }
        base.claimed.insert(inbox.event_id.clone());
        let unit = Unit {
            inbox,
            checks: self.checks,
            writes: self.writes.into_iter().collect(),
            cancels: self.cancels,
            timers: self.timers,
            outbox: self.outbox,
            effects: self.effects,
        };
        (unit, base)
    }
}

#[cfg(test)]
mod tests {
    use super::super::now_ms;
    use super::super::tests::sqlite;
    use super::*;
    use std::time::Duration;

    fn record(event_id: &str) -> InboxRecord {
        InboxRecord {
            component: "a".into(),
            event_id: event_id.into(),
            topic: "t".into(),
            outcome: "committed",
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn later_events_of_a_group_read_earlier_ones_and_listings_merge() {
        let (_dir, db) = sqlite().await;
        let mut first = Staged::new(&db, "a", Overlay::default());
        first.put("user/1", b"x");
        assert_eq!(first.increment("n", 2).await.unwrap(), 2);
        let (unit1, overlay) = first.finish(record("e1")).await;

        let mut second = Staged::new(&db, "a", overlay);
        assert_eq!(second.get("user/1").await.unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(second.increment("n", 3).await.unwrap(), 5);
        second.put("user/2", b"y");
        assert!(second.delete("user/1").await.unwrap());
        let listed = second.list_prefix("user/", None, 10, 1 << 20).await.unwrap().unwrap();
        assert_eq!(listed, vec![("user/2".to_string(), b"y".to_vec())]);
        let (unit2, overlay) = second.finish(record("e2")).await;
        assert!(overlay.claims("e1") && overlay.claims("e2"));

        let results = db.commit_chains(vec![vec![unit1, unit2]]).await;
        assert_eq!(
            results[0].as_ref().unwrap(),
            &vec![UnitResult::Committed, UnitResult::Committed]
        );
        assert_eq!(db.peek("a", "n").await.unwrap().as_deref(), Some(&b"5"[..]));
        assert_eq!(db.peek("a", "user/1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_reader_is_kept_for_the_next_invocation_only_with_nothing_left_on_it() {
        let (_dir, db) = sqlite().await;
        let mut first = Staged::new(&db, "a", Overlay::default());
        assert_eq!(first.get("k").await.unwrap(), None);
        first.discard().await;
        assert_eq!(db.spare_readers(), 1, "a reader whose reads all returned is kept");

        // A commit after it: the kept connection reads outside any snapshot.
        let mut tx = db.begin().await.unwrap();
        tx.put("a", "k", b"new").await.unwrap();
        tx.commit().await.unwrap();
        let mut second = Staged::new(&db, "a", Overlay::default());
        assert_eq!(second.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.spare_readers(), 0, "the kept connection serves the next reads");
        second.finish(record("e2")).await;
        assert_eq!(db.spare_readers(), 1);

        // A read cut off half-way (an invocation's deadline) may leave an answer on the
        // connection: it goes back to the pool, which pings it, and is not kept.
        // Here a read that took the connection and never returned.
        let mut third = Staged::new(&db, "a", Overlay::default());
        third.reads().await.unwrap();
        third.discard().await;
        assert_eq!(db.spare_readers(), 0, "a connection with a read in flight is not kept");

        // Kept connections are out of their pool: closing the database closes them too.
        let mut fourth = Staged::new(&db, "a", Overlay::default());
        fourth.get("k").await.unwrap();
        fourth.discard().await;
        assert_eq!(db.spare_readers(), 1);
        tokio::time::timeout(Duration::from_secs(5), db.close()).await.unwrap();
        assert_eq!(db.spare_readers(), 0, "closing gives the kept readers back first");
    }

    use super::super::group::UnitResult;

    #[tokio::test]
    async fn a_read_that_no_longer_holds_is_a_conflict_and_its_chain_stops() {
        let (_dir, db) = sqlite().await;
        let mut racer = Staged::new(&db, "a", Overlay::default());
        assert_eq!(racer.increment("n", 1).await.unwrap(), 1);
        let mut loser = Staged::new(&db, "a", Overlay::default());
        assert_eq!(loser.increment("n", 10).await.unwrap(), 10);
        let (won, _) = racer.finish(record("r")).await;
        let (lost, overlay) = loser.finish(record("l")).await;
        let (after, _) = Staged::new(&db, "a", overlay).finish(record("l2")).await;

        let results = db.commit_chains(vec![vec![won], vec![lost, after]]).await;
        assert_eq!(results[0].as_ref().unwrap(), &vec![UnitResult::Committed]);
        assert_eq!(
            results[1].as_ref().unwrap(),
            &vec![UnitResult::Conflict, UnitResult::NotRun],
            "the later event read the conflicting one's writes, so it runs again too"
        );
        assert_eq!(db.peek("a", "n").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.count(super::super::Table::Inbox).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_chain_run_over_an_uncommitted_one_checks_what_it_read_of_it() {
        let (_dir, db) = sqlite().await;
        let message = || OutboundMessage {
            topic: "t".into(),
            key: None,
            payload: b"fired".to_vec(),
            headers: vec![],
        };
        // The chain before sets a timer and a key; the next chain runs before it commits.
        let mut before = Staged::new(&db, "a", Overlay::default());
        before.put("k", b"1");
        before.insert_timer("t1", 0, message());
        let (unit, _) = before.finish(record("b")).await;
        let carried = Overlay::after(std::slice::from_ref(&unit));
        assert!(carried.claims("b"));
        let mut next = Staged::new(&db, "a", carried);
        assert_eq!(next.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(next.cancel_timer("t1").await.unwrap(), "the timer set before is seen");
        let (cancelling, _) = next.finish(record("n")).await;
        assert!(
            cancelling
                .checks
                .iter()
                .any(|c| matches!(c, Check::Timer { id, existed: true } if id == "t1")),
            "a timer read from the chain before is checked at commit"
        );

        // The chain before commits, and its timer fires before the next one commits: the
        // next one's cancel no longer holds.
        assert_eq!(db.commit_chain(vec![unit]).await.unwrap(), vec![UnitResult::Committed]);
        assert_eq!(db.fire_due_timers(now_ms(), 10).await.unwrap(), 1);
        assert_eq!(
            db.commit_chain(vec![cancelling]).await.unwrap(),
            vec![UnitResult::Conflict]
        );
    }

    #[tokio::test]
    async fn turns_on_hot_keys_never_deadlock() {
        let (_dir, db) = sqlite().await;
        db.hot.mark("a", "k1");
        db.hot.mark("a", "k2");
        async fn within<T>(what: impl Future<Output = T>) -> T {
            tokio::time::timeout(std::time::Duration::from_secs(5), what)
                .await
                .expect("a read waited for a turn past its bound")
        }
        // Two chains each hold one turn and want the other's: neither waits.
        let mut one = Staged::new(&db, "a", Overlay::default());
        let mut two = Staged::new(&db, "a", Overlay::default());
        within(one.get("k1")).await.unwrap();
        within(two.get("k2")).await.unwrap();
        within(one.get("k2")).await.unwrap();
        within(two.get("k1")).await.unwrap();
        assert!(one.base.turns.contains_key("k1") && !one.base.turns.contains_key("k2"));
        // A chain holding no turn waits for a taken one, but only for TURN_WAIT.
        let mut three = Staged::new(&db, "a", Overlay::default());
        let started = std::time::Instant::now();
        within(three.get("k1")).await.unwrap();
        assert!(started.elapsed() >= TURN_WAIT);
        assert!(three.base.turns.is_empty());
        // ... and only once: its next hot read does not wait again.
        let started = std::time::Instant::now();
        within(three.get("k2")).await.unwrap();
        assert!(started.elapsed() < TURN_WAIT, "two waits could pass a deadline");
        // Once the holder's chain is done, the turn is free again.
        drop(one.discard().await);
        let mut four = Staged::new(&db, "a", Overlay::default());
        within(four.get("k1")).await.unwrap();
        assert!(four.base.turns.contains_key("k1"));
    }
}
