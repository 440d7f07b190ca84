//! `just load RATE DURATION [--brokers B] [--database-url U]`: drives the order saga at a
//! fixed open-loop rate and prints how long orders take to reach their final status.
//!
//! Orders (`OrderCreationRequested`) go to `orders.requests` on a schedule, one every
//! 1/RATE s for DURATION s, and never wait for answers: a slow host makes orders queue,
//! it does not slow the sender down. Each order's latency runs from its *scheduled* send
//! time to the moment its final `OrderStatusUpdated` is read from `orders.status`, so
//! time spent queueing is counted (no coordinated omission). The host is
//! `switchyard::service::serve` in this process with the shipped `topics.toml` and the
//! real components from `target/components` (`just handlers`). Users are registered and
//! funded first, so every order should end `PAID`.
//!
//! Without `--brokers` / `--database-url` (or `SWITCHYARD_BROKERS` /
//! `SWITCHYARD_DATABASE_URL`) it runs on the embedded defaults: the in-process broker and
//! SQLite in a temporary directory.

mod support;

#[path = "../tests/it/common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use switchyard::config::Routing;
use switchyard::kafka::{Brokers, admin, producer_config};
use switchyard::store::Db;
use tokio::sync::{mpsc, watch};

use support::{Table, mib, ms, percentile};

/// Statuses after which an order does not change any more.
const FINAL: [&str; 4] = ["PAID", "INSUFFICIENT_FUNDS", "PAYMENT_TIMEOUT", "REJECTED"];
/// Orders sent one at a time before the schedule starts, not counted.
const WARMUP_ORDERS: usize = 5;
/// What every user is given: far more than the run's orders cost (1.00 each).
const DEPOSIT: f64 = 1_000_000.0;
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(
    name = "load",
    about = "Open-loop load through the order saga: latency from orders.requests to the final orders.status"
)]
struct Args {
    /// Orders per second, sent on a fixed schedule whatever the answers.
    #[arg(default_value_t = 100.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(default_value_t = 10.0)]
    duration: f64,
    /// Kafka bootstrap servers; the embedded broker without them.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    brokers: Option<String>,
    /// PostgreSQL URL; SQLite in a temporary directory without it.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    database_url: Option<String>,
    /// Users the orders are spread over (orders are keyed by user, so this spreads them
    /// over partitions).
    #[arg(long, default_value_t = 30)]
    users: usize,
    /// Seconds to wait for the last final statuses after the last order was sent.
    #[arg(long, default_value_t = 60)]
    drain: u64,
    /// Set by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    if !support::run_by_cargo_bench("load") {
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(drive(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The shipped routing with the components of this checkout and a consumer group of this
/// run for each route (one group per route, as the host requires).
fn saga_routing(dir: &Path, run: &str) -> anyhow::Result<Routing> {
    let root = common::workspace();
    let mut text = std::fs::read_to_string(root.join("topics.toml")).context("reading the shipped topics.toml")?;
    for component in ["order", "billing", "user", "notif"] {
        // Fails with the fix when an artifact is missing or older than its sources.
        let artifact = common::artifact(component);
        text = text.replace(
            &format!("artifact = \"target/components/{component}.wasm\""),
            &format!("artifact = \"{}\"", artifact.display()),
        );
    }
    // A route's `component = "..."` line gets a group line after it.
    let mut routes = 0;
    let text: String = text
        .lines()
        .map(|line| match line.trim().strip_prefix("component = \"") {
            Some(rest) => {
                routes += 1;
                let component = rest.trim_end_matches('"');
                format!("{line}\ngroup = \"{run}-{component}-{routes}\"\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    let path = dir.join("topics.toml");
    std::fs::write(&path, text)?;
    Ok(Routing::load(&path)?)
}

/// The topics the saga's critical path crosses, read for the final status and for when
/// each leg's event was produced.
const WATCHED: [&str; 3] = ["orders.created", "billing.payments", "orders.status"];

/// One event of an order as read from a [`WATCHED`] topic.
struct Seen {
    topic: &'static str,
    request_id: String,
    /// The status of an `orders.status` update.
    status: String,
    /// When the relay produced it (the message's create time), ms since the epoch.
    produced_ms: i64,
    read_ms: i64,
    at: Instant,
}

/// Reads the [`WATCHED`] topics from their current ends, forwarding every event.
fn read_watched(
    base: &ClientConfig,
    partitions: i32,
    run: &str,
    seen: mpsc::UnboundedSender<Seen>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let mut assignment = TopicPartitionList::new();
    for topic in WATCHED {
        let ends = support::end_offsets(base, topic, partitions)?;
        for (partition, end) in ends.into_iter().enumerate() {
            assignment.add_partition_offset(topic, partition as i32, Offset::Offset(end))?;
        }
    }
    let mut config = base.clone();
    config
        .set("group.id", format!("{run}-observer"))
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create()?;
    consumer.assign(&assignment)?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m?,
                _ = stop.changed() => return Ok(()),
            };
            let at = Instant::now();
            let read_ms = switchyard::store::now_ms();
            let Some(topic) = WATCHED.into_iter().find(|t| *t == message.topic()) else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
            let event = Seen {
                topic,
                request_id: field("requestId"),
                status: field("status"),
                produced_ms: message.timestamp().to_millis().unwrap_or(read_ms),
                read_ms,
                at,
            };
            if seen.send(event).is_err() {
                return Ok(());
            }
        }
    }))
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &Value) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&value.to_string()),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(err, _)| anyhow::anyhow!("producing to {topic}: {err}"))?;
    Ok(())
}

/// Polls `probe` every 100 ms until it holds, failing after [`SETUP_TIMEOUT`].
async fn wait_until<F, Fut>(what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while !probe().await? {
        if start.elapsed() > SETUP_TIMEOUT {
            bail!("setup: timed out after {SETUP_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn stored(db: &Db, component: &str, key: &str) -> anyhow::Result<Option<Value>> {
    Ok(match db.peek(component, key).await? {
        Some(bytes) => Some(serde_json::from_slice(&bytes)?),
        None => None,
    })
}

fn order(request_id: &str, username: &str) -> Value {
    json!({
        "requestId": request_id, "username": username,
        "items": [{"productId": "p1", "quantity": 1, "price": 1.0}],
        "deliveryAddress": "1 Main St", "paymentMethod": "card",
        "createdAt": switchyard::store::now_ms()
    })
}

/// Registers and funds every user, and waits until the saga's state shows it.
async fn set_up_users(producer: &FutureProducer, db: &Db, users: &[String]) -> anyhow::Result<()> {
    for user in users {
        let registered =
            json!({"username": user, "email": format!("{user}@example.com"), "registeredAt": 1, "source": "load"});
        send(producer, "users.registered", user, &registered).await?;
    }
    for user in users {
        wait_until(&format!("the profile and account of {user}"), || async {
            Ok(stored(db, "user", &format!("profile/{user}")).await?.is_some()
                && stored(db, "billing", &format!("account/{user}")).await?.is_some())
        })
        .await?;
    }
    for user in users {
        let deposit =
            json!({"requestId": format!("{user}-deposit"), "username": user, "amount": DEPOSIT, "requestedAt": 2});
        send(producer, "billing.deposits", user, &deposit).await?;
    }
    for user in users {
        wait_until(&format!("the deposit of {user}"), || async {
            let account = stored(db, "billing", &format!("account/{user}")).await?;
            Ok(account.is_some_and(|a| a["balanceMinor"].as_i64().unwrap_or(0) >= (DEPOSIT * 100.0) as i64))
        })
        .await?;
    }
    Ok(())
}

/// What the sender saw.
struct Sent {
    /// Orders handed to the producer.
    count: usize,
    /// Worst delay between an order's scheduled time and its send: when this is large
    /// the driver itself could not keep the rate.
    worst_lag: Duration,
    /// Orders the broker did not acknowledge.
    failed: usize,
}

/// Sends `orders` (key, payload), the i-th at `start + i / rate`, without waiting for
/// answers or acknowledgements on the way.
async fn send_on_schedule(
    producer: FutureProducer,
    orders: Vec<(String, String)>,
    start: Instant,
    rate: f64,
) -> anyhow::Result<Sent> {
    let mut deliveries = Vec::with_capacity(orders.len());
    let mut worst_lag = Duration::ZERO;
    for (i, (key, payload)) in orders.iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        worst_lag = worst_lag.max(at.elapsed());
        // No switchyard-* headers: only the host sets those; an event from outside is
        // identified by its position in the log.
        let record = FutureRecord::to("orders.requests").key(key).payload(payload);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                bail!("the producer's queue is full after {i} orders: the broker does not keep up with {rate}/s")
            }
            Err((err, _)) => bail!("producing order {i}: {err}"),
        }
    }
    let mut failed = 0;
    for delivery in deliveries {
        if !matches!(delivery.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    Ok(Sent {
        count: orders.len(),
        worst_lag,
        failed,
    })
}

/// The legs of an order's way to its final status, each from the end of the one before.
const LEGS: [&str; 7] = [
    "sent → order's commit (orders.requests)",
    "→ relayed to orders.created",
    "→ billing's commit",
    "→ relayed to billing.payments",
    "→ order's commit",
    "→ relayed to orders.status",
    "→ read by the driver",
];

/// Orders whose legs are timed at most (spread evenly over the run).
const LEG_SAMPLES: usize = 500;

/// Each leg's duration (ms) for up to [`LEG_SAMPLES`] orders that reached a final status:
/// commits from the host's inbox (`handled_at_ms`, taken in the commit), relaying from the
/// messages' create times, the first leg from the order's scheduled send time.
async fn legs(
    db: &Db,
    run: &str,
    finals: &HashMap<usize, (String, Duration, Instant)>,
    produced: &HashMap<(&str, usize), i64>,
    status_read: &HashMap<usize, i64>,
    start_ms: i64,
    rate: f64,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let mut done: Vec<usize> = finals.keys().copied().collect();
    done.sort_unstable();
    let step = done.len().div_ceil(LEG_SAMPLES).max(1);
    let mut legs = vec![Vec::new(); LEGS.len()];
    for &i in done.iter().step_by(step) {
        let timeline = db.request_timeline(&format!("{run}-o{i}"), 50).await?;
        let handled = |topic: &str| timeline.iter().find(|e| e.topic == topic).map(|e| e.handled_at_ms);
        let sent = start_ms + (i as f64 * 1000.0 / rate).round() as i64;
        let points = [
            Some(sent),
            handled("orders.requests"),
            produced.get(&("orders.created", i)).copied(),
            handled("orders.created"),
            produced.get(&("billing.payments", i)).copied(),
            handled("billing.payments"),
            produced.get(&("orders.status", i)).copied(),
            status_read.get(&i).copied(),
        ];
        if let Some(points) = points.into_iter().collect::<Option<Vec<i64>>>() {
            for (leg, pair) in legs.iter_mut().zip(points.windows(2)) {
                leg.push(pair[1] - pair[0]);
            }
        }
    }
    for leg in &mut legs {
        leg.sort_unstable();
    }
    Ok(legs)
}

/// What a run produced.
struct Outcome {
    total: usize,
    users: usize,
    /// Final status, latency and arrival of each order that reached one, by index.
    finals: HashMap<usize, (String, Duration, Instant)>,
    /// Per leg ([`LEGS`]), the sampled orders' durations in ms, sorted.
    legs: Vec<Vec<i64>>,
    /// Final statuses seen more than once.
    repeated: usize,
    sent: Sent,
}

/// Sets up users, warms up, sends the schedule and collects the final statuses.
async fn scenario(
    args: &Args,
    run: &str,
    brokers: &Brokers,
    db: &Db,
    status_partitions: i32,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let total = (args.rate * args.duration).round() as usize;
    let (status_tx, mut statuses) = mpsc::unbounded_channel();
    // The host's consumer settings: on the embedded broker a fetch is answered only when
    // fetch.wait.max.ms is over, and with librdkafka's default (500 ms) the reader added
    // 0–500 ms to every order (p50 260 ms at 5 orders/s).
    let reader = read_watched(&brokers.consumer_config(), status_partitions, run, status_tx, shutdown)?;
    let base = &brokers.client_config();

    let mut producer_settings = producer_config(base);
    producer_settings.set("linger.ms", "0");
    let producer: FutureProducer = producer_settings.create()?;
    let users: Vec<String> = (0..args.users).map(|u| format!("{run}-user{u}")).collect();
    let setup_start = Instant::now();
    set_up_users(&producer, db, &users).await?;
    for w in 0..WARMUP_ORDERS {
        let request_id = format!("{run}-warmup{w}");
        let user = &users[w % users.len()];
        send(&producer, "orders.requests", user, &order(&request_id, user)).await?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let status = tokio::time::timeout_at(deadline.into(), statuses.recv())
                .await
                .context("setup: a warm-up order reached no final status")?
                .context("the orders.status reader stopped")?;
            if status.request_id == request_id && FINAL.contains(&status.status.as_str()) {
                break;
            }
        }
    }
    println!(
        "- setup: {} users registered and funded, {WARMUP_ORDERS} warm-up orders, in {:.1} s",
        users.len(),
        setup_start.elapsed().as_secs_f64()
    );

    // The schedule: order i goes out at start + i / rate, keyed by its user.
    let orders: Vec<(String, String)> = (0..total)
        .map(|i| {
            let user = &users[i % users.len()];
            (user.clone(), order(&format!("{run}-o{i}"), user).to_string())
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(50);
    let start_ms = switchyard::store::now_ms() + 50;
    // The sender keeps time on a thread of its own, so that the host's work on this
    // runtime's threads does not delay the schedule.
    let sender = {
        let (producer, rate) = (producer.clone(), args.rate);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(send_on_schedule(producer, orders, start, rate))
        })
    };

    let prefix = format!("{run}-o");
    let mut finals = HashMap::with_capacity(total);
    // When each order's events on the watched topics were produced and its status read.
    let mut produced: HashMap<(&str, usize), i64> = HashMap::with_capacity(total * 2);
    let mut status_read: HashMap<usize, i64> = HashMap::with_capacity(total);
    let mut repeated = 0;
    let deadline = start + Duration::from_secs_f64(args.duration) + Duration::from_secs(args.drain);
    while finals.len() < total {
        let Ok(status) = tokio::time::timeout_at(deadline.into(), statuses.recv()).await else {
            break;
        };
        let status = status.context("the orders.status reader stopped")?;
        let Some(i) = status
            .request_id
            .strip_prefix(&prefix)
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        if status.topic != "orders.status" {
            produced.entry((status.topic, i)).or_insert(status.produced_ms);
            continue;
        }
        if !FINAL.contains(&status.status.as_str()) {
            continue;
        }
        produced.entry((status.topic, i)).or_insert(status.produced_ms);
        status_read.entry(i).or_insert(status.read_ms);
        let scheduled = start + Duration::from_secs_f64(i as f64 / args.rate);
        if finals
            .insert(
                i,
                (status.status, status.at.saturating_duration_since(scheduled), status.at),
            )
            .is_some()
        {
            repeated += 1;
        }
    }
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    drop(statuses);
    reader.abort();
    let legs = legs(db, run, &finals, &produced, &status_read, start_ms, args.rate).await?;
    Ok(Outcome {
        total,
        users: users.len(),
        finals,
        repeated,
        sent,
        legs,
    })
}

async fn drive(args: Args) -> anyhow::Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!(
            "RATE {} is not a positive number of orders per second, e.g. 100",
            args.rate
        );
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!(
            "DURATION {} is not a positive number of seconds, e.g. 10",
            args.duration
        );
    }
    if (args.rate * args.duration).round() < 1.0 || args.users == 0 {
        bail!("RATE × DURATION must make at least one order and --users must be at least 1");
    }
    let run = format!("load{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::tempdir()?;
    let routing = saga_routing(dir.path(), &run)?;
    let brokers = Brokers::start(args.brokers.as_deref(), &routing)?;
    let base = brokers.client_config();
    if args.brokers.is_some() {
        admin::sync_topics(&base, &routing).await?;
        // The shared topics hold earlier runs' events; this run's groups start after them.
        support::start_groups_at_the_end(&base, &routing)?;
    }
    let db = Db::open(args.database_url.as_deref(), dir.path()).await?;
    let durability = support::durability(&db).await?;

    println!(
        "Switchyard load · commit {} · {}",
        support::commit(&common::workspace()),
        support::machine()
    );
    println!(
        "- brokers: {}",
        match &args.brokers {
            Some(servers) => format!("{servers} (real Kafka)"),
            None => "embedded (librdkafka mock cluster, in this process)".into(),
        }
    );
    println!(
        "- database: {durability}{}",
        if args.database_url.is_some() {
            ""
        } else {
            " (temporary directory)"
        }
    );
    println!(
        "- host: switchyard::service::serve in this process, shipped topics.toml, components from target/components"
    );

    let status_partitions = routing
        .topics
        .values()
        .find(|t| t.name.as_str() == "orders.status")
        .map(|t| t.partitions as i32)
        .context("topics.toml declares no orders.status topic")?;
    let (stop, shutdown) = watch::channel(false);
    // The host runs beside the scenario (not spawned: the embedded broker lives on this
    // task) until the scenario is over, whatever its outcome.
    let watching = shutdown.clone();
    let scenario = async {
        let outcome = scenario(&args, &run, &brokers, &db, status_partitions, watching).await;
        let _ = stop.send(true);
        outcome
    };
    let (served, outcome) = tokio::join!(
        switchyard::service::serve(&routing, db.clone(), &brokers, shutdown),
        scenario
    );
    served?;
    let Outcome {
        total,
        users,
        finals,
        repeated,
        sent,
        legs,
    } = outcome?;

    let mut latencies: Vec<Duration> = finals.values().map(|(_, latency, _)| *latency).collect();
    latencies.sort();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for (status, _, _) in finals.values() {
        *outcomes.entry(status.as_str()).or_default() += 1;
    }
    // The rate final statuses arrived at, from the first to the last: the offered rate
    // when the host keeps up, its capacity when it does not.
    let arrivals = finals.values().map(|(_, _, at)| *at);
    let achieved = match (arrivals.clone().min(), arrivals.max()) {
        (Some(first), Some(last)) if last > first => (finals.len() - 1) as f64 / (last - first).as_secs_f64(),
        _ => f64::NAN,
    };
    let missing = total - finals.len();

    let mut table = Table::new(
        format!(
            "Open-loop load: {} orders/s for {} s ({total} orders over {} users), orders.requests → final orders.status",
            args.rate, args.duration, users
        ),
        &[
            "stack",
            "offered/s",
            "achieved/s",
            "final",
            "missing",
            "p50",
            "p95",
            "p99",
            "max",
        ],
    );
    table.row(vec![
        format!(
            "{} + {}",
            if args.brokers.is_some() {
                "Kafka"
            } else {
                "embedded broker"
            },
            db.kind()
        ),
        format!("{}", args.rate),
        format!("{achieved:.1}"),
        format!("{}/{total}", finals.len()),
        missing.to_string(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    ]);
    table.note("Latency from each order's scheduled send time to its final status read from orders.status, so queueing counts.");
    table.note(format!(
        "achieved/s: the rate final statuses arrived at, first to last (the offered rate when the host keeps up, its capacity when not). Outcomes: {}.",
        outcomes
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    table.note(format!(
        "Sender: {} orders sent, worst lag behind schedule {}, {} not acknowledged by the broker; {repeated} final statuses seen twice.",
        sent.count,
        ms(sent.worst_lag),
        sent.failed
    ));
    if let Some((_, peak)) = support::rss_kib(std::process::id()) {
        table.note(format!(
            "Peak RSS of this process (host, driver{}): {}.",
            if args.brokers.is_none() {
                ", embedded broker"
            } else {
                ""
            },
            mib(peak)
        ));
    }
    table.print();

    let sampled = legs.first().map_or(0, Vec::len);
    let mut breakdown = Table::new(
        format!("Where the time goes: each leg of an order's way, {sampled} orders sampled evenly (ms)"),
        &["leg", "p50", "p90", "p99"],
    );
    let at = |leg: &[i64], q: f64| {
        leg.get(((leg.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or("–".to_string(), i64::to_string)
    };
    for (name, leg) in LEGS.iter().zip(&legs) {
        breakdown.row(vec![name.to_string(), at(leg, 0.5), at(leg, 0.9), at(leg, 0.99)]);
    }
    breakdown.note("A commit is timed when the event's inbox row is written, inside the transaction (the host's wall clock); a relay by the message's create time, set when the relay hands it to the producer. So each commit leg holds the consume, the invocation and the wait for the group commit, and each relay leg the rest of the commit and the relay's wake-up and read. Same machine, one clock; ms resolution.");
    breakdown.print();

    let paid = outcomes.get("PAID").copied().unwrap_or(0);
    let healthy = missing == 0 && paid == total && sent.failed == 0;
    if !healthy {
        println!(
            "\nNOT HEALTHY: every funded order should end PAID within the drain time ({} s after the last send); {missing} missing, {} paid of {total}.",
            args.drain, paid
        );
    }
    Ok(healthy)
}
