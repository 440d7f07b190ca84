//! The `switchyard-*` header protocol, in one place and typed both ways: which headers
//! the host sets, the dead-letter record, the limits every produced message keeps, and
//! the signature that tells the host's own headers from forged ones.
//!
//! Kafka lets any producer set any header. The headers that steer the host (the event
//! id the inbox dedupes on, `switchyard-replay-for`, the dead-letter record that replay
//! trusts) are therefore signed: the relay adds an HMAC-SHA256 over the topic, key,
//! payload digest and every `switchyard-*` header, keyed by a secret all hosts of one
//! database share ([`crate::store::Db::host_secret`]). A consumer honours those headers
//! only when the signature matches; otherwise it drops them and says so in a warning.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Header names.
pub mod names {
    /// Unique id of the event; consumers' inboxes are keyed by it.
    pub const EVENT_ID: &str = "switchyard-event-id";
    /// Correlation id of the business request.
    pub const REQUEST_ID: &str = "switchyard-request-id";
    /// Component that produced the message.
    pub const SOURCE: &str = "switchyard-source";
    /// Version of that component (see `switchyard versions`): which code made the message.
    pub const SOURCE_VERSION: &str = "switchyard-source-version";
    /// Event id of the event whose handling produced this one.
    pub const CAUSED_BY: &str = "switchyard-caused-by";
    /// Set on a replayed event: only this component's route handles it.
    pub const REPLAY_FOR: &str = "switchyard-replay-for";
    /// Set by the host on the event handed to a component: which try this is (1-based).
    pub const ATTEMPT: &str = "switchyard-attempt";
    /// HMAC of the message and its `switchyard-*` headers (see the module docs).
    pub const SIGNATURE: &str = "switchyard-signature";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Prefix reserved for the host; components may not set such headers.
    pub const RESERVED_PREFIX: &str = "switchyard-";

    /// Dead-letter headers.
    pub const DLQ_PREFIX: &str = "switchyard-dlq-";
    pub const DLQ_REASON: &str = "switchyard-dlq-reason";
    pub const DLQ_KIND: &str = "switchyard-dlq-kind";
    pub const DLQ_COMPONENT: &str = "switchyard-dlq-component";
    pub const DLQ_TOPIC: &str = "switchyard-dlq-topic";
    pub const DLQ_PARTITION: &str = "switchyard-dlq-partition";
    pub const DLQ_OFFSET: &str = "switchyard-dlq-offset";
    pub const DLQ_ATTEMPTS: &str = "switchyard-dlq-attempts";
    pub const DLQ_FAILED_AT: &str = "switchyard-dlq-failed-at";
}

/// Limits of every message the host produces, checked when a component publishes so
/// that the broker never refuses a committed outbox row. Kafka's default
/// `max.message.bytes` is 1 MiB + 12 bytes including batch framing.
pub mod limits {
    /// Key, payload and headers of one message together.
    pub const MAX_MESSAGE_BYTES: usize = 1_000_000;
    /// A message key.
    pub const MAX_KEY_BYTES: usize = 4096;
    /// Headers per message, the host's own included.
    pub const MAX_HEADERS: usize = 64;
    /// Names and values of all headers together.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// A dead letter's reason (the guest's `fatal` text or a trap message) is cut here.
    pub const MAX_REASON_BYTES: usize = 2048;
    /// Longest event id kept verbatim; longer ones are replaced by their digest.
    pub const MAX_EVENT_ID_BYTES: usize = 200;
}

/// A header list as the host carries it.
pub type Headers = Vec<(String, String)>;

/// The value of the first header called `name`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn is_reserved(name: &str) -> bool {
    name.len() >= names::RESERVED_PREFIX.len()
        && name[..names::RESERVED_PREFIX.len()].eq_ignore_ascii_case(names::RESERVED_PREFIX)
}

/// Size of a message as the broker counts it (near enough: framing is a few bytes).
pub fn message_bytes(key: Option<&[u8]>, payload: &[u8], headers: &[(String, String)]) -> usize {
    key.map_or(0, <[u8]>::len) + payload.len() + header_bytes(headers)
}

pub fn header_bytes(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// An event id that every database index and Kafka header takes: ids that are too long
/// or hold control characters (a NUL fails PostgreSQL's text type) become `sha256:<hex>`
/// of themselves, so the same input still maps to the same id.
pub fn bounded_event_id(id: &str) -> String {
    if id.len() <= limits::MAX_EVENT_ID_BYTES && !id.is_empty() && !id.chars().any(char::is_control) {
        id.to_string()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes())))
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, saying that it did.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let suffix = format!(" [cut at {} B]", text.len());
    let mut end = max.saturating_sub(suffix.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &text[..end])
}

/// The key that signs and checks the host's headers.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &[(String, String)]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Lengths before every field, so no two different messages concatenate alike.
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(topic.as_bytes());
        match key {
            Some(k) => field(k),
            None => field(b"\xffnone"),
        }
        field(&Sha256::digest(payload));
        for (name, value) in headers.iter().filter(|(n, _)| is_reserved(n) && n != names::SIGNATURE) {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        mac
    }

    /// The signature header value for a message about to be produced.
    pub fn sign(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &[(String, String)]) -> String {
        hex::encode(self.mac(topic, key, payload, headers).finalize().into_bytes())
    }

    /// Replaces any signature in `headers` by a fresh one.
    pub fn seal(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &mut Headers) {
        headers.retain(|(n, _)| n != names::SIGNATURE);
        let signature = self.sign(topic, key, payload, headers);
        headers.push((names::SIGNATURE.to_string(), signature));
    }

    /// True when `headers` carry a valid signature of this message.
    pub fn verify(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &[(String, String)]) -> bool {
        let Some(given) = header(headers, names::SIGNATURE).and_then(|s| hex::decode(s).ok()) else {
            return false;
        };
        self.mac(topic, key, payload, headers).verify_slice(&given).is_ok()
    }

    /// Checks an inbound message: with a valid signature its headers stay as they are;
    /// without one every `switchyard-*` header except the request id (plain
    /// correlation, which any client may set) is removed, and their names returned.
    pub fn screen(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: &mut Headers) -> Vec<String> {
        if !headers.iter().any(|(n, _)| is_reserved(n)) || self.verify(topic, key, payload, headers) {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        headers.retain(|(n, _)| {
            let keep = !is_reserved(n) || n == names::REQUEST_ID;
            if !keep {
                dropped.push(n.clone());
            }
            keep
        });
        dropped
    }
}

/// A malformed dead letter.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a Switchyard dead letter: header {0} is missing")]
    Missing(&'static str),
    #[error("dead letter header {name} is {value:?}, not a number")]
    NotANumber { name: &'static str, value: String },
}

/// What a dead letter records about the failure, besides the original payload and headers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRecord {
    pub reason: String,
    /// retryable | fatal | trap | deadline | memory | instantiate | malformed
    pub kind: String,
    pub component: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempts: u32,
    pub failed_at_ms: i64,
}

impl DeadLetterRecord {
    pub fn to_headers(&self) -> Headers {
        vec![
            (names::DLQ_REASON.into(), clip(&self.reason, limits::MAX_REASON_BYTES)),
            (names::DLQ_KIND.into(), self.kind.clone()),
            (names::DLQ_COMPONENT.into(), self.component.clone()),
            (names::DLQ_TOPIC.into(), self.topic.clone()),
            (names::DLQ_PARTITION.into(), self.partition.to_string()),
            (names::DLQ_OFFSET.into(), self.offset.to_string()),
            (names::DLQ_ATTEMPTS.into(), self.attempts.to_string()),
            (names::DLQ_FAILED_AT.into(), self.failed_at_ms.to_string()),
        ]
    }

    pub fn from_headers(headers: &[(String, String)]) -> Result<DeadLetterRecord, ProtocolError> {
        let text = |name: &'static str| header(headers, name).ok_or(ProtocolError::Missing(name));
        fn number<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ProtocolError> {
            value.parse().map_err(|_| ProtocolError::NotANumber {
                name,
                value: value.to_string(),
            })
        }
        Ok(DeadLetterRecord {
            reason: text(names::DLQ_REASON)?.to_string(),
            kind: text(names::DLQ_KIND)?.to_string(),
            component: text(names::DLQ_COMPONENT)?.to_string(),
            topic: text(names::DLQ_TOPIC)?.to_string(),
            partition: number(names::DLQ_PARTITION, text(names::DLQ_PARTITION)?)?,
            offset: number(names::DLQ_OFFSET, text(names::DLQ_OFFSET)?)?,
            attempts: number(names::DLQ_ATTEMPTS, text(names::DLQ_ATTEMPTS)?)?,
            failed_at_ms: number(names::DLQ_FAILED_AT, text(names::DLQ_FAILED_AT)?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn signed_headers_verify_and_any_change_breaks_them() {
        let signer = Signer::new(b"secret");
        let mut headers = h(&[(names::EVENT_ID, "e1"), ("x-app", "1")]);
        signer.seal("t", Some(b"k"), b"payload", &mut headers);
        assert!(signer.verify("t", Some(b"k"), b"payload", &headers));
        assert!(!signer.verify("t", Some(b"k"), b"other payload", &headers));
        assert!(!signer.verify("u", Some(b"k"), b"payload", &headers));
        assert!(!signer.verify("t", None, b"payload", &headers));
        assert!(!Signer::new(b"other").verify("t", Some(b"k"), b"payload", &headers));
        let mut forged = headers.clone();
        forged[0].1 = "e2".into();
        assert!(!signer.verify("t", Some(b"k"), b"payload", &forged));
        // Application headers are not covered: a proxy may add its own.
        let mut extended = headers.clone();
        extended.push(("x-proxy".into(), "1".into()));
        assert!(signer.verify("t", Some(b"k"), b"payload", &extended));
    }

    #[test]
    fn unsigned_reserved_headers_are_screened_out_but_the_request_id_stays() {
        let signer = Signer::new(b"secret");
        let mut headers = h(&[
            (names::EVENT_ID, "old"),
            (names::REPLAY_FOR, "billing"),
            ("Switchyard-Source", "x"),
            (names::REQUEST_ID, "r1"),
            ("x-app", "1"),
        ]);
        let dropped = signer.screen("t", None, b"p", &mut headers);
        assert_eq!(dropped, vec![names::EVENT_ID, names::REPLAY_FOR, "Switchyard-Source"]);
        assert_eq!(headers, h(&[(names::REQUEST_ID, "r1"), ("x-app", "1")]));
    }

    #[test]
    fn event_ids_stay_within_index_limits() {
        assert_eq!(bounded_event_id("abc"), "abc");
        let long = "x".repeat(5000);
        let bounded = bounded_event_id(&long);
        assert!(bounded.starts_with("sha256:") && bounded.len() < limits::MAX_EVENT_ID_BYTES);
        assert_eq!(bounded, bounded_event_id(&long));
        assert!(bounded_event_id("a\0b").starts_with("sha256:"));
        assert!(bounded_event_id("").starts_with("sha256:"));
    }

    #[test]
    fn dead_letter_record_round_trips_and_clips_its_reason() {
        let record = DeadLetterRecord {
            reason: "r".repeat(10_000),
            kind: "fatal".into(),
            component: "order".into(),
            topic: "orders.requests".into(),
            partition: 2,
            offset: 41,
            attempts: 3,
            failed_at_ms: 7,
        };
        let headers = record.to_headers();
        assert!(header_bytes(&headers) < limits::MAX_REASON_BYTES + 512);
        let back = DeadLetterRecord::from_headers(&headers).unwrap();
        assert_eq!(back.partition, 2);
        assert!(back.reason.ends_with("[cut at 10000 B]"));
        assert!(back.reason.len() <= limits::MAX_REASON_BYTES);
        assert!(matches!(
            DeadLetterRecord::from_headers(&headers[1..]),
            Err(ProtocolError::Missing(names::DLQ_REASON))
        ));
    }
}
