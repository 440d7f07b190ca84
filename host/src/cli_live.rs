//! The live-operation commands of the CLI: each calls a running host's admin API and
//! renders what it returns (the same serializable results the console shows).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use switchyard::admin::client::{AdminClient, token_path};
use switchyard::live::registry::Swapped;

use super::Cli;

/// A client of the host the CLI's settings point at: --admin-token, else the token the
/// host wrote beside the embedded database.
pub fn client(cli: &Cli) -> AdminClient {
    let token = cli.admin_token.clone().or_else(|| {
        std::fs::read_to_string(token_path(&cli.data_dir))
            .ok()
            .map(|t| t.trim().to_string())
    });
    AdminClient::new(&cli.admin_url, token)
}

fn when(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}

pub async fn status(cli: &Cli, json: bool) -> Result<ExitCode> {
    let status = client(cli).status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "host {}  database {}  brokers {}",
        status.host, status.database, status.brokers
    );
    println!("routing {}", status.routing_file);
    println!();
    println!(
        "{:<44} {:<8} {:<14} {:>6} {:>8}  last error",
        "route", "state", "partitions", "conc.", "restarts"
    );
    for r in &status.routes {
        let partitions = r.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        println!(
            "{:<44} {:<8} {:<14} {:>6} {:>8}  {}",
            r.key,
            r.state,
            if partitions.is_empty() { "-".into() } else { partitions },
            r.concurrency,
            r.restarts,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    println!();
    println!(
        "{:<12} {:<18} {:>10}  history (newest first)",
        "component", "version", "activation"
    );
    for c in &status.components {
        let history = c
            .history
            .iter()
            .take(5)
            .map(|a| {
                format!(
                    "{} {} by {} at {}",
                    a.reason,
                    a.version,
                    a.host,
                    when(a.activated_at_ms)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        println!("{:<12} {:<18} {:>10}  {}", c.name, c.version, c.activation, history);
    }
    if let Some(rejected) = &status.last_rejected_edit {
        println!();
        println!(
            "last refused routing edit at {}: {}",
            when(rejected.at_ms),
            rejected.error
        );
    }
    for rejected in status.rejected_deploys.iter().rev().take(3) {
        println!("refused deploy at {}: {}", when(rejected.at_ms), rejected.error);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_swap(swapped: &Swapped) {
    println!(
        "{}: {} -> {} (activation {}, {})",
        swapped.component,
        swapped.from.as_deref().unwrap_or("-"),
        swapped.to,
        swapped.activation,
        swapped.reason
    );
}

pub async fn deploy(cli: &Cli, component: &str, artifact: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(artifact).with_context(|| format!("reading {}", artifact.display()))?;
    print_swap(&client(cli).deploy(component, bytes).await?);
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(cli: &Cli, component: &str, to: Option<String>) -> Result<ExitCode> {
    print_swap(&client(cli).rollback(component, to).await?);
    Ok(ExitCode::SUCCESS)
}

pub async fn reload(cli: &Cli) -> Result<ExitCode> {
    let report = client(cli).reload().await?;
    if report.is_empty() {
        println!("routing unchanged");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn versions(cli: &Cli, component: &str) -> Result<ExitCode> {
    let versions = client(cli).versions(component).await?;
    println!("{}: active {}", versions.component, versions.active);
    println!("{:<18} {:>10}  {:<12} source", "version", "bytes", "stored at");
    for v in &versions.stored {
        println!(
            "{:<18} {:>10}  {:<12} {}",
            v.version,
            v.size_bytes,
            when(v.created_at_ms),
            v.source
        );
    }
    println!();
    println!("{:>6}  {:<18} {:<9} {:<12} host", "seq", "version", "reason", "at");
    for a in &versions.history {
        println!(
            "{:>6}  {:<18} {:<9} {:<12} {}",
            a.seq,
            a.version,
            a.reason,
            when(a.activated_at_ms),
            a.host
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(cli: &Cli, route: &str, pause: bool) -> Result<ExitCode> {
    let client = client(cli);
    let changed = if pause {
        client.pause(route).await?
    } else {
        client.resume(route).await?
    };
    println!(
        "{route}: {}",
        match (pause, changed.changed) {
            (true, true) => "paused",
            (true, false) => "already paused",
            (false, true) => "resumed",
            (false, false) => "was not paused",
        }
    );
    Ok(ExitCode::SUCCESS)
}
