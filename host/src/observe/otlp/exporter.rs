//! The batch exporter: closed spans wait in a bounded [`Queue`]; one thread takes them
//! every `OTEL_BSP_SCHEDULE_DELAY` (or as soon as a batch is full) and posts them as one
//! OTLP `ExportTraceServiceRequest` in protobuf. A span is written in its wire form when
//! it closes ([`wire::put_span`]), so the queue holds bytes and the thread only frames
//! and sends them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::layer::{OtlpLayer, Recorded};
use super::settings::Settings;
use super::wire;

/// Spans in their wire form, and how many.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    spans: usize,
}

/// Closed spans waiting for the exporter; full means dropped (and counted), never
/// blocking the thread that closed the span.
pub struct Queue {
    batch: Mutex<Batch>,
    wake: Condvar,
    max_queue_size: usize,
    max_export_batch_size: usize,
    dropped: AtomicU64,
    /// `switchyard_trace_spans_total{outcome="queue_full"}`, looked up once: a full queue
    /// drops every span, and a lookup in the metric family takes a lock each time.
    queue_full: prometheus_client::metrics::counter::Counter,
    stopping: AtomicBool,
}

impl Queue {
    fn new(settings: &Settings) -> Queue {
        Queue {
            batch: Mutex::default(),
            wake: Condvar::new(),
            max_queue_size: settings.max_queue_size,
            max_export_batch_size: settings.max_export_batch_size,
            dropped: AtomicU64::new(0),
            queue_full: crate::observe::metrics().spans_counter("queue_full"),
            stopping: AtomicBool::new(false),
        }
    }

    pub(super) fn push(&self, span: &Recorded) {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.spans >= self.max_queue_size {
            drop(batch);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.queue_full.inc();
            return;
        }
        wire::put_span(span, &mut batch.bytes);
        batch.spans += 1;
        if batch.spans == self.max_export_batch_size {
            self.wake.notify_one();
        }
    }

    /// Waits until a batch is full, `delay` passed or the exporter stops; then takes all
    /// (a little more than a batch when spans closed while it woke).
    fn take(&self, delay: Duration) -> (Batch, bool) {
        let deadline = Instant::now() + delay;
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let stopping = self.stopping.load(Ordering::Acquire);
            let now = Instant::now();
            if stopping || batch.spans >= self.max_export_batch_size || now >= deadline {
                let capacity = batch.bytes.len();
                let taken = std::mem::replace(
                    &mut *batch,
                    Batch {
                        bytes: Vec::with_capacity(capacity),
                        spans: 0,
                    },
                );
                return (taken, stopping);
            }
            batch = self
                .wake
                .wait_timeout(batch, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The running exporter; [`Exporter::shutdown`] sends what is left and stops it.
pub struct Exporter {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts the exporter's thread and returns it with the layer that feeds it.
    pub fn start(settings: Settings) -> std::io::Result<(Exporter, OtlpLayer)> {
        let queue = Arc::new(Queue::new(&settings));
        let layer = OtlpLayer {
            queue: queue.clone(),
            sampler: settings.sampler,
        };
        let thread = std::thread::Builder::new().name("otlp-exporter".into()).spawn({
            let queue = queue.clone();
            move || run(&settings, &queue)
        })?;
        Ok((
            Exporter {
                queue,
                thread: Some(thread),
            },
            layer,
        ))
    }

    /// Sends the spans still queued and stops the thread (waiting at most for one post
    /// per remaining batch, each bounded by the export timeout).
    pub fn shutdown(&mut self) {
        self.queue.stopping.store(true, Ordering::Release);
        self.queue.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(settings: &Settings, queue: &Queue) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: the span exporter cannot start its runtime ({err}); no traces are exported");
            return;
        }
    };
    // The client's connector needs the runtime's reactor from the start.
    let _entered = runtime.enter();
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: the span exporter cannot make an HTTP client ({err}); no traces are exported");
            return;
        }
    };
    let envelope = wire::Envelope::new(&settings.resource);
    let mut reported_dropped = 0;
    let mut failing = false;
    loop {
        let (batch, stopping) = queue.take(settings.schedule_delay);
        if batch.spans > 0 {
            let count = batch.spans;
            let body = envelope.request(&batch.bytes);
            let sent = runtime.block_on(
                client
                    .post(&settings.endpoint)
                    .headers(settings.headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .send(),
            );
            match sent.map(|r| r.status()) {
                Ok(status) if status.is_success() => {
                    crate::observe::metrics().spans("exported", count as u64);
                    if std::mem::take(&mut failing) {
                        tracing::info!(endpoint = %settings.endpoint, "exporting spans works again");
                    }
                }
                outcome => {
                    crate::observe::metrics().spans("export_failed", count as u64);
                    // Once per outage, not once per batch.
                    if !std::mem::replace(&mut failing, true) {
                        let why = match outcome {
                            Ok(status) => format!("the collector answered {status}"),
                            Err(err) => format!("{err}"),
                        };
                        tracing::warn!(
                            endpoint = %settings.endpoint,
                            spans = count,
                            "exporting spans failed: {why}; they are dropped (is the collector up at OTEL_EXPORTER_OTLP_ENDPOINT?)"
                        );
                    }
                }
            }
        }
        let dropped = queue.dropped.load(Ordering::Relaxed);
        if dropped > reported_dropped {
            tracing::warn!(
                dropped = dropped - reported_dropped,
                "spans dropped because the export queue was full (raise OTEL_BSP_MAX_QUEUE_SIZE or lower OTEL_BSP_SCHEDULE_DELAY)"
            );
            reported_dropped = dropped;
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
impl Queue {
    pub(super) fn for_tests(settings: &Settings) -> Queue {
        Queue::new(settings)
    }

    /// The queued spans as the request the exporter would send.
    pub(super) fn request_for_tests(&self) -> Vec<u8> {
        let batch = std::mem::take(&mut *self.batch.lock().unwrap());
        wire::Envelope::new(&[]).request(&batch.bytes)
    }

    pub(super) fn dropped_for_tests(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use tracing_subscriber::layer::SubscriberExt;

    /// What a collector received: each request's `authorization` header and body.
    type Received = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

    /// A collector on a thread of its own, answering `status` to every request.
    fn collector(status: u16) -> (String, Received) {
        let received = Received::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let kept = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        kept.lock().unwrap().push((auth, body.to_vec()));
                        std::future::ready(axum::http::StatusCode::from_u16(status).unwrap())
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (url, received)
    }

    /// Settings exporting to `url`, with `vars` on top (the tests' environment).
    pub(in crate::observe::otlp) fn settings(url: &str, vars: &[(&str, &str)]) -> Settings {
        let vars: std::collections::HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_ENDPOINT", url)]
            .into_iter()
            .chain(vars.iter().copied())
            .collect();
        Settings::from_vars(|name| vars.get(name).map(|v| v.to_string()))
            .unwrap()
            .unwrap()
    }

    /// `switchyard_trace_spans_total{outcome}` now (the process's metrics, shared by tests).
    pub(in crate::observe::otlp) fn spans_counted(outcome: &'static str) -> u64 {
        let labels = crate::observe::metrics::SpanLabels { outcome };
        crate::observe::metrics().trace_spans.get_or_create(&labels).get()
    }

    fn span_names(body: &[u8]) -> Vec<String> {
        let request = ExportTraceServiceRequest::decode(body).unwrap();
        request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn the_last_spans_are_sent_at_shutdown_with_the_configured_headers() {
        let (url, received) = collector(200);
        // A delay no test waits for: only shutting down sends these.
        let settings = settings(
            &url,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t"),
            ],
        );
        let (mut exporter, layer) = Exporter::start(settings).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer.filtered()), || {
            for name in ["a", "b", "c"] {
                drop(tracing::info_span!("x", otel.name = name, otel.kind = "internal"));
            }
        });
        assert!(received.lock().unwrap().is_empty());
        exporter.shutdown();
        let received = received.lock().unwrap();
        let [(auth, body)] = &received[..] else {
            panic!("{} requests", received.len())
        };
        assert_eq!(auth.as_deref(), Some("Bearer t"));
        assert_eq!(span_names(body), ["a", "b", "c"]);
        assert!(spans_counted("exported") >= 3);
    }

    #[test]
    fn a_full_batch_goes_out_at_once_and_a_failing_collector_stops_nothing() {
        let (url, received) = collector(503);
        let settings = settings(
            &url,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
            ],
        );
        let failed_before = spans_counted("export_failed");
        let (mut exporter, layer) = Exporter::start(settings).unwrap();
        let requests = || received.lock().unwrap().len();
        let wait_for = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while requests() < n {
                assert!(Instant::now() < deadline, "{} requests, waiting for {n}", requests());
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer.filtered()), || {
            drop(tracing::info_span!("x", otel.name = "1", otel.kind = "internal"));
            drop(tracing::info_span!("x", otel.name = "2", otel.kind = "internal"));
            // Refused (503): those spans are gone, the exporter goes on.
            wait_for(1);
            drop(tracing::info_span!("x", otel.name = "3", otel.kind = "internal"));
            drop(tracing::info_span!("x", otel.name = "4", otel.kind = "internal"));
            wait_for(2);
        });
        exporter.shutdown();
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 2, "nothing was left to send at shutdown");
        assert_eq!(span_names(&received[0].1), ["1", "2"]);
        assert_eq!(span_names(&received[1].1), ["3", "4"]);
        assert!(spans_counted("export_failed") >= failed_before + 4);
    }
}
