//! The component runtime: one wasmtime [`Engine`] with the pooling allocator and epoch
//! interruption, components compiled and type-checked against world `handler` at load
//! time, and a fresh instance per invocation bounded in time and memory.
//!
//! [`Runtime::run`] runs `handle` against a [`Staged`] view: reads checked again at
//! commit, writes kept in memory. Only if `handle` returned `ok` does the caller commit the
//! resulting [`Unit`] (its inbox claim, storage writes, outbox messages, timers and
//! deliveries together) through the group committer ([`crate::store::group`]), which is
//! the heart of exactly-once effects. [`Runtime::invoke`] does both for one event.

mod bindings;
mod host;
mod output;
mod query;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;

use crate::config::ComponentSpec;
use crate::event::InboundEvent;
use crate::store::{Db, InboxRecord, Overlay, Staged, StoreError, Unit, UnitResult};

use bindings::HandlerPre;
use output::CappedOutput;
pub use query::QueryError;
pub(crate) use state::Origin;
pub use state::{DeadlineExceeded, Delivery, Effects, MemoryCapExceeded, Published, ScheduledTimer, Write, caps};
use state::{Guard, InvocationState, MemoryCap};

/// How often the epoch advances: the resolution of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Guest stdout/stderr kept per invocation; the rest is counted and dropped.
const OUTPUT_CAPACITY: usize = 64 * 1024;
/// Instances alive at once, across all components.
const MAX_INSTANCES: u32 = 256;
/// Bytes of an instance's linear memory kept mapped for the next instance (see `Runtime::new`):
/// what the shipped handlers touch per event, with room to spare.
const KEEP_RESIDENT: usize = 4 << 20;
/// Upper bound of any component's memory cap (topics.toml allows up to 4 GiB).
const MAX_MEMORY_BYTES: usize = 4 << 30;

/// A failure to set up or load components.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    #[error(
        "{at}: component \"{component}\": cannot read artifact {path}: {source} (build it with `just handlers` or fix `artifact`)"
    )]
    Read {
        at: String,
        component: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{at}: component \"{component}\": {path} is not a valid Wasm component: {reason}")]
    Compile {
        at: String,
        component: String,
        path: String,
        reason: String,
    },
    #[error("{at}: component \"{component}\": {path} does not fit world switchyard:handler/handler: {reason}")]
    World {
        at: String,
        component: String,
        path: String,
        reason: String,
    },
}

/// A failure of the host around an invocation (not of the guest): the event was not
/// handled and must be retried later.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("cannot instantiate component \"{component}\": {reason}")]
    Instantiate { component: String, reason: String },
    /// The engine's pool had no room for one more instance: the host's limit, not the
    /// event's fault, so the event waits and runs again without spending an attempt.
    #[error("no room for another instance of component \"{component}\": {reason}")]
    PoolFull { component: String, reason: String },
    /// The database refused what the event would commit (see
    /// [`StoreError::is_caused_by_data`]): retrying cannot help.
    #[error("the database refused this event's data: {0}")]
    Rejected(String),
}

/// How one run of `handle` ended, before anything is committed.
#[derive(Debug)]
pub enum Ran {
    /// `handle` returned ok: what to commit, and what it did.
    Staged { unit: Box<Unit>, effects: Effects },
    /// Nothing is to be committed.
    Failed(Failure),
}

/// How an invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// `handle` returned ok and its effects are committed.
    Committed(Effects),
    /// The event id was handled before; nothing ran.
    Duplicate,
    /// Nothing was committed.
    Failed(Failure),
}

/// Why `handle` did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

/// The classes of failure; they decide between retry and dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest returned `retryable`, or the database failed under it.
    Retryable,
    /// The guest returned `fatal`.
    Fatal,
    /// The guest trapped (panic, unreachable, bad memory access).
    Trap,
    /// The guest ran past its deadline.
    Deadline,
    /// The guest outgrew its memory cap.
    Memory,
    /// The guest went past one of the invocation [`caps`] (publishes, writes, ...).
    Limit,
    /// The component could not be instantiated for this event.
    Instantiate,
    /// The database refused the event's data (say, an id with a NUL byte).
    Rejected,
}

impl FailureKind {
    /// Worth another try. A blown deadline is: the wall clock includes CPU contention
    /// and lock waits, so a short overload must not turn into permanent dead letters.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Retryable | FailureKind::Deadline | FailureKind::Instantiate
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Fatal => "fatal",
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Limit => "limit",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Rejected => "rejected",
        }
    }
}

/// Whether an invocation's effects are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    Commit,
    /// Runs everything, reports the effects, and rolls them back (`switchyard invoke`).
    DryRun,
}

/// A component compiled, linked and checked, ready to instantiate.
pub struct LoadedComponent {
    pub spec: Arc<ComponentSpec>,
    /// The code's identity: the start of the sha256 of the artifact's bytes, so two hosts
    /// (or two restarts) agree on it without being told.
    pub version: Arc<str>,
    /// Which activation of the component made this the running version (the
    /// `component_activations` row; 0 outside a running host). Activations only move
    /// forward, which is what orders swaps within a partition.
    pub activation: i64,
    compiled: Component,
    pre: HandlerPre<InvocationState>,
}

/// Hex digits of the artifact's sha256 that name a version: 64 bits, enough to tell any
/// two builds apart in practice, short enough to read in a log line.
const VERSION_HEX_DIGITS: usize = 16;

/// The version name of an artifact's bytes.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(bytes));
    digest[..VERSION_HEX_DIGITS].to_string()
}

impl LoadedComponent {
    /// The same code under other settings (`publishes`, `config`, `limits` edited in
    /// topics.toml): relinked, not recompiled.
    pub fn with_spec(&self, runtime: &Runtime, spec: &ComponentSpec) -> Result<LoadedComponent, LoadError> {
        let mut loaded = runtime.link(spec, self.compiled.clone(), self.version.clone())?;
        loaded.activation = self.activation;
        Ok(loaded)
    }

    /// The same code, marked as made active by `activation`.
    pub fn activated(&self, activation: i64) -> LoadedComponent {
        LoadedComponent {
            spec: self.spec.clone(),
            version: self.version.clone(),
            activation,
            compiled: self.compiled.clone(),
            pre: self.pre.clone(),
        }
    }
}

/// The engine and linker shared by every component.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    /// One permit per instance the pool holds. Every store takes one before anything
    /// else (its transaction included) and keeps it until it is dropped, so routes whose
    /// concurrency adds up past the pool, and gateway queries, wait for room instead of
    /// failing to instantiate (which would dead-letter good events).
    slots: Arc<Semaphore>,
}

/// Room for one instance in the pool, held as long as the store that uses it.
pub(crate) struct InstanceSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Runtime {
    /// A runtime with room for [`MAX_INSTANCES`] instances at once.
    pub fn new() -> Result<Runtime, LoadError> {
        Runtime::with_instance_limit(MAX_INSTANCES)
    }

    /// A runtime with room for `limit` instances at once, across all components and
    /// queries; more wait their turn.
    pub fn with_instance_limit(limit: u32) -> Result<Runtime, LoadError> {
        let limit = limit.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limit)
            .total_core_instances(limit * 8)
            .total_memories(limit * 2)
            .total_tables(limit * 4)
            .max_memory_size(MAX_MEMORY_BYTES)
            // Every event gets a fresh instance. Returning its memory with madvise cost a
            // TLB shootdown on every core and page faults on the next instance: 22 % of
            // the workers' perf samples under a backlog. The touched pages of the first
            // KEEP_RESIDENT bytes are zeroed in place instead (PAGEMAP_SCAN finds them on
            // Linux 6.7+; older kernels zero that prefix whole).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        // Compiled components are cached on disk (keyed by their hash), so restarts and
        // `check` skip recompiling unchanged artifacts; without a usable cache dir, compile.
        config.cache(wasmtime::Cache::from_file(None).ok());
        // Bounds are checked in code rather than by guard pages and a signal handler.
        // With guard pages, each instantiation put the slot's pages past the initial size
        // back to PROT_NONE and the guest's first `memory.grow` opened them again: two
        // `mprotect`s per event, 11 % of a no-op backlog's samples. Without them a slot
        // stays read/write up to the largest size it reached (reset to zero as before),
        // and the guest still cannot reach past its own size. Routed no-op throughput
        // went from 7,300–8,100 to 9,200–12,500 events/s, full effect by 3–23 % in
        // alternating runs (2026-11-27); checks in code cost a compute-bound guest more.
        config
            .signals_based_traps(false)
            .memory_guard_size(0)
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        host::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        Ok(Runtime {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(limit as usize)),
        })
    }

    /// Compiles the component's artifact and checks it against world `handler`: an
    /// import the host does not provide or a missing `handle` export is an error here,
    /// not at the first event.
    pub fn load(&self, spec: &ComponentSpec) -> Result<LoadedComponent, LoadError> {
        let bytes = std::fs::read(&spec.artifact).map_err(|source| LoadError::Read {
            at: spec.artifact_at.to_string(),
            component: spec.name.to_string(),
            path: spec.artifact.display().to_string(),
            source,
        })?;
        self.load_bytes(spec, &bytes)
    }

    /// Like [`Runtime::load`] with the artifact's bytes (binary or WAT) at hand.
    pub fn load_bytes(&self, spec: &ComponentSpec, bytes: &[u8]) -> Result<LoadedComponent, LoadError> {
        let (at, component, path) = (
            spec.artifact_at.to_string(),
            spec.name.to_string(),
            spec.artifact.display().to_string(),
        );
        let compiled = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            at: at.clone(),
            component: component.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        self.link(spec, compiled, version_of(bytes).into())
    }

    /// Links a compiled component against world `handler` and pre-instantiates it.
    fn link(&self, spec: &ComponentSpec, compiled: Component, version: Arc<str>) -> Result<LoadedComponent, LoadError> {
        let (at, component, path) = (
            spec.artifact_at.to_string(),
            spec.name.to_string(),
            spec.artifact.display().to_string(),
        );
        let world_error = |e: wasmtime::Error| LoadError::World {
            at: at.clone(),
            component: component.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&compiled).map_err(world_error)?;
        let pre = HandlerPre::new(instance_pre).map_err(world_error)?;
        Ok(LoadedComponent {
            spec: Arc::new(spec.clone()),
            version,
            activation: 0,
            compiled,
            pre,
        })
    }

    /// A fresh store for one call of `spec`'s component: WASI with no files, env or
    /// sockets (clocks and randomness only), captured output, the memory cap, and the
    /// epoch deadline that stops a guest which computes past its time.
    pub(crate) fn new_store(&self, slot: InstanceSlot, staged: Staged, origin: Origin) -> Store<InvocationState> {
        let limits = origin.component.limits;
        let stdout = CappedOutput::new(OUTPUT_CAPACITY);
        let stderr = CappedOutput::new(OUTPUT_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = InvocationState {
            slot: Some(slot),
            wasi,
            table: Default::default(),
            stdout,
            stderr,
            origin,
            staged,
            effects: Effects::default(),
            memory: MemoryCap {
                max_bytes: limits.memory_bytes as usize,
                exceeded: false,
            },
            deadline: Instant::now() + limits.deadline,
            guard: Guard::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(1);
        let budget_ms = limits.deadline.as_millis();
        store.epoch_deadline_callback(move |ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(DeadlineExceeded(budget_ms).into())
            } else {
                // Yield to the executor on every tick so a busy guest never starves others.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Waits for room for one more instance in the pool (see [`Runtime::slots`]). Taken
    /// before the store's transaction begins, so a store never holds a database
    /// connection while it waits.
    pub(crate) async fn instance_slot(&self) -> InstanceSlot {
        InstanceSlot(
            self.slots
                .clone()
                .acquire_owned()
                .await
                .expect("the slots are never closed"),
        )
    }

    /// Instantiates `component` once, read-only and within its limits, and drops the
    /// instance: start-up code that traps, loops or outgrows memory is found before a
    /// version goes live rather than at its first event.
    pub async fn trial_instantiate(&self, component: &LoadedComponent, db: &Db) -> Result<(), String> {
        let slot = self.instance_slot().await;
        let staged = Staged::new(db, component.spec.name.as_str(), Overlay::default());
        let mut store = self.new_store(
            slot,
            staged,
            Origin {
                component: component.spec.clone(),
                event_id: "load-check".into(),
                version: component.version.clone(),
                request_id: None,
                trace: crate::event::TraceContext::new_root(),
                read_only: true,
            },
        );
        let deadline = component.spec.limits.deadline + EPOCH_TICK;
        let result = match tokio::time::timeout(deadline, component.pre.instantiate_async(&mut store)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify_trap(&e, store.data().memory.exceeded).reason),
            Err(_) => Err(format!(
                "instantiation ran past the {} ms deadline",
                component.spec.limits.deadline.as_millis()
            )),
        };
        store.into_data().free_slot().staged.discard().await;
        result
    }

    /// Handles `event` with `component` exactly once in effect (see the module docs).
    pub async fn invoke(
        &self,
        component: &LoadedComponent,
        db: &Db,
        event: &InboundEvent,
    ) -> Result<Outcome, InvokeError> {
        self.invoke_in(InvokeMode::Commit, component, db, event).await
    }

    /// [`Runtime::invoke`], or a dry run that reports the effects and keeps none.
    pub async fn invoke_in(
        &self,
        mode: InvokeMode,
        component: &LoadedComponent,
        db: &Db,
        event: &InboundEvent,
    ) -> Result<Outcome, InvokeError> {
        loop {
            if db
                .handled(component.spec.name.as_str(), std::slice::from_ref(&event.id))
                .await?
                .contains(&event.id)
            {
                tracing::debug!(event_id = %event.id, "event already handled; skipped");
                return Ok(Outcome::Duplicate);
            }
            // The overlay holds the turns on hot keys this event read: kept to the commit.
            let (ran, _turns) = self.run(component, db, event, Overlay::default()).await?;
            let (unit, effects) = match ran {
                Ran::Failed(failure) => return Ok(Outcome::Failed(failure)),
                Ran::Staged { unit, effects } => (unit, effects),
            };
            if mode == InvokeMode::DryRun {
                return Ok(Outcome::Committed(effects));
            }
            match db.commit_chain(vec![*unit]).await?.pop() {
                Some(UnitResult::Committed) => return Ok(Outcome::Committed(effects)),
                Some(UnitResult::Duplicate) => return Ok(Outcome::Duplicate),
                Some(UnitResult::Rejected(reason)) => return Err(InvokeError::Rejected(reason)),
                // What it read changed before it committed: run it again on fresh data.
                Some(UnitResult::Conflict | UnitResult::NotRun) | None => continue,
            }
        }
    }

    /// Runs `handle` for `event` on `component` over `base` (the writes of the
    /// partition's earlier events not committed yet) and commits nothing. Returns how it
    /// ended and the overlay for the partition's next event: `base` with this event's
    /// writes when it is staged, `base` unchanged when it failed.
    pub async fn run(
        &self,
        component: &LoadedComponent,
        db: &Db,
        event: &InboundEvent,
        base: Overlay,
    ) -> Result<(Ran, Overlay), InvokeError> {
        let span = tracing::info_span!(
            "invoke",
            component = %component.spec.name,
            version = %component.version,
            event_id = %event.id,
            topic = %event.topic,
            partition = event.partition,
            offset = event.offset,
            request_id = event.request_id.as_deref().unwrap_or(""),
            trace_id = %event.trace.trace_id,
        );
        self.run_inner(component, db, event, base).instrument(span).await
    }

    async fn run_inner(
        &self,
        component: &LoadedComponent,
        db: &Db,
        event: &InboundEvent,
        base: Overlay,
    ) -> Result<(Ran, Overlay), InvokeError> {
        let spec = &component.spec;
        let slot = self.instance_slot().await;
        let started = Instant::now();
        let mut store = self.new_store(
            slot,
            Staged::new(db, spec.name.as_str(), base),
            Origin {
                component: spec.clone(),
                event_id: event.id.clone(),
                version: component.version.clone(),
                request_id: event.request_id.clone(),
                trace: event.trace.clone(),
                read_only: false,
            },
        );

        // The epoch deadline stops a guest that computes; this timer stops one blocked in
        // a host call (a WASI sleep, a lock wait), dropping the call where it waits, so
        // the whole invocation, host calls included, ends by its deadline.
        let deadline = spec.limits.deadline;
        let run = async {
            let handler = component.pre.instantiate_async(&mut store).await.map_err(Err)?;
            handler.call_handle(&mut store, &to_wit(event)).await.map_err(Ok)
        };
        let result = match tokio::time::timeout(deadline + EPOCH_TICK, run).await {
            Ok(Ok(returned)) => Ok(returned),
            // Trapped while handling.
            Ok(Err(Ok(trap))) => Err(trap),
            // Failed to instantiate: start-up code that blows the limits is the guest's
            // fault like any trap; anything else is the host's, reported as such.
            Ok(Err(Err(e))) => {
                if store.data().memory.exceeded || e.downcast_ref::<DeadlineExceeded>().is_some() {
                    Err(e)
                } else {
                    store.into_data().free_slot().staged.discard().await;
                    // Every try counts in the duration histogram, this one too.
                    crate::observe::metrics().handler_duration(
                        spec.name.as_str(),
                        &component.version,
                        started.elapsed(),
                    );
                    let (component, reason) = (spec.name.to_string(), format!("{e:#}"));
                    return Err(if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
                        InvokeError::PoolFull { component, reason }
                    } else {
                        InvokeError::Instantiate { component, reason }
                    });
                }
            }
            Err(_elapsed) => Err(wasmtime::Error::new(DeadlineExceeded(deadline.as_millis()))
                .context("blocked in a host call (sleep, lock wait) past the deadline")),
        };
        let mut state = store.into_data().free_slot();
        forward_output(&state);
        let failure = match result {
            Ok(_) if state.guard.over_limit.is_some() => Failure {
                kind: FailureKind::Limit,
                reason: format!(
                    "{} (raise nothing: split the work over several events)",
                    state.guard.over_limit.take().unwrap_or_default()
                ),
            },
            Ok(Ok(())) => match state.guard.poisoned.take() {
                Some(why) => Failure {
                    kind: FailureKind::Retryable,
                    reason: format!("database failed during the call: {why}"),
                },
                None => {
                    let inbox = InboxRecord {
                        component: spec.name.to_string(),
                        event_id: event.id.clone(),
                        topic: event.topic.clone(),
                        partition: event.partition,
                        offset: event.offset,
                        version: Some(component.version.to_string()),
                        activation: Some(component.activation),
                        request_id: event.request_id.clone(),
                        trace_id: Some(event.trace.trace_id.clone()),
                        outcome: "committed",
                    };
                    let (unit, overlay) = state.staged.finish(inbox).await;
                    let effects = state.effects;
                    self.ran(spec, component, started, None, &effects);
                    return Ok((
                        Ran::Staged {
                            unit: Box::new(unit),
                            effects,
                        },
                        overlay,
                    ));
                }
            },
            Ok(Err(err)) => {
                let (kind, reason) = match err {
                    bindings::types::HandleError::Retryable(r) => (FailureKind::Retryable, r),
                    bindings::types::HandleError::Fatal(r) => (FailureKind::Fatal, r),
                };
                let kind = if state.guard.poisoned.is_some() {
                    FailureKind::Retryable
                } else {
                    kind
                };
                Failure { kind, reason }
            }
            Err(trap) => classify_trap(&trap, state.memory.exceeded),
        };
        let overlay = state.staged.discard().await;
        self.ran(spec, component, started, Some(&failure), &state.effects);
        Ok((Ran::Failed(failure), overlay))
    }

    /// Records how long a run took, and logs how it ended.
    fn ran(
        &self,
        spec: &ComponentSpec,
        component: &LoadedComponent,
        started: Instant,
        failure: Option<&Failure>,
        effects: &Effects,
    ) {
        crate::observe::metrics().handler_duration(spec.name.as_str(), &component.version, started.elapsed());
        let elapsed_us = started.elapsed().as_micros() as u64;
        match failure {
            None => tracing::debug!(
                elapsed_us,
                writes = effects.writes.len(),
                published = effects.published.len(),
                timers = effects.timers.len(),
                "handled"
            ),
            Some(f) => {
                tracing::warn!(elapsed_us, kind = f.kind.as_str(), reason = %f.reason, "handler failed")
            }
        }
    }
}

/// Turns a trap into a failure class with a message an operator can act on.
fn classify_trap(err: &wasmtime::Error, memory_exceeded: bool) -> Failure {
    if let Some(d) = err.downcast_ref::<DeadlineExceeded>() {
        return Failure {
            kind: FailureKind::Deadline,
            reason: format!("{d}: the handler was stopped (raise limits.deadline-ms if it is legitimately slow)"),
        };
    }
    if let Some(m) = err.downcast_ref::<MemoryCapExceeded>() {
        return Failure {
            kind: FailureKind::Memory,
            reason: format!("{m}: the handler was stopped (raise limits.memory-mib if it legitimately needs more)"),
        };
    }
    if memory_exceeded {
        return Failure {
            kind: FailureKind::Memory,
            reason: "memory cap exceeded: the handler was stopped".into(),
        };
    }
    let trap = err.downcast_ref::<Trap>().map(|t| t.to_string());
    let detail = format!("{err:#}");
    Failure {
        kind: FailureKind::Trap,
        reason: match trap {
            Some(t) if !detail.contains(&t) => format!("wasm trap: {t}: {detail}"),
            _ => format!("wasm trap: {detail}"),
        },
    }
}

/// Guest stdout and stderr become log lines tagged with the component (and, through
/// the span, the event).
fn forward_output(state: &InvocationState) {
    let component = state.origin.component.name.as_str();
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let (bytes, dropped) = pipe.contents();
        for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(target: "guest", component, stream, "{line}");
        }
        if dropped > 0 {
            tracing::warn!(target: "guest", component, stream, dropped_bytes = dropped, "guest output over {OUTPUT_CAPACITY} bytes; the rest was dropped");
        }
    }
    let dropped_logs = state.guard.used.log_calls.saturating_sub(caps::MAX_LOG_CALLS);
    if dropped_logs > 0 {
        tracing::warn!(target: "guest", component, dropped_logs, "more than {} log calls in one invocation; the rest were dropped", caps::MAX_LOG_CALLS);
    }
}

fn to_wit(event: &InboundEvent) -> bindings::types::Event {
    use bindings::types::{Event, Header, Position, TraceContext};
    Event {
        id: event.id.clone(),
        topic: event.topic.clone(),
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers: event
            .headers
            .iter()
            .map(|(n, v)| Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        timestamp_ms: event.timestamp_ms,
        request_id: event.request_id.clone(),
        trace: TraceContext {
            traceparent: event.trace.traceparent(),
            tracestate: event.trace.tracestate.clone(),
        },
        position: Position {
            partition: event.partition,
            offset: event.offset,
        },
    }
}

/// Advances the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("switchyard-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Loads every component of a routing table, collecting all errors rather than the first.
pub fn load_all(
    runtime: &Runtime,
    specs: impl IntoIterator<Item = ComponentSpec>,
) -> Result<Vec<LoadedComponent>, Vec<LoadError>> {
    let (ok, errors): (Vec<_>, Vec<_>) = specs.into_iter().map(|s| runtime.load(&s)).partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().map(Result::unwrap).collect())
    } else {
        Err(errors.into_iter().map(|e| e.err().unwrap()).collect())
    }
}
