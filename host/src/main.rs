//! The `switchyard` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use switchyard::config::{ComponentName, Routing};
use switchyard::event::InboundEvent;
use switchyard::gateway::{GatewayArgs, GatewayConfig};
use switchyard::kafka::Brokers;
use switchyard::kafka::admin::{NEWEST_PER_PARTITION, Reading, list_dead_letters, read_dead_letter};
use switchyard::runtime::{self, InvokeMode, Outcome, Runtime};
use switchyard::store::Db;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Wasm host for event-driven microservices")]
struct Cli {
    /// The routing file.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG", default_value = "topics.toml")]
    config: PathBuf,
    /// Where the embedded database lives when no database URL is given.
    #[arg(long, global = true, env = "SWITCHYARD_DATA_DIR", default_value = ".switchyard")]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://...); the embedded SQLite is used without it.
    #[arg(long, global = true, env = "SWITCHYARD_DATABASE_URL")]
    database_url: Option<String>,
    /// Kafka bootstrap servers; without them an embedded in-process broker is started.
    #[arg(long, global = true, env = "SWITCHYARD_BROKERS")]
    brokers: Option<String>,
    /// The admin API of a running host, for status, deploy, rollback, reload, versions
    /// (and the brokers of `dlq`, `lag`, `topics` when --brokers is not given).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    admin_url: String,
    /// The admin bearer token; without it, the one in <data-dir>/admin-token.
    #[arg(long, global = true, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log line format.
    #[arg(long, global = true, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also serve Prometheus metrics at http://ADDR/metrics, on a listener of their own
    /// (`run` serves them on the admin listener too; `gateway` only here).
    #[arg(long, global = true, env = "SWITCHYARD_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds `run` and `gateway` may take to stop after SIGINT/SIGTERM (finishing the
    /// events and requests in hand) before they exit anyway; a second signal exits at once.
    #[arg(long, global = true, env = "SWITCHYARD_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every route of the routing file and the HTTP gateway until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Where the admin API listens (loopback unless you mean otherwise).
        #[arg(long, env = "SWITCHYARD_ADMIN_ADDR", default_value = "127.0.0.1:8081")]
        admin_addr: std::net::SocketAddr,
    },
    /// A running host's routes, partitions, components with their versions and swap
    /// history, and the last refused edit.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Hot-swaps a component of a running host (and every host on its database) to a
    /// new artifact; a bad one is refused and the running version stays.
    Deploy { component: String, artifact: PathBuf },
    /// Returns a component to an earlier version (without --to: the one before).
    Rollback {
        component: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Makes a running host apply its routing file now.
    Reload,
    /// A component's stored versions and activation history.
    Versions { component: String },
    /// Every event a running host handled under one request id, in order, with
    /// component, version, outcome, position and time.
    Trace {
        request_id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Pauses or resumes a route of a running host.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Runs the HTTP gateway alone (with the outbox relay for what it writes), so it
    /// scales apart from the handlers.
    Gateway {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Manages the declared topics on the cluster.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Shows each route's committed offset and lag per partition.
    Lag,
    /// Lists and replays dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Outbox rows the broker refused for good (too large, no such topic).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Lists a component's outbound deliveries (webhooks, e-mails): attempts, outcome
    /// (`delivered`, `failed`, `dead`, or pending) and the last error.
    Effects {
        /// Component name.
        #[arg(long)]
        component: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validates the routing file and every component it names.
    Check,
    /// Feeds one event from a JSON file to a component and prints its effects.
    Invoke {
        /// Component name from the routing file.
        #[arg(long)]
        component: String,
        /// JSON file: {"topic": ..., "payload": <JSON or string>, "key"?, "headers"?, "id"?}
        #[arg(long)]
        event: PathBuf,
        /// Commit the effects to the database (the next `run` relays them). Without it the
        /// invocation is a dry run: its effects are printed and rolled back.
        #[arg(long)]
        commit: bool,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Stops consuming (offsets committed) until resumed.
    Pause {
        route: String,
    },
    Resume {
        route: String,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Creates missing topics and dead-letter topics, adds declared partitions.
    Sync,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Lists parked rows with the broker's reason.
    Parked {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queues parked rows again (after creating the topic or raising its size limit).
    Requeue {
        /// Only this row; all parked rows without it.
        #[arg(long)]
        id: Option<i64>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Lists the dead letters of every route (or of one dead-letter topic).
    List {
        #[arg(long)]
        topic: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sends dead letters back to their topic, for the component that failed them.
    Replay {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        /// Only the dead letter at this partition/offset (both needed); all without.
        #[arg(long, requires = "offset")]
        partition: Option<i32>,
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
    },
}

mod cli_live;
use cli_live as ops;
mod cli_trace;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs, and OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when dropped,
    // after the async runtime.
    let _tracing = switchyard::observe::init_tracing(matches!(cli.log_format, LogFormat::Json));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Check => check(&cli.config),
        Command::Run { gateway, admin_addr } => run_system(&cli, gateway, *admin_addr).await,
        Command::Status { json } => ops::status(&cli, *json).await,
        Command::Deploy { component, artifact } => ops::deploy(&cli, component, artifact).await,
        Command::Rollback { component, to } => ops::rollback(&cli, component, to.clone()).await,
        Command::Reload => ops::reload(&cli).await,
        Command::Versions { component } => ops::versions(&cli, component).await,
        Command::Trace { request_id, json } => cli_trace::trace(&cli, request_id, *json).await,
        Command::Route { command } => match command {
            RouteCommand::Pause { route } => ops::pause(&cli, route, true).await,
            RouteCommand::Resume { route } => ops::pause(&cli, route, false).await,
        },
        Command::Gateway { gateway } => run_gateway(&cli, gateway).await,
        Command::Topics {
            command: TopicsCommand::Sync,
        } => topics_sync(&cli).await,
        Command::Dlq { command } => dlq(&cli, command).await,
        Command::Outbox { command } => outbox(&cli, command).await,
        Command::Effects { component, json } => effects(&cli, component, *json).await,
        Command::Lag => lag(&cli).await,
        Command::Invoke {
            component,
            event,
            commit,
        } => invoke(&cli, component, event, *commit).await,
    }
}

fn check(config: &Path) -> Result<ExitCode> {
    let routing = match Routing::load(config) {
        Ok(routing) => routing,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = Runtime::new().context("starting the wasm runtime")?;
    match runtime::load_all(&runtime, routing.components.values().cloned()) {
        Ok(loaded) => {
            println!(
                "{}: ok: {} topics, {} components ({}), {} routes",
                config.display(),
                routing.topics.len(),
                loaded.len(),
                loaded
                    .iter()
                    .map(|c| c.spec.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                routing.routes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for err in errors {
                eprintln!("error: {err}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The event file of `switchyard invoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    topic: String,
    payload: serde_json::Value,
    key: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    id: Option<String>,
    #[serde(default)]
    partition: i32,
    #[serde(default)]
    offset: i64,
}

async fn invoke(cli: &Cli, component: &str, event_path: &Path, commit: bool) -> Result<ExitCode> {
    let routing = Routing::load(&cli.config)?;
    let name = ComponentName::try_from(component.to_string()).map_err(anyhow::Error::msg)?;
    let spec = routing
        .components
        .get(&name)
        .with_context(|| format!("component {component:?} is not in {}", cli.config.display()))?;
    let text = std::fs::read_to_string(event_path).with_context(|| format!("reading {}", event_path.display()))?;
    let file: EventFile = serde_json::from_str(&text).with_context(|| format!("parsing {}", event_path.display()))?;
    let payload = match file.payload {
        serde_json::Value::String(s) => s.into_bytes(),
        other => serde_json::to_vec(&other)?,
    };
    let mut headers: Vec<(String, String)> = file.headers.into_iter().collect();
    if let Some(id) = file.id {
        headers.push((switchyard::event::headers::EVENT_ID.to_string(), id));
    }
    // Its own origin: an invoked file is never mistaken for an event of a real log.
    let origin = format!("invoke-{}", uuid::Uuid::new_v4().simple());
    let at = switchyard::event::LogPosition {
        origin: &origin,
        topic: &file.topic,
        partition: file.partition,
        offset: file.offset,
    };
    let event = InboundEvent::from_message(
        &at,
        file.key.map(String::into_bytes),
        payload,
        headers,
        Some(switchyard::store::now_ms()),
    );

    let runtime = Runtime::new()?;
    let loaded = runtime.load(spec)?;
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let mode = if commit { InvokeMode::Commit } else { InvokeMode::DryRun };
    let outcome = runtime.invoke_in(mode, &loaded, &db, &event).await?;
    db.close().await;
    let (report, code) = match outcome {
        Outcome::Committed(effects) => (
            serde_json::json!({"event": event.id, "outcome": if commit { "committed" } else { "dry-run" }, "effects": effects}),
            ExitCode::SUCCESS,
        ),
        Outcome::Duplicate => (
            serde_json::json!({"event": event.id, "outcome": "duplicate"}),
            ExitCode::SUCCESS,
        ),
        Outcome::Failed(f) => (
            serde_json::json!({"event": event.id, "outcome": "failed", "kind": f.kind.as_str(), "reason": f.reason}),
            ExitCode::from(2),
        ),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(code)
}

/// The brokers of --brokers or, without it, those of the running host (its embedded
/// broker included), asked through its admin API.
async fn external_brokers(cli: &Cli, routing: &Routing) -> Result<Brokers> {
    if let Some(servers) = cli.brokers.as_deref() {
        return Brokers::start(Some(servers), routing);
    }
    let info = ops::client(cli).brokers().await.context(
        "this command needs the brokers: pass --brokers HOST:PORT (or set SWITCHYARD_BROKERS), or run it beside a running `switchyard run`",
    )?;
    Brokers::start(Some(&info.bootstrap_servers), routing)
}

async fn run_system(cli: &Cli, gateway: &GatewayArgs, admin_addr: std::net::SocketAddr) -> Result<ExitCode> {
    let gateway = GatewayConfig::from_args(gateway)?;
    let routing = Routing::load(&cli.config)?;
    let brokers = Brokers::start(cli.brokers.as_deref(), &routing)?;
    if let Brokers::External(_) = brokers {
        // Make sure every declared topic exists before consuming.
        let changes = switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing).await?;
        for change in changes.iter().filter(|c| c.action != "unchanged") {
            tracing::info!(topic = %change.topic, partitions = change.partitions, action = change.action, "topic");
        }
    }
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    stop_on_signal(stop, cli.shutdown_grace_secs, "finishing in-flight events");
    if let Some(addr) = cli.metrics_addr {
        switchyard::observe::serve_metrics(addr, shutdown.clone()).await?;
    }
    // The gateway shares the routes' database, relay and components; both stop on the
    // same signal.
    let admin_token = match &cli.admin_token {
        Some(token) => token.clone(),
        None => switchyard::admin::client::host_token(&cli.data_dir)
            .with_context(|| format!("creating the admin token in {}", cli.data_dir.display()))?,
    };
    let options = switchyard::service::Options {
        admin_addr: Some(admin_addr),
        admin_token: Some(admin_token),
        admin_jwt: Some(switchyard::admin::AdminJwt(std::sync::Arc::new(gateway.jwt.clone()))),
        ..Default::default()
    };
    let host = switchyard::service::start(&routing, db.clone(), &brokers, options, shutdown.clone()).await?;
    if let Some(addr) = host.admin_addr {
        tracing::info!(%addr, "admin API listening");
    }
    let queries = switchyard::gateway_components::from_registry(host.live.registry().clone(), &db);
    let (routes, http) = tokio::join!(
        host.run(),
        switchyard::gateway::serve(gateway, db.clone(), brokers.consumer_config(), queries, false, shutdown),
    );
    routes?;
    http?;
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn run_gateway(cli: &Cli, gateway: &GatewayArgs) -> Result<ExitCode> {
    let gateway = GatewayConfig::from_args(gateway)?;
    let routing = Routing::load(&cli.config)?;
    let brokers = Brokers::start(cli.brokers.as_deref(), &routing)?;
    if let Brokers::External(_) = brokers {
        switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing).await?;
    }
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let queries = switchyard::gateway_components::load(&routing, &db).await?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    stop_on_signal(stop, cli.shutdown_grace_secs, "answering waiting requests");
    // Its own metrics (the gateway's request histogram above all): this process has no
    // admin listener to serve them.
    if let Some(addr) = cli.metrics_addr {
        switchyard::observe::serve_metrics(addr, shutdown.clone()).await?;
        // The outbox it relays and the timers beside it, sampled like `run` does; it
        // runs no route, so no lag.
        let mut no_routes = routing.clone();
        no_routes.routes.clear();
        let base = brokers.consumer_config();
        switchyard::observe::spawn_samplers(move || no_routes.clone(), db.clone(), base, shutdown.clone());
    }
    switchyard::gateway::serve(gateway, db.clone(), brokers.client_config(), queries, true, shutdown).await?;
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// On SIGINT/SIGTERM, tells everything to stop through `stop`; exits the process with
/// status 1 if that takes longer than `grace_secs` or a second signal comes. A handler
/// stuck past its deadline or a broker that never acknowledges must not keep an operator's
/// restart waiting forever. Exiting then is as safe as a crash: what was not committed is
/// handled again at the next start (the SIGKILL tests), and unsent outbox rows stay unsent.
fn stop_on_signal(stop: tokio::sync::watch::Sender<bool>, grace_secs: u64, doing: &'static str) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(grace_secs, "shutting down: {doing}");
        let _ = stop.send(true);
        let grace = std::time::Duration::from_secs(grace_secs);
        tokio::select! {
            _ = wait_for_signal() => tracing::error!(
                "a second signal: exiting now; what was in flight is handled again at the next start"
            ),
            _ = tokio::time::sleep(grace) => tracing::error!(
                "shutdown did not finish within {grace_secs}s; exiting now; what was in flight \
                 is handled again at the next start (raise --shutdown-grace-secs for slower handlers)"
            ),
        }
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn topics_sync(cli: &Cli) -> Result<ExitCode> {
    let routing = Routing::load(&cli.config)?;
    if cli.brokers.is_none() {
        let client = ops::client(cli);
        if let Ok(info) = client.brokers().await
            && info.embedded
        {
            // The embedded broker takes no admin requests; the host creates the topics of
            // its routing file itself, on start and on every applied edit.
            let report = client.reload().await?;
            println!(
                "the running host's embedded broker has the topics of its routing file ({})",
                if report.is_empty() { "unchanged" } else { "edit applied" }
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    let brokers = external_brokers(cli, &routing).await?;
    let changes = switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing).await?;
    println!("{:<40} {:>10}  action", "topic", "partitions");
    for change in changes {
        println!("{:<40} {:>10}  {}", change.topic, change.partitions, change.action);
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(cli: &Cli, command: &DlqCommand) -> Result<ExitCode> {
    let routing = Routing::load(&cli.config)?;
    let brokers = external_brokers(cli, &routing).await?;
    let base = brokers.client_config();
    // The database holds the key that tells the hosts' dead letters from forged ones.
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let signer = db.signer().clone();
    db.close().await;
    match command {
        DlqCommand::List { topic, json } => {
            let topics: Vec<String> = match topic {
                Some(t) => vec![t.clone()],
                None => routing.dead_letter_topics().iter().map(|t| t.to_string()).collect(),
            };
            let listing = switchyard::kafka::admin::list_dead_letters(&base, &topics, &signer, Reading::Newest)?;
            let letters = &listing.letters;
            if listing.unread > 0 {
                eprintln!(
                    "warning: {} dead letter(s) could not be read in time; this list is incomplete (run it again)",
                    listing.unread
                );
            }
            if listing.older > 0 {
                eprintln!(
                    "{} older dead letter(s) not listed: each partition lists its newest {NEWEST_PER_PARTITION}",
                    listing.older
                );
            }
            if *json {
                for letter in letters {
                    println!("{}", serde_json::to_string(letter)?);
                }
            } else {
                println!(
                    "{:<28} {:>4} {:>7}  {:<10} {:<28} {:<9} {:>3}  reason",
                    "dead-letter topic", "part", "offset", "component", "from", "kind", "try"
                );
                for l in letters {
                    let from = format!("{}[{}]@{}", l.source_topic, l.source_partition, l.source_offset);
                    println!(
                        "{:<28} {:>4} {:>7}  {:<10} {:<28} {:<9} {:>3}  {}",
                        l.dlq_topic, l.partition, l.offset, l.component, from, l.kind, l.attempts, l.reason
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
        }
        DlqCommand::Replay {
            topic,
            partition,
            offset,
        } => {
            let letters = match (partition, offset) {
                // One letter: read straight from its offset.
                (Some(p), Some(o)) => match read_dead_letter(&base, topic, *p, *o, &signer)? {
                    Some(letter) => vec![letter],
                    None => anyhow::bail!("no dead letter at {topic}[{p}]@{o} (see `switchyard dlq list`)"),
                },
                _ => {
                    let listing = list_dead_letters(&base, std::slice::from_ref(topic), &signer, Reading::All)?;
                    if listing.unread > 0 {
                        anyhow::bail!(
                            "{} dead letter(s) of {topic} could not be read in time; nothing replayed (run it again)",
                            listing.unread
                        );
                    }
                    listing.letters
                }
            };
            let n = switchyard::kafka::admin::replay(&base, &routing, &signer, &letters).await?;
            println!("replayed {n} dead letter(s) from {topic}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn outbox(cli: &Cli, command: &OutboxCommand) -> Result<ExitCode> {
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    match command {
        OutboxCommand::Parked { json } => {
            let rows = db.parked_outbox(10_000).await?;
            if *json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                println!(
                    "{:>8}  {:<12} {:<28} {:<38} reason",
                    "id", "component", "topic", "event id"
                );
                for r in &rows {
                    println!(
                        "{:>8}  {:<12} {:<28} {:<38} {}",
                        r.id, r.component, r.topic, r.event_id, r.reason
                    );
                }
                println!("{} parked row(s)", rows.len());
            }
        }
        OutboxCommand::Requeue { id } => {
            let n = db.requeue_parked(*id).await?;
            println!("requeued {n} row(s); a running host relays them now");
        }
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn effects(cli: &Cli, component: &str, json: bool) -> Result<ExitCode> {
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let rows = db.effects_of(component).await?;
    if json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!(
            "{:<38} {:<6} {:>8} {:<10} last error",
            "delivery id", "kind", "attempts", "outcome"
        );
        for r in &rows {
            println!(
                "{:<38} {:<6} {:>8} {:<10} {}",
                r.id,
                r.kind,
                r.attempts,
                r.outcome.as_deref().unwrap_or("pending"),
                r.last_error.as_deref().unwrap_or("")
            );
        }
        println!("{} deliver(ies)", rows.len());
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn lag(cli: &Cli) -> Result<ExitCode> {
    let routing = Routing::load(&cli.config)?;
    let brokers = external_brokers(cli, &routing).await?;
    let base = brokers.client_config();
    println!(
        "{:<28} {:<12} {:<28} {:>4} {:>10} {:>8}",
        "topic", "component", "group", "part", "committed", "lag"
    );
    for route in &routing.routes {
        let partitions = routing.topics[&route.topic].partitions;
        let rows = switchyard::kafka::dispatch::group_lag(&base, route, partitions)
            .with_context(|| format!("reading offsets of group {}", route.group))?;
        for (partition, committed, lag) in rows {
            println!(
                "{:<28} {:<12} {:<28} {:>4} {:>10} {:>8}",
                route.topic, route.component, route.group, partition, committed, lag
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
