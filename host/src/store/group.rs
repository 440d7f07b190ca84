//! Group commit: the units of many events, from every partition of every route, commit
//! in one transaction, so they share one fsync (SQLite `synchronous=FULL`, PostgreSQL
//! `synchronous_commit=on`).
//!
//! Each caller submits a chain, the units of one partition's events in offset order.
//! One task per database takes whatever chains are waiting (one, when traffic is light,
//! so latency stays that of a single commit; up to [`MAX_GROUP_UNITS`] under a backlog)
//! and applies them in a few multi-row statements for the whole group (see
//! [`super::multirow`]; unit by unit, [`Unit::apply`], when an event of the group turns
//! out handled already). A unit whose reads no longer hold,
//! or whose event was handled before, applies nothing, and the rest of its chain is not
//! applied either (those events may have read its writes). If a statement fails, the
//! whole transaction rolls back and each chain is committed again on its own, unit by
//! unit, so one event's bad data costs the others nothing.
//!
//! A partition may submit its next chain before the last one's answer came
//! ([`Db::submit_chain`] with `after`): that chain ran over the uncommitted writes of the
//! one before, so it is only applied once the one before committed whole, in a later
//! group, and otherwise answered [`UnitResult::NotRun`] throughout, untouched.
//!
//! While more wait, the committer runs the next group on the last one's connection (at
//! most `HOLD_AT_MOST`, then other writers get it; see `store/held.rs`).
//!
//! On SQLite the relay's marks of rows sent ([`Db::mark_sent`]) are submitted here too,
//! one unit each, and go in the group's transaction (or alone, when no chain waits): the
//! single write connection then serves one transaction and one fsync for both. When the
//! group fails, the marks are applied once more on their own.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::staged::{Applied, Unit};
use super::{Db, StoreError, WriteConn};

/// Units one transaction takes at most: enough to spread an fsync thin, few enough that
/// a transaction stays short.
pub const MAX_GROUP_UNITS: usize = 512;

/// How one unit of a chain ended.
#[derive(Debug, PartialEq)]
pub enum UnitResult {
    Committed,
    /// The event id was handled before; nothing applied.
    Duplicate,
    /// A read no longer held; nothing applied: run the event again.
    Conflict,
    /// An earlier unit of the chain did not commit; nothing applied: run it again.
    NotRun,
    /// The database refused this unit's data; nothing applied (see
    /// [`StoreError::is_caused_by_data`]).
    Rejected(String),
}

/// The outcome of one chain: per unit, or the host's failure for all of it.
pub type ChainResult = Result<Vec<UnitResult>, StoreError>;

enum Submission {
    Chain {
        chain: Vec<Unit>,
        reply: oneshot::Sender<ChainResult>,
        /// Set by the committer once it decided the chain: whether it committed whole.
        settled: Settled,
        /// The chain before it, when this one ran over its uncommitted writes.
        after: Option<Settled>,
    },
    /// Outbox rows a relay saw acknowledged, marked sent in the group's transaction.
    Marks {
        marks: Marks,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Submission {
    /// What it weighs against [`MAX_GROUP_UNITS`]: a mark statement counts as one unit,
    /// and a chain whose chain before is not decided yet nothing (it goes in a later group).
    fn units(&self) -> usize {
        match self {
            Submission::Chain { after: Some(after), .. } if after.known().is_none() => 0,
            Submission::Chain { chain, .. } => chain.len(),
            Submission::Marks { .. } => 1,
        }
    }
}

/// Whether a submitted chain committed whole (every unit [`UnitResult::Committed`]),
/// known once the committer has decided it.
#[derive(Debug, Clone, Default)]
pub struct Settled(Arc<OnceLock<bool>>);

impl Settled {
    fn set(&self, whole: bool) {
        let _ = self.0.set(whole); // decided once: a chain is in one group
    }

    /// None until the committer decided the chain.
    fn known(&self) -> Option<bool> {
        self.0.get().copied()
    }
}

/// The answer of a submission, or the error of a committer that stopped before giving it.
async fn answered<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer
        .await
        .unwrap_or_else(|_| Err(StoreError::Commit("the committer stopped".into())))
}

/// A chain handed to the committer; [`Submitted::result`] waits for its answer.
pub struct Submitted {
    answer: oneshot::Receiver<ChainResult>,
    /// Pass it as `after` to the partition's next chain, to run that one before this
    /// one's answer comes.
    pub settled: Settled,
}

impl Submitted {
    pub async fn result(self) -> ChainResult {
        answered(self.answer).await
    }
}

/// Outbox row ids and the relay that sent them.
pub(crate) type Marks = (Vec<i64>, String);

/// The handle of a database's committer task.
#[derive(Debug)]
pub(crate) struct Committer {
    sender: mpsc::UnboundedSender<Submission>,
}

impl Committer {
    /// Starts the task; it ends when the last handle is dropped.
    pub(crate) fn start(db: Db) -> Committer {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(db, receiver));
        Committer { sender }
    }
}

/// How long the committer keeps the write connection from one group to the next while
/// more wait (see [`super::held`]). On SQLite it is the only one: the timer pump, the
/// delivery worker and dead letters wait for it that long at most.
const HOLD_AT_MOST: Duration = Duration::from_millis(50);

async fn run(db: Db, mut receiver: mpsc::UnboundedReceiver<Submission>) {
    // Chains whose chain before is in the group being committed: they go in the next.
    let mut deferred: Vec<Submission> = Vec::new();
    // The last group's connection, and since when it has not gone back to the pool.
    let mut kept: Option<(WriteConn, Instant)> = None;
    loop {
        if let Some((_, since)) = &kept
            && ((receiver.is_empty() && deferred.is_empty()) || since.elapsed() >= HOLD_AT_MOST)
        {
            kept = None; // back to the pool, for other writers
        }
        let mut waiting = std::mem::take(&mut deferred);
        if waiting.is_empty() {
            match receiver.recv().await {
                Some(first) => waiting.push(first),
                None => return,
            }
        }
        let mut units: usize = waiting.iter().map(Submission::units).sum();
        while units < MAX_GROUP_UNITS {
            match receiver.try_recv() {
                Ok(next) => {
                    units += next.units();
                    waiting.push(next);
                }
                Err(_) => break,
            }
        }
        let (mut chains, mut chain_replies, mut marks, mut mark_replies) = (vec![], vec![], vec![], vec![]);
        for submission in waiting {
            match submission {
                Submission::Chain {
                    chain,
                    reply,
                    settled,
                    after,
                } => match after.as_ref().map(Settled::known) {
                    // The chain before is in this group: decided, it is known in the next.
                    Some(None) => deferred.push(Submission::Chain {
                        chain,
                        reply,
                        settled,
                        after,
                    }),
                    // It did not commit whole: this one read writes that never were.
                    Some(Some(false)) => {
                        settled.set(false);
                        let _ = reply.send(Ok(chain.iter().map(|_| UnitResult::NotRun).collect()));
                    }
                    Some(Some(true)) | None => {
                        chains.push(chain);
                        chain_replies.push((reply, settled));
                    }
                },
                Submission::Marks { marks: m, reply } => {
                    marks.push(m);
                    mark_replies.push(reply);
                }
            }
        }
        if chains.is_empty() && marks.is_empty() {
            continue; // only chains answered or put off
        }
        let since = kept.as_ref().map_or_else(Instant::now, |(_, since)| *since);
        let mut conn = kept.take().map(|(conn, _)| conn);
        let (results, marked) = db.commit_chains_and_marks(chains, &marks, &mut conn).await;
        kept = conn.map(|conn| (conn, since));
        for ((reply, settled), result) in chain_replies.into_iter().zip(results) {
            settled.set(matches!(&result, Ok(units) if units.iter().all(|u| *u == UnitResult::Committed)));
            let _ = reply.send(result); // the submitter stopped waiting: shutting down
        }
        for reply in mark_replies {
            let _ = reply.send(marked.as_ref().map_err(|e| StoreError::Commit(e.clone())).copied());
        }
    }
}

impl Db {
    /// Commits `chain` with whatever other chains are waiting (see the module docs).
    pub async fn commit_chain(&self, chain: Vec<Unit>) -> ChainResult {
        self.submit_chain(chain, None).result().await
    }

    /// Hands `chain` to the committer without waiting. With `after`, the chain ran over
    /// the uncommitted writes of that earlier chain of its partition: it is applied only
    /// once that one committed whole, and otherwise answered `NotRun` throughout.
    pub fn submit_chain(&self, chain: Vec<Unit>, after: Option<Settled>) -> Submitted {
        let settled = Settled::default();
        let answer = self.submit(|reply| Submission::Chain {
            chain,
            reply,
            settled: settled.clone(),
            after,
        });
        Submitted { answer, settled }
    }

    /// Hands one submission to the committer (started at the first); the receiver gets
    /// its answer (closed when the committer stopped).
    fn submit<T>(
        &self,
        submission: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Submission,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let committer = self
            .committer
            .get_or_init(|| Committer::start(self.without_committer()));
        let (reply, answer) = oneshot::channel();
        let _ = committer.sender.send(submission(reply)); // if not, `answer` is closed
        answer
    }

    /// Marks outbox rows sent in the transaction of the next group, or alone when no
    /// chain is waiting.
    pub(crate) async fn commit_marks(&self, ids: Vec<i64>, by: String) -> Result<(), StoreError> {
        answered(self.submit(|reply| Submission::Marks {
            marks: (ids, by),
            reply,
        }))
        .await
    }

    /// Commits `chains` in one transaction; on a failed statement, each on its own.
    pub async fn commit_chains(&self, chains: Vec<Vec<Unit>>) -> Vec<ChainResult> {
        self.commit_chains_and_marks(chains, &[], &mut None).await.0
    }

    /// Commits `chains` and `marks` in one transaction, on `kept` if given, and leaves
    /// its connection there when it committed. On a statement that fails on some data,
    /// each chain commits on its own, and the marks after them.
    async fn commit_chains_and_marks(
        &self,
        chains: Vec<Vec<Unit>>,
        marks: &[Marks],
        kept: &mut Option<WriteConn>,
    ) -> (Vec<ChainResult>, Result<(), String>) {
        match self.apply_chains(&chains, marks, kept).await {
            Ok(results) => (results.into_iter().map(Ok).collect(), Ok(())),
            Err(err) if err.is_caused_by_data() => {
                let mut out = Vec::with_capacity(chains.len());
                for chain in &chains {
                    out.push(self.commit_one_by_one(chain).await);
                }
                (out, self.marks_alone(marks).await)
            }
            Err(err) => {
                // The database itself failed: every chain is told, none is re-run here.
                // The marks are tried once alone: a failure of the chains' statements (a
                // deadlock on PostgreSQL) is no reason for the relay to send them again.
                let reason = err.to_string();
                let results = chains.iter().map(|_| Err(StoreError::Commit(reason.clone()))).collect();
                let marked = match chains.is_empty() {
                    true => Err(reason), // the marks were all the group held
                    false => self.marks_alone(marks).await,
                };
                (results, marked)
            }
        }
    }

    /// `marks` in a transaction of their own, after their group failed.
    async fn marks_alone(&self, marks: &[Marks]) -> Result<(), String> {
        if marks.is_empty() {
            return Ok(());
        }
        self.apply_chains(&[], marks, &mut None)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// One transaction, on `kept` if given; its connection is left there if it
    /// committed (on an error it goes back to the pool, so the fallbacks find it there).
    async fn apply_chains(
        &self,
        chains: &[Vec<Unit>],
        marks: &[Marks],
        kept: &mut Option<WriteConn>,
    ) -> Result<Vec<Vec<UnitResult>>, StoreError> {
        let mut tx = self.begin_on(kept.take()).await?;
        let applied = match chains.is_empty() {
            true => Some(Vec::new()),
            false => super::multirow::apply(&mut tx, chains, &self.hot).await?,
        };
        if let Some(results) = applied {
            for (ids, by) in marks {
                tx.mark_sent(ids, by).await?;
            }
            *kept = tx.commit_keeping().await?;
            return Ok(results);
        }
        // Undecidable up front: nothing was applied, but locks and reads were taken.
        let conn = tx.rollback_keeping().await?;
        tx = self.begin_on(conn).await?;
        let mut results = Vec::with_capacity(chains.len());
        for chain in chains {
            let mut out = ChainResults::with_capacity(chain.len());
            for unit in chain {
                if out.decide_next() {
                    out.push(unit.apply(&mut tx, &self.hot).await?.into());
                }
            }
            results.push(out.into_vec());
        }
        for (ids, by) in marks {
            tx.mark_sent(ids, by).await?;
        }
        *kept = tx.commit_keeping().await?;
        Ok(results)
    }

    /// A chain's units, each in its own transaction, after a group failed on some data.
    async fn commit_one_by_one(&self, chain: &[Unit]) -> ChainResult {
        let mut out = ChainResults::with_capacity(chain.len());
        for unit in chain {
            if !out.decide_next() {
                continue;
            }
            let mut tx = self.begin().await?;
            let result = match unit.apply(&mut tx, &self.hot).await {
                Ok(Applied::Committed) => {
                    tx.commit().await?;
                    UnitResult::Committed
                }
                Ok(applied) => {
                    tx.rollback().await?;
                    applied.into()
                }
                Err(err) if err.is_caused_by_data() => {
                    let _ = tx.rollback().await;
                    UnitResult::Rejected(err.to_string())
                }
                Err(err) => return Err(err),
            };
            out.push(result);
        }
        Ok(out.into_vec())
    }
}

/// A chain's results as its units are decided in order: after one that did not commit,
/// the rest are [`UnitResult::NotRun`] without being looked at.
pub(crate) struct ChainResults {
    results: Vec<UnitResult>,
    broken: bool,
}

impl ChainResults {
    pub(crate) fn with_capacity(units: usize) -> ChainResults {
        ChainResults {
            results: Vec::with_capacity(units),
            broken: false,
        }
    }

    /// True when the next unit is to be decided; false when it is recorded as not run.
    pub(crate) fn decide_next(&mut self) -> bool {
        if self.broken {
            self.results.push(UnitResult::NotRun);
        }
        !self.broken
    }

    pub(crate) fn push(&mut self, result: UnitResult) {
        self.broken = result != UnitResult::Committed;
        self.results.push(result);
    }

    pub(crate) fn into_vec(self) -> Vec<UnitResult> {
        self.results
    }
}

impl From<Applied> for UnitResult {
    fn from(applied: Applied) -> UnitResult {
        match applied {
            Applied::Committed => UnitResult::Committed,
            Applied::Duplicate => UnitResult::Duplicate,
            Applied::Conflict => UnitResult::Conflict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::staged::{InboxRecord, Overlay, Staged};
    use super::super::tests::sqlite;
    use super::super::{OutboundMessage, Table};
    use super::*;

    fn staged_unit(db: &Db, event_id: &str, key: &str, value: &[u8]) -> impl Future<Output = Unit> {
        let mut staged = Staged::new(db, "a", Overlay::default());
        staged.put(key, value);
        staged.insert_outbox(
            &format!("out-{event_id}"),
            OutboundMessage {
                topic: "t".into(),
                key: None,
                payload: value.to_vec(),
                headers: vec![],
            },
        );
        let record = InboxRecord {
            component: "a".into(),
            event_id: event_id.into(),
            topic: "t".into(),
            outcome: "committed",
            ..Default::default()
        };
        async move { staged.finish(record).await.0 }
    }

    #[tokio::test]
    async fn concurrent_chains_commit_together_and_a_claimed_event_applies_nothing() {
        let (_dir, db) = sqlite().await;
        let first = staged_unit(&db, "e1", "k1", b"1").await;
        assert_eq!(db.commit_chain(vec![first]).await.unwrap(), vec![UnitResult::Committed]);

        // Many submitters at once: each gets its own answer, and e1 again is a duplicate.
        let mut waiting = Vec::new();
        for i in 2..40 {
            let unit = staged_unit(&db, &format!("e{i}"), &format!("k{i}"), b"v").await;
            let db = db.clone();
            waiting.push(tokio::spawn(async move { db.commit_chain(vec![unit]).await }));
        }
        let again = staged_unit(&db, "e1", "other", b"x").await;
        assert_eq!(db.commit_chain(vec![again]).await.unwrap(), vec![UnitResult::Duplicate]);
        for handle in waiting {
            assert_eq!(handle.await.unwrap().unwrap(), vec![UnitResult::Committed]);
        }
        assert_eq!(db.count(Table::Inbox).await.unwrap(), 39);
        assert_eq!(db.count(Table::Outbox).await.unwrap(), 39);
        assert_eq!(db.peek("a", "other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_chain_run_over_an_uncommitted_one_stands_only_if_that_one_committed_whole() {
        let (_dir, db) = sqlite().await;
        // Submitted at once: the follower waits for a later group than its chain before,
        // and both commit.
        let first = staged_unit(&db, "e1", "k1", b"1").await;
        let before = db.submit_chain(vec![first], None);
        let second = staged_unit(&db, "e2", "k2", b"2").await;
        let follower = db.submit_chain(vec![second], Some(before.settled.clone()));
        assert_eq!(before.result().await.unwrap(), vec![UnitResult::Committed]);
        assert_eq!(follower.result().await.unwrap(), vec![UnitResult::Committed]);

        // The chain before loses a read to another partition's commit: the follower (and
        // the one after it) apply nothing, though their own reads and claims are fine.
        let mut loser = Staged::new(&db, "a", Overlay::default());
        assert_eq!(loser.increment("n", 1).await.unwrap(), 1);
        let (lost, _) = loser
            .finish(InboxRecord {
                component: "a".into(),
                event_id: "lost".into(),
                topic: "t".into(),
                outcome: "committed",
                ..Default::default()
            })
            .await;
        let winner = staged_unit(&db, "winner", "n", b"7").await;
        assert_eq!(
            db.commit_chain(vec![winner]).await.unwrap(),
            vec![UnitResult::Committed]
        );
        let before = db.submit_chain(vec![lost], None);
        let third = staged_unit(&db, "e3", "k3", b"3").await;
        let fourth = staged_unit(&db, "e4", "k4", b"4").await;
        let follower = db.submit_chain(vec![third, fourth], Some(before.settled.clone()));
        let last = staged_unit(&db, "e5", "k5", b"5").await;
        let last = db.submit_chain(vec![last], Some(follower.settled.clone()));
        assert_eq!(before.result().await.unwrap(), vec![UnitResult::Conflict]);
        assert_eq!(
            follower.result().await.unwrap(),
            vec![UnitResult::NotRun, UnitResult::NotRun]
        );
        assert_eq!(last.result().await.unwrap(), vec![UnitResult::NotRun]);
        for key in ["k3", "k4", "k5"] {
            assert_eq!(db.peek("a", key).await.unwrap(), None, "{key} was written");
        }
        assert_eq!(db.peek("a", "n").await.unwrap().as_deref(), Some(&b"7"[..]));
        assert_eq!(db.count(Table::Inbox).await.unwrap(), 3, "e1, e2 and winner");
    }

    #[tokio::test]
    async fn a_kept_connection_ends_every_transaction_and_goes_back_to_other_writers() {
        let (_dir, db) = sqlite().await;
        // A transaction dropped half-way (an error) leaves its connection with nothing
        // open: the next one on it begins, and the dropped write never happened.
        let mut tx = db.begin().await.unwrap();
        tx.put("a", "dropped", b"x").await.unwrap();
        drop(tx);
        let mut tx = db.begin().await.unwrap();
        tx.put("a", "kept", b"y").await.unwrap();
        let conn = tx.commit_keeping().await.unwrap();
        let mut tx = db.begin_on(conn).await.unwrap();
        tx.put("a", "again", b"z").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(db.peek("a", "dropped").await.unwrap(), None);
        assert_eq!(db.peek("a", "kept").await.unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(db.peek("a", "again").await.unwrap().as_deref(), Some(&b"z"[..]));

        // While chains wait, the committer keeps SQLite's one write connection from
        // group to group, but not for ever: another writer gets it in between.
        const CHAINS: usize = 20_000; // dozens of groups, far more than HOLD_AT_MOST
        let mut submitted = Vec::with_capacity(CHAINS);
        for n in 0..CHAINS {
            let unit = staged_unit(&db, &format!("c{n}"), &format!("k{n}"), b"v").await;
            submitted.push(db.submit_chain(vec![unit], None));
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the first group has begun
        let mut other = db.begin().await.unwrap();
        other.put("a", "other", b"w").await.unwrap();
        other.commit().await.unwrap();
        let committed_before = db.count(Table::Inbox).await.unwrap() as usize;
        for waiting in submitted {
            assert_eq!(waiting.result().await.unwrap(), vec![UnitResult::Committed]);
        }
        assert!(
            committed_before < CHAINS,
            "the other writer only got the connection once every chain had committed"
        );
        assert_eq!(db.peek("a", "other").await.unwrap().as_deref(), Some(&b"w"[..]));
    }

    #[tokio::test]
    async fn relayed_rows_are_marked_with_a_group_or_alone() {
        let (_dir, db) = sqlite().await;
        for i in 0..4 {
            let unit = staged_unit(&db, &format!("e{i}"), &format!("k{i}"), b"v").await;
            assert_eq!(db.commit_chain(vec![unit]).await.unwrap(), vec![UnitResult::Committed]);
        }
        let ids: Vec<i64> = db.unsent_outbox(10).await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 4);

        // Alone: no chain waits.
        db.mark_sent(&ids[..1], "relay-a").await.unwrap();
        assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 3);

        // Beside chains submitted at the same time: each is answered, all of it commits.
        let mut chains = Vec::new();
        for i in 10..20 {
            let unit = staged_unit(&db, &format!("e{i}"), &format!("k{i}"), b"v").await;
            let db = db.clone();
            chains.push(tokio::spawn(async move { db.commit_chain(vec![unit]).await }));
        }
        let marked = {
            let (db, ids) = (db.clone(), ids[1..].to_vec());
            tokio::spawn(async move { db.mark_sent(&ids, "relay-a").await })
        };
        for chain in chains {
            assert_eq!(chain.await.unwrap().unwrap(), vec![UnitResult::Committed]);
        }
        marked.await.unwrap().unwrap();
        let unsent: Vec<i64> = db.unsent_outbox(100).await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(unsent.len(), 10, "the ten new rows stay unsent");
        assert!(
            ids.iter().all(|id| !unsent.contains(id)),
            "a marked row is still unsent"
        );

        // A group whose chain fails (two outbox rows with one event id break a unique
        // index) does not take the marks down with it: they are applied on their own.
        let fresh: Vec<i64> = unsent[..2].to_vec();
        let mut bad = Staged::new(&db, "a", Overlay::default());
        for payload in [b"x", b"y"] {
            let message = OutboundMessage {
                topic: "t".into(),
                key: None,
                payload: payload.to_vec(),
                headers: vec![],
            };
            bad.insert_outbox("out-bad", message);
        }
        let record = InboxRecord {
            component: "a".into(),
            event_id: "bad".into(),
            topic: "t".into(),
            outcome: "committed",
            ..Default::default()
        };
        let bad = bad.finish(record).await.0;
        let (results, marked) = db
            .commit_chains_and_marks(vec![vec![bad]], &[(fresh.clone(), "relay-a".into())], &mut None)
            .await;
        assert!(results[0].is_err(), "{results:?}");
        marked.unwrap();
        let unsent: Vec<i64> = db.unsent_outbox(100).await.unwrap().iter().map(|r| r.id).collect();
        assert!(
            fresh.iter().all(|id| !unsent.contains(id)),
            "the marks were lost with the group"
        );
        assert_eq!(unsent.len(), 8);
    }
}
