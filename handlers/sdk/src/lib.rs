//! Guest SDK for Switchyard handlers.
//!
//! - [`bindings`]: the WIT bindings of `wit/handler.wit` (world `handler`), generated once
//!   here so that every handler shares them. Implement [`Handler`] and export it with
//!   [`export_handler!`].
//! - [`query`]: arguments and answers of read-only queries (the `query` export).
//! - [`events`]: the event schemas of the order saga (docs/events.md), as serde types.
//! - [`money`]: conversion between wire amounts (JSON numbers) and integer minor units.
//! - [`json`]: thin helpers to read and write JSON through the host imports.
//! - [`keys`]: escaping untrusted text for use in `/`-separated storage keys.
//! - [`late`]: waiting a few retries for an event that may arrive on another topic later.
//!
//! Business logic belongs in plain modules of each handler crate, tested natively with
//! `cargo test`; only the glue that calls the imports needs wasm.

pub mod events;
pub mod json;
pub mod keys;
pub mod late;
pub mod money;
pub mod query;

/// Bindings generated from `wit/handler.wit`.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "switchyard_sdk::bindings",
    });
}

pub use bindings::export_handler;
pub use bindings::switchyard::handler::types::{Event, HandleError, Header, QueryError};

/// A Switchyard handler: `handle` for events, and optionally `query` for read-only
/// questions (the default knows no query). Export it with [`export_handler!`].
pub trait Handler {
    /// Handles one event; see `handle` in wit/handler.wit.
    fn handle(event: Event) -> Result<(), HandleError>;

    /// Answers the read-only query `name` (JSON `args` in, JSON out by convention); see
    /// `query` in wit/handler.wit. Writes, publishes and timers fail while it runs.
    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        let _ = args;
        Err(QueryError::Unknown(format!(
            "no query named {name:?}: this component answers no queries"
        )))
    }
}

impl<T: Handler> bindings::Guest for T {
    fn handle(event: Event) -> Result<(), HandleError> {
        <T as Handler>::handle(event)
    }

    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        <T as Handler>::query(name, args)
    }
}
pub use bindings::switchyard::handler::{config, log, publish, storage, timers};

impl HandleError {
    /// A fatal error: the event goes to the dead-letter topic.
    pub fn fatal(reason: impl std::fmt::Display) -> Self {
        HandleError::Fatal(reason.to_string())
    }

    /// A retryable error: the host retries the event with backoff.
    pub fn retryable(reason: impl std::fmt::Display) -> Self {
        HandleError::Retryable(reason.to_string())
    }
}

impl From<storage::Error> for HandleError {
    /// A database outage is worth retrying; a bad key or value never gets better.
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::Unavailable(why) => HandleError::Retryable(format!("storage: {why}")),
            other => HandleError::Fatal(format!("storage: {other:?}")),
        }
    }
}

impl From<storage::Error> for QueryError {
    /// A query that cannot read its data gives no answer; asking later may help.
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::Unavailable(why) => QueryError::Failed(format!("storage: {why}")),
            other => QueryError::Failed(format!("storage: {other:?}")),
        }
    }
}

impl From<HandleError> for QueryError {
    /// The SDK's JSON helpers speak [`HandleError`]; in a query both kinds mean that
    /// no answer could be read.
    fn from(err: HandleError) -> Self {
        match err {
            HandleError::Retryable(why) | HandleError::Fatal(why) => QueryError::Failed(why),
        }
    }
}

impl From<publish::Error> for HandleError {
    fn from(err: publish::Error) -> Self {
        match err {
            publish::Error::Unavailable(why) => HandleError::Retryable(format!("publish: {why}")),
            other => HandleError::Fatal(format!("publish: {other:?}")),
        }
    }
}

/// Name of the header carrying the host's delivery attempt (1 on first delivery).
pub const ATTEMPT_HEADER: &str = "switchyard-attempt";

/// Which attempt this delivery of `event` is (1 when the host sent no attempt header,
/// e.g. `switchyard invoke`). Lets a handler wait a few retries for an event that may
/// arrive late, then decide for good before the route's retries run out.
pub fn attempt(event: &Event) -> u32 {
    event
        .headers
        .iter()
        .find(|h| h.name == ATTEMPT_HEADER)
        .and_then(|h| h.value.parse().ok())
        .unwrap_or(1)
}

/// Logs through the host at `level` with structured fields.
pub fn log(level: log::Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    log::log(level, message, &fields);
}
