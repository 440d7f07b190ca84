//! Typed outbound effects (wit `outbound`): a webhook or an e-mail recorded with the
//! invocation and carried out by the host after the commit, and the [`Outcome`] the host
//! publishes to the result topic afterwards.
//!
//! ```ignore
//! let id = outbound::post_json(&url, &payload, "notifications.delivered", &context)?;
//! // later, on "notifications.delivered":
//! let outcome: outbound::Outcome = serde_json::from_slice(&event.payload)?;
//! ```

use serde::{Deserialize, Serialize};

pub use crate::imports::outbound::{Delivery, Email, Error, HttpRequest, Request, deliver};
use crate::{HandleError, Header};

impl From<Error> for HandleError {
    fn from(err: Error) -> Self {
        match err {
            Error::Unavailable(why) => HandleError::Retryable(format!("outbound: {why}")),
            other => HandleError::Fatal(format!("outbound: {other:?}")),
        }
    }
}

/// The host's refusal as a reason to report: its WIT case (`not-allowed`, `invalid`, ...)
/// and its message.
pub fn reason(err: &Error) -> String {
    let (case, message) = match err {
        Error::NotAllowed(m) => ("not-allowed", m.clone()),
        Error::Invalid(m) => ("invalid", m.clone()),
        Error::TopicNotAllowed(t) => ("topic-not-allowed", t.clone()),
        Error::TooLarge(n) => ("too-large", format!("{n} bytes")),
        Error::Unavailable(m) => ("unavailable", m.clone()),
        Error::ReadOnly(m) => ("read-only", m.clone()),
    };
    format!("{case}: {message}")
}

/// What the host publishes to a delivery's result topic once it is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The id `deliver` returned (also the idempotency key).
    pub delivery_id: String,
    /// `http` or `email`.
    pub kind: String,
    pub success: bool,
    /// HTTP status or SMTP reply code of the last attempt, when there was one.
    pub status: Option<u16>,
    /// Why it failed: a refusal (HTTP 4xx, SMTP 5xx) or the last error after all attempts.
    pub reason: Option<String>,
    pub attempts: u32,
    /// The context given to `deliver`.
    pub context: String,
    pub finished_at: i64,
}

/// POSTs `body` as JSON to `url` (which must be under the component's `reach.http`);
/// the outcome goes to `result_topic` with `context`. Returns the delivery id.
pub fn post_json<T: Serialize>(url: &str, body: &T, result_topic: &str, context: &str) -> Result<String, Error> {
    let body = serde_json::to_vec(body).map_err(|e| Error::Invalid(format!("body is not JSON: {e}")))?;
    deliver(&Delivery {
        request: Request::Http(HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            body,
        }),
        result_topic: result_topic.into(),
        context: context.into(),
    })
}

/// Sends `email` through the relay it names (or the component's only one); the outcome
/// goes to `result_topic` with `context`. Returns the delivery id.
pub fn send_email(email: Email, result_topic: &str, context: &str) -> Result<String, Error> {
    deliver(&Delivery {
        request: Request::Email(email),
        result_topic: result_topic.into(),
        context: context.into(),
    })
}
