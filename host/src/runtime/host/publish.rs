use crate::event::headers;
use crate::runtime::bindings::publish::{Error, Host, Message};
use crate::runtime::state::{InvocationState, Published};
use crate::store::OutboundMessage;

use super::MAX_VALUE_BYTES;

impl InvocationState {
    /// Checks a guest message against the component's rights and adds the host headers:
    /// a fresh event id, the request id, a child trace context, source and cause.
    pub(crate) fn outbound(&self, msg: Message, event_id: &str) -> Result<OutboundMessage, Error> {
        if !self.component.publishes.iter().any(|t| t.as_str() == msg.topic) {
            return Err(Error::TopicNotAllowed(msg.topic));
        }
        if msg.payload.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge(msg.payload.len() as u64));
        }
        if let Some(h) = msg.headers.iter().find(|h| {
            h.name.to_ascii_lowercase().starts_with(headers::RESERVED_PREFIX)
                || h.name.eq_ignore_ascii_case(headers::TRACEPARENT)
                || h.name.eq_ignore_ascii_case(headers::TRACESTATE)
        }) {
            return Err(Error::ReservedHeader(h.name.clone()));
        }
        let trace = self.trace.child();
        let mut all = vec![
            (headers::EVENT_ID.to_string(), event_id.to_string()),
            (headers::SOURCE.to_string(), self.component.name.to_string()),
            (headers::CAUSED_BY.to_string(), self.event_id.clone()),
            (headers::TRACEPARENT.to_string(), trace.traceparent()),
        ];
        if !trace.tracestate.is_empty() {
            all.push((headers::TRACESTATE.to_string(), trace.tracestate.clone()));
        }
        if let Some(request_id) = &self.request_id {
            all.push((headers::REQUEST_ID.to_string(), request_id.clone()));
        }
        all.extend(msg.headers.into_iter().map(|h| (h.name, h.value)));
        Ok(OutboundMessage {
            topic: msg.topic,
            key: msg.key,
            payload: msg.payload,
            headers: all,
        })
    }
}

impl Host for InvocationState {
    async fn send(&mut self, msg: Message) -> Result<(), Error> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let message = self.outbound(msg, &event_id)?;
        let component = self.component.name.to_string();
        if let Err(err) = self.tx.insert_outbox(&event_id, &component, &message).await {
            let why = err.to_string();
            tracing::warn!(component, error = %why, "outbox insert failed");
            self.poisoned.get_or_insert(why);
            return Err(Error::Unavailable("database error; the event will be retried".into()));
        }
        self.effects.published.push(Published {
            event_id,
            topic: message.topic,
            key: message.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
            headers: message.headers,
        });
        Ok(())
    }
}
