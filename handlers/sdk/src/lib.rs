//! Guest SDK for Switchyard handlers.
//!
//! - [`bindings`]: the WIT bindings of `wit/handler.wit` (world `handler`), generated once
//!   here so that every handler shares them. Export a handler with [`export_handler!`].
//! - [`events`]: the event schemas of the order saga (docs/events.md), as serde types.
//! - [`money`]: conversion between wire amounts (JSON numbers) and integer minor units.
//! - [`json`]: thin helpers to read and write JSON through the host imports.
//! - [`keys`]: escaping untrusted text for use in `/`-separated storage keys.
//!
//! Business logic belongs in plain modules of each handler crate, tested natively with
//! `cargo test`; only the glue that calls the imports needs wasm.

pub mod events;
pub mod json;
pub mod keys;
pub mod money;

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

pub use bindings::Guest as Handler;
pub use bindings::export_handler;
pub use bindings::switchyard::handler::types::{Event, HandleError, Header};
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

impl From<publish::Error> for HandleError {
    fn from(err: publish::Error) -> Self {
        match err {
            publish::Error::Unavailable(why) => HandleError::Retryable(format!("publish: {why}")),
            other => HandleError::Fatal(format!("publish: {other:?}")),
        }
    }
}

/// Logs through the host at `level` with structured fields.
pub fn log(level: log::Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    log::log(level, message, &fields);
}
