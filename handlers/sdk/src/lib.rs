//! Guest SDK for Switchyard handlers.
//!
//! - [`bindings`]: the WIT bindings of `wit/handler.wit` (world `handler`), generated once
//!   here so that every handler shares them. Implement [`Handler`] and export it with
//!   [`export_handler!`].
//! - [`query`]: arguments and answers of read-only queries (the `query` export).
//! - [`money`]: conversion between wire amounts (JSON numbers) and integer minor units.
//! - [`json`]: thin helpers to read and write JSON through the host imports.
//! - [`keys`]: escaping untrusted text for use in `/`-separated storage keys.
//! - [`late`]: waiting a few retries for an event that may arrive on another topic later.
//! - [`Router`]: routes an event by topic to a function taking its decoded payload.
//! - [`info!`] and its siblings: log lines with named fields.
//! - [`outbound`]: webhooks and e-mails carried out by the host after the commit, and
//!   the [`outbound::Outcome`] it publishes once they are over.
//! - [`storage`], [`publish`], [`timers`], [`config`], [`log`]: the host's imports; in a
//!   native build they reach the in-memory host of [`testing`], so `cargo test` covers a
//!   handler's glue as well as its logic.
//!
//! Business logic belongs in plain modules of each handler crate (decisions as enums),
//! tested natively; the glue is tested natively too, through [`testing::TestHost`].

mod imports;
pub mod json;
pub mod keys;
pub mod late;
pub mod money;
pub mod outbound;
pub mod query;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

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
pub use query::QueryRouter;

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
pub use imports::{config, log, publish, storage, timers};

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

/// Routes an event to the function declared for its topic, decoding the payload into
/// that function's type; the topics are declared once, here, and an event of another
/// topic is a fatal error that lists them.
///
/// ```ignore
/// Router::new("billing", &event)
///     .on(topics::BILLING_DEPOSITS, |deposit: DepositRequested, event| on_deposit(deposit, event))
///     .finish()
/// ```
pub struct Router<'e> {
    component: &'static str,
    event: &'e Event,
    topics: Vec<&'static str>,
    outcome: Option<Result<(), HandleError>>,
}

impl<'e> Router<'e> {
    pub fn new(component: &'static str, event: &'e Event) -> Router<'e> {
        Router {
            component,
            event,
            topics: Vec::new(),
            outcome: None,
        }
    }

    /// Events of `topic` go to `handler` with their payload decoded as `T` (a payload
    /// that is not a valid `T` is fatal, naming `T`).
    pub fn on<T: serde::de::DeserializeOwned>(
        mut self,
        topic: &'static str,
        handler: impl FnOnce(T, &Event) -> Result<(), HandleError>,
    ) -> Router<'e> {
        self.topics.push(topic);
        if self.outcome.is_none() && self.event.topic == topic {
            self.outcome = Some(json::payload::<T>(self.event).and_then(|payload| handler(payload, self.event)));
        }
        self
    }

    /// The routed handler's result, or a fatal error for a topic nobody routed.
    pub fn finish(self) -> Result<(), HandleError> {
        self.outcome.unwrap_or_else(|| {
            Err(HandleError::fatal(format!(
                "{} does not handle topic {:?}; it handles {}",
                self.component,
                self.event.topic,
                self.topics.join(", ")
            )))
        })
    }
}

/// Logs at a level with named fields: `info!("order created", orderId = id, status = s)`.
/// Field values are anything `Display`; the host adds component, event and trace.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $message:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::log($level, &$message, &[$((stringify!($key), $value.to_string().as_str())),*])
    };
}

/// Logs at `trace` with named fields (see [`log_at!`]).
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Trace, $($t)*) };
}

/// Logs at `debug` with named fields (see [`log_at!`]).
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($t)*) };
}

/// Logs at `info` with named fields (see [`log_at!`]).
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($t)*) };
}

/// Logs at `warn` with named fields (see [`log_at!`]).
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($t)*) };
}

/// Logs at `error` with named fields (see [`log_at!`]).
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($t)*) };
}

/// Logs through the host at `level` with structured fields.
pub fn log(level: log::Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    log::log(level, message, &fields);
}

#[cfg(test)]
mod tests {
    use super::testing::{TestHost, event};
    use super::*;

    #[derive(serde::Deserialize)]
    struct Ping {
        n: i64,
    }

    struct Echo;

    impl Handler for Echo {
        fn handle(event: Event) -> Result<(), HandleError> {
            Router::new("echo", &event)
                .on("pings", |ping: Ping, _| {
                    storage::increment("pings", ping.n)?;
                    info!("ping", n = ping.n, topic = "pings");
                    json::publish("pongs", "k", &serde_json::json!({"n": ping.n}))
                })
                .on("fails", |_: serde_json::Value, _| {
                    storage::put("half-done", b"1")?;
                    Err(HandleError::retryable("not yet"))
                })
                .finish()
        }
    }

    #[test]
    fn router_decodes_by_topic_and_names_the_known_topics() {
        let mut host = TestHost::new().allow_publishing(&["pongs"]);
        host.deliver::<Echo>(event("pings", &serde_json::json!({"n": 2})))
            .unwrap();
        assert_eq!(host.state.storage["pings"], b"2");
        assert_eq!(
            host.published_on::<serde_json::Value>("pongs"),
            [serde_json::json!({"n": 2})]
        );
        let line = &host.state.logs[0];
        assert_eq!(line.message, "ping");
        assert_eq!(
            line.fields,
            [("n".to_string(), "2".to_string()), ("topic".into(), "pings".into())]
        );

        let Err(HandleError::Fatal(why)) = host.deliver::<Echo>(event("other", &0)) else {
            panic!("expected fatal");
        };
        assert_eq!(why, "echo does not handle topic \"other\"; it handles pings, fails");
        let Err(HandleError::Fatal(why)) = host.deliver::<Echo>(event("pings", &serde_json::json!({"m": 1}))) else {
            panic!("expected fatal");
        };
        assert!(why.contains("Ping"), "{why}");
    }

    #[test]
    fn a_failed_handle_leaves_nothing_and_a_query_cannot_write() {
        let mut host = TestHost::new();
        assert!(host.deliver::<Echo>(event("fails", &0)).is_err());
        assert!(host.state.storage.is_empty(), "rolled back like the host does");
        // The default query answers unknown.
        assert!(matches!(
            host.ask::<Echo>("anything", b"{}"),
            Err(QueryError::Unknown(_))
        ));
    }

    #[test]
    fn the_test_host_keeps_the_hosts_rules() {
        let mut host = TestHost::new().allow_publishing(&["pongs"]);
        host.run(true, || {
            assert!(matches!(storage::put("k", b"v"), Err(storage::Error::ReadOnly(_))));
            assert!(matches!(
                json::publish("pongs", "k", &1),
                Err(HandleError::Fatal(why)) if why.contains("ReadOnly")
            ));
        });
        host.run(false, || {
            assert!(matches!(storage::put("", b"v"), Err(storage::Error::InvalidKey(_))));
            assert!(matches!(
                publish::send(&publish::Message {
                    topic: "elsewhere".into(),
                    key: None,
                    payload: vec![],
                    headers: vec![]
                }),
                Err(publish::Error::TopicNotAllowed(_))
            ));
            assert!(storage::compare_and_swap("c", None, Some(b"1")).unwrap());
            assert!(!storage::compare_and_swap("c", None, Some(b"2")).unwrap());
            storage::put("p/1", b"a").unwrap();
            storage::put("p/2", b"b").unwrap();
            storage::put("q", b"c").unwrap();
            let keys: Vec<String> = storage::list_prefix("p/", Some("p/1"), 10)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, ["p/2"]);
            let id = timers::schedule(
                5,
                &publish::Message {
                    topic: "pongs".into(),
                    key: None,
                    payload: vec![],
                    headers: vec![],
                },
            )
            .unwrap();
            assert!(timers::cancel(&id).unwrap());
            assert!(!timers::cancel(&id).unwrap());
        });
    }
}
