use crate::runtime::bindings::log::{Host, Level};
use crate::runtime::state::{InvocationState, Usage, caps};

use super::view_of;

/// What wit `log` needs: whose lines these are, and how many came before.
pub(crate) struct LogView<'a> {
    component: &'a str,
    used: &'a mut Usage,
}

view_of!(Log => LogView);

impl LogView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> LogView<'_> {
        LogView {
            component: s.origin.component.name.as_str(),
            used: &mut s.guard.used,
        }
    }
}

/// Longest message or field value kept from a guest log call.
const MAX_LOG_CHARS: usize = 4096;

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOG_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Host for LogView<'_> {
    #[tracing::instrument(level = "debug", name = "log.log", skip_all, fields(otel.kind = "internal"))]
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        crate::observe::metrics().host_call("log");
        self.used.log_calls += 1;
        if self.used.log_calls > caps::MAX_LOG_CALLS {
            return; // counted; reported once after the call
        }
        // Guest fields are folded into one rendered field: tracing needs field names at
        // compile time. The span around the invocation adds component, event and trace.
        let fields: Vec<String> = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{}={}", clip(k), clip(v)))
            .collect();
        let fields = fields.join(" ");
        let message = clip(&message);
        let component = self.component;
        match level {
            Level::Trace => tracing::trace!(target: "guest", component, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", component, fields, "{message}"),
            Level::Info => tracing::info!(target: "guest", component, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", component, fields, "{message}"),
            Level::Error => tracing::error!(target: "guest", component, fields, "{message}"),
        }
    }
}
