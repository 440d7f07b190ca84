//! Consuming a route: one consumer group member per route, one worker task per
//! partition. A partition's events run one at a time in offset order, and those waiting
//! run as a chain that commits together (see [`crate::store::group`]); while a chain
//! commits, the partition's next one runs over its writes, and stands only if the first
//! committed whole. Partitions run in parallel, so a retrying event blocks only its own
//! partition. The offset of an event is stored only after its effects (or its dead
//! letter) are committed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{ComponentName, Route, TopicName};
use crate::event::{InboundEvent, LogPosition};
use crate::live::registry::Registry;
use crate::live::routes::{RouteSettings, RouteState};
use crate::protocol::{DeadLetterRecord, names};
use crate::runtime::{Failure, FailureKind, InvokeError, LoadedComponent, Outcome, Ran};
use crate::store::{Db, InboxEntry, OutboundMessage, Overlay, Settled, Submitted, UnitResult, now_ms};

use super::headers_of;

/// Queued events per partition above which the partition is paused, and below which it
/// resumes: memory stays bounded while one partition retries. Kept wide because each
/// pause/resume cycle waits for a new fetch; with 256/64 the routed benchmark was paced
/// at 0.67 ms per event whatever the database, with 4096/1024 it takes 0.35-0.5 ms.
const PAUSE_ABOVE: usize = 4096;
const RESUME_BELOW: usize = 1024;
/// Longest wait between tries when the host itself (database) fails.
const HOST_FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the group's rebalances: logs what this host was given and lost, and bumps a
/// partition's generation when it is revoked, so that events queued for it before are
/// dropped (unstored, they are fetched again by whoever owns the partition next).
pub struct RouteContext {
    /// The route's topic and component, for log lines outside the route's span.
    topic: String,
    component: String,
    generations: Arc<Mutex<HashMap<i32, u64>>>,
    /// Partitions owned and assignments seen, for `status` and swap ordering.
    state: Arc<RouteState>,
}

impl RouteContext {
    fn generation(&self, partition: i32) -> u64 {
        self.generations
            .lock()
            .expect("generation lock")
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for RouteContext {}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list);
            let mut generations = self.generations.lock().expect("generation lock");
            for p in &partitions {
                *generations.entry(*p).or_default() += 1;
            }
            let mut assigned = self.state.assigned.lock().expect("state lock");
            for p in &partitions {
                assigned.remove(p);
            }
            tracing::info!(topic = %self.topic, component = %self.component, ?partitions, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.state
                    .assigned
                    .lock()
                    .expect("state lock")
                    .extend(partitions_of(list));
                self.state.assignments.fetch_add(1, Ordering::SeqCst);
                tracing::info!(
                    topic = %self.topic,
                    component = %self.component,
                    partitions = ?partitions_of(list),
                    "partitions assigned"
                )
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance failed"),
        }
    }
}

type RouteConsumer = StreamConsumer<RouteContext>;

/// Everything a route's workers share.
struct RouteCtx {
    topic: TopicName,
    component: ComponentName,
    /// Retry policy, dead-letter topic and concurrency, as edited last.
    settings: Arc<RouteSettings>,
    state: Arc<RouteState>,
    /// Where the running version of the component is looked up, per event.
    registry: Arc<Registry>,
    db: Db,
    consumer: Arc<RouteConsumer>,
    /// The log events come from, for fallback event ids (see [`super::Brokers::origin`]).
    origin: String,
    shutdown: watch::Receiver<bool>,
}

/// Consumer settings of a route: offsets are stored by hand after the work and committed
/// in the background; a new group starts from the earliest event.
pub fn consumer_config(base: &ClientConfig, route: &Route) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("group.id", &route.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.queue.backoff.ms", "10");
    if config.get("fetch.wait.max.ms").is_none() {
        // A real broker answers a parked fetch as soon as an event arrives; this only
        // bounds how long an idle connection waits between fetches.
        config.set("fetch.wait.max.ms", "100");
    }
    config
}

/// Runs `route` until `shutdown`, then lets each partition finish its current event,
/// commits the stored offsets and leaves the group.
pub async fn run_route(
    settings: Arc<RouteSettings>,
    state: Arc<RouteState>,
    registry: Arc<Registry>,
    db: Db,
    base: ClientConfig,
    origin: String,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let route = settings.current();
    let context = RouteContext {
        topic: route.topic.to_string(),
        component: route.component.to_string(),
        generations: Arc::default(),
        state: state.clone(),
    };
    let consumer: Arc<RouteConsumer> = Arc::new(consumer_config(&base, &route).create_with_context(context)?);
    consumer.subscribe(&[route.topic.as_str()])?;
    let span = tracing::info_span!("route", topic = %route.topic, component = %route.component, group = %route.group);
    let ctx = Arc::new(RouteCtx {
        topic: route.topic.clone(),
        component: route.component.clone(),
        settings,
        state,
        registry,
        db,
        consumer: consumer.clone(),
        origin,
        shutdown: shutdown.clone(),
    });
    let result = dispatch(ctx, shutdown).instrument(span.clone()).await;
    let group = route.group.clone();
    super::close::close_within(&route.group, super::close::CLOSE_LIMIT, move || {
        // Commit what the workers stored; "no offset" just means nothing new.
        if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(group, error = %err, "final commit");
        }
        consumer.unsubscribe();
        drop(consumer);
    })
    .instrument(span)
    .await;
    result
}

/// A message as received, owned, with its headers already decoded safely.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    /// None when the message has none (see [`InboundEvent::from_message`]).
    timestamp_ms: Option<i64>,
}

impl Received {
    fn of(message: &BorrowedMessage<'_>) -> Received {
        Received {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: headers_of(message),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// A queued event and the generation of its partition when it was received.
type Queued = (Received, u64);

struct PartitionWorker {
    sender: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    paused: bool,
}

async fn dispatch(ctx: Arc<RouteCtx>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tracing::info!("consuming");
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                // A worker ends early only by panicking: restart the whole route (the
                // supervisor backs off), so no partition is left without a worker.
                match done {
                    Ok(()) if *shutdown.borrow() => break,
                    Ok(()) => anyhow::bail!("a partition worker stopped early"),
                    Err(err) => anyhow::bail!("a partition worker failed: {err}"),
                }
            }
            _ = tick.tick() => {
                for (partition, worker) in workers.iter_mut() {
                    if worker.paused && worker.queued.load(Ordering::Acquire) < RESUME_BELOW {
                        let _ = ctx.consumer.resume(&partition_list(&ctx.topic, *partition));
                        worker.paused = false;
                    }
                }
            }
            received = ctx.consumer.recv() => {
                let message = match received {
                    Ok(message) => Received::of(&message),
                    Err(err) => {
                        // Broker or topic trouble: librdkafka retries by itself; don't spin.
                        tracing::warn!(error = %err, "consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let partition = message.partition;
                let worker = workers.entry(partition).or_insert_with(|| {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    let queued = Arc::new(AtomicUsize::new(0));
                    tasks.spawn(partition_worker(ctx.clone(), partition, receiver, queued.clone()));
                    PartitionWorker { sender, queued, paused: false }
                });
                let queued = worker.queued.fetch_add(1, Ordering::AcqRel) + 1;
                let generation = ctx.consumer.context().generation(partition);
                if worker.sender.send((message, generation)).is_err() {
                    break; // the worker stopped: shutting down
                }
                if queued > PAUSE_ABOVE && !worker.paused {
                    let _ = ctx.consumer.pause(&partition_list(&ctx.topic, partition));
                    worker.paused = true;
                }
            }
        }
    }
    drop(workers); // closes the queues; each worker finishes its current event
    let mut failed = None;
    while let Some(result) = tasks.join_next().await {
        if let Err(err) = result {
            failed.get_or_insert(err);
        }
    }
    match failed {
        // Its partition's events are unstored: the restarted route reads them again.
        Some(err) => Err(anyhow::anyhow!("a partition worker failed: {err}")),
        None => Ok(()),
    }
}

fn partition_list(topic: &TopicName, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic.as_str(), partition);
    list
}

/// Events of one partition that run before their group commits, at most. A backlog
/// fills chains (and chains of several partitions share a commit, see
/// [`crate::store::group`]); a lone event is a chain of one, committed at once.
const MAX_CHAIN: usize = 64;

async fn partition_worker(
    ctx: Arc<RouteCtx>,
    partition: i32,
    mut receiver: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
) {
    // Assignments seen when the registry last followed the activation log.
    let mut refreshed_at = 0;
    // Received, not yet finished, in offset order.
    let mut pending: VecDeque<Queued> = VecDeque::new();
    // Chain length: halved when a chain ran into another partition's writes (a hot key),
    // so re-runs stay cheap, and doubled back after each chain that committed whole.
    let mut limit = MAX_CHAIN;
    let mut check_handled = true;
    loop {
        if pending.is_empty() {
            match receiver.recv().await {
                Some(next) => pending.push_back(next),
                None => return,
            }
        }
        while pending.len() < limit {
            match receiver.try_recv() {
                Ok(next) => pending.push_back(next),
                Err(_) => break,
            }
        }
        if *ctx.shutdown.borrow() {
            return; // not handled, offsets not stored: redelivered after restart
        }
        // A partition just assigned may come from a host that ran a newer version: catch
        // up with the activation log before its first event, so no event runs on an
        // older version than one its predecessors ran on.
        let assignments = ctx.state.assignments.load(Ordering::SeqCst);
        if assignments != refreshed_at {
            // Its first events may have been handled by the previous owner: look them up
            // instead of running them (a lookup a chain saves the rest of the time).
            check_handled = true;
            match ctx.registry.refresh_one(&ctx.component).await {
                Ok(_) => refreshed_at = assignments,
                Err(err) => {
                    // Running now could run an event on an older version than its
                    // predecessors ran on another host: the events wait instead.
                    tracing::warn!(error = %err, "cannot catch up with the activation log; the partition waits");
                    if !sleep_unless_shutdown(&ctx, HOST_FAILURE_BACKOFF).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Revoked since they were queued: their next owner (maybe this host again) reads them anew.
        let generation = ctx.consumer.context().generation(partition);
        let before = pending.len();
        pending.retain(|(_, g)| *g == generation);
        queued.fetch_sub(before - pending.len(), Ordering::AcqRel);
        if pending.is_empty() {
            continue;
        }

        // A chain runs, and while it commits the partition's next one runs over its
        // writes: the worker waited for more than half its time for commits before.
        let chain = pending.len().min(limit);
        let mut current = start_chain(&ctx, pending.range(..chain), check_handled, Overlay::default(), None).await;
        loop {
            let next = match current.next.take() {
                Some(over) if can_follow(&ctx, refreshed_at) => {
                    while pending.len() < current.len + limit {
                        match receiver.try_recv() {
                            Ok(next) => pending.push_back(next),
                            Err(_) => break,
                        }
                    }
                    // Queued before a revocation: the outer loop drops them first.
                    let generation = ctx.consumer.context().generation(partition);
                    let len = match pending.iter().all(|(_, g)| *g == generation) {
                        true => (pending.len() - current.len).min(limit),
                        false => 0,
                    };
                    let after = current.submitted.as_ref().map(|s| s.settled.clone());
                    match len {
                        0 => None,
                        _ => Some(
                            start_chain(
                                &ctx,
                                pending.range(current.len..current.len + len),
                                check_handled,
                                over,
                                after,
                            )
                            .await,
                        ),
                    }
                }
                _ => None,
            };
            let end = current.finish(&ctx).await;
            let next = match next {
                // It read writes that did not commit: the committer applies none of it,
                // and its events run again. Dropped first: the turns on hot keys it took
                // would hold up the retries of the event before it.
                Some(next) if !end.whole => {
                    next.abandon().await;
                    None
                }
                next => next,
            };
            if !settle(
                &ctx,
                partition,
                &mut pending,
                &queued,
                end,
                &mut limit,
                &mut check_handled,
            )
            .await
            {
                return;
            }
            match next {
                Some(next) => current = next,
                None => break,
            }
        }
    }
}

/// Whether a partition's next chain may run before the last one committed: not when
/// stopping, nor when the route was just assigned partitions (a partition's first chain
/// catches up with the activation log).
fn can_follow(ctx: &RouteCtx, refreshed_at: u64) -> bool {
    !*ctx.shutdown.borrow() && ctx.state.assignments.load(Ordering::SeqCst) == refreshed_at
}

/// Carries a chain's end through: the partition's chain length, the one-at-a-time path
/// for a first event that failed, and the offset stored past the finished events. False
/// when shutdown interrupted that path.
async fn settle(
    ctx: &RouteCtx,
    partition: i32,
    pending: &mut VecDeque<Queued>,
    queued: &AtomicUsize,
    end: ChainEnd,
    limit: &mut usize,
    check_handled: &mut bool,
) -> bool {
    let ChainEnd {
        mut finished,
        head,
        conflicted,
        ..
    } = end;
    if finished > 0 {
        *check_handled = false;
    }
    *limit = if conflicted {
        (*limit / 2).max(1)
    } else {
        (*limit * 2).min(MAX_CHAIN)
    };
    if finished == 0 && head.is_none() && conflicted {
        return true; // runs again; the key it lost on is now read in turns (store::hot)
    }
    if finished == 0 {
        // The first event failed (or the host did): retries, backoff and dead
        // letter, one event at a time.
        let (message, _) = pending.front().expect("not empty");
        if let Some(event) = prepare(ctx, message)
            && !handle_event(ctx, event, head).await
        {
            return false;
        }
        finished = 1;
    }
    let last = pending.drain(..finished).next_back().expect("finished > 0").0.offset;
    // Stores last+1 for the next commit, which covers the events before it; fails
    // harmlessly if the partition was revoked meanwhile (the new owner's inbox then
    // skips the events).
    if let Err(err) = ctx.consumer.store_offset(ctx.topic.as_str(), partition, last) {
        tracing::debug!(partition, offset = last, error = %err, "offset not stored");
    }
    queued.fetch_sub(finished, Ordering::AcqRel);
    true
}

/// The event of `message`, or None when it is not this component's to handle (a replay
/// meant for another).
fn prepare(ctx: &RouteCtx, message: &Received) -> Option<InboundEvent> {
    let mut headers = message.headers.clone();
    // Only the host's own (signed) switchyard-* headers steer it; forged ones are dropped.
    let dropped = ctx
        .db
        .signer()
        .screen(&message.topic, message.key.as_deref(), &message.payload, &mut headers);
    if let Some((_, target)) = headers.iter().find(|(n, _)| n == names::REPLAY_FOR)
        && target != ctx.component.as_str()
    {
        return None;
    }
    if !dropped.is_empty() {
        tracing::warn!(
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            ?dropped,
            "unsigned switchyard-* headers ignored: only the host sets them (the event id falls back to the log position)"
        );
    }
    let at = LogPosition {
        origin: &ctx.origin,
        topic: &message.topic,
        partition: message.partition,
        offset: message.offset,
    };
    Some(InboundEvent::from_message(
        &at,
        message.key.clone(),
        message.payload.clone(),
        headers,
        message.timestamp_ms,
    ))
}

fn event_span(event: &InboundEvent) -> tracing::Span {
    tracing::info_span!(
        "event",
        event_id = %event.id,
        partition = event.partition,
        offset = event.offset,
        request_id = event.request_id.as_deref().unwrap_or(""),
        trace_id = %event.trace.trace_id,
    )
}

/// How a finished event of a chain ended.
enum Slot {
    /// Not this component's (a replay for another).
    Skipped,
    /// Handled before.
    Duplicate(InboundEvent),
    /// Ran ok; its unit is in the chain.
    Staged(InboundEvent),
}

/// How far a chain got.
struct ChainEnd {
    /// Events from the front that are finished (committed, duplicate or skipped).
    finished: usize,
    /// When none is: the first event's try, if it ran, for [`handle_event`] to carry on from.
    head: Option<Result<Outcome, InvokeError>>,
    /// An event read what another partition changed before it committed.
    conflicted: bool,
    /// Every event finished and every unit committed: a chain that ran over its writes
    /// stands.
    whole: bool,
}

/// A chain whose events ran, its units with the committer.
struct InFlight {
    route: Route,
    /// Events of the partition's queue it took, from its front (or from the end of the
    /// chain before).
    len: usize,
    slots: Vec<Slot>,
    submitted: Option<Submitted>,
    /// The turns on hot keys its events read, held to its commit.
    overlay: Overlay,
    /// Set when none of its events failed: its first one's failure, or the host's.
    head: Option<Result<Outcome, InvokeError>>,
    /// What the partition's next chain runs over while this one commits; None when an
    /// event failed, or when it holds turns on hot keys (the next chain would wait for
    /// them).
    next: Option<Overlay>,
}

/// Runs the given events of a partition in order over `overlay`, each over the
/// writes of the ones before, until one fails, and hands them to the committer as one
/// chain (`after`: the chain before, not committed yet, see [`Db::submit_chain`]). With
/// `check_handled`, events handled before are looked up first and not run (after an
/// assignment, when the previous owner may have handled them); otherwise the commit
/// finds such an event out.
async fn start_chain<'a>(
    ctx: &RouteCtx,
    pending: impl Iterator<Item = &'a Queued>,
    check_handled: bool,
    mut overlay: Overlay,
    after: Option<Settled>,
) -> InFlight {
    let route = ctx.settings.current();
    let events: Vec<Option<InboundEvent>> = pending.map(|(m, _)| prepare(ctx, m)).collect();
    let ids: Vec<String> = events.iter().flatten().map(|e| e.id.clone()).collect();
    let mut flight = InFlight {
        route: route.clone(),
        len: events.len(),
        slots: Vec::with_capacity(events.len()),
        submitted: None,
        overlay: Overlay::default(),
        head: None,
        next: None,
    };
    let handled = if check_handled {
        let Ok(handled) = ctx.db.handled(ctx.component.as_str(), &ids).await else {
            return flight; // the one-by-one path waits for the database
        };
        handled
    } else {
        Default::default()
    };
    let mut chain = Vec::new();
    let mut ran_all = true;
    for event in events {
        let Some(event) = event else {
            flight.slots.push(Slot::Skipped);
            continue;
        };
        if handled.contains(&event.id) || overlay.claims(&event.id) {
            flight.slots.push(Slot::Duplicate(event));
            continue;
        }
        // Looked up per event: a swap applies between events, never backwards.
        let Some(component) = ctx.registry.get(&ctx.component) else {
            ran_all = false;
            break;
        };
        let ran = {
            let permits = ctx.settings.permits();
            let _permit = permits.acquire().await.expect("semaphore never closes");
            ctx.registry
                .runtime()
                .run(&component, &ctx.db, &event, std::mem::take(&mut overlay))
                .instrument(crate::observe::tracing::process_span(
                    &route,
                    &component.version,
                    &event,
                ))
                .instrument(event_span(&event))
                .await
        };
        match ran {
            Ok((Ran::Staged { unit, .. }, next)) => {
                overlay = next;
                chain.push(*unit);
                flight.slots.push(Slot::Staged(event));
            }
            Ok((Ran::Failed(failure), next)) => {
                overlay = next; // its turns on hot keys are held until the chain commits
                if flight.slots.is_empty() {
                    flight.head = Some(Ok(Outcome::Failed(failure)));
                }
                ran_all = false;
                break;
            }
            Err(err) => {
                if flight.slots.is_empty() {
                    flight.head = Some(Err(err));
                }
                ran_all = false;
                break;
            }
        }
    }
    if ran_all && !overlay.holds_turns() {
        flight.next = Some(Overlay::after(&chain));
    }
    if !chain.is_empty() {
        flight.submitted = Some(ctx.db.submit_chain(chain, after));
    }
    flight.overlay = overlay;
    flight
}

impl InFlight {
    /// Waits for the commit and accounts for each event.
    async fn finish(self, ctx: &RouteCtx) -> ChainEnd {
        let InFlight {
            route,
            len,
            slots,
            submitted,
            overlay,
            head,
            ..
        } = self;
        let mut end = ChainEnd {
            finished: 0,
            head,
            conflicted: false,
            whole: false,
        };
        let mut results = match submitted {
            None => Vec::new().into_iter(),
            Some(submitted) => match submitted.result().await {
                Ok(results) => results.into_iter(),
                Err(err) => {
                    tracing::warn!(error = %err, "group commit failed; the events run again");
                    Vec::new().into_iter()
                }
            },
        };
        drop(overlay); // the turns on hot keys, held to the commit
        let metrics = crate::observe::metrics();
        let mut all_committed = true;
        for slot in slots {
            match slot {
                Slot::Skipped => {}
                Slot::Duplicate(event) => {
                    metrics.handled(&route, &event, "duplicate");
                    log_duplicate(ctx, &event).instrument(event_span(&event)).await;
                }
                Slot::Staged(event) => match results.next() {
                    Some(UnitResult::Committed) => metrics.handled(&route, &event, "committed"),
                    Some(UnitResult::Duplicate) => {
                        all_committed = false;
                        metrics.handled(&route, &event, "duplicate");
                        log_duplicate(ctx, &event).instrument(event_span(&event)).await;
                    }
                    Some(UnitResult::Rejected(reason)) if end.finished == 0 => {
                        end.head = Some(Err(InvokeError::Rejected(reason)));
                        break;
                    }
                    Some(UnitResult::Conflict) => {
                        end.conflicted = true;
                        break;
                    }
                    // After one that did not commit, or the commit failed: runs again.
                    _ => break,
                },
            }
            end.finished += 1;
        }
        end.whole = all_committed && end.finished == len;
        end
    }

    /// Drops a chain that ran over one that did not commit whole: the committer applied
    /// none of it (see [`Db::submit_chain`]); waiting for its answer keeps the next
    /// chain behind it.
    async fn abandon(self) {
        if let Some(submitted) = self.submitted {
            let _ = submitted.result().await;
        }
    }
}

/// Handles one event to the end, one try at a time: committed, skipped as duplicate,
/// or dead-lettered. `first` is its first try when it already ran. False only when
/// shutdown interrupted it before that.
async fn handle_event(
    ctx: &RouteCtx,
    mut event: InboundEvent,
    mut first: Option<Result<Outcome, InvokeError>>,
) -> bool {
    let span = event_span(&event);
    async move {
        let mut attempt: u32 = 1;
        let mut host_failures: u32 = 0;
        loop {
            // Read per try: an edit of the retry policy applies from the next event.
            let route = ctx.settings.current();
            let policy = route.retry;
            event.headers.retain(|(n, _)| n != names::ATTEMPT);
            event.headers.push((names::ATTEMPT.to_string(), attempt.to_string()));
            // Looked up per try: a swap applies between events (and between tries).
            let Some(component) = ctx.registry.get(&ctx.component) else {
                tracing::error!("component is not loaded; retrying");
                if !sleep_unless_shutdown(ctx, HOST_FAILURE_BACKOFF).await {
                    return false;
                }
                continue;
            };
            let outcome = match first.take() {
                Some(outcome) => outcome,
                None => {
                    let permits = ctx.settings.permits();
                    let _permit = permits.acquire().await.expect("semaphore never closes");
                    ctx.registry
                        .runtime()
                        .invoke(&component, &ctx.db, &event)
                        .instrument(crate::observe::tracing::process_span(&route, &component.version, &event))
                        .await
                }
            };
            let failure = match outcome {
                Ok(Outcome::Committed(_)) => {
                    crate::observe::metrics().handled(&route, &event, "committed");
                    return true;
                }
                Ok(Outcome::Duplicate) => {
                    crate::observe::metrics().handled(&route, &event, "duplicate");
                    log_duplicate(ctx, &event).await;
                    return true;
                }
                Ok(Outcome::Failed(failure)) => failure,
                Err(err) => match event_fault(err) {
                    Ok(failure) => failure,
                    Err(err) => {
                        // The host failed (database down): not the event's fault, retry
                        // without spending its attempts.
                        host_failures += 1;
                        let delay = policy.backoff(host_failures).min(HOST_FAILURE_BACKOFF);
                        tracing::error!(error = %err, retry_in_ms = delay.as_millis() as u64, "host failure; retrying");
                        if !sleep_unless_shutdown(ctx, delay).await {
                            return false;
                        }
                        continue;
                    }
                },
            };
            if failure.kind.is_retryable() && attempt < policy.attempts {
                let delay = policy.backoff(attempt);
                tracing::warn!(attempt, kind = failure.kind.as_str(), retry_in_ms = delay.as_millis() as u64, reason = %failure.reason, "retryable failure");
                if !sleep_unless_shutdown(ctx, delay).await {
                    return false;
                }
                crate::observe::metrics().event(&route, "retried");
                attempt += 1;
                continue;
            }
            return dead_letter(ctx, &route, &component, &event, &failure, attempt).await;
        }
    }
    .instrument(span)
    .await
}

/// Splits invocation errors into the event's fault (it can never succeed as it is: the
/// database refuses its data, the component cannot even be instantiated for it) and the
/// host's (retried without end).
fn event_fault(err: InvokeError) -> Result<Failure, InvokeError> {
    match err {
        InvokeError::Store(store) if store.is_caused_by_data() => Ok(Failure {
            kind: FailureKind::Rejected,
            reason: format!("the database refused this event's data: {store}"),
        }),
        InvokeError::Instantiate { component, reason } => Ok(Failure {
            kind: FailureKind::Instantiate,
            reason: format!("cannot instantiate component \"{component}\": {reason}"),
        }),
        InvokeError::Rejected(reason) => Ok(Failure {
            kind: FailureKind::Rejected,
            reason: format!("the database refused this event's data: {reason}"),
        }),
        other => Err(other),
    }
}

async fn log_duplicate(ctx: &RouteCtx, event: &InboundEvent) {
    match ctx.db.first_handled(ctx.component.as_str(), &event.id).await {
        Ok(Some(first)) => tracing::info!(
            first_topic = %first.topic,
            first_partition = first.partition,
            first_offset = first.offset,
            first_handled_at_ms = first.handled_at_ms,
            "event id already handled; skipped"
        ),
        _ => tracing::info!("event id already handled; skipped"),
    }
}

async fn sleep_unless_shutdown(ctx: &RouteCtx, delay: Duration) -> bool {
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// The dead letter of `event`: its payload, key and headers as the component got them
/// (header values as text, see [`crate::kafka::headers_of`]; no payload as an empty one),
/// plus the record of what failed, where and how often.
pub fn dead_letter_message(
    event: &InboundEvent,
    component: &str,
    dead_letter_topic: &str,
    failure: &Failure,
    attempts: u32,
) -> OutboundMessage {
    let mut headers: Vec<(String, String)> = event
        .headers
        .iter()
        .filter(|(n, _)| {
            !n.starts_with(names::DLQ_PREFIX) && n != names::ATTEMPT && n != names::REPLAY_FOR && n != names::SIGNATURE
        })
        .cloned()
        .collect();
    // Keep the event id so a replay is recognisably the same event.
    headers.retain(|(n, _)| n != names::EVENT_ID);
    headers.push((names::EVENT_ID.to_string(), event.id.clone()));
    let record = DeadLetterRecord {
        reason: failure.reason.clone(),
        kind: failure.kind.as_str().to_string(),
        component: component.to_string(),
        topic: event.topic.clone(),
        partition: event.partition,
        offset: event.offset,
        attempts,
        failed_at_ms: now_ms(),
    };
    headers.extend(record.to_headers());
    OutboundMessage {
        topic: dead_letter_topic.to_string(),
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers,
    }
}

/// Sends the event to the route's dead-letter topic through the outbox, atomically with
/// its inbox claim. Retries until the database takes it.
async fn dead_letter(
    ctx: &RouteCtx,
    route: &Route,
    component: &LoadedComponent,
    event: &InboundEvent,
    failure: &Failure,
    attempts: u32,
) -> bool {
    let message = dead_letter_message(
        event,
        route.component.as_str(),
        route.dead_letter.as_str(),
        failure,
        attempts,
    );
    let (version, activation) = (&*component.version, component.activation);
    let entry = InboxEntry {
        component: route.component.as_str(),
        event_id: &event.id,
        topic: &event.topic,
        partition: event.partition,
        offset: event.offset,
        version: Some(version),
        activation: Some(activation),
        request_id: event.request_id.as_deref(),
        trace_id: Some(&event.trace.trace_id),
        outcome: "dead-lettered",
    };
    let id = uuid::Uuid::now_v7().to_string();
    let mut tries = 0;
    loop {
        match ctx.db.dead_letter(&entry, &id, &message).await {
            Ok(queued) => {
                if queued {
                    crate::observe::metrics().dead_lettered(route);
                    tracing::error!(
                        kind = failure.kind.as_str(),
                        reason = %failure.reason,
                        attempts,
                        dead_letter = %route.dead_letter,
                        "event dead-lettered"
                    );
                }
                return true;
            }
            Err(err) => {
                tries += 1;
                tracing::error!(error = %err, "cannot record dead letter; retrying");
                if !sleep_unless_shutdown(ctx, route.retry.backoff(tries).min(HOST_FAILURE_BACKOFF)).await {
                    return false;
                }
            }
        }
    }
}

/// Where a group stands on a topic: committed offset and lag per partition.
pub fn group_lag(base: &ClientConfig, route: &Route, partitions: u32) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer: StreamConsumer = consumer_config(base, route).create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition(route.topic.as_str(), p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    let mut out = Vec::new();
    for element in committed.elements() {
        // No committed offset yet: the group starts from the earliest event still kept
        // (as `/metrics` counts it).
        let (low, high) =
            consumer.fetch_watermarks(route.topic.as_str(), element.partition(), Duration::from_secs(10))?;
        let at = match element.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push((element.partition(), at, high - at));
    }
    Ok(out)
}
