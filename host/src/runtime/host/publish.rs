use crate::config::ComponentSpec;
use crate::event::{TraceContext, headers};
use crate::protocol::{self, limits};
use crate::runtime::bindings::publish::{Error, Host, Message};
use crate::runtime::state::{Guard, InvocationState, Origin, Published};
use crate::store::{OutboundMessage, Staged};

use super::{MAX_VALUE_BYTES, view_of};

/// What wit `publish` works on: the staged outbox, and the messages it reports.
pub(crate) struct PublishView<'a> {
    origin: &'a Origin,
    staged: &'a mut Staged,
    published: &'a mut Vec<Published>,
    guard: &'a mut Guard,
}

view_of!(Publish => PublishView);

impl PublishView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> PublishView<'_> {
        PublishView {
            origin: &s.origin,
            staged: &mut s.staged,
            published: &mut s.effects.published,
            guard: &mut s.guard,
        }
    }
}

/// Checks a guest message against the component's rights and the host's limits.
pub(crate) fn check_message(spec: &ComponentSpec, msg: &Message) -> Result<(), Error> {
    if !spec.publishes.iter().any(|t| t.as_str() == msg.topic) {
        return Err(Error::TopicNotAllowed(msg.topic.clone()));
    }
    if msg.payload.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge(msg.payload.len() as u64));
    }
    // Everything the broker counts, so a committed row is never refused by it.
    let key_len = msg.key.as_ref().map_or(0, Vec::len);
    let header_bytes: usize = msg.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if key_len > limits::MAX_KEY_BYTES {
        return Err(Error::TooLarge(key_len as u64));
    }
    // Room for the host's own headers (ids, trace, source) and a dead letter's record.
    if msg.headers.len() > limits::MAX_HEADERS - 16 || header_bytes > limits::MAX_HEADER_BYTES {
        return Err(Error::TooLarge(header_bytes as u64));
    }
    let total = key_len + msg.payload.len() + header_bytes;
    if total > limits::MAX_MESSAGE_BYTES - limits::MAX_REASON_BYTES - 2048 {
        return Err(Error::TooLarge(total as u64));
    }
    if let Some(h) = msg.headers.iter().find(|h| {
        h.name.to_ascii_lowercase().starts_with(headers::RESERVED_PREFIX)
            || h.name.eq_ignore_ascii_case(headers::TRACEPARENT)
            || h.name.eq_ignore_ascii_case(headers::TRACESTATE)
    }) {
        return Err(Error::ReservedHeader(h.name.clone()));
    }
    Ok(())
}

/// The headers the host puts on a message with id `event_id` that `component` publishes
/// while handling event `cause_id`: its id, source, cause, request id and a child span
/// of the cause's trace.
pub(crate) fn host_headers(
    component: &str,
    version: &str,
    event_id: &str,
    cause_id: &str,
    request_id: Option<&str>,
    trace: &TraceContext,
) -> Vec<(String, String)> {
    let child = crate::observe::tracing::outgoing(trace);
    let mut all = vec![
        (headers::EVENT_ID.to_string(), event_id.to_string()),
        (headers::SOURCE.to_string(), component.to_string()),
        (headers::SOURCE_VERSION.to_string(), version.to_string()),
        (headers::CAUSED_BY.to_string(), cause_id.to_string()),
        (headers::TRACEPARENT.to_string(), child.traceparent()),
    ];
    if !child.tracestate.is_empty() {
        all.push((headers::TRACESTATE.to_string(), child.tracestate));
    }
    if let Some(request_id) = request_id {
        all.push((headers::REQUEST_ID.to_string(), request_id.to_string()));
    }
    all
}

/// A guest message, checked and with the host headers added, ready for the outbox:
/// checks `msg`, counts it against the invocation's caps, and adds the host's headers
/// for a message with id `event_id`.
pub(crate) fn outbound(
    origin: &Origin,
    guard: &mut Guard,
    msg: Message,
    event_id: &str,
) -> Result<OutboundMessage, Error> {
    check_message(&origin.component, &msg)?;
    let bytes = msg.key.as_ref().map_or(0, Vec::len) + msg.payload.len();
    guard.count_message(bytes).map_err(Error::Unavailable)?;
    let mut all = host_headers(
        origin.component.name.as_str(),
        &origin.version,
        event_id,
        &origin.event_id,
        origin.request_id.as_deref(),
        &origin.trace,
    );
    all.extend(msg.headers.into_iter().map(|h| (h.name, h.value)));
    debug_assert!(protocol::message_bytes(msg.key.as_deref(), &msg.payload, &all) <= limits::MAX_MESSAGE_BYTES);
    Ok(OutboundMessage {
        topic: msg.topic,
        key: msg.key,
        payload: msg.payload,
        headers: all,
    })
}

impl Host for PublishView<'_> {
    #[tracing::instrument(level = "debug", name = "publish.send", skip_all, fields(otel.kind = "internal"))]
    async fn send(&mut self, msg: Message) -> Result<(), Error> {
        crate::observe::metrics().host_call("publish");
        if let Some(why) = self.origin.refuse_write("publish") {
            return Err(Error::ReadOnly(why));
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let message = outbound(self.origin, self.guard, msg, &event_id)?;
        self.published.push(Published {
            event_id: event_id.clone(),
            topic: message.topic.clone(),
            key: message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
            headers: message.headers.clone(),
        });
        self.staged.insert_outbox(&event_id, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::{ComponentName, Limits, Location, TopicName};
    use crate::runtime::bindings::types::Header;

    fn spec() -> ComponentSpec {
        ComponentSpec {
            name: ComponentName::try_from("order".to_string()).unwrap(),
            artifact: "order.wasm".into(),
            artifact_at: Location {
                path: "t.toml".into(),
                line: 1,
                column: 1,
            },
            publishes: BTreeSet::from([TopicName::try_from("orders.created".to_string()).unwrap()]),
            reach: Default::default(),
            config: BTreeMap::new(),
            limits: Limits::default(),
        }
    }

    fn message(topic: &str, payload_len: usize, header: Option<&str>) -> Message {
        Message {
            topic: topic.into(),
            key: None,
            payload: vec![0; payload_len],
            headers: header
                .map(|h| Header {
                    name: h.into(),
                    value: "v".into(),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn only_declared_topics_small_payloads_and_own_headers_pass() {
        assert!(check_message(&spec(), &message("orders.created", 10, Some("x-mine"))).is_ok());
        assert!(matches!(
            check_message(&spec(), &message("billing.payments", 10, None)),
            Err(Error::TopicNotAllowed(t)) if t == "billing.payments"
        ));
        assert!(matches!(
            check_message(&spec(), &message("orders.created", MAX_VALUE_BYTES + 1, None)),
            Err(Error::TooLarge(_))
        ));
        let mut big_key = message("orders.created", 1, None);
        big_key.key = Some(vec![b'k'; limits::MAX_KEY_BYTES + 1]);
        assert!(matches!(check_message(&spec(), &big_key), Err(Error::TooLarge(_))));
        let mut many_headers = message("orders.created", 1, None);
        many_headers.headers = (0..limits::MAX_HEADERS)
            .map(|i| Header {
                name: format!("x-{i}"),
                value: "v".into(),
            })
            .collect();
        assert!(matches!(check_message(&spec(), &many_headers), Err(Error::TooLarge(_))));
        let mut huge_header = message("orders.created", 1, None);
        huge_header.headers = vec![Header {
            name: "x-big".into(),
            value: "v".repeat(limits::MAX_HEADER_BYTES + 1),
        }];
        assert!(matches!(check_message(&spec(), &huge_header), Err(Error::TooLarge(_))));
        // A payload under its own cap whose message is over the broker's limit.
        let near = message("orders.created", limits::MAX_MESSAGE_BYTES - 100, Some("x-mine"));
        assert!(matches!(check_message(&spec(), &near), Err(Error::TooLarge(_))));
        for reserved in ["switchyard-event-id", "Switchyard-Source", "traceparent"] {
            assert!(matches!(
                check_message(&spec(), &message("orders.created", 1, Some(reserved))),
                Err(Error::ReservedHeader(_))
            ));
        }
    }

    #[test]
    fn host_headers_link_the_message_to_its_cause() {
        let trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v").unwrap();
        let h: BTreeMap<String, String> = host_headers("order", "v1", "e2", "e1", Some("r1"), &trace)
            .into_iter()
            .collect();
        assert_eq!(h[headers::EVENT_ID], "e2");
        assert_eq!(h[headers::SOURCE], "order");
        assert_eq!(h[headers::CAUSED_BY], "e1");
        assert_eq!(h[headers::REQUEST_ID], "r1");
        assert_eq!(h[headers::TRACESTATE], "k=v");
        let child = TraceContext::parse(&h[headers::TRACEPARENT], "").unwrap();
        assert_eq!(child.trace_id, trace.trace_id);
        assert_ne!(child.parent_id, trace.parent_id);
        assert!(
            !host_headers("order", "v1", "e2", "e1", None, &trace)
                .iter()
                .any(|(n, _)| n == headers::REQUEST_ID)
        );
    }
}
