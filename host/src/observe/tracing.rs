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

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _};
use opentelemetry::{Context, SpanId, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Route;
use crate::event::{InboundEvent, TraceContext, headers};

/// Whether spans are exported (an OTLP endpoint is configured and the exporter runs).
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// True when spans go out over OTLP.
pub fn exporting() -> bool {
    EXPORTING.get().copied().unwrap_or(false) && super::tracing_enabled()
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "dropping the guard stops the exporter"]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("warning: exporting the last spans failed: {err}");
        }
    }
}

/// Installs the process's subscriber: log lines on stderr (text, or JSON when `json`)
/// filtered by `SWITCHYARD_LOG` (default `info`), plus the OTLP exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables tune it:
/// `OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`...).
pub fn init_tracing(json: bool) -> TracingGuard {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; files and pipes get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let (provider, problem) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        Ok(endpoint) if !endpoint.trim().is_empty() => match provider() {
            Ok(p) => (Some(p), None),
            Err(err) => (None, Some(format!("cannot export traces to {endpoint:?}: {err}"))),
        },
        _ => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("switchyard"))
            .with_level(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // Each of these ran on every poll of an instrumented future (an invocation is
            // polled at every host call and epoch tick): clocks for busy/idle time, and
            // the OpenTelemetry context attached to the thread, which nothing here reads
            // (`context_of` takes it from the span).
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(
                // Which callsites are exported is decided once; whether now, per span
                // (a benchmark turns it off and on).
                dynamic_filter_fn(|_, _| super::tracing_enabled())
                    .with_callsite_filter(|meta| {
                        if meta.is_span() && meta.fields().field("otel.kind").is_some() {
                            tracing::subscriber::Interest::sometimes()
                        } else {
                            tracing::subscriber::Interest::never()
                        }
                    })
                    // The exported spans are at debug at most. Without a hint the process's
                    // maximum level became trace, and every `log` record of every crate
                    // was turned into an event only to be dropped.
                    .with_max_level_hint(tracing::level_filters::LevelFilter::DEBUG),
            )
    });
    let _ = EXPORTING.set(provider.is_some());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    if let Some(problem) = problem {
        tracing::error!("{problem} (fix OTEL_EXPORTER_OTLP_ENDPOINT or unset it); no traces are exported");
    }
    TracingGuard { provider }
}

fn provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "switchyard".into()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The context a W3C trace context names as the parent.
fn remote(trace: &TraceContext) -> Option<Context> {
    let trace_id = TraceId::from_hex(&trace.trace_id).ok()?;
    let span_id = SpanId::from_hex(&trace.parent_id).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(&trace.flags, 16).ok()?);
    let state = trace.tracestate.parse::<TraceState>().unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, flags, true, state);
    context
        .is_valid()
        .then(|| Context::new().with_remote_span_context(context))
}

/// The W3C trace context naming `span` as the parent, if it is exported.
fn context_of(span: &Span) -> Option<TraceContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceContext {
        trace_id: span_context.trace_id().to_string(),
        parent_id: span_context.span_id().to_string(),
        flags: format!("{:02x}", span_context.trace_flags().to_u8()),
        tracestate: span_context.trace_state().header(),
    })
}

/// Message headers as an OpenTelemetry carrier.
struct HeaderCarrier<'a>(&'a [(String, String)]);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The parent named by `headers` (`traceparent`/`tracestate`), through the propagator.
fn extract(headers: &[(String, String)]) -> Option<Context> {
    let context = TraceContextPropagator::new().extract(&HeaderCarrier(headers));
    context.span().span_context().is_valid().then_some(context)
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
    if let Some(parent) = extract(&event.headers).or_else(|| remote(&event.trace)) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The trace context of a gateway request whose `http` span is `span`: when spans are
/// exported, the span takes the incoming `traceparent` as its parent and the request
/// continues as that span; otherwise a child of the incoming context, or a new trace.
pub fn request_trace(span: &Span, incoming: Option<TraceContext>) -> TraceContext {
    if exporting() {
        if let Some(parent) = incoming.as_ref().and_then(remote) {
            let _ = span.set_parent(parent);
        }
        if let Some(own) = context_of(span) {
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
        && let Some(own) = context_of(&Span::current())
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
    if let Some(parent) = extract(headers) {
        let _ = span.set_parent(parent);
    }
    // `tracestate` travels on untouched beside the new `traceparent`.
    if let Some(own) = context_of(&span) {
        headers.retain(|(n, _)| n != headers::TRACEPARENT);
        headers.push((headers::TRACEPARENT.to_string(), own.traceparent()));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_w3c_context_becomes_a_remote_parent_and_back() {
        let trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "").unwrap();
        let context = remote(&trace).unwrap();
        let span = context.span();
        let span_context = span.span_context();
        assert_eq!(span_context.trace_id().to_string(), trace.trace_id);
        assert_eq!(span_context.span_id().to_string(), trace.parent_id);
        assert!(span_context.is_sampled() && span_context.is_remote());
        let headers = vec![(headers::TRACEPARENT.to_string(), trace.traceparent())];
        let extracted = extract(&headers).unwrap();
        assert_eq!(extracted.span().span_context().trace_id(), span_context.trace_id());
        assert!(extract(&[]).is_none());
    }

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
