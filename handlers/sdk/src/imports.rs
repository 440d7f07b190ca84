//! The host's imports as handlers call them. In a component (wasm32) each function is the
//! WIT import itself; in a native build (`cargo test`) it goes to the in-memory host of
//! [`crate::testing`], so the glue between logic and host calls is unit-tested too.
//! The signatures are those of the generated bindings.

/// In a component: the WIT import (`$wasm`).
#[cfg(target_arch = "wasm32")]
macro_rules! dispatch {
    ($wasm:expr, |$h:ident| $native:expr) => {
        $wasm
    };
}

/// In a native build: the test host (`$native`, given the host state).
#[cfg(not(target_arch = "wasm32"))]
macro_rules! dispatch {
    ($wasm:expr, |$h:ident| $native:expr) => {
        crate::testing::with_host(|$h| $native)
    };
}

/// The component's private key-value store (WIT interface `storage`).
pub mod storage {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::storage as raw;
    pub use crate::bindings::switchyard::handler::storage::Error;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        dispatch!(raw::get(key), |h| h.get(key))
    }

    pub fn put(key: &str, value: &[u8]) -> Result<(), Error> {
        dispatch!(raw::put(key, value), |h| h.put(key, value))
    }

    pub fn delete(key: &str) -> Result<bool, Error> {
        dispatch!(raw::delete(key), |h| h.delete(key))
    }

    pub fn list_prefix(prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Vec<u8>)>, Error> {
        dispatch!(raw::list_prefix(prefix, start_after, limit), |h| h.list_prefix(
            prefix,
            start_after,
            limit
        ))
    }

    pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
        dispatch!(raw::increment(key, delta), |h| h.increment(key, delta))
    }

    pub fn compare_and_swap(key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, Error> {
        dispatch!(raw::compare_and_swap(key, expected, new), |h| h
            .compare_and_swap(key, expected, new))
    }
}

/// Publishing events (WIT interface `publish`).
pub mod publish {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::publish as raw;
    pub use crate::bindings::switchyard::handler::publish::{Error, Message};

    pub fn send(msg: &Message) -> Result<(), Error> {
        dispatch!(raw::send(msg), |h| h.send(msg))
    }
}

/// Delayed delivery (WIT interface `timers`).
pub mod timers {
    pub use crate::bindings::switchyard::handler::publish::{Error, Message};
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::timers as raw;

    pub fn schedule(delay_ms: u64, msg: &Message) -> Result<String, Error> {
        dispatch!(raw::schedule(delay_ms, msg), |h| h.schedule(delay_ms, msg))
    }

    pub fn cancel(id: &str) -> Result<bool, Error> {
        dispatch!(raw::cancel(id), |h| h.cancel(id))
    }
}

/// The component's settings from topics.toml (WIT interface `config`).
pub mod config {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::config as raw;

    pub fn get(key: &str) -> Option<String> {
        dispatch!(raw::get(key), |h| h.config.get(key).cloned())
    }

    pub fn get_all() -> Vec<(String, String)> {
        dispatch!(raw::get_all(), |h| h
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Structured logging into the host's log (WIT interface `log`).
pub mod log {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::log as raw;
    pub use crate::bindings::switchyard::handler::log::Level;

    pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
        dispatch!(raw::log(level, message, fields), |h| h.log(level, message, fields))
    }
}

/// Effects outside Kafka: HTTP requests and e-mails (WIT interface `outbound`).
pub mod outbound {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::handler::outbound as raw;
    pub use crate::bindings::switchyard::handler::outbound::{Delivery, Email, Error, HttpRequest, Request};

    pub fn deliver(delivery: &Delivery) -> Result<String, Error> {
        dispatch!(raw::deliver(delivery), |h| h.deliver(delivery))
    }
}
