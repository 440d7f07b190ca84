//! `just bench [TABLE...]`: what an event costs, printed as tables. Every figure is
//! measured in this run beside a baseline measured the same way: from the same starting
//! point, after the same warm-up, over several runs reported as min / median / max. The
//! header names the commit, the machine's load, and each backend with its durability
//! settings read from the live connection.
//!
//! Tables (pick some by name, e.g. `just bench hop rss`):
//! - `runtime`: one invocation through the inbox transaction, no Kafka;
//! - `throughput`: events/s through a route on the real broker, beside raw rdkafka;
//! - `hop`: latency of one hop (consume → invoke → commit → relay → produce) at light load;
//! - `rss`: resident memory of a `switchyard run` process working through a large backlog;
//! - `swap`: hot-swap latency, API call or file write to the first event on the new version.
//!
//! Needs `target/components/probe.wasm` (`just handlers`), PostgreSQL
//! (`SWITCHYARD_TEST_DATABASE_URL`) and Kafka (`SWITCHYARD_TEST_KAFKA_BROKERS`); `just
//! bench` starts both and exports them. A missing service stops the run with that fix:
//! no row quietly runs on something else. `BENCH_RUNS` (default 3), `BENCH_EVENTS`
//! (throughput events per run, default 2000) and `BENCH_BACKLOG` (default 1000000) size
//! the runs.

mod support;
mod tables {
    pub mod swap;
}

#[path = "../tests/it/common.rs"]
mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use switchyard::config::{ComponentSpec, Routing};
use switchyard::event::{InboundEvent, headers};
use switchyard::kafka::{Brokers, admin, dispatch, producer_config};
use switchyard::runtime::{LoadedComponent, Outcome, Runtime};
use switchyard::store::{Db, InboxEntry, OutboundMessage, Table as DbTable};
use tokio::sync::watch;
use tokio::task::JoinSet;

use common::Backend;
use support::{Spread, Table, mib, ms, percentile};

/// Events per run and warm-up events, per table.
const INVOCATIONS: usize = 400;
const INVOCATION_WARMUP: usize = 20;
const KAFKA_WARMUP: usize = 300;
const HOPS_PER_RUN: usize = 100;
const HOP_WARMUP: usize = 10;
/// Every Kafka input is padded to this size, so raw and routed cases move the same bytes.
const KAFKA_PAYLOAD: usize = 256;
const BACKLOG_PAYLOAD: usize = 1024;
/// How long the RSS table watches each host.
const RSS_WINDOW: Duration = Duration::from_secs(8);
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// A run that has not finished by then has lost events: fail instead of waiting forever.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> std::process::ExitCode {
    if !support::run_by_cargo_bench("bench") {
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

fn bench() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // `serve` borrows the brokers, which may be the embedded (non-Send) cluster, so the
    // host's top task runs on this thread; the routes it spawns run on the workers.
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(async {
        let stack = Stack::from_env().await?;
        stack.print_header(&settings);
        if settings.wants("runtime") {
            runtime_table(&settings).await?;
        }
        if settings.wants("throughput") {
            throughput_table(&stack, &settings).await?;
        }
        if settings.wants("hop") {
            hop_table(&stack, &settings).await?;
        }
        if settings.wants("rss") {
            rss_table(&stack, &settings).await?;
        }
        if settings.wants("swap") {
            tables::swap::swap_table().await?;
        }
        anyhow::Ok(())
    }))
}

struct Settings {
    runs: usize,
    /// Events per run of the throughput table.
    events: usize,
    backlog: usize,
    tables: Vec<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let number =
            |var: &str, default: usize| -> anyhow::Result<usize> {
                match std::env::var(var) {
                    Ok(v) => v.parse::<usize>().ok().filter(|n| *n > 0).with_context(|| {
                        format!("{var}={v:?} is not a positive whole number; unset it or give e.g. 3")
                    }),
                    Err(_) => Ok(default),
                }
            };
        let known = ["runtime", "throughput", "hop", "rss", "swap"];
        let tables: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
        if let Some(unknown) = tables.iter().find(|t| !known.contains(&t.as_str())) {
            bail!("no benchmark table {unknown:?}; the tables are {}", known.join(", "));
        }
        Ok(Settings {
            runs: number("BENCH_RUNS", 3)?,
            events: number("BENCH_EVENTS", 2000)?,
            backlog: number("BENCH_BACKLOG", 1_000_000)?,
            tables,
        })
    }

    fn wants(&self, table: &str) -> bool {
        self.tables.is_empty() || self.tables.iter().any(|t| t == table)
    }
}

/// The real services the rows run on.
struct Stack {
    servers: String,
    base: ClientConfig,
    sqlite: String,
    postgres: String,
}

impl Stack {
    async fn from_env() -> anyhow::Result<Stack> {
        // Every row runs on the service it names or the run stops here, with the fix.
        for var in ["SWITCHYARD_TEST_DATABASE_URL", "SWITCHYARD_TEST_KAFKA_BROKERS"] {
            if std::env::var_os(var).is_none() {
                bail!(
                    "{var} is not set: run `just bench`, which starts PostgreSQL and Kafka (scripts/services.sh) and exports it"
                );
            }
        }
        let servers = common::kafka_brokers();
        let base = Brokers::External(servers.clone()).client_config();
        let sqlite = BenchDb::new(Backend::Sqlite).await?;
        let postgres = BenchDb::new(Backend::Postgres).await?;
        let stack = Stack {
            servers,
            base,
            sqlite: support::durability(&sqlite.db).await?,
            postgres: support::durability(&postgres.db).await?,
        };
        sqlite.dispose().await?;
        postgres.dispose().await?;
        Ok(stack)
    }

    fn print_header(&self, settings: &Settings) {
        println!(
            "Switchyard benchmarks · commit {} · {}",
            support::commit(&common::workspace()),
            support::machine()
        );
        println!("- sqlite: {} (a fresh file per case)", self.sqlite);
        println!(
            "- postgres: {} (a fresh database per case, created with synchronous_commit=on)",
            self.postgres
        );
        println!("- kafka: {} (real broker; fresh topics per case)", self.servers);
        println!(
            "- {} runs per row (BENCH_RUNS), shown as median (min–max); a shared machine makes the spread wide",
            settings.runs
        );
    }

    fn producer(&self) -> anyhow::Result<FutureProducer> {
        let mut config = producer_config(&self.base);
        // The inputs go out as soon as they are sent, so latency rows do not wait on linger.
        config.set("linger.ms", "0");
        config.create().context("creating the benchmark's producer")
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// A fresh database for one case, which a second connection can also open.
struct BenchDb {
    db: Db,
    /// Where an independent connection finds the same database.
    url: String,
    dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    async fn new(backend: Backend) -> anyhow::Result<BenchDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let db = Db::open(None, dir.path()).await?;
                let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
                Ok(BenchDb {
                    db,
                    url,
                    dir: Some(dir),
                })
            }
            Backend::Postgres => {
                // Its own database on the test server, where commits are durable whatever
                // the server's default (the test scripts turn synchronous_commit off).
                let server = common::postgres_url().context("the PostgreSQL rows need SWITCHYARD_TEST_DATABASE_URL")?;
                let name = format!("sy_bench_{}", uuid::Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(&server)
                    .await
                    .context("connecting to the test PostgreSQL")?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
                sqlx::query(&format!("ALTER DATABASE {name} SET synchronous_commit = on"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                let (base, _) = server
                    .rsplit_once('/')
                    .context("SWITCHYARD_TEST_DATABASE_URL has no database name")?;
                let url = format!("{base}/{name}");
                let db = Db::open(Some(&url), Path::new(".")).await?;
                Ok(BenchDb { db, url, dir: None })
            }
        }
    }

    /// A second handle on the same database with its own connection, so that watching
    /// progress never queues on the connection the host works with.
    async fn observer(&self) -> anyhow::Result<Db> {
        Ok(Db::open(Some(&self.url), Path::new(".")).await?)
    }

    fn data_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Closes the database and drops it from the PostgreSQL server.
    async fn dispose(self) -> anyhow::Result<()> {
        self.db.close().await;
        if self.dir.is_none() {
            let (server, name) = self.url.rsplit_once('/').context("database URL without a name")?;
            let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await?;
            // FORCE may not end an autovacuum worker, which has no role ("must be a member
            // of the role whose process is being terminated", seen after 5,000-event runs);
            // the worker soon goes, so try again rather than fail the whole bench.
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let mut tries = 0;
            while let Err(err) = sqlx::query(&drop).execute(&admin).await {
                tries += 1;
                if tries == 20 {
                    return Err(err).with_context(|| format!("dropping the bench database {name}"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            admin.close().await;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- runtime (no Kafka)

fn probe(publishes: &[&str]) -> ComponentSpec {
    common::spec("bench", "probe", publishes)
}

fn invocation_event(i: usize, plan: &serde_json::Value) -> InboundEvent {
    let mut payload = serde_json::to_vec(plan).unwrap();
    payload.resize(payload.len().max(1024), b' ');
    let at = switchyard::event::LogPosition {
        offset: i as i64,
        ..common::at("bench.in")
    };
    InboundEvent::from_message(
        &at,
        None,
        payload,
        vec![(headers::EVENT_ID.into(), uuid::Uuid::new_v4().to_string())],
        Some(0),
    )
}

/// One row of the runtime table.
enum Work {
    /// The database work of an invocation without wasm: the inbox claim, and with
    /// `effects` a write and an outbox row. The baseline of the invocations after it.
    BareTransaction {
        effects: bool,
    },
    Invoke(LoadedComponent, serde_json::Value),
}

impl Work {
    /// Runs `n` events one after another; returns the time per event.
    async fn run(&self, runtime: &Runtime, db: &Db, n: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for i in 0..n {
            match self {
                Work::BareTransaction { effects } => bare_transaction(db, i, *effects).await?,
                Work::Invoke(component, plan) => {
                    let outcome = runtime.invoke(component, db, &invocation_event(i, plan)).await?;
                    anyhow::ensure!(matches!(outcome, Outcome::Committed(_)), "invocation: {outcome:?}");
                }
            }
        }
        Ok(start.elapsed() / n as u32)
    }
}

async fn bare_transaction(db: &Db, i: usize, effects: bool) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().to_string();
    let message = OutboundMessage {
        topic: "bench.out".into(),
        key: None,
        payload: vec![b'x'; 64],
        headers: vec![],
    };
    let mut tx = db.begin().await?;
    let entry = InboxEntry {
        component: "bare",
        event_id: &id,
        topic: "bench.in",
        partition: 0,
        offset: i as i64,
        ..Default::default()
    };
    anyhow::ensure!(tx.claim_inbox(&entry).await?, "fresh event id {id} was claimed before");
    if effects {
        tx.put("bare", "k", b"v").await?;
        tx.insert_outbox(&id, "bare", &message).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn runtime_table(settings: &Settings) -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let noop = json!({"steps": []});
    let effect = json!({"steps": [
        {"op": "put", "key": "k", "value": "v"},
        {"op": "publish", "topic": "bench.out", "key": null, "payload": "x".repeat(64)}
    ]});
    let mut table = Table::new(
        format!(
            "Runtime: one event (1 KB) through the inbox transaction, no Kafka; {INVOCATIONS} events per run after {INVOCATION_WARMUP} warm-up events"
        ),
        &["case", "backend", "µs/event", "events/s", "× baseline time"],
    );
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = BenchDb::new(backend).await?;
        let rows = [
            (
                "bare tx: inbox claim, no wasm (baseline)",
                Work::BareTransaction { effects: false },
            ),
            (
                "fresh instance + handle, no effects",
                Work::Invoke(runtime.load(&probe(&[]))?, noop.clone()),
            ),
            (
                "bare tx: inbox + put + outbox, no wasm (baseline)",
                Work::BareTransaction { effects: true },
            ),
            (
                "fresh instance + handle, 1 write + 1 publish",
                Work::Invoke(runtime.load(&probe(&["bench.out"]))?, effect.clone()),
            ),
        ];
        let mut baseline = f64::NAN;
        for (name, work) in rows {
            work.run(&runtime, &db.db, INVOCATION_WARMUP).await?;
            let mut spread = Spread::default();
            for _ in 0..settings.runs {
                spread.push(work.run(&runtime, &db.db, INVOCATIONS).await?.as_secs_f64());
            }
            if matches!(work, Work::BareTransaction { .. }) {
                baseline = spread.median();
            }
            table.row(vec![
                name.into(),
                backend_name(backend).into(),
                spread.show(|s| format!("{:.0}", s * 1e6)),
                format!("{:.0}", 1.0 / spread.median()),
                format!("{:.2}", spread.median() / baseline),
            ]);
        }
        db.dispose().await?;
    }
    table.note("µs/event: median (min–max) over the runs; events/s and × baseline time (invocation ÷ the bare transaction above it) from the medians.");
    table.print();
    Ok(())
}

// ---------------------------------------------------------------- Kafka pipelines

/// What carries events from `<prefix>.in` in one case, and where its work counts as done.
#[derive(Clone, Copy)]
enum Kind {
    /// A consumer configured like a route's, doing nothing: done when consumed.
    RawConsume,
    /// That consumer forwarding each event to `<prefix>.out`: done when it is read there.
    RawPipe,
    /// `switchyard::service::serve` with the probe. With effects (a write and a publish
    /// per event) done when the relayed output is read from `<prefix>.out`; without,
    /// when the inbox row is committed.
    Routed { backend: Backend, effects: bool },
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::RawConsume => "raw rdkafka consume (baseline)".into(),
            Kind::RawPipe => "raw rdkafka consume → produce (baseline)".into(),
            Kind::Routed { backend, effects } => format!(
                "routed, {}, {}",
                if effects { "1 write + 1 publish" } else { "no-op" },
                backend_name(backend)
            ),
        }
    }

    fn done_at(self) -> &'static str {
        match self {
            Kind::RawConsume => "consumed",
            Kind::Routed { effects: false, .. } => "inbox committed",
            Kind::RawPipe | Kind::Routed { effects: true, .. } => "output consumed",
        }
    }
}

/// How many events are done, and when the last of them was seen.
type Progress = watch::Receiver<(u64, Instant)>;

/// Where a case's finished events are counted.
enum Watcher {
    /// A task reading Kafka reports each event as it sees it.
    Kafka(Progress),
    /// Committed inbox rows, counted through a connection of its own. Polled more
    /// rarely as a run goes on (every 0.5 % of the elapsed time, at least 1 ms), so the
    /// end is seen within 0.5 % and the counting does not take CPU from the host.
    Inbox(Db),
}

impl Watcher {
    async fn done(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Watcher::Kafka(progress) => progress.borrow().0,
            Watcher::Inbox(db) => db.count(DbTable::Inbox).await? as u64,
        })
    }

    /// Waits until `target` events are done; returns when the last was seen.
    async fn reach(&mut self, target: u64, start: Instant) -> anyhow::Result<Instant> {
        match self {
            Watcher::Kafka(progress) => Ok(progress
                .wait_for(|(done, _)| *done >= target)
                .await
                .map(|seen| seen.1)
                .context("the Kafka watcher stopped")?),
            Watcher::Inbox(db) => loop {
                if db.count(DbTable::Inbox).await? as u64 >= target {
                    return Ok(Instant::now());
                }
                tokio::time::sleep((start.elapsed() / 200).max(Duration::from_millis(1))).await;
            },
        }
    }
}

/// One case's topics, consumers and (for routed cases) host, warmed up and ready.
struct Pipeline {
    prefix: String,
    kind: Kind,
    base: ClientConfig,
    producer: FutureProducer,
    watcher: Watcher,
    duplicates: Arc<AtomicU64>,
    next: usize,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    db: Option<BenchDb>,
    _dir: tempfile::TempDir,
}

/// A routing file for one case: `<prefix>.in` and `<prefix>.out` with 3 partitions each,
/// the probe as component `bench` allowed to publish to `.out`, one route in → bench.
fn bench_routing(dir: &Path, prefix: &str, group: &str, read: &str) -> anyhow::Result<(PathBuf, Routing)> {
    let text = format!(
        "[topics.\"{prefix}.in\"]\npartitions = 3\n[topics.\"{prefix}.out\"]\npartitions = 3\n\
         [topics.\"{prefix}.idle\"]\npartitions = 3\n\
         [components.bench]\nartifact = \"{}\"\npublishes = [\"{prefix}.out\"]\n\
         [[routes]]\ntopic = \"{prefix}.{read}\"\ncomponent = \"bench\"\ngroup = \"{group}\"\n",
        common::artifact("probe").display()
    );
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(&path, text)?;
    let routing = Routing::load(&path)?;
    Ok((path, routing))
}

/// The input of event `i`: a probe plan, padded to [`KAFKA_PAYLOAD`], keyed `k<i>`.
fn kafka_payload(prefix: &str, i: usize, effects: bool) -> String {
    let plan = if effects {
        json!({"steps": [
            {"op": "put", "key": format!("k{i}"), "value": "v"},
            {"op": "publish", "topic": format!("{prefix}.out"), "key": format!("k{i}"), "payload": i.to_string()}
        ]})
    } else {
        json!({"steps": []})
    };
    let mut text = plan.to_string();
    let width = KAFKA_PAYLOAD.max(text.len());
    text.extend(std::iter::repeat_n(' ', width - text.len()));
    text
}

/// Enqueues a message without waiting for it; when the producer's queue is full, waits
/// for the oldest outstanding delivery and tries again.
async fn enqueue(
    producer: &FutureProducer,
    pending: &mut std::collections::VecDeque<DeliveryFuture>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
            Ok(delivery) => {
                pending.push_back(delivery);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => match pending.pop_front() {
                Some(oldest) => check_delivery(oldest).await?,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            },
            Err((err, _)) => bail!("producing to {topic}: {err}"),
        }
    }
}

async fn check_delivery(delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => bail!("a benchmark input was not delivered: {err}"),
        Err(_) => bail!("the producer dropped a benchmark input"),
    }
}

/// Reads every partition of `topic` from the beginning and counts distinct keys; a key
/// seen again counts as a duplicate.
fn spawn_observer(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    base: &ClientConfig,
    topic: String,
    progress: watch::Sender<(u64, Instant)>,
    duplicates: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut config = base.clone();
    config
        .set("group.id", format!("{topic}-observer"))
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    tasks.spawn(async move {
        let mut seen = HashSet::new();
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m?,
                _ = stop.changed() => return Ok(()),
            };
            let key = message.key().map(|k| k.to_vec()).unwrap_or_default();
            if seen.insert(key) {
                progress.send_replace((seen.len() as u64, Instant::now()));
            } else {
                duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

impl Pipeline {
    async fn start(stack: &Stack, kind: Kind) -> anyhow::Result<Pipeline> {
        let prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = tempfile::tempdir()?;
        let (_, routing) = bench_routing(dir.path(), &prefix, &format!("{prefix}-route"), "in")?;
        let base = stack.base.clone();
        admin::sync_topics(&base, &routing).await?;
        for topic in ["in", "out"] {
            support::end_offsets(&base, &format!("{prefix}.{topic}"), 3)?;
        }
        let (stop, stopped) = watch::channel(false);
        let (progress_tx, progress) = watch::channel((0, Instant::now()));
        let mut watcher = Watcher::Kafka(progress);
        let duplicates = Arc::new(AtomicU64::new(0));
        let producer = stack.producer()?;
        let mut tasks = JoinSet::new();
        let mut db = None;
        match kind {
            Kind::RawConsume | Kind::RawPipe => {
                let consumer: StreamConsumer = dispatch::consumer_config(&base, &routing.routes[0]).create()?;
                consumer.subscribe(&[&format!("{prefix}.in")])?;
                let forward = matches!(kind, Kind::RawPipe).then(|| (producer.clone(), format!("{prefix}.out")));
                // Consume → produce is done when the observer reads the output back.
                let consumed = if forward.is_some() {
                    spawn_observer(
                        &mut tasks,
                        &base,
                        format!("{prefix}.out"),
                        progress_tx,
                        duplicates.clone(),
                        stopped.clone(),
                    )?;
                    None
                } else {
                    Some(progress_tx)
                };
                let mut stopped = stopped.clone();
                tasks.spawn(async move {
                    let mut count = 0;
                    loop {
                        let message = tokio::select! {
                            m = consumer.recv() => m?,
                            _ = stopped.changed() => return Ok(()),
                        };
                        if let Some((producer, topic)) = &forward {
                            let mut record = FutureRecord::to(topic).payload(message.payload().unwrap_or_default());
                            if let Some(key) = message.key() {
                                record = record.key(key);
                            }
                            // Delivery is checked by the observer reading it back.
                            let _delivery = producer.send_result(record).map_err(|(e, _)| e)?;
                        }
                        count += 1;
                        if let Some(progress) = &consumed {
                            progress.send_replace((count, Instant::now()));
                        }
                    }
                });
            }
            Kind::Routed { backend, effects } => {
                let bench_db = BenchDb::new(backend).await?;
                if effects {
                    spawn_observer(
                        &mut tasks,
                        &base,
                        format!("{prefix}.out"),
                        progress_tx,
                        duplicates.clone(),
                        stopped.clone(),
                    )?;
                } else {
                    watcher = Watcher::Inbox(bench_db.observer().await?);
                }
                let brokers = Brokers::External(stack.servers.clone());
                let host_db = bench_db.db.clone();
                let shutdown = stopped.clone();
                tasks.spawn_local(
                    async move { switchyard::service::serve(&routing, host_db, &brokers, shutdown).await },
                );
                db = Some(bench_db);
            }
        }
        let mut pipeline = Pipeline {
            prefix,
            kind,
            base,
            producer,
            watcher,
            duplicates,
            next: 0,
            stop,
            tasks,
            db,
            _dir: dir,
        };
        // The same warm-up for every kind: joining the group, loading the component,
        // filling the instance pool and the relay all happen before any clock starts.
        pipeline.run(KAFKA_WARMUP).await?;
        Ok(pipeline)
    }

    fn effects(&self) -> bool {
        !matches!(self.kind, Kind::Routed { effects: false, .. })
    }

    /// Sends `n` events at once and waits until all are done; returns the time from the
    /// first send to the moment the last one was seen done.
    async fn run(&mut self, n: usize) -> anyhow::Result<Duration> {
        let before = self.watcher.done().await?;
        let target = before + n as u64;
        let topic = format!("{}.in", self.prefix);
        let mut pending = std::collections::VecDeque::with_capacity(n);
        let start = Instant::now();
        for i in self.next..self.next + n {
            let payload = kafka_payload(&self.prefix, i, self.effects());
            enqueue(
                &self.producer,
                &mut pending,
                &topic,
                &format!("k{i}"),
                payload.as_bytes(),
            )
            .await?;
        }
        self.next += n;
        let done_at = match tokio::time::timeout(RUN_TIMEOUT, self.watcher.reach(target, start)).await {
            Ok(Ok(at)) => at,
            Ok(Err(err)) => bail!("{}: {err:#}: {:?}", self.kind.name(), self.failure().await),
            Err(_) => bail!(
                "{}: only {} of {n} events done after {RUN_TIMEOUT:?}",
                self.kind.name(),
                self.watcher.done().await? - before
            ),
        };
        for delivery in pending {
            check_delivery(delivery).await?;
        }
        Ok(done_at.saturating_duration_since(start))
    }

    /// The first error of a task that ended early.
    async fn failure(&mut self) -> Option<String> {
        let _ = self.stop.send(true);
        while let Some(result) = self.tasks.join_next().await {
            match result {
                Ok(Err(err)) => return Some(format!("{err:#}")),
                Err(err) => return Some(err.to_string()),
                Ok(Ok(())) => {}
            }
        }
        None
    }

    /// Stops the host and watchers, deletes the topics and the database.
    async fn finish(mut self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        while let Some(result) = self.tasks.join_next().await {
            result??;
        }
        let admin: AdminClient<DefaultClientContext> = self.base.create()?;
        let topics = ["in", "out", "idle", "in.dlq", "idle.dlq"].map(|t| format!("{}.{t}", self.prefix));
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin.delete_topics(&topics, &AdminOptions::new()).await?;
        if let Some(db) = self.db.take() {
            db.dispose().await?;
        }
        Ok(self.duplicates.load(Ordering::Relaxed))
    }
}

async fn throughput_table(stack: &Stack, settings: &Settings) -> anyhow::Result<()> {
    let mut table = Table::new(
        format!(
            "Throughput: {} events ({KAFKA_PAYLOAD} B, 3 partitions) sent at once per run, real broker, after {KAFKA_WARMUP} warm-up events",
            settings.events
        ),
        &["case", "done when", "µs/event", "events/s", "× baseline time"],
    );
    let cases = [
        (Kind::RawConsume, None),
        (
            Kind::Routed {
                backend: Backend::Sqlite,
                effects: false,
            },
            Some(0),
        ),
        (
            Kind::Routed {
                backend: Backend::Postgres,
                effects: false,
            },
            Some(0),
        ),
        (Kind::RawPipe, None),
        (
            Kind::Routed {
                backend: Backend::Sqlite,
                effects: true,
            },
            Some(3),
        ),
        (
            Kind::Routed {
                backend: Backend::Postgres,
                effects: true,
            },
            Some(3),
        ),
    ];
    let mut medians = Vec::new();
    let mut duplicates = 0;
    for (kind, baseline_row) in cases {
        let mut pipeline = Pipeline::start(stack, kind).await?;
        let mut spread = Spread::default();
        for _ in 0..settings.runs {
            spread.push(pipeline.run(settings.events).await?.as_secs_f64() / settings.events as f64);
        }
        duplicates += pipeline.finish().await?;
        medians.push(spread.median());
        let ratio = baseline_row.map_or("1.00 (baseline)".to_string(), |b: usize| {
            format!("{:.1}", spread.median() / medians[b])
        });
        table.row(vec![
            kind.name(),
            kind.done_at().into(),
            spread.show(|s| format!("{:.1}", s * 1e6)),
            spread.map(|s| 1.0 / s).show(|r| format!("{r:.0}")),
            ratio,
        ]);
    }
    table.note("Each run starts its clock before the first send, with every consumer already in its group and warm, and stops when the last event is done: consumed (raw), its inbox row committed (no-op; counted through a separate connection, polled every 0.5 % of the elapsed time), or its relayed output read back from the output topic.");
    table.note("No-op rows are compared with raw consume, write + publish rows with raw consume → produce; × baseline time is routed µs/event ÷ baseline µs/event (medians).");
    table.note(format!(
        "Duplicated outputs seen: {duplicates} (exactly-once expects 0)."
    ));
    table.print();
    Ok(())
}

async fn hop_table(stack: &Stack, settings: &Settings) -> anyhow::Result<()> {
    let mut table = Table::new(
        format!(
            "One hop at light load: send an event, read its output; one event in flight, 0–4 ms apart, {HOPS_PER_RUN} hops per run after {HOP_WARMUP} warm-up hops"
        ),
        &["case", "p50", "p90", "p99", "max (all runs)"],
    );
    for kind in [
        Kind::RawPipe,
        Kind::Routed {
            backend: Backend::Sqlite,
            effects: true,
        },
        Kind::Routed {
            backend: Backend::Postgres,
            effects: true,
        },
    ] {
        let mut pipeline = Pipeline::start(stack, kind).await?;
        for _ in 0..HOP_WARMUP {
            pipeline.run(1).await?;
        }
        let (mut p50, mut p90, mut p99, mut max) =
            (Spread::default(), Spread::default(), Spread::default(), Duration::ZERO);
        for _ in 0..settings.runs {
            let mut samples = Vec::with_capacity(HOPS_PER_RUN);
            for _ in 0..HOPS_PER_RUN {
                // A gap that varies, so sends do not lock into phase with any poll interval.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                let gap = u64::from(now.subsec_nanos()) % 4_000;
                tokio::time::sleep(Duration::from_micros(gap)).await;
                samples.push(pipeline.run(1).await?);
            }
            samples.sort();
            p50.push(percentile(&samples, 50.0).as_secs_f64());
            p90.push(percentile(&samples, 90.0).as_secs_f64());
            p99.push(percentile(&samples, 99.0).as_secs_f64());
            max = max.max(*samples.last().unwrap());
        }
        pipeline.finish().await?;
        let show = |s: &Spread| s.show(|v| format!("{:.2}", v * 1e3));
        table.row(vec![kind.name(), show(&p50), show(&p90), show(&p99), ms(max)]);
    }
    table.note("A hop: the bench produces an event; the route consumes it, invokes, commits and relays its output (the baseline consumes and produces it back at once); the bench reads the output.");
    table.note("Latencies in ms, each a median (min–max) over the runs' percentiles, from just before the send to the moment the output was read: both ends' client latency is in every row, the baseline's too.");
    table.print();
    Ok(())
}

/// The `switchyard` binary of this build, which `cargo bench` builds with the benches.
fn host_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// What [`watch_host`] saw.
struct HostMemory {
    handled: i64,
    /// KiB resident halfway through the window and at its end (a plateau or a climb).
    rss_half: u64,
    rss_end: u64,
    /// KiB, the most the process ever held (VmHWM).
    peak: u64,
}

/// Runs `switchyard run` on one route for `window`, sampling its memory every 100 ms.
async fn watch_host(
    stack: &Stack,
    db: &BenchDb,
    config: &Path,
    window: Duration,
    log: &Path,
) -> anyhow::Result<HostMemory> {
    let mut command = std::process::Command::new(host_binary());
    command.arg("--config").arg(config).args(["--brokers", &stack.servers]);
    match db.data_dir() {
        Some(dir) => command.arg("--data-dir").arg(dir),
        None => command.args(["--database-url", &db.url]),
    };
    let log_file = std::fs::File::create(log)?;
    let mut child = command
        .arg("run")
        .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("SWITCHYARD_LOG", "warn")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", host_binary().display()))?;
    let pid = child.id();
    let start = Instant::now();
    let (mut last, mut half) = ((0, 0), None);
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            bail!("the host exited early ({status}); its log:\n{output}");
        }
        last = support::rss_kib(pid).context("reading the host's /proc status")?;
        if start.elapsed() >= window / 2 {
            half.get_or_insert(last.0);
        }
    }
    let handled = db.observer().await?.count(DbTable::Inbox).await?;
    // SIGTERM: the host drains and stops; it is killed if it takes too long.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stopping = Instant::now();
    while child.try_wait()?.is_none() {
        if stopping.elapsed() > Duration::from_secs(15) {
            child.kill()?;
            child.wait()?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(HostMemory {
        handled,
        rss_half: half.unwrap_or(last.0),
        rss_end: last.0,
        peak: last.1,
    })
}

async fn rss_table(stack: &Stack, settings: &Settings) -> anyhow::Result<()> {
    let prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let dir = tempfile::tempdir()?;
    let (_, routing) = bench_routing(dir.path(), &prefix, "topics", "in")?;
    admin::sync_topics(&stack.base, &routing).await?;
    support::end_offsets(&stack.base, &format!("{prefix}.in"), 3)?;
    support::end_offsets(&stack.base, &format!("{prefix}.idle"), 3)?;

    // The backlog: no-op plans padded to 1 KB, written before any host starts.
    let produce_start = Instant::now();
    let producer = stack.producer()?;
    let topic = format!("{prefix}.in");
    let payload = {
        let mut p = json!({"steps": []}).to_string();
        p.extend(std::iter::repeat_n(' ', BACKLOG_PAYLOAD - p.len()));
        p
    };
    let mut pending = std::collections::VecDeque::new();
    for i in 0..settings.backlog {
        enqueue(&producer, &mut pending, &topic, &format!("k{i}"), payload.as_bytes()).await?;
    }
    for delivery in pending {
        check_delivery(delivery).await?;
    }
    let produced_in = produce_start.elapsed();

    let mut table = Table::new(
        format!(
            "Host memory: `switchyard run` (this build) on one no-op route, real broker; backlog of {} events × {BACKLOG_PAYLOAD} B written beforehand",
            settings.backlog
        ),
        &[
            "case",
            "backend",
            "watched",
            "events handled",
            "RSS at half",
            "RSS at end",
            "peak RSS",
        ],
    );
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for (case, read, window) in [
            ("idle host, empty topic (baseline)", "idle", IDLE_WINDOW),
            ("host working through the backlog", "in", RSS_WINDOW),
        ] {
            let db = BenchDb::new(backend).await?;
            let group = format!("{prefix}-{}-{read}", backend_name(backend));
            let (config, _) = bench_routing(dir.path(), &prefix, &group, read)?;
            let log = dir.path().join(format!("{group}.log"));
            let memory = watch_host(stack, &db, &config, window, &log).await?;
            db.dispose().await?;
            table.row(vec![
                case.into(),
                backend_name(backend).into(),
                format!("{} s", window.as_secs()),
                memory.handled.to_string(),
                mib(memory.rss_half),
                mib(memory.rss_end),
                mib(memory.peak),
            ]);
        }
    }
    let admin: AdminClient<DefaultClientContext> = stack.base.create()?;
    let topics = ["in", "out", "idle", "in.dlq", "idle.dlq"].map(|t| format!("{prefix}.{t}"));
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin.delete_topics(&topics, &AdminOptions::new()).await?;
    table.note(format!(
        "The backlog is {} events (BENCH_BACKLOG, default 1,000,000: issue #7's figure; about 1 GB on the broker), written in {:.1} s. The host reads it from the start and is watched for the window only; the memory it holds is what matters, not draining it.",
        settings.backlog,
        produced_in.as_secs_f64()
    ));
    table.note("RSS is VmRSS of the host process halfway through and at the end of the window, peak RSS its VmHWM.");
    table.print();
    Ok(())
}
