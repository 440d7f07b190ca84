//! Logs and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry traces over
//! OTLP/HTTP (protobuf).
//!
//! Only spans that declare an `otel.kind` field are exported: the gateway's request
//! (server), `process <topic>` per invocation (consumer), host calls (internal) and
//! `send <topic>` when the relay produces (producer). Other spans (the long-lived route
//! span, log-only spans) stay in the logs, so a trace holds one order's hops and nothing
//! of the host's lifetime.
//!
//! The W3C `traceparent` header and the exported spans agree: a `process` span's parent
//! is the event's `traceparent`, a message published while handling it names that
//! invocation's host-call span as its parent, and the relay's `send` span rewrites the
//! header to itself before producing, so the next `process` span hangs below it. One
//! order is then one trace from `POST /orders` to its last event.

use std::sync::{Mutex, OnceLock};

use tracing::Span;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::otlp::{self, Exporter, Sampler, Settings};
use crate::config::Route;
use crate::event::{InboundEvent, TraceContext, headers};

/// The sampler of the running exporter, when spans are exported.
static EXPORTING: OnceLock<Option<Sampler>> = OnceLock::new();

/// The sampler when spans go out over OTLP now.
fn sampler() -> Option<&'static Sampler> {
    EXPORTING.get()?.as_ref().filter(|_| super::tracing_enabled())
}

/// True when spans go out over OTLP.
pub fn exporting() -> bool {
    sampler().is_some()
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "dropping the guard stops the exporter"]
pub struct TracingGuard {
    exporter: Mutex<Option<Exporter>>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(mut exporter) = self.exporter.lock().unwrap_or_else(|e| e.into_inner()).take() {
            exporter.shutdown();
        }
    }
}

/// Installs the process's subscriber: log lines on stderr (text, or JSON when `json`)
/// filtered by `SWITCHYARD_LOG` (default `info`), plus the OTLP exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
/// other standard variables tune it ([`otlp::Settings`]).
pub fn init_tracing(json: bool) -> TracingGuard {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; files and pipes get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let (exporter, problem) = match Settings::from_env() {
        Ok(Some(settings)) => {
            let endpoint = settings.endpoint.clone();
            match Exporter::start(settings) {
                Ok(started) => (Some(started), None),
                Err(err) => (
                    None,
                    Some(format!("cannot start the span exporter for {endpoint}: {err}")),
                ),
            }
        }
        Ok(None) => (None, None),
        Err(err) => (None, Some(err.to_string())),
    };
    let (exporter, layer) = exporter.unzip();
    let _ = EXPORTING.set(layer.as_ref().map(|l| l.sampler()));
    let otlp = layer.map(otlp::OtlpLayer::filtered);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otlp)
        .init();
    if let Some(problem) = problem {
        tracing::error!("{problem}; no traces are exported");
    }
    TracingGuard {
        exporter: Mutex::new(exporter),
    }
}

/// The `process <topic>` span of one invocation of `route`'s component for `event`,
/// child of the event's `traceparent` (or of the root the host made for it).
pub fn process_span(route: &Route, version: &str, event: &InboundEvent) -> Span {
    if !exporting() {
        return Span::none();
    }
    let component = route.component.as_str();
    let span = tracing::debug_span!(
        "process",
        otel.name = %format_args!("process {}", event.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %event.topic,
        messaging.kafka.destination.partition = event.partition,
        messaging.kafka.message.offset = event.offset,
        messaging.consumer.group.name = %route.group,
        messaging.message.id = %event.id,
        switchyard.component = component,
        switchyard.component.version = version,
        switchyard.request_id = event.request_id.as_deref().unwrap_or(""),
    );
    if let Some(sampler) = sampler() {
        // `event.trace` is the header's context, parsed once when the event was read.
        otlp::set_remote_parent(&span, &event.trace, sampler);
    }
    span
}

/// The trace context of a gateway request whose `http` span is `span`: when spans are
/// exported, the span takes the incoming `traceparent` as its parent and the request
/// continues as that span; otherwise a child of the incoming context, or a new trace.
pub fn request_trace(span: &Span, incoming: Option<TraceContext>) -> TraceContext {
    if let Some(sampler) = sampler() {
        if let Some(parent) = &incoming {
            otlp::set_remote_parent(span, parent, sampler);
        }
        if let Some(own) = otlp::context_of(span) {
            return TraceContext {
                tracestate: incoming.map(|i| i.tracestate).unwrap_or_default(),
                ..own
            };
        }
    }
    incoming.map(|t| t.child()).unwrap_or_else(TraceContext::new_root)
}

/// The trace context a message published now carries: the current (host-call) span
/// when spans are exported, else a new child of the event's context.
pub fn outgoing(trace: &TraceContext) -> TraceContext {
    if exporting()
        && let Some(own) = otlp::context_of(&Span::current())
    {
        return TraceContext {
            tracestate: trace.tracestate.clone(),
            ..own
        };
    }
    trace.child()
}

/// The `send <topic>` span of the relay producing one outbox row: a child of the row's
/// `traceparent`, which it replaces with its own so the consumer's span hangs below it.
/// Returns a disabled span (and leaves the headers alone) when nothing is exported.
pub fn send_span(topic: &str, headers: &mut Vec<(String, String)>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let message_id = headers
        .iter()
        .find(|(n, _)| n == headers::EVENT_ID)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let span = tracing::debug_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.message.id = %message_id,
    );
    if let (Some(parent), Some(sampler)) = (TraceContext::from_headers(headers), sampler()) {
        otlp::set_remote_parent(&span, &parent, sampler);
    }
    // `tracestate` travels on untouched beside the new `traceparent`.
    if let Some(own) = otlp::context_of(&span) {
        headers.retain(|(n, _)| n != headers::TRACEPARENT);
        headers.push((headers::TRACEPARENT.to_string(), own.traceparent()));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_nothing_changes() {
        let trace = TraceContext::new_root();
        let out = outgoing(&trace);
        assert_eq!(out.trace_id, trace.trace_id);
        assert_ne!(out.parent_id, trace.parent_id);
        let mut headers = vec![(headers::TRACEPARENT.to_string(), trace.traceparent())];
        let span = send_span("t", &mut headers);
        assert!(span.is_none());
        assert_eq!(headers, vec![(headers::TRACEPARENT.to_string(), trace.traceparent())]);
    }
}
