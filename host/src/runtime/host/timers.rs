use crate::runtime::bindings::publish::{Error, Message};
use crate::runtime::bindings::timers::Host;
use crate::runtime::state::{InvocationState, ScheduledTimer};
use crate::store::now_ms;

/// Longest delay a timer may have: a year (longer delays are cut to it).
const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

impl Host for InvocationState {
    #[tracing::instrument(level = "debug", name = "timers.schedule", skip_all, fields(otel.kind = "internal"))]
    async fn schedule(&mut self, delay_ms: u64, msg: Message) -> Result<String, Error> {
        crate::observe::metrics().host_call("timers");
        if let Some(why) = self.refuse_write("timer schedule") {
            return Err(Error::ReadOnly(why));
        }
        // The timer id becomes the fired event's id, so redelivery stays deduplicated.
        let id = uuid::Uuid::now_v7().to_string();
        let message = self.outbound(msg, &id)?;
        let fire_at_ms = now_ms().saturating_add(delay_ms.min(MAX_DELAY_MS) as i64);
        self.effects.timers.push(ScheduledTimer {
            id: id.clone(),
            fire_at_ms,
            topic: message.topic.clone(),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
        });
        self.staged.insert_timer(&id, fire_at_ms, message);
        Ok(id)
    }

    #[tracing::instrument(level = "debug", name = "timers.cancel", skip_all, fields(otel.kind = "internal"))]
    async fn cancel(&mut self, id: String) -> Result<bool, Error> {
        crate::observe::metrics().host_call("timers");
        if let Some(why) = self.refuse_write("timer cancel") {
            return Err(Error::ReadOnly(why));
        }
        match self.staged.cancel_timer(&id).await {
            Ok(cancelled) => {
                if cancelled {
                    self.effects.cancelled_timers.push(id);
                }
                Ok(cancelled)
            }
            Err(err) => Err(Error::Unavailable(self.poison("timer cancel", &err))),
        }
    }
}
