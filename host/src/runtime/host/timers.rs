use crate::runtime::bindings::publish::{Error, Message};
use crate::runtime::bindings::timers::Host;
use crate::runtime::state::{Guard, InvocationState, Origin, ScheduledTimer};
use crate::store::{Staged, now_ms};

use super::publish::outbound;
use super::view_of;

/// What wit `timers` works on: the staged timers, and those set and cancelled.
pub(crate) struct TimersView<'a> {
    origin: &'a Origin,
    staged: &'a mut Staged,
    set: &'a mut Vec<ScheduledTimer>,
    cancelled: &'a mut Vec<String>,
    guard: &'a mut Guard,
}

view_of!(Timers => TimersView);

impl TimersView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> TimersView<'_> {
        TimersView {
            origin: &s.origin,
            staged: &mut s.staged,
            set: &mut s.effects.timers,
            cancelled: &mut s.effects.cancelled_timers,
            guard: &mut s.guard,
        }
    }
}

/// Longest delay a timer may have: a year (longer delays are cut to it).
const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

impl Host for TimersView<'_> {
    #[tracing::instrument(level = "debug", name = "timers.schedule", skip_all, fields(otel.kind = "internal"))]
    async fn schedule(&mut self, delay_ms: u64, msg: Message) -> Result<String, Error> {
        crate::observe::metrics().host_call("timers");
        if let Some(why) = self.origin.refuse_write("timer schedule") {
            return Err(Error::ReadOnly(why));
        }
        // The timer id becomes the fired event's id, so redelivery stays deduplicated.
        let id = uuid::Uuid::now_v7().to_string();
        let message = outbound(self.origin, self.guard, msg, &id)?;
        let fire_at_ms = now_ms().saturating_add(delay_ms.min(MAX_DELAY_MS) as i64);
        self.set.push(ScheduledTimer {
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
        if let Some(why) = self.origin.refuse_write("timer cancel") {
            return Err(Error::ReadOnly(why));
        }
        match self.staged.cancel_timer(&id).await {
            Ok(cancelled) => {
                if cancelled {
                    self.cancelled.push(id);
                }
                Ok(cancelled)
            }
            Err(err) => Err(Error::Unavailable(self.guard.poison(self.origin, "timer cancel", &err))),
        }
    }
}
