//! `switchyard run`: every route consuming under a supervisor, the outbox relay, the
//! timer pump and retention, with a graceful shutdown that drains in-flight events
//! before the relay sends the last of their effects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Routing;
use crate::kafka::Brokers;
use crate::kafka::relay::{self, relay_producer_config};
use crate::live::Live;
use crate::live::registry::Registry;
use crate::live::routes::{RouteDeps, Routes};
use crate::runtime::Runtime;
use crate::store::Db;

/// Settings of a running host beyond the routing table.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long inbox claims and sent outbox rows are kept: the dedup window.
    pub dedup_window: Duration,
    /// Where the admin API listens (`switchyard status`, `deploy`, ...); none: nowhere.
    pub admin_addr: Option<SocketAddr>,
    /// The bearer token the admin API requires.
    pub admin_token: Option<String>,
    /// Also accept a gateway JWT with the admin role on the admin API.
    pub admin_jwt: Option<crate::admin::AdminJwt>,
    /// How this host names itself in activation rows and `status`.
    pub host_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            admin_addr: None,
            admin_token: None,
            admin_jwt: None,
            host_name: default_host_name(),
        }
    }
}

/// `<hostname>-<pid>`: tells apart hosts on one machine as well as across machines.
pub fn default_host_name() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{machine}-{}", std::process::id())
}

/// A started host: its live operations, and the admin listener's address when it has one.
pub struct Host {
    pub live: Arc<Live>,
    pub admin_addr: Option<SocketAddr>,
    run: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

impl Host {
    /// Runs until the `shutdown` given to [`start`] turns true.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run.await
    }
}

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
    start(routing, db, brokers, options, shutdown).await?.run().await
}

/// Loads every component (the database decides each one's version), binds the admin
/// listener, and returns the host ready to [`Host::run`].
pub async fn start(
    routing: &Routing,
    db: Db,
    brokers: &Brokers,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Host> {
    let runtime = Arc::new(Runtime::new()?);
    let registry = Arc::new(Registry::new(runtime, db.clone(), options.host_name.clone()));
    let mut errors = Vec::new();
    for spec in routing.components.values() {
        if let Err(err) = registry.add(spec).await {
            errors.push(err.to_string());
        }
    }
    anyhow::ensure!(errors.is_empty(), "{}", errors.join("\n"));
    let origin = brokers.origin().await?;
    let base = brokers.client_config();
    let routes = Routes::new(RouteDeps {
        registry: registry.clone(),
        db: db.clone(),
        consumer_base: brokers.consumer_config(),
        origin: origin.clone(),
    });
    let live = Arc::new(Live::new(
        routing.clone(),
        registry.clone(),
        routes,
        db.clone(),
        brokers.bootstrap_servers(),
        brokers.topic_maker(),
    ));
    let admin = match options.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen for the admin API on {addr}: {e} (pass another --admin-addr)")
            })?;
            Some(listener)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let run = run(
        live.clone(),
        db,
        base,
        brokers.consumer_config(),
        origin,
        options,
        admin,
        shutdown,
    );
    Ok(Host {
        live,
        admin_addr,
        run: Box::pin(run),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    live: Arc<Live>,
    db: Db,
    base: rdkafka::ClientConfig,
    consumer_base: rdkafka::ClientConfig,
    origin: String,
    options: Options,
    admin: Option<tokio::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The relay stops only after the routes have drained, so their last effects go out.
    let (relay_stop, relay_shutdown) = watch::channel(false);
    let relay_task = tokio::spawn(relay::run_relay(
        db.clone(),
        relay_producer_config(&base),
        relay_shutdown.clone(),
    ));
    let timer_task = tokio::spawn(relay::run_timers(db.clone(), relay_shutdown.clone()));
    let delivery_task = tokio::spawn(crate::delivery::run(
        db.clone(),
        Default::default(),
        relay_shutdown.clone(),
    ));
    let retention_task = tokio::spawn(relay::run_retention(
        db.clone(),
        options.dedup_window,
        Duration::from_secs(60),
        relay_shutdown,
    ));
    let routing = live.routing();
    let sampled = live.clone();
    crate::observe::spawn_samplers(move || sampled.routing(), db.clone(), consumer_base, shutdown.clone());
    for route in &routing.routes {
        live.routes().start(route.clone()).await;
    }
    let watcher = tokio::spawn(live.clone().watch(shutdown.clone()));
    let admin_task = admin.map(|listener| {
        let router = crate::admin::router(live.clone(), options.admin_token.clone(), options.admin_jwt.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "admin listener failed");
            }
        })
    });
    tracing::info!(
        routes = routing.routes.len(),
        components = routing.components.len(),
        database = db.kind(),
        origin = %origin,
        host = %options.host_name,
        "switchyard running"
    );
    let _ = shutdown.wait_for(|s| *s).await;
    live.routes().stop_all().await;
    let _ = watcher.await;
    let _ = relay_stop.send(true);
    let _ = relay_task.await;
    let _ = timer_task.await;
    let _ = delivery_task.await;
    let _ = retention_task.await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tracing::info!("switchyard stopped");
    Ok(())
}
