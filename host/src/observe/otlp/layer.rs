//! The `tracing` layer that records exported spans: ids, parent, times and attributes
//! in the span's extensions while it is open, then hands it to the [`Queue`] on close.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Span, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::exporter::Queue;
use super::sampler::Sampler;
use super::wire::{self, Value};
use crate::event::TraceContext;

/// OTLP span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`).
fn kind(name: &str) -> i32 {
    match name {
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => 0,
    }
}

/// One exported span: kept in its `tracing` span's extensions while open.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0 for a root.
    pub parent_span_id: u64,
    pub remote_parent: bool,
    pub trace_state: String,
    pub sampled: bool,
    /// `otel.name`, else the callsite's name.
    pub name: Option<String>,
    pub callsite_name: &'static str,
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// `Span.attributes` entries in wire form, written as fields are recorded: no
    /// allocation per attribute.
    pub attributes: Vec<u8>,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Exports every span its filter lets through (see `observe::tracing`).
pub struct OtlpLayer {
    pub(super) queue: Arc<Queue>,
    pub(super) sampler: Sampler,
}

impl OtlpLayer {
    /// Which traces this layer records.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// This layer behind the filter that picks what is exported: spans whose callsite
    /// declares `otel.kind`, while [`crate::observe::tracing_enabled`].
    pub fn filtered<S>(self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.with_filter(
            // Which callsites are exported is decided once; whether now, per span
            // (a benchmark turns it off and on).
            dynamic_filter_fn(|_, _| crate::observe::tracing_enabled())
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
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // With this layer's filter, the parent is the nearest exported ancestor.
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Recorded>()
                .map(|r| (r.trace_id, r.span_id, r.sampled, r.trace_state.clone()))
        });
        let (trace_id, parent_span_id, parent_sampled, trace_state) = match parent {
            Some((trace, span, sampled, state)) => (trace, span, Some(sampled), state),
            None => (fastrand::u128(1..), 0, None, String::new()),
        };
        let mut recorded = Recorded {
            trace_id,
            span_id: fastrand::u64(1..),
            parent_span_id,
            remote_parent: false,
            trace_state,
            sampled: self.sampler.sampled(parent_sampled, trace_id),
            name: None,
            callsite_name: attrs.metadata().name(),
            kind: 0,
            start_unix_nanos: unix_nanos(),
            end_unix_nanos: 0,
            attributes: Vec::with_capacity(64 * attrs.fields().len()),
        };
        // Recorded even when not sampled: a remote parent set later may turn it on.
        attrs.record(&mut Visitor {
            span: &mut recorded,
            again: false,
        });
        span.extensions_mut().insert(recorded);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(recorded) = span.extensions_mut().get_mut::<Recorded>()
        {
            values.record(&mut Visitor {
                span: recorded,
                again: true,
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut recorded) = span.extensions_mut().remove::<Recorded>() else {
            return;
        };
        if recorded.sampled {
            recorded.end_unix_nanos = unix_nanos();
            self.queue.push(&recorded);
        }
    }
}

struct Visitor<'a> {
    span: &'a mut Recorded,
    /// Recording after the span started: a field may already have a value to replace.
    again: bool,
}

thread_local! {
    /// Where `%value` fields are formatted before they are written, reused.
    static FORMATTED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Visitor<'_> {
    fn set(&mut self, field: &Field, value: Value<'_>) {
        match field.name() {
            "otel.name" => self.span.name = Some(text(value)),
            "otel.kind" => self.span.kind = kind(&text(value)),
            name if name.starts_with("otel.") => {}
            // Attributes are namespaced (`http.route`, `messaging.system`,
            // `switchyard.component`); an exported span's plain fields (the `http` span's
            // path, request id, username) are for the log lines only.
            name if !name.contains('.') => {}
            name => {
                if self.again {
                    wire::remove_attribute(name, &mut self.span.attributes);
                }
                wire::put_attribute(name, value, &mut self.span.attributes);
            }
        }
    }
}

fn text(value: Value<'_>) -> String {
    match value {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::Str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        use std::fmt::Write as _;
        FORMATTED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut formatted) => {
                formatted.clear();
                let _ = write!(formatted, "{value:?}");
                self.set(field, Value::Str(&formatted));
            }
            // A value whose formatting starts an exported span of its own.
            Err(_) => self.set(field, Value::Str(&format!("{value:?}"))),
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.set(field, Value::Int(v)),
            Err(_) => self.set(field, Value::Str(&value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::Float(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }
}

/// Runs `f` on the record of `span`, or with `or_ancestors` of the nearest exported
/// span at or above it. `None` when there is none (nothing exported, `Span::none()`).
fn with_recorded<R>(span: &Span, or_ancestors: bool, f: impl FnOnce(&mut Recorded) -> R) -> Option<R> {
    let mut f = Some(f);
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let scope = span.scope();
        for s in scope.take(if or_ancestors { usize::MAX } else { 1 }) {
            if let Some(recorded) = s.extensions_mut().get_mut::<Recorded>() {
                return f.take().map(|f| f(recorded));
            }
        }
        None
    })
    .flatten()
}

/// Makes the remote context `parent` the parent of the exported `span` (before any
/// child of it starts) and decides its sampling again from the parent's flag.
pub fn set_remote_parent(span: &Span, parent: &TraceContext, sampler: &Sampler) {
    let (Ok(trace_id), Ok(parent_span_id)) = (
        u128::from_str_radix(&parent.trace_id, 16),
        u64::from_str_radix(&parent.parent_id, 16),
    ) else {
        return;
    };
    if trace_id == 0 || parent_span_id == 0 {
        return;
    }
    let sampled = u8::from_str_radix(&parent.flags, 16).is_ok_and(|f| f & 1 == 1);
    with_recorded(span, false, |r| {
        r.trace_id = trace_id;
        r.trace_state = parent.tracestate.clone();
        if parent.root {
            // Made up by the host: this span starts the trace, as the root sampler says.
            r.parent_span_id = 0;
            r.remote_parent = false;
            r.sampled = sampler.sampled(None, trace_id);
        } else {
            r.parent_span_id = parent_span_id;
            r.remote_parent = true;
            r.sampled = sampler.sampled(Some(sampled), trace_id);
        }
    });
}

/// The W3C trace context naming `span` (or its nearest exported ancestor) as the parent.
pub fn context_of(span: &Span) -> Option<TraceContext> {
    with_recorded(span, true, |r| TraceContext {
        trace_id: format!("{:032x}", r.trace_id),
        parent_id: format!("{:016x}", r.span_id),
        flags: if r.sampled { "01" } else { "00" }.to_string(),
        tracestate: r.trace_state.clone(),
        root: false,
    })
}
