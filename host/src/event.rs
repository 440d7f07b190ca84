//! Events as the host sees them: a Kafka message plus what the host derives from it
//! (event id, `requestId`, trace context), and the Switchyard header names.

use serde::Deserialize;

/// Header names (their home is [`crate::protocol`]).
pub use crate::protocol::names as headers;

/// Where a message sits: which log (cluster) it came from, and its place in it.
#[derive(Debug, Clone, Copy)]
pub struct LogPosition<'a> {
    pub origin: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// One event to hand to a component.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub timestamp_ms: i64,
    pub request_id: Option<String>,
    pub trace: TraceContext,
}

/// W3C trace context of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
    pub tracestate: String,
    /// Made up by the host for what came without a context: its span starts the trace,
    /// and the root sampler decides it (its flags say nothing of a caller's choice).
    pub root: bool,
}

impl TraceContext {
    /// A new root trace.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            parent_id: new_span_id(),
            flags: "01".into(),
            tracestate: String::new(),
            root: true,
        }
    }

    /// The root trace of an event that came without a context: derived from its id, so
    /// every try of the event (and every host that runs it) is in the same trace.
    pub fn root_for(event_id: &str) -> TraceContext {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(format!("switchyard trace of {event_id}").as_bytes());
        TraceContext {
            trace_id: hex::encode(&hash[..16]),
            parent_id: hex::encode(&hash[16..24]),
            flags: "01".into(),
            tracestate: String::new(),
            root: true,
        }
    }

    /// Parses a `traceparent` header (version 00); None when it is malformed.
    pub fn parse(traceparent: &str, tracestate: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        match parts.as_slice() {
            [version, trace, parent, flags]
                if hex(version, 2)
                    && *version != "ff"
                    && hex(trace, 32)
                    && hex(parent, 16)
                    && hex(flags, 2)
                    && trace.bytes().any(|b| b != b'0')
                    && parent.bytes().any(|b| b != b'0') =>
            {
                Some(TraceContext {
                    trace_id: trace.to_ascii_lowercase(),
                    parent_id: parent.to_ascii_lowercase(),
                    flags: flags.to_ascii_lowercase(),
                    tracestate: bounded_tracestate(tracestate),
                    root: false,
                })
            }
            _ => None,
        }
    }

    /// The context named by `headers` (`traceparent`, `tracestate`), if valid. Names
    /// match whatever their case, as HTTP carries them.
    pub fn from_headers(headers: &[(String, String)]) -> Option<TraceContext> {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        TraceContext::parse(find(headers::TRACEPARENT)?, find(headers::TRACESTATE).unwrap_or(""))
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }

    /// The context of a span that is a child of this one (same trace, new span id).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            parent_id: new_span_id(),
            ..self.clone()
        }
    }
}

/// Longest `tracestate` passed on: the W3C limit a vendor must carry (512 characters).
/// Every message a handler publishes carries it, outside the caps on what the guest
/// writes, so a megabyte from any producer must not get that far.
pub const MAX_TRACESTATE: usize = 512;

/// `tracestate` as passed on: empty when it is longer than [`MAX_TRACESTATE`] or holds
/// anything but printable ASCII and tabs (the W3C grammar's alphabet); the trace itself
/// is kept.
fn bounded_tracestate(tracestate: &str) -> String {
    let tracestate = tracestate.trim();
    if tracestate.len() <= MAX_TRACESTATE && tracestate.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b)) {
        tracestate.to_string()
    } else {
        String::new()
    }
}

/// The first 16 hex digits of the SHA-256 of a message's key and payload.
fn content_digest(key: Option<&[u8]>, payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    match key {
        Some(key) => {
            hash.update([1]);
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(key);
        }
        None => hash.update([0]),
    }
    hash.update(payload);
    hex::encode(&hash.finalize()[..8])
}

fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

impl InboundEvent {
    /// Builds the event from a Kafka message's parts, deriving its id, `requestId`
    /// (header, else the JSON payload's field) and trace context (header, else a new
    /// root).
    ///
    /// The id is the `switchyard-event-id` header when there is one (callers pass
    /// headers already screened by [`crate::protocol::Signer::screen`], so only the
    /// host's own ids get here), else the message's place in its log: origin (the
    /// cluster id, or a fresh id per embedded broker), topic, partition, offset and
    /// timestamp. The origin and timestamp keep a restarted embedded broker or a
    /// recreated topic, whose offsets start again at 0, from colliding with old events.
    ///
    /// A message without a timestamp (an old producer's) gets the time it is read as its
    /// timestamp, but its id says `@none-` and a digest of its key and payload: an id from
    /// the reading time would differ on every delivery (a redelivered event would run
    /// again), and the digest keeps a recreated topic's message at an old offset apart
    /// from the old one.
    pub fn from_message(
        at: &LogPosition<'_>,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timestamp_ms: Option<i64>,
    ) -> InboundEvent {
        let LogPosition {
            origin,
            topic,
            partition,
            offset,
        } = *at;
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let id = match header(headers::EVENT_ID) {
            Some(id) => crate::protocol::bounded_event_id(&id),
            None => crate::protocol::bounded_event_id(&match timestamp_ms {
                Some(at) => format!("{origin}/{topic}/{partition}/{offset}@{at}"),
                None => format!(
                    "{origin}/{topic}/{partition}/{offset}@none-{}",
                    content_digest(key.as_deref(), &payload)
                ),
            }),
        };
        let timestamp_ms = timestamp_ms.unwrap_or_else(crate::store::now_ms);
        // Bounded like event ids: the inbox indexes it and every message the handler
        // publishes carries it, so a NUL or a few KB from any producer must not reach them.
        let request_id = header(headers::REQUEST_ID)
            .or_else(|| request_id_of(&payload))
            .filter(|id| !id.is_empty())
            .map(|id| crate::protocol::bounded_event_id(&id));
        let trace = TraceContext::from_headers(&headers).unwrap_or_else(|| TraceContext::root_for(&id));
        InboundEvent {
            id,
            topic: topic.to_string(),
            partition,
            offset,
            key,
            payload,
            headers,
            timestamp_ms,
            request_id,
            trace,
        }
    }
}

/// The `requestId` field of a JSON object payload, if there is one.
fn request_id_of(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithRequestId {
        #[serde(rename = "requestId")]
        request_id: Option<String>,
    }
    serde_json::from_slice::<WithRequestId>(payload)
        .ok()
        .and_then(|p| p.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_traceparents() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(tp, "").unwrap();
        assert_eq!(ctx.traceparent(), tp);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.parent_id, ctx.parent_id);
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, "").is_none(), "{bad}");
        }
        assert!(TraceContext::parse(&TraceContext::new_root().traceparent(), "").is_some());
    }

    #[test]
    fn the_parent_comes_from_the_headers() {
        let trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "").unwrap();
        let headers = vec![
            ("TraceParent".to_string(), trace.traceparent()),
            (headers::TRACESTATE.to_string(), "k=v".to_string()),
        ];
        let extracted = TraceContext::from_headers(&headers).unwrap();
        assert_eq!(
            (extracted.trace_id.as_str(), extracted.parent_id.as_str()),
            (trace.trace_id.as_str(), trace.parent_id.as_str())
        );
        assert_eq!(extracted.tracestate, "k=v");
        assert!(TraceContext::from_headers(&[]).is_none());
        assert!(TraceContext::from_headers(&[(headers::TRACEPARENT.to_string(), "00-zz-yy-01".to_string())]).is_none());
    }

    #[test]
    fn derives_id_request_id_and_trace() {
        let at = LogPosition {
            origin: "c1",
            topic: "t",
            partition: 2,
            offset: 9,
        };
        let e = InboundEvent::from_message(&at, None, br#"{"requestId":"r-1"}"#.to_vec(), vec![], Some(5));
        assert_eq!(e.id, "c1/t/2/9@5");
        let later = InboundEvent::from_message(&LogPosition { origin: "c2", ..at }, None, vec![], vec![], Some(5));
        assert_ne!(later.id, e.id, "another broker's offset 9 is another event");
        // No timestamp: the same id on every delivery, whenever it is read; another
        // message at that place (a recreated topic) gets another.
        let untimed = InboundEvent::from_message(&at, None, b"a".to_vec(), vec![], None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = InboundEvent::from_message(&at, None, b"a".to_vec(), vec![], None);
        assert!(untimed.id.starts_with("c1/t/2/9@none-"), "{}", untimed.id);
        assert_eq!(untimed.id, again.id);
        let other = InboundEvent::from_message(&at, Some(b"a".to_vec()), vec![], vec![], None);
        assert_ne!(other.id, untimed.id);
        assert!(untimed.timestamp_ms > 0, "the reading time stands in for the timestamp");
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
        let headers = vec![
            (headers::EVENT_ID.to_string(), "ev".to_string()),
            (headers::REQUEST_ID.to_string(), "r-2".to_string()),
            (
                headers::TRACEPARENT.to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            ),
        ];
        let e = InboundEvent::from_message(&at, None, b"not json".to_vec(), headers, Some(0));
        assert_eq!(e.id, "ev");
        assert_eq!(e.request_id.as_deref(), Some("r-2"));
        assert_eq!(e.trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

        // Trace headers in another case, as an HTTP client may set them.
        let headers = vec![
            (
                "TraceParent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            ),
            ("TRACESTATE".to_string(), "k=v".to_string()),
        ];
        let e = InboundEvent::from_message(&at, None, vec![], headers, Some(0));
        assert_eq!(
            (
                e.trace.trace_id.as_str(),
                e.trace.parent_id.as_str(),
                e.trace.tracestate.as_str()
            ),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "k=v")
        );
    }

    #[test]
    fn an_oversized_or_binary_tracestate_is_dropped_and_the_trace_kept() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let at_limit = format!("k={}", "v".repeat(MAX_TRACESTATE - 2));
        let kept = TraceContext::parse(parent, &at_limit).unwrap();
        assert_eq!(kept.tracestate, at_limit);
        for bad in [
            format!("k={}", "v".repeat(1 << 20)),
            "k=v\u{0}".to_string(),
            "k=\u{e9}".to_string(),
        ] {
            let trace = TraceContext::parse(parent, &bad).unwrap();
            assert_eq!(trace.tracestate, "", "{:?}", &bad[..bad.len().min(20)]);
            assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
}
