//! `just bench-observe` (also run by `just bench`): what metrics and tracing cost per
//! event, measured in one process beside the same path with them off.
//!
//! A real route (`switchyard::service::serve_with`: consume, invoke the probe component
//! with a storage write and a publish, commit, relay) runs once per stack; runs of
//! `OBSERVE_EVENTS` events take turns between three modes: off
//! ([`switchyard::observe::set_enabled`]`(false)`: no metric recorded, no span made),
//! metrics only ([`switchyard::observe::set_tracing`]`(false)`), and metrics with every
//! span exported over OTLP/HTTP to a receiver in a child process. Wall time and this
//! process's CPU time are both reported per event.
//! The clock of a run starts before the first send and stops when the last output is
//! relayed. `BENCH_RUNS` (default 9) rounds of `OBSERVE_EVENTS` (default 2000) events
//! sent at once, each round running the three modes in turn; a mode's overhead is the
//! median over the rounds of its ratio to the `off` run of the same round. Then one run
//! of `OBSERVE_PACED_SECONDS` (default 30) at `OBSERVE_RATE` events/s (default 2000),
//! where every mode takes the same wall time, while a thread switches the mode every
//! [`SLICE`]; each cycle of three slices is compared within itself.

mod support;

#[path = "../tests/it/common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard::config::Routing;
use switchyard::kafka::{Brokers, producer_config};
use switchyard::store::{Db, Table as DbTable};

use support::{Spread, Table};

const WARMUP: usize = 200;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Paced runs send a share of the rate this often.
const PACE_TICK: Duration = Duration::from_millis(10);

/// Set in the environment of the child process that plays the OTLP receiver.
const RECEIVER_CHILD: &str = "SWITCHYARD_OBSERVE_RECEIVER_CHILD";

fn main() -> std::process::ExitCode {
    if std::env::var_os(RECEIVER_CHILD).is_some() {
        return match run_receiver() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("receiver: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if !support::run_by_cargo_bench("bench-observe") {
        return std::process::ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn number(var: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{var}={v:?} is not a positive whole number; unset it or give e.g. 3")),
        Err(_) => Ok(default),
    }
}

fn bench() -> anyhow::Result<()> {
    // The difference looked for (5 %) is smaller than one run's noise on this machine, so
    // more and longer runs than the other benchmarks: in three sittings, the medians of
    // 5 to 9 separate runs per mode put the same build's paced traces at -1 % to +11 %.
    let runs = number("BENCH_RUNS", 9)?;
    let events = number("OBSERVE_EVENTS", 2000)?;
    let rate = number("OBSERVE_RATE", 2000)?;
    let paced_seconds = number("OBSERVE_PACED_SECONDS", 30)?;
    for var in ["SWITCHYARD_TEST_DATABASE_URL", "SWITCHYARD_TEST_KAFKA_BROKERS"] {
        if std::env::var_os(var).is_none() {
            bail!(
                "{var} is not set: run `just bench-observe`, which starts PostgreSQL and Kafka (scripts/services.sh) and exports it"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let receiver = Receiver::start()?;
    let endpoint = receiver.url.clone();
    // The exporter is configured the way an operator does it, before the subscriber.
    // SAFETY: no other thread reads the environment yet (the runtime's workers are idle).
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
        // The spans-alone runs close spans far faster than a host does; none is dropped.
        std::env::set_var("OTEL_BSP_MAX_QUEUE_SIZE", "1000000");
        std::env::set_var("SWITCHYARD_LOG", "error");
    }
    let guard = switchyard::observe::init_tracing(false);
    anyhow::ensure!(
        switchyard::observe::tracing::exporting(),
        "the OTLP exporter did not start"
    );

    println!(
        "Switchyard observability cost · commit {} · {}",
        support::commit(&common::workspace()),
        support::machine()
    );
    let mut table = Table::new(
        format!(
            "Observability cost: {events} events per run (probe: storage put + publish, 1 partition), {runs} runs per mode alternating, after {WARMUP} warm-up events"
        ),
        &[
            "stack",
            "off µs/event",
            "metrics µs/event",
            "metrics + traces µs/event",
            "off CPU µs/event",
            "metrics CPU µs/event",
            "metrics + traces CPU µs/event",
        ],
    );
    let mut paced_table = Table::new(
        format!(
            "Paced: {rate} events/s (below the route's capacity) for {paced_seconds} s, the mode switched every {} ms (off, metrics, metrics + traces in turn), CPU per event",
            SLICE.as_millis()
        ),
        &[
            "stack",
            "off CPU µs/event",
            "metrics CPU µs/event",
            "metrics + traces CPU µs/event",
        ],
    );
    let mut threads_table = Table::new(
        "CPU by thread: µs per event (median over the runs, or the paced run's cycles), then what the mode adds over off in the same round or cycle (median [middle half])",
        &["stack, runs: threads", "off", "metrics", "metrics + traces"],
    );
    let mut verdicts = Vec::new();
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(async {
        for (name, real) in [("embedded broker + SQLite", false), ("Kafka + PostgreSQL", true)] {
            let Measured {
                wall,
                cpu,
                groups,
                paced,
                paced_groups,
            } = measure(real, runs, events, rate, paced_seconds).await?;
            let micros = |s: f64| format!("{:.0}", s * 1e6);
            // A mode's median, and its overhead over `off` run in the same round: the
            // median of those paired overheads, with their range.
            let cell = |spreads: &[Spread; 3], mode: usize| {
                let shown = spreads[mode].show(micros);
                if mode == 0 {
                    return shown;
                }
                format!("{shown} {}", percent(&spreads[mode].paired_overhead(&spreads[0])))
            };
            table.row(vec![
                name.into(),
                cell(&wall, 0),
                cell(&wall, 1),
                cell(&wall, 2),
                cell(&cpu, 0),
                cell(&cpu, 1),
                cell(&cpu, 2),
            ]);
            paced_table.row(vec![name.into(), cell(&paced, 0), cell(&paced, 1), cell(&paced, 2)]);
            verdicts.push((name, paced[2].paired_overhead(&paced[0]).median()));
            let all = THREAD_GROUPS.iter().map(|g| ("all at once", g, &groups));
            let paced_rows = THREAD_GROUPS.iter().map(|g| ("paced", g, &paced_groups));
            for (i, (how, group, spreads)) in all.chain(paced_rows).enumerate() {
                let spreads = &spreads[i % THREAD_GROUPS.len()];
                let cell = |mode: usize| {
                    let shown = format!("{:.1}", spreads[mode].median() * 1e6);
                    if mode == 0 {
                        return shown;
                    }
                    let added = spreads[mode].paired_difference(&spreads[0]);
                    format!("{shown} {}", middle_half(&added, 1e6, ""))
                };
                threads_table.row(vec![format!("{name}, {how}: {group}"), cell(0), cell(1), cell(2)]);
            }
        }
        anyhow::Ok(())
    }))?;
    let spans_alone = spans_alone(runs);
    switchyard::observe::set_enabled(true);
    drop(guard); // flushes the last spans
    let spans = rt.block_on(receiver.spans())?;
    table.note("Each cell: median (min–max) over the runs, then the overhead over off: the median of each round's ratio to the off run of the same round, with the middle half of those ratios in brackets. A run's clock starts before its first send and stops when its last output row is relayed (counted through a second connection). CPU: user + system time of this process (host, embedded broker, load driver; not the receiver, PostgreSQL or Kafka) per event over the run. With one partition the run is bound by the hop's latency, not by CPU, so wall time moves with scheduling and CPU says what the work costs.");
    table.note(format!(
        "Metrics: every metric recorded, no span made (`observe::set_tracing(false)`). Metrics + traces: also every span (process, host calls, send) exported over OTLP/HTTP protobuf to a receiver in a child process, as a collector would be: it shares the machine's 2 cores but not the CPU column; it keeps the requests and decodes them after the runs ({} spans). Off: `observe::set_enabled(false)`; the subscriber stays installed, so off is a little slower than a host run without OTEL_EXPORTER_OTLP_ENDPOINT. The modes take turns, each run starting with the next one.",
        spans
    ));
    table.note(
        "Target: overhead under 5 %. On a shared 2-core machine the spread of a mode can be wider than the difference.",
    );
    table.print();
    paced_table.note("Every mode takes the same wall time here, so what runs per unit of time whatever the work (librdkafka's and the pool's timers, the driver's polling) weighs the same in each, and the difference is the work observability adds. In the table above a slower mode also pays that background for longer.");
    paced_table.note("One run instead of runs per mode: the separate runs of a mode differ by ±20 % from one another on this machine (load from other guests drifts over seconds), more than the difference looked for. Slices of a few hundred ms taken in turn meet the same drift, and each cycle's ratio to its own off slice cancels it. A slice's events are those the rate sends during it; a span begun in one slice and closed in the next is counted where its work runs.");
    paced_table.print();
    threads_table.note("From each thread's nanosecond run time (`/proc/self/task/*/schedstat`), grouped by thread name. Observability's work runs on the runtime workers (spans, metrics, trace context) and the span exporter's thread (framing and posting); librdkafka's threads (the embedded broker is librdkafka's mock cluster) run none of it. `threads that ended`: the process's CPU time less its live threads'.");
    threads_table.print();
    for (name, overhead) in &verdicts {
        println!(
            "Metrics + traces over off, paced, {name}: {:+.1} % (median over the cycles); target under 5 %: {}",
            overhead * 100.0,
            if *overhead < 0.05 { "met" } else { "not met" }
        );
    }
    println!();
    let mut alone = Table::new(
        format!(
            "The spans alone: one event's four spans made, entered, closed and exported, {SPANS_ALONE} events per run, {runs} runs per mode, in this process without Kafka or a database"
        ),
        &[
            "spans",
            "tracing off CPU µs/event",
            "tracing on CPU µs/event",
            "added µs/event",
        ],
    );
    let [off, on] = &spans_alone;
    alone.row(vec![
        "process (12 attributes, entered 8 times), storage.put, publish.send, send (4 attributes)".into(),
        off.show(|s| format!("{:.2}", s * 1e6)),
        on.show(|s| format!("{:.2}", s * 1e6)),
        format!("{:.2}", (on.median() - off.median()) * 1e6),
    ]);
    alone.note("CPU of this process, the exporter's thread included (it encodes nothing: spans are written in wire form when they close; it frames and posts them to the receiver). The tables above add what the spans change around them (the trace context handed from the host call to the message and from the relay to the next hop), and the same work done between instantiations, whose memory has pushed the spans' out of cache.");
    alone.print();
    Ok(())
}

/// `+3.1 % [-2.0, +7.4]`: the median of paired overheads and the middle half of them.
fn percent(overheads: &Spread) -> String {
    middle_half(overheads, 100.0, " %")
}

/// The median of `values` times `scale`, signed, with `unit`, then their middle half.
fn middle_half(values: &Spread, scale: f64, unit: &str) -> String {
    let p = |v: f64| format!("{:+.1}", v * scale);
    format!(
        "{}{unit} [{}, {}]",
        p(values.median()),
        p(values.quantile(0.25)),
        p(values.quantile(0.75))
    )
}

/// Events per run of [`spans_alone`].
const SPANS_ALONE: usize = 100_000;

/// CPU seconds per event of making one event's spans the way the host does, with
/// tracing off and on, over `runs` runs each.
fn spans_alone(runs: usize) -> [Spread; 2] {
    use switchyard::event::TraceContext;
    let incoming = TraceContext::new_root();
    let mut headers = vec![("traceparent".to_string(), incoming.traceparent())];
    let mut one_event = |offset: usize| {
        let process = tracing::debug_span!(
            "process",
            otel.name = %format_args!("process {}", "orders.requests"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %"orders.requests",
            messaging.kafka.destination.partition = 3,
            messaging.kafka.message.offset = offset as i64,
            messaging.consumer.group.name = %"orders",
            messaging.message.id = %"0193a4b2-7c1d-7e3f-9a8b-123456789abc",
            switchyard.component = "order",
            switchyard.component.version = "sha256:0123456789abcdef",
            switchyard.request_id = "4f6c1f9e-2b1d-4d6b-9a51-2d0c8e7f5a10",
        );
        // An invocation is polled several times: at each host call and epoch tick.
        for _ in 0..7 {
            let _polled = process.enter();
        }
        let _polled = process.enter();
        drop(tracing::debug_span!("storage.put", otel.kind = "internal").entered());
        let publish = tracing::debug_span!("publish.send", otel.kind = "internal").entered();
        let child = switchyard::observe::tracing::outgoing(&incoming);
        drop(publish);
        drop(_polled);
        drop(process);
        headers[0].1 = child.traceparent();
        drop(switchyard::observe::tracing::send_span("orders.created", &mut headers));
    };
    let mut spreads: [Spread; 2] = Default::default();
    for _ in 0..runs {
        for (mode, on) in [(0, false), (1, true)] {
            switchyard::observe::set_tracing(on);
            let cpu = support::cpu_seconds();
            for offset in 0..SPANS_ALONE {
                one_event(offset);
            }
            // The exporter's share: it sends every OTEL_BSP_SCHEDULE_DELAY (200 ms).
            std::thread::sleep(Duration::from_millis(400));
            spreads[mode].push((support::cpu_seconds() - cpu) / SPANS_ALONE as f64);
        }
    }
    switchyard::observe::set_tracing(true);
    spreads
}

/// The OTLP receiver: this benchmark's own executable run as a child process, so its
/// work is not counted as the host's CPU.
struct Receiver {
    child: std::process::Child,
    url: String,
}

impl Receiver {
    fn start() -> anyhow::Result<Receiver> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .env(RECEIVER_CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the OTLP receiver process")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
        anyhow::ensure!(
            line.starts_with("http://"),
            "the receiver said {line:?} instead of its URL"
        );
        Ok(Receiver {
            child,
            url: line.trim().to_string(),
        })
    }

    /// Spans in every request taken so far.
    async fn spans(&self) -> anyhow::Result<usize> {
        let count = reqwest::get(format!("{}/spans", self.url))
            .await?
            .error_for_status()?
            .text()
            .await?;
        count
            .trim()
            .parse()
            .with_context(|| format!("receiver answered {count:?}"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: keeps each OTLP request undecoded (decoding is a collector's work)
/// and counts their spans when asked; prints its base URL first.
fn run_receiver() -> anyhow::Result<()> {
    let received: Arc<std::sync::Mutex<Vec<axum::body::Bytes>>> = Default::default();
    let spans = {
        let received = received.clone();
        move || {
            let bodies = std::mem::take(&mut *received.lock().expect("received lock"));
            let n: usize = bodies
                .into_iter()
                .filter_map(|body| ExportTraceServiceRequest::decode(body).ok())
                .flat_map(|request| request.resource_spans)
                .flat_map(|r| r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            n.to_string()
        }
    };
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received.lock().expect("received lock").push(body);
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        )
        .route("/spans", axum::routing::get(move || std::future::ready(spans())));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// Thread groups of the CPU breakdown, in the order shown.
const THREAD_GROUPS: [&str; 6] = [
    "runtime workers (host)",
    "librdkafka",
    "SQLite (sqlx)",
    "span exporter",
    "driver, epoch ticker, other",
    "threads that ended",
];

/// The index in [`THREAD_GROUPS`] of a thread, by the name its library gives it.
fn thread_group(name: &str) -> usize {
    match name {
        "tokio-rt-worker" => 0,
        n if n.starts_with("rdk:") => 1,
        n if n.starts_with("sqlx-sqlite") => 2,
        "otlp-exporter" => 3,
        _ => 4,
    }
}

/// What [`measure`] returns, per mode: sending all at once, wall and CPU seconds per
/// event and the CPU per thread group; paced, the same CPU figures per cycle.
struct Measured {
    wall: [Spread; 3],
    cpu: [Spread; 3],
    groups: Vec<[Spread; 3]>,
    paced: [Spread; 3],
    paced_groups: Vec<[Spread; 3]>,
}

/// How long the paced run stays in one mode before the next.
const SLICE: Duration = Duration::from_millis(200);

/// CPU seconds per [`THREAD_GROUPS`] entry since `threads` was read, of which the
/// process as a whole spent `cpu`.
fn by_group(threads: &support::ThreadCpu, cpu: f64) -> Vec<f64> {
    let mut groups = vec![0.0; THREAD_GROUPS.len()];
    for (name, seconds) in support::ThreadCpu::now().since(threads) {
        groups[thread_group(name)] += seconds;
    }
    // The process's total less its live threads' (the two clocks differ a little).
    let live: f64 = groups.iter().sum();
    groups[THREAD_GROUPS.len() - 1] = (cpu - live).max(0.0);
    groups
}

/// One slice of the paced run: the mode it ran in, and what it took.
struct Slice {
    cycle: usize,
    mode: usize,
    wall: f64,
    cpu: f64,
    /// CPU seconds per [`THREAD_GROUPS`] entry.
    groups: Vec<f64>,
}

/// 0: off, 1: metrics only, 2: metrics and traces.
fn set_mode(mode: usize) {
    switchyard::observe::set_enabled(mode > 0);
    switchyard::observe::set_tracing(mode == 2);
}

/// Until `done`: the three modes in turn, SLICE each, starting each cycle with the next
/// mode; a slice cut short by `done` is dropped.
fn switch_modes(done: &std::sync::atomic::AtomicBool) -> Vec<Slice> {
    let mut slices = Vec::new();
    for cycle in 0.. {
        for mode in (0..3).map(|m| (m + cycle) % 3) {
            set_mode(mode);
            let (started, cpu, threads) = (Instant::now(), support::cpu_seconds(), support::ThreadCpu::now());
            std::thread::sleep(SLICE);
            if done.load(std::sync::atomic::Ordering::Acquire) {
                return slices;
            }
            let cpu = support::cpu_seconds() - cpu;
            let groups = by_group(&threads, cpu);
            slices.push(Slice {
                cycle,
                mode,
                wall: started.elapsed().as_secs_f64(),
                cpu,
                groups,
            });
        }
    }
    slices
}

/// CPU seconds per event of each mode per complete cycle (events arrive at `rate`, so a
/// slice handles `rate × wall` of them), in total and per thread group.
fn per_cycle(slices: &[Slice], rate: usize) -> ([Spread; 3], Vec<[Spread; 3]>) {
    let mut total: [Spread; 3] = Default::default();
    let mut groups: Vec<[Spread; 3]> = vec![Default::default(); THREAD_GROUPS.len()];
    for cycle in slices
        .chunks(3)
        .filter(|c| c.len() == 3 && c.iter().all(|s| s.cycle == c[0].cycle))
    {
        let mut by_mode: Vec<&Slice> = cycle.iter().collect();
        by_mode.sort_by_key(|s| s.mode);
        for slice in by_mode {
            let events = rate as f64 * slice.wall;
            total[slice.mode].push(slice.cpu / events);
            for (spreads, seconds) in groups.iter_mut().zip(&slice.groups) {
                spreads[slice.mode].push(seconds / events);
            }
        }
    }
    (total, groups)
}

/// Runs the route on one stack and measures the three modes (see [`Measured`]).
async fn measure(
    real: bool,
    runs: usize,
    events: usize,
    rate: usize,
    paced_seconds: usize,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let p = format!("obs-bench-{}", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("topics.toml");
    std::fs::write(
        &config,
        format!(
            "[topics.\"{p}.in\"]\n[topics.\"{p}.out\"]\n[components.probe]\nartifact = \"{}\"\npublishes = [\"{p}.out\"]\n[[routes]]\ntopic = \"{p}.in\"\ncomponent = \"probe\"\ngroup = \"{p}\"\n",
            common::artifact("probe").display()
        ),
    )?;
    let routing = Routing::load(&config)?;
    let brokers = Brokers::start(real.then(common::kafka_brokers).as_deref(), &routing)?;
    if real {
        switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing).await?;
    }
    let (db, observer, _data) = if real {
        let (db, url) = common::postgres_database().await.context("PostgreSQL")?;
        let observer = Db::open(Some(&url), std::path::Path::new(".")).await?;
        (db, observer, None)
    } else {
        let data = tempfile::tempdir()?;
        let db = Db::open(None, data.path()).await?;
        let url = format!("sqlite://{}", data.path().join("switchyard.db").display());
        let observer = Db::open(Some(&url), std::path::Path::new(".")).await?;
        (db, observer, Some(data))
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut producer_settings = producer_config(&brokers.client_config());
    producer_settings.set("linger.ms", "1");
    let producer: FutureProducer = producer_settings.create()?;
    let topic = format!("{p}.in");
    let payload = serde_json::to_vec(&serde_json::json!({"steps": [
        {"op": "increment", "key": "n", "delta": 1},
        {"op": "publish", "topic": format!("{p}.out"), "payload": "done"},
    ]}))?;
    let service = {
        let (routing, db) = (routing.clone(), db.clone());
        let brokers = &brokers;
        async move { switchyard::service::serve_with(&routing, db, brokers, Default::default(), shutdown).await }
    };
    let work = async {
        let mut relayed = 0i64;
        let mut run = |n: usize, rate: Option<usize>| {
            let (producer, topic, payload, observer) = (&producer, &topic, &payload, &observer);
            relayed += n as i64;
            let target = relayed;
            async move {
                let started = Instant::now();
                let cpu = support::cpu_seconds();
                let threads = support::ThreadCpu::now();
                let mut sends = Vec::with_capacity(n);
                // Paced: a tick every PACE_TICK with its share of the rate.
                let per_tick = rate.map_or(n, |r| (r * PACE_TICK.as_millis() as usize / 1000).max(1));
                let mut ticks = tokio::time::interval(PACE_TICK);
                for i in 0..n {
                    if rate.is_some() && i % per_tick == 0 {
                        ticks.tick().await;
                    }
                    let record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
                    sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                }
                for send in sends {
                    send.await?.map_err(|(e, _)| e)?;
                }
                loop {
                    let sent = observer.count(DbTable::Outbox).await? - observer.count(DbTable::UnsentOutbox).await?;
                    if sent >= target {
                        let wall = started.elapsed().as_secs_f64() / n as f64;
                        let cpu = support::cpu_seconds() - cpu;
                        let groups = by_group(&threads, cpu);
                        let per_event = |s: f64| s / n as f64;
                        return anyhow::Ok((
                            wall,
                            per_event(cpu),
                            groups.into_iter().map(per_event).collect::<Vec<_>>(),
                        ));
                    }
                    anyhow::ensure!(
                        started.elapsed() < RUN_TIMEOUT,
                        "only {sent} of {target} outputs relayed"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        switchyard::observe::set_enabled(true);
        run(WARMUP, None).await?;
        let [mut wall, mut cpu]: [[Spread; 3]; 2] = Default::default();
        let mut groups: Vec<[Spread; 3]> = vec![Default::default(); THREAD_GROUPS.len()];
        for i in 0..runs {
            // Rotate which mode goes first, so a drift in the machine's load hits all.
            for mode in (0..3).map(|m| (m + i) % 3) {
                set_mode(mode);
                let (per_event, cpu_per_event, by_group) = run(events, None).await?;
                wall[mode].push(per_event);
                cpu[mode].push(cpu_per_event);
                for (spreads, seconds) in groups.iter_mut().zip(by_group) {
                    spreads[mode].push(seconds);
                }
            }
        }
        // Paced: one long run while a thread switches the mode every SLICE and reads the
        // CPU clocks at each switch.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let switcher = std::thread::spawn({
            let done = done.clone();
            move || switch_modes(&done)
        });
        let sent = run(rate * paced_seconds, Some(rate)).await.map(|_| ());
        done.store(true, std::sync::atomic::Ordering::Release);
        let slices = switcher
            .join()
            .map_err(|_| anyhow::anyhow!("the mode switcher panicked"))?;
        sent?;
        let (paced, paced_groups) = per_cycle(&slices, rate);
        set_mode(2);
        stop.send(true).ok();
        anyhow::Ok(Measured {
            wall,
            cpu,
            groups,
            paced,
            paced_groups,
        })
    };
    let (served, measured) = tokio::join!(service, work);
    served?;
    observer.close().await;
    db.close().await;
    measured
}
