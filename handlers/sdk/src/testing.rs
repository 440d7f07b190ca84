//! An in-memory host for native tests of a handler, glue included: storage with
//! compare-and-swap, captured publishes, timers and outbound deliveries, config and logs, with the host's
//! rules (a failed `handle` leaves nothing behind; a query is read-only; keys, values and
//! topics are checked). Only in native builds; a component always talks to the real host.
//!
//! ```ignore
//! let mut host = TestHost::new().allow_publishing(&["billing.payments"]);
//! host.deliver::<BillingHandler>(testing::event("users.registered", &registered))?;
//! assert_eq!(host.published_on("billing.payments").len(), 1);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::imports::log::Level;
use crate::imports::outbound::{Delivery, Error as OutboundError};
use crate::imports::publish::{Error as PublishError, Message};
use crate::imports::storage::Error as StorageError;
use crate::{ATTEMPT_HEADER, Event, HandleError, Handler, Header, QueryError};

/// Limits of the real host (host/src/runtime/host/mod.rs, wit/handler.wit).
const MAX_KEY_BYTES: usize = 512;
const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_LIST: u32 = 1000;

/// A timer scheduled and not cancelled.
#[derive(Debug, Clone)]
pub struct Timer {
    pub id: String,
    pub delay_ms: u64,
    pub message: Message,
}

/// One log call.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// What the host keeps between invocations; swapped in while a handler runs.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    pub storage: BTreeMap<String, Vec<u8>>,
    pub published: Vec<Message>,
    pub timers: Vec<Timer>,
    pub config: BTreeMap<String, String>,
    pub logs: Vec<LogLine>,
    /// Outbound deliveries recorded (not carried out: the test decides their outcome).
    pub deliveries: Vec<CapturedDelivery>,
    /// URL prefixes the component may reach; `None`: any (as `reach.http`).
    pub reach_http: Option<Vec<String>>,
    /// Topics the component may publish to; `None`: any.
    pub publishes: Option<BTreeSet<String>>,
    read_only: bool,
    next_timer: u64,
    next_delivery: u64,
}

/// One outbound delivery a handler asked for.
#[derive(Debug, Clone)]
pub struct CapturedDelivery {
    pub id: String,
    pub delivery: Delivery,
}

thread_local! {
    static HOST: RefCell<Option<HostState>> = const { RefCell::new(None) };
}

/// Runs `f` on the host of the handler call in progress on this thread.
pub(crate) fn with_host<R>(f: impl FnOnce(&mut HostState) -> R) -> R {
    HOST.with(|cell| {
        let mut guard = cell.borrow_mut();
        let host = guard.as_mut().expect(
            "a host import was called outside a handler call: in native tests call the handler \
             through switchyard_sdk::testing::TestHost::deliver or ::ask",
        );
        f(host)
    })
}

fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidKey(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StorageError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StorageError::ValueTooLarge(value.len() as u64));
    }
    Ok(())
}

impl HostState {
    fn refuse_storage(&self, op: &str) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::ReadOnly(format!(
                "read-only query: storage {op} is not allowed"
            )));
        }
        Ok(())
    }

    fn check_message(&self, op: &str, msg: &Message) -> Result<(), PublishError> {
        if self.read_only {
            return Err(PublishError::ReadOnly(format!("read-only query: {op} is not allowed")));
        }
        if let Some(allowed) = &self.publishes
            && !allowed.contains(&msg.topic)
        {
            return Err(PublishError::TopicNotAllowed(msg.topic.clone()));
        }
        if msg.payload.len() > MAX_VALUE_BYTES {
            return Err(PublishError::TooLarge(msg.payload.len() as u64));
        }
        if let Some(h) = msg.headers.iter().find(|h| {
            let name = h.name.to_ascii_lowercase();
            name.starts_with("switchyard-") || name == "traceparent" || name == "tracestate"
        }) {
            return Err(PublishError::ReservedHeader(h.name.clone()));
        }
        Ok(())
    }

    pub(crate) fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        Ok(self.storage.get(key).cloned())
    }

    pub(crate) fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.refuse_storage("put")?;
        check_key(key)?;
        check_value(value)?;
        self.storage.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        self.refuse_storage("delete")?;
        check_key(key)?;
        Ok(self.storage.remove(key).is_some())
    }

    pub(crate) fn list_prefix(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        Ok(self
            .storage
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|after| k.as_str() > after))
            .take(limit.min(MAX_LIST) as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    pub(crate) fn increment(&mut self, key: &str, delta: i64) -> Result<i64, StorageError> {
        self.refuse_storage("increment")?;
        check_key(key)?;
        let current = match self.storage.get(key) {
            None => 0,
            Some(bytes) => {
                let text = String::from_utf8_lossy(bytes).into_owned();
                text.parse::<i64>().map_err(|_| StorageError::NotANumber(text))?
            }
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| StorageError::NotANumber(format!("{key}: overflow")))?;
        self.storage.insert(key.to_string(), next.to_string().into_bytes());
        Ok(next)
    }

    pub(crate) fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StorageError> {
        self.refuse_storage("compare-and-swap")?;
        check_key(key)?;
        if let Some(value) = new {
            check_value(value)?;
        }
        if self.storage.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => self.storage.insert(key.to_string(), value.to_vec()),
            None => self.storage.remove(key),
        };
        Ok(true)
    }

    pub(crate) fn send(&mut self, msg: &Message) -> Result<(), PublishError> {
        self.check_message("publish", msg)?;
        self.published.push(msg.clone());
        Ok(())
    }

    pub(crate) fn schedule(&mut self, delay_ms: u64, msg: &Message) -> Result<String, PublishError> {
        self.check_message("timer schedule", msg)?;
        self.next_timer += 1;
        let id = format!("timer-{}", self.next_timer);
        self.timers.push(Timer {
            id: id.clone(),
            delay_ms,
            message: msg.clone(),
        });
        Ok(id)
    }

    pub(crate) fn cancel(&mut self, id: &str) -> Result<bool, PublishError> {
        if self.read_only {
            return Err(PublishError::ReadOnly(
                "read-only query: timer cancel is not allowed".into(),
            ));
        }
        let before = self.timers.len();
        self.timers.retain(|t| t.id != id);
        Ok(self.timers.len() < before)
    }

    pub(crate) fn deliver(&mut self, delivery: &Delivery) -> Result<String, OutboundError> {
        use crate::imports::outbound::Request;
        if self.read_only {
            return Err(OutboundError::ReadOnly(
                "read-only query: outbound deliver is not allowed".into(),
            ));
        }
        if let Some(allowed) = &self.publishes
            && !allowed.contains(&delivery.result_topic)
        {
            return Err(OutboundError::TopicNotAllowed(delivery.result_topic.clone()));
        }
        match &delivery.request {
            Request::Http(request) => {
                if !request.url.starts_with("http://") && !request.url.starts_with("https://") {
                    return Err(OutboundError::Invalid(format!("URL {:?} is not absolute", request.url)));
                }
                if let Some(prefixes) = &self.reach_http
                    && !prefixes.iter().any(|p| request.url.starts_with(p.as_str()))
                {
                    return Err(OutboundError::NotAllowed(format!(
                        "URL {:?} is outside reach.http (allowed: {})",
                        request.url,
                        prefixes.join(", ")
                    )));
                }
            }
            Request::Email(email) => {
                if email.recipients.is_empty() || email.recipients.iter().any(|r| !r.contains('@')) {
                    return Err(OutboundError::Invalid(format!("recipients {:?}", email.recipients)));
                }
            }
        }
        self.next_delivery += 1;
        let id = format!("delivery-{}", self.next_delivery);
        self.deliveries.push(CapturedDelivery {
            id: id.clone(),
            delivery: delivery.clone(),
        });
        Ok(id)
    }

    pub(crate) fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        self.logs.push(LogLine {
            level,
            message: message.to_string(),
            fields: fields.to_vec(),
        });
    }
}

/// The host of a native test: deliver events and ask queries as the real host would.
#[derive(Debug, Clone, Default)]
pub struct TestHost {
    pub state: HostState,
}

impl TestHost {
    pub fn new() -> TestHost {
        TestHost::default()
    }

    /// Sets a config value, as `config = {...}` in topics.toml does.
    pub fn with_config(mut self, key: &str, value: &str) -> TestHost {
        self.state.config.insert(key.to_string(), value.to_string());
        self
    }

    /// Restricts publishing to `topics`, as `publishes` in topics.toml does.
    pub fn allow_publishing(mut self, topics: &[&str]) -> TestHost {
        self.state.publishes = Some(topics.iter().map(|t| t.to_string()).collect());
        self
    }

    /// Restricts outbound HTTP to URLs starting with `prefixes`, as `reach.http` does.
    pub fn allow_reaching(mut self, prefixes: &[&str]) -> TestHost {
        self.state.reach_http = Some(prefixes.iter().map(|p| p.to_string()).collect());
        self
    }

    /// The outcome event the host would publish for captured delivery `id`, to feed
    /// back with [`TestHost::deliver`]: success, or failure with `reason`.
    pub fn outcome_of(&self, id: &str, success: bool, reason: Option<&str>) -> Event {
        let captured = self
            .state
            .deliveries
            .iter()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no delivery {id} was recorded"));
        let kind = match captured.delivery.request {
            crate::imports::outbound::Request::Http(_) => "http",
            crate::imports::outbound::Request::Email(_) => "email",
        };
        let outcome = crate::outbound::Outcome {
            delivery_id: id.to_string(),
            kind: kind.to_string(),
            success,
            status: Some(if success { 250 } else { 550 }),
            reason: reason.map(String::from),
            attempts: 1,
            context: captured.delivery.context.clone(),
            finished_at: 1_700_000_000_000,
        };
        event(&captured.delivery.result_topic, &outcome)
    }

    /// Runs `H::handle(event)` like the host: if it fails, its storage writes, publishes,
    /// timers and deliveries are dropped (logs stay, as in the host's log).
    pub fn deliver<H: Handler>(&mut self, event: Event) -> Result<(), HandleError> {
        let before = self.state.clone();
        let result = self.run(false, || H::handle(event));
        if result.is_err() {
            let logs = std::mem::take(&mut self.state.logs);
            self.state = HostState { logs, ..before };
        }
        result
    }

    /// Runs `H::query(name, args)` read-only: writes, publishes and timers fail.
    pub fn ask<H: Handler>(&mut self, name: &str, args: &[u8]) -> Result<Vec<u8>, QueryError> {
        let before = self.state.clone();
        let result = self.run(true, || H::query(name.to_string(), args.to_vec()));
        // Nothing a query did may remain, whatever it returned.
        let logs = std::mem::take(&mut self.state.logs);
        self.state = HostState { logs, ..before };
        result
    }

    pub(crate) fn run<R>(&mut self, read_only: bool, call: impl FnOnce() -> R) -> R {
        let mut state = std::mem::take(&mut self.state);
        state.read_only = read_only;
        HOST.with(|cell| {
            assert!(
                cell.borrow().is_none(),
                "a handler call is already running on this thread"
            );
            *cell.borrow_mut() = Some(state);
        });
        // Put the state back even if the handler panics, so the test sees what happened.
        struct Restore<'a>(&'a mut HostState);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(mut state) = HOST.with(|cell| cell.borrow_mut().take()) {
                    state.read_only = false;
                    *self.0 = state;
                }
            }
        }
        let _restore = Restore(&mut self.state);
        call()
    }

    /// The value stored under `key`, decoded as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state
            .storage
            .get(key)
            .map(|bytes| serde_json::from_slice(bytes).expect("stored value is JSON"))
    }

    /// The payloads published on `topic`, decoded as JSON, oldest first.
    pub fn published_on<T: serde::de::DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        self.state
            .published
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| serde_json::from_slice(&m.payload).expect("published payload is JSON"))
            .collect()
    }

    /// Forgets what was published so far, to look only at what comes next.
    pub fn clear_published(&mut self) {
        self.state.published.clear();
    }
}

/// An event on `topic` with `payload` as JSON, keyed by nothing, first attempt.
pub fn event<T: Serialize>(topic: &str, payload: &T) -> Event {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Event {
        id: format!("test-event-{n}"),
        topic: topic.to_string(),
        key: None,
        payload: serde_json::to_vec(payload).expect("payload serializes"),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000 + n as i64,
        request_id: None,
        trace: crate::bindings::switchyard::handler::types::TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: String::new(),
        },
        position: crate::bindings::switchyard::handler::types::Position {
            partition: 0,
            offset: n as i64,
        },
    }
}

/// `event` as the host's `attempt`-th delivery of it (the `switchyard-attempt` header).
pub fn attempt(mut event: Event, attempt: u32) -> Event {
    event.headers.retain(|h| h.name != ATTEMPT_HEADER);
    event.headers.push(Header {
        name: ATTEMPT_HEADER.to_string(),
        value: attempt.to_string(),
    });
    event
}
