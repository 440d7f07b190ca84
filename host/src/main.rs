//! The `switchyard` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use switchyard::config::{ComponentName, Routing};
use switchyard::event::InboundEvent;
use switchyard::runtime::{self, Outcome, Runtime};
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
    /// Log line format.
    #[arg(long, global = true, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Check => check(&cli.config),
        Command::Invoke { component, event } => invoke(&cli, component, event).await,
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
                loaded.iter().map(|c| c.spec.name.to_string()).collect::<Vec<_>>().join(", "),
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

async fn invoke(cli: &Cli, component: &str, event_path: &Path) -> Result<ExitCode> {
    let routing = Routing::load(&cli.config)?;
    let name = ComponentName::try_from(component.to_string()).map_err(anyhow::Error::msg)?;
    let spec = routing.components.get(&name).with_context(|| {
        format!("component {component:?} is not in {}", cli.config.display())
    })?;
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
    let event = InboundEvent::from_message(
        &file.topic,
        file.partition,
        file.offset,
        file.key.map(String::into_bytes),
        payload,
        headers,
        switchyard::store::now_ms(),
    );

    let runtime = Runtime::new()?;
    let loaded = runtime.load(spec)?;
    let db = Db::open(cli.database_url.as_deref(), &cli.data_dir).await?;
    let outcome = runtime.invoke(&loaded, &db, &event).await?;
    db.close().await;
    let (report, code) = match outcome {
        Outcome::Committed(effects) => {
            (serde_json::json!({"event": event.id, "outcome": "committed", "effects": effects}), ExitCode::SUCCESS)
        }
        Outcome::Duplicate => (serde_json::json!({"event": event.id, "outcome": "duplicate"}), ExitCode::SUCCESS),
        Outcome::Failed(f) => (
            serde_json::json!({"event": event.id, "outcome": "failed", "kind": f.kind.as_str(), "reason": f.reason}),
            ExitCode::from(2),
        ),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(code)
}
