//! `switchyard run`: every route consuming under a supervisor, the outbox relay, the
//! timer pump and retention, with a graceful shutdown that drains in-flight events
//! before the relay sends the last of their effects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Route, Routing};
use crate::kafka::relay::{self, relay_producer_config};
use crate::kafka::{Brokers, dispatch};
use crate::runtime::{self, LoadedComponent, Runtime};
use crate::store::Db;

/// Settings of a running host beyond the routing table.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long inbox claims and sent outbox rows are kept: the dedup window.
    pub dedup_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// First and longest pause before a failed route is restarted.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// A route that ran this long before failing restarts after the shortest pause again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `routing` until `shutdown` turns true.
pub async fn serve(
    routing: &Routing,
    db: Db,
    brokers: &Brokers,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_with(routing, db, brokers, Options::default(), shutdown).await
}

/// [`serve`] with explicit [`Options`].
pub async fn serve_with(
    routing: &Routing,
    db: Db,
    brokers: &Brokers,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new()?);
    let loaded = runtime::load_all(&runtime, routing.components.values().cloned())
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let components: HashMap<_, _> = loaded.into_iter().map(|c| (c.spec.name.clone(), Arc::new(c))).collect();
    let origin = brokers.origin().await?;

    let base = brokers.client_config();
    // The relay stops only after the routes have drained, so their last effects go out.
    let (relay_stop, relay_shutdown) = watch::channel(false);
    let relay_task = tokio::spawn(relay::run_relay(
        db.clone(),
        relay_producer_config(&base),
        relay_shutdown.clone(),
    ));
    let timer_task = tokio::spawn(relay::run_timers(db.clone(), relay_shutdown.clone()));
    let retention_task = tokio::spawn(relay::run_retention(
        db.clone(),
        options.dedup_window,
        Duration::from_secs(60),
        relay_shutdown,
    ));

    let consumer_base = brokers.consumer_config();
    crate::observe::spawn_samplers(routing, db.clone(), consumer_base.clone(), shutdown.clone());
    let mut routes = JoinSet::new();
    for route in &routing.routes {
        routes.spawn(supervise(
            route.clone(),
            components[&route.component].clone(),
            runtime.clone(),
            db.clone(),
            consumer_base.clone(),
            origin.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        routes = routing.routes.len(),
        components = components.len(),
        database = db.kind(),
        brokers = %brokers.bootstrap_servers(),
        origin = %origin,
        "switchyard running"
    );
    while routes.join_next().await.is_some() {}
    let _ = relay_stop.send(true);
    let _ = relay_task.await;
    let _ = timer_task.await;
    let _ = retention_task.await;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// Runs one route until shutdown, restarting it with backoff whenever it fails or its
/// task dies, so one bad route (or one panic) never leaves the host running without it.
/// Other routes are untouched by a restart; its partitions are read again from the
/// committed offsets, and the inbox skips what was already handled.
async fn supervise(
    route: Route,
    component: Arc<LoadedComponent>,
    runtime: Arc<Runtime>,
    db: Db,
    base: rdkafka::ClientConfig,
    origin: String,
    shutdown: watch::Receiver<bool>,
) {
    let name = format!("{} -> {}", route.topic, route.component);
    restart_until_shutdown(&name, shutdown.clone(), || {
        dispatch::run_route(
            route.clone(),
            component.clone(),
            runtime.clone(),
            db.clone(),
            base.clone(),
            origin.clone(),
            shutdown.clone(),
        )
    })
    .await;
}

/// Runs `run` in a task of its own until `shutdown`; whenever it returns early, fails or
/// panics, runs it again after a pause that doubles from 0.5 s to 30 s (and starts over
/// after a run that lasted [`HEALTHY_RUN`]). Returns how many restarts there were.
async fn restart_until_shutdown<F, Fut>(name: &str, shutdown: watch::Receiver<bool>, run: F) -> u32
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut failures: u32 = 0;
    let mut restarts = 0;
    loop {
        let started = std::time::Instant::now();
        let reason = match tokio::spawn(run()).await {
            Ok(Ok(())) if *shutdown.borrow() => return restarts,
            Ok(Ok(())) => "it stopped by itself".to_string(),
            Ok(Err(err)) => format!("{err:#}"),
            Err(err) => format!("its task died: {err}"),
        };
        if *shutdown.borrow() {
            return restarts;
        }
        failures = if started.elapsed() > HEALTHY_RUN {
            1
        } else {
            failures + 1
        };
        let delay = RESTART_BACKOFF
            .0
            .saturating_mul(1 << (failures - 1).min(10))
            .min(RESTART_BACKOFF.1);
        tracing::error!(route = name, reason = %reason, restart_in_ms = delay.as_millis() as u64, "route failed; restarting");
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return restarts,
        }
        restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failing_or_panicking_route_is_restarted_with_growing_pauses_until_shutdown() {
        let runs = Arc::new(AtomicU32::new(0));
        let (stop, shutdown) = watch::channel(false);
        let counted = runs.clone();
        let route_shutdown = shutdown.clone();
        let supervisor = tokio::spawn(async move {
            restart_until_shutdown("t -> c", shutdown, move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let mut until = route_shutdown.clone();
                async move {
                    match n {
                        0 => anyhow::bail!("consumer failed"),
                        1 => panic!("a partition worker panicked"),
                        2 => Ok(()), // returned early: also restarted
                        _ => {
                            // A healthy route runs until shutdown.
                            let _ = until.wait_for(|stop| *stop).await;
                            Ok(())
                        }
                    }
                }
            })
            .await
        });
        // Pauses of 0.5, 1 and 2 s before the 2nd, 3rd and 4th run (real time).
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "the third pause (2 s) is not over yet");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        stop.send(true).unwrap();
        assert_eq!(supervisor.await.unwrap(), 3);
    }
}
