//! Per-invocation state: built fresh for each `handle` call and dropped after it, so
//! nothing leaks from one event to the next.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use crate::config::ComponentSpec;
use crate::event::TraceContext;
use crate::store::{Staged, StoreError};

use super::output::CappedOutput;

/// What an invocation did, in order; reported by `switchyard invoke` and tests.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub published: Vec<Published>,
    pub timers: Vec<ScheduledTimer>,
    pub cancelled_timers: Vec<String>,
    /// Outbound effects recorded (wit `outbound`), carried out after the commit.
    pub deliveries: Vec<Delivery>,
}

/// One outbound effect recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delivery {
    pub id: String,
    /// `http` or `email`.
    pub kind: String,
    /// The URL, or the recipients.
    pub target: String,
    pub result_topic: String,
}

/// One storage change.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Write {
    Put { key: String, value: String },
    Delete { key: String },
}

/// One message queued in the outbox.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Published {
    pub event_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

/// One timer set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduledTimer {
    pub id: String,
    pub fire_at_ms: i64,
    pub topic: String,
    pub payload: String,
}

/// Caps linear memory growth and remembers that the cap was hit, so that the trap it
/// causes is reported as a memory kill rather than a generic failure.
pub struct MemoryCap {
    pub max_bytes: usize,
    pub exceeded: bool,
}

/// The error a guest traps with when it outgrows its memory cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {max_bytes} bytes exceeded (asked for {desired} bytes)")]
pub struct MemoryCapExceeded {
    pub max_bytes: usize,
    pub desired: usize,
}

/// The error a guest traps with when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("deadline of {0} ms exceeded")]
pub struct DeadlineExceeded(pub u128);

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        crate::observe::metrics().memory_grew(desired);
        if desired > self.max_bytes {
            self.exceeded = true;
            return Err(MemoryCapExceeded {
                max_bytes: self.max_bytes,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The store data of one invocation: the sandbox (WASI, captured output, memory cap,
/// deadline) and what host calls work on. No host interface sees all of it: each is
/// linked to a view that borrows only the parts it needs (see [`super::host`]), so what
/// a host call can touch is visible in its signature.
pub struct InvocationState {
    /// Room in the engine's pool: given back right after the store is dropped (see
    /// [`InvocationState::free_slot`]), before the transaction is finished.
    pub(crate) slot: Option<super::InstanceSlot>,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// Captured guest stdout and stderr, turned into log lines after the call.
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    pub(crate) memory: MemoryCap,
    /// When the call must be over; checked on every epoch tick.
    pub(crate) deadline: Instant,
    /// Who runs, for which event; host calls read it and never change it.
    pub(crate) origin: Origin,
    /// What the guest reads and writes, committed (or not) after the call.
    pub(crate) staged: Staged,
    /// What the invocation did, for the report.
    pub(crate) effects: Effects,
    /// Usage against [`caps`], and why the invocation must fail whatever it returns.
    pub(crate) guard: Guard,
}

impl InvocationState {
    /// Gives the instance's room in the pool back: call right after the store is
    /// dropped (`into_data`), which returns the instance's memory to the pool.
    pub(crate) fn free_slot(mut self) -> Self {
        self.slot = None;
        self
    }
}

/// Who runs and on whose behalf: the event (or query) a store's host calls act for.
pub struct Origin {
    /// Storage namespace, allowed topics, reach and config come from here.
    pub(crate) component: Arc<ComponentSpec>,
    /// Version of the component's code (see `LoadedComponent::version`), stamped on
    /// what it publishes.
    pub(crate) version: Arc<str>,
    /// Id of the event being handled, for the `caused-by` header of what it publishes.
    pub(crate) event_id: String,
    /// Correlation id passed on to every published message.
    pub(crate) request_id: Option<String>,
    /// Trace of the event; published messages become its children.
    pub(crate) trace: TraceContext,
    /// Set for `query`: host calls that would change anything fail with `read-only`.
    pub(crate) read_only: bool,
}

impl Origin {
    /// The guest's error text for `operation` during a read-only query, or `None` when
    /// writes are allowed.
    pub(crate) fn refuse_write(&self, operation: &str) -> Option<String> {
        self.read_only
            .then(|| format!("read-only query: {operation} is not allowed; queries only read"))
    }
}

/// What the guest has asked of the host so far, and the reasons its invocation fails
/// whatever the guest returns.
#[derive(Debug, Default)]
pub struct Guard {
    /// Counted against [`caps`].
    pub(crate) used: Usage,
    /// Set when the guest went past one of [`caps`], with which.
    pub(crate) over_limit: Option<String>,
    /// Set when the database failed under a host call: what the guest read cannot be
    /// trusted, so the invocation is retried.
    pub(crate) poisoned: Option<String>,
}

/// Caps on what one invocation may ask of the host. Past one, the host call fails and
/// so does the invocation (`limit`), so a flooding handler ends in a dead letter saying
/// which cap it hit instead of exhausting the host.
pub mod caps {
    /// Messages published plus timers scheduled.
    pub const MAX_MESSAGES: usize = 1000;
    /// Their bytes together (key, payload, headers).
    pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
    /// Storage writes (put, delete, increment, compare-and-swap).
    pub const MAX_WRITES: usize = 10_000;
    /// Bytes of values written.
    pub const MAX_WRITTEN_BYTES: usize = 32 << 20;
    /// Bytes one `list-prefix` call may return; ask for fewer keys to stay under it.
    pub const MAX_LISTED_BYTES: usize = 8 << 20;
    /// Guest log calls kept; later ones are counted and dropped.
    pub const MAX_LOG_CALLS: usize = 1000;
}

/// Counters behind [`caps`].
#[derive(Debug, Default)]
pub struct Usage {
    pub messages: usize,
    pub message_bytes: usize,
    pub writes: usize,
    pub written_bytes: usize,
    pub log_calls: usize,
}

impl Guard {
    /// Counts one more message of `bytes`; Err(reason) past the caps.
    pub(crate) fn count_message(&mut self, bytes: usize) -> Result<(), String> {
        self.used.messages += 1;
        self.used.message_bytes += bytes;
        if self.used.messages > caps::MAX_MESSAGES {
            return Err(self.exceed(format!(
                "more than {} messages and timers in one invocation",
                caps::MAX_MESSAGES
            )));
        }
        if self.used.message_bytes > caps::MAX_MESSAGE_BYTES {
            return Err(self.exceed(format!(
                "more than {} bytes of messages in one invocation",
                caps::MAX_MESSAGE_BYTES
            )));
        }
        Ok(())
    }

    /// Counts one more storage write of `bytes`; Err(reason) past the caps.
    pub(crate) fn count_write(&mut self, bytes: usize) -> Result<(), String> {
        self.used.writes += 1;
        self.used.written_bytes += bytes;
        if self.used.writes > caps::MAX_WRITES {
            return Err(self.exceed(format!(
                "more than {} storage writes in one invocation",
                caps::MAX_WRITES
            )));
        }
        if self.used.written_bytes > caps::MAX_WRITTEN_BYTES {
            return Err(self.exceed(format!(
                "more than {} bytes written in one invocation",
                caps::MAX_WRITTEN_BYTES
            )));
        }
        Ok(())
    }

    fn exceed(&mut self, reason: String) -> String {
        let message = format!("invocation limit: {reason}");
        self.over_limit.get_or_insert(message.clone());
        message
    }

    /// Records a database failure under a host call: the invocation is retried whatever
    /// the guest returns. Returns what the guest
    /// is told.
    pub(crate) fn poison(&mut self, origin: &Origin, operation: &str, err: &StoreError) -> String {
        let why = err.to_string();
        tracing::warn!(component = %origin.component.name, operation, error = %why, "database failed under a host call");
        self.poisoned.get_or_insert(why);
        "database error; the event will be retried".into()
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
