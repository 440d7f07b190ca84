//! `switchyard run`: every route consuming, the outbox relay and the timer pump, with a
//! graceful shutdown that drains in-flight events before the relay sends the last of
//! their effects.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Routing;
use crate::kafka::{Brokers, dispatch, producer_config, relay};
use crate::runtime::{self, Runtime};
use crate::store::Db;

/// Runs `routing` until `shutdown` turns true.
pub async fn serve(
    routing: &Routing,
    db: Db,
    brokers: &Brokers,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new()?);
    let loaded = runtime::load_all(&runtime, routing.components.values().cloned())
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let components: std::collections::HashMap<_, _> =
        loaded.into_iter().map(|c| (c.spec.name.clone(), Arc::new(c))).collect();

    let base = brokers.client_config();
    let producer: FutureProducer = producer_config(&base).create().context("creating the Kafka producer")?;
    // The relay stops only after the routes have drained, so their last effects go out.
    let (relay_stop, relay_shutdown) = watch::channel(false);
    let relay_task = tokio::spawn(relay::run_relay(db.clone(), producer.clone(), relay_shutdown.clone()));
    let timer_task = tokio::spawn(relay::run_timers(db.clone(), relay_shutdown));

    let mut routes = JoinSet::new();
    for route in &routing.routes {
        let component = components[&route.component].clone();
        routes.spawn(dispatch::run_route(
            route.clone(),
            component,
            runtime.clone(),
            db.clone(),
            base.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        routes = routing.routes.len(),
        components = components.len(),
        database = db.kind(),
        brokers = %brokers.bootstrap_servers(),
        "switchyard running"
    );
    let mut failed = None;
    while let Some(result) = routes.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "route stopped");
                failed.get_or_insert(err);
            }
            Err(err) => {
                failed.get_or_insert(anyhow::anyhow!("route task failed: {err}"));
            }
        }
    }
    let _ = relay_stop.send(true);
    let _ = relay_task.await;
    let _ = timer_task.await;
    let _ = producer.flush(Duration::from_secs(10));
    tracing::info!("switchyard stopped");
    match failed {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
