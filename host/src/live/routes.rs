//! The route supervisor: one task per route, each with its own stop signal, started,
//! stopped, paused and re-tuned while the host runs, and restarted with backoff when it
//! fails, so one bad route never leaves the host running without it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Route;
use crate::kafka::dispatch;
use crate::store::Db;

use super::registry::Registry;

/// First and longest pause before a failed route is restarted.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// A route that ran this long before failing restarts after the shortest pause again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How a route is named in `status` and the admin API.
pub fn route_key(route: &Route) -> String {
    format!("{} -> {}", route.topic, route.component)
}

/// A route's settings that an edit may change while it runs: read per event, so a new
/// retry policy, dead-letter topic or concurrency applies from the next event.
pub struct RouteSettings {
    route: RwLock<Route>,
    permits: RwLock<Arc<Semaphore>>,
}

impl RouteSettings {
    pub fn new(route: Route) -> RouteSettings {
        RouteSettings {
            permits: RwLock::new(Arc::new(Semaphore::new(route.concurrency))),
            route: RwLock::new(route),
        }
    }

    pub fn current(&self) -> Route {
        self.route.read().expect("route lock").clone()
    }

    /// The semaphore capping how many partitions run at once. A new concurrency gets a
    /// new semaphore: permits held on the old one are released into it, harmlessly.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.read().expect("permits lock").clone()
    }

    fn update(&self, route: Route) {
        if route.concurrency != self.route.read().expect("route lock").concurrency {
            *self.permits.write().expect("permits lock") = Arc::new(Semaphore::new(route.concurrency));
        }
        *self.route.write().expect("route lock") = route;
    }
}

/// What a route is doing, for `status`.
#[derive(Default)]
pub struct RouteState {
    /// Partitions this host owns now.
    pub assigned: Mutex<BTreeSet<i32>>,
    /// Assignments received (the first included): a rebalance adds one.
    pub assignments: AtomicU64,
    pub restarts: AtomicU32,
    pub last_error: Mutex<Option<String>>,
    paused: std::sync::atomic::AtomicBool,
}

/// A route as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RouteStatus {
    pub key: String,
    pub topic: String,
    pub component: String,
    pub group: String,
    pub dead_letter: String,
    pub concurrency: usize,
    pub retry_attempts: u32,
    /// `running` or `paused`.
    pub state: String,
    pub partitions: Vec<i32>,
    pub assignments: u64,
    pub restarts: u32,
    pub last_error: Option<String>,
}

struct RunningRoute {
    settings: Arc<RouteSettings>,
    state: Arc<RouteState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// What every route task needs.
pub struct RouteDeps {
    pub registry: Arc<Registry>,
    pub db: Db,
    pub consumer_base: rdkafka::ClientConfig,
    pub origin: String,
}

/// The running routes, by [`route_key`].
pub struct Routes {
    deps: Arc<RouteDeps>,
    running: tokio::sync::Mutex<BTreeMap<String, RunningRoute>>,
    /// Set by [`Routes::stop_all`]: nothing starts after it.
    stopped: std::sync::atomic::AtomicBool,
}

impl Routes {
    pub fn new(deps: RouteDeps) -> Routes {
        Routes {
            deps: Arc::new(deps),
            running: Default::default(),
            stopped: Default::default(),
        }
    }

    /// What the route tasks share: the database and the cluster's consumer settings
    /// (the console reads lag and dead letters with them).
    pub fn deps(&self) -> &RouteDeps {
        &self.deps
    }

    /// Starts consuming `route` (a no-op if a route of that key runs).
    pub async fn start(&self, route: Route) {
        self.start_as(route, false).await
    }

    /// Starts `route`, or with `paused` keeps it paused (as it was before an edit that
    /// restarted it) until [`Routes::resume`]. A no-op if a route of that key runs, or
    /// once [`Routes::stop_all`] has run: a reload that ends after the stop began must
    /// not leave a route consuming behind it.
    pub async fn start_as(&self, route: Route, paused: bool) {
        let key = route_key(&route);
        let mut running = self.running.lock().await;
        if running.contains_key(&key) || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let settings = Arc::new(RouteSettings::new(route));
        let state = Arc::new(RouteState::default());
        state.paused.store(paused, Ordering::SeqCst);
        let (stop, task) = if paused {
            (watch::channel(true).0, None)
        } else {
            let (stop, task) = self.spawn(&settings, &state);
            (stop, Some(task))
        };
        running.insert(
            key,
            RunningRoute {
                settings,
                state,
                stop,
                task,
            },
        );
    }

    fn spawn(&self, settings: &Arc<RouteSettings>, state: &Arc<RouteState>) -> (watch::Sender<bool>, JoinHandle<()>) {
        let (stop, stopped) = watch::channel(false);
        let deps = self.deps.clone();
        let (settings, state) = (settings.clone(), state.clone());
        let name = route_key(&settings.current());
        let task = tokio::spawn(async move {
            let restarts_state = state.clone();
            restart_until_shutdown(&name, stopped.clone(), &restarts_state, || {
                dispatch::run_route(
                    settings.clone(),
                    state.clone(),
                    deps.registry.clone(),
                    deps.db.clone(),
                    deps.consumer_base.clone(),
                    deps.origin.clone(),
                    stopped.clone(),
                )
            })
            .await;
        });
        (stop, task)
    }

    /// Stops `key` for good: each partition finishes its current event, offsets are
    /// committed and the consumer leaves its group. Whether it was paused; None when no
    /// such route runs.
    pub async fn remove(&self, key: &str) -> Option<bool> {
        let mut route = self.running.lock().await.remove(key)?;
        let _ = route.stop.send(true);
        if let Some(task) = route.task.take() {
            let _ = task.await;
        }
        Some(route.state.paused.load(Ordering::SeqCst))
    }

    /// Applies edited settings of a running route from its next event. False when the
    /// route does not run.
    pub async fn update(&self, route: Route) -> bool {
        match self.running.lock().await.get(&route_key(&route)) {
            Some(running) => {
                running.settings.update(route);
                true
            }
            None => false,
        }
    }

    /// Stops consuming `key` but keeps it, with its offsets committed, until [`Routes::resume`].
    pub async fn pause(&self, key: &str) -> Option<bool> {
        let task = {
            let mut running = self.running.lock().await;
            let route = running.get_mut(key)?;
            if route.state.paused.swap(true, Ordering::SeqCst) {
                return Some(false);
            }
            let _ = route.stop.send(true);
            route.task.take()
        };
        if let Some(task) = task {
            let _ = task.await;
        }
        Some(true)
    }

    /// Consumes a paused route again.
    pub async fn resume(&self, key: &str) -> Option<bool> {
        let mut running = self.running.lock().await;
        if self.stopped.load(Ordering::SeqCst) {
            return Some(false);
        }
        let (settings, state) = {
            let route = running.get(key)?;
            if !route.state.paused.swap(false, Ordering::SeqCst) {
                return Some(false);
            }
            (route.settings.clone(), route.state.clone())
        };
        let (stop, task) = self.spawn(&settings, &state);
        let route = running.get_mut(key).expect("checked above");
        route.stop = stop;
        route.task = Some(task);
        Some(true)
    }

    /// Stops every route (shutdown), in parallel.
    pub async fn stop_all(&self) {
        let mut running = self.running.lock().await;
        self.stopped.store(true, Ordering::SeqCst);
        for route in running.values() {
            let _ = route.stop.send(true);
        }
        for route in running.values_mut() {
            if let Some(task) = route.task.take() {
                let _ = task.await;
            }
        }
        running.clear();
    }

    pub async fn keys(&self) -> BTreeSet<String> {
        self.running.lock().await.keys().cloned().collect()
    }

    /// Every route as `status` shows it.
    pub async fn status(&self) -> Vec<RouteStatus> {
        let running = self.running.lock().await;
        running
            .iter()
            .map(|(key, r)| {
                let route = r.settings.current();
                RouteStatus {
                    key: key.clone(),
                    topic: route.topic.to_string(),
                    component: route.component.to_string(),
                    group: route.group.clone(),
                    dead_letter: route.dead_letter.to_string(),
                    concurrency: route.concurrency,
                    retry_attempts: route.retry.attempts,
                    state: if r.state.paused.load(Ordering::SeqCst) {
                        "paused".into()
                    } else {
                        "running".into()
                    },
                    partitions: r.state.assigned.lock().expect("state lock").iter().copied().collect(),
                    assignments: r.state.assignments.load(Ordering::SeqCst),
                    restarts: r.state.restarts.load(Ordering::SeqCst),
                    last_error: r.state.last_error.lock().expect("state lock").clone(),
                }
            })
            .collect()
    }
}

/// Runs `run` in a task of its own until `shutdown`; whenever it returns early, fails or
/// panics, runs it again after a pause that doubles from 0.5 s to 30 s (and starts over
/// after a run that lasted [`HEALTHY_RUN`]). Returns how many restarts there were.
async fn restart_until_shutdown<F, Fut>(name: &str, shutdown: watch::Receiver<bool>, state: &RouteState, run: F) -> u32
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
        *state.last_error.lock().expect("state lock") = Some(reason);
        state.assigned.lock().expect("state lock").clear();
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return restarts,
        }
        restarts += 1;
        state.restarts.fetch_add(1, Ordering::SeqCst);
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
        let state = Arc::new(RouteState::default());
        let seen = state.clone();
        let supervisor = tokio::spawn(async move {
            restart_until_shutdown("t -> c", shutdown, &state, move || {
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
        assert_eq!(seen.restarts.load(Ordering::SeqCst), 3);
        assert_eq!(seen.last_error.lock().unwrap().as_deref(), Some("it stopped by itself"));
        stop.send(true).unwrap();
        assert_eq!(supervisor.await.unwrap(), 3);
    }

    /// librdkafka can wait forever to commit and leave a group whose brokers stopped
    /// answering (see `kafka::close`): the route must stop anyway, and promptly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_stops_within_the_close_limit_when_the_broker_stops_answering() {
        use rdkafka::mocking::MockCluster;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let routing = crate::config::Routing::parse(
            &dir.path().join("topics.toml"),
            "[topics.t]\n[components.c]\nartifact = \"c.wasm\"\n[[routes]]\ntopic = \"t\"\ncomponent = \"c\"\n",
        )
        .unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let runtime = Arc::new(crate::runtime::Runtime::new().unwrap());
        let mut consumer_base = rdkafka::ClientConfig::new();
        consumer_base.set("bootstrap.servers", cluster.bootstrap_servers());
        let routes = Routes::new(RouteDeps {
            registry: Arc::new(Registry::new(runtime, db.clone(), "test-host".into())),
            db: db.clone(),
            consumer_base: consumer_base.clone(),
            origin: "test".into(),
        });
        let route = routing.routes[0].clone();
        let key = route_key(&route);
        routes.start(route).await;
        // Joined: the group gave this consumer the partition.
        let joined = async {
            while routes.status().await[0].partitions.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), joined)
            .await
            .expect("joined within 30 s");
        // An event handled before: the route skips it and stores its offset, which the
        // consumer must then commit when it stops.
        let headers = {
            let mut headers = vec![(crate::protocol::names::EVENT_ID.to_string(), "e1".to_string())];
            db.signer().seal("t", Some(b"k"), b"{}", &mut headers);
            headers
        };
        let (unit, _) = crate::store::Staged::new(&db, "c", Default::default())
            .finish(crate::store::InboxRecord {
                component: "c".into(),
                event_id: "e1".into(),
                topic: "t".into(),
                partition: 0,
                offset: 0,
                version: None,
                activation: None,
                request_id: None,
                trace_id: None,
                outcome: "committed",
            })
            .await;
        db.commit_chain(vec![unit]).await.unwrap();
        let producer: rdkafka::producer::FutureProducer = consumer_base.create().unwrap();
        let mut kafka_headers = rdkafka::message::OwnedHeaders::new();
        for (name, value) in &headers {
            kafka_headers = kafka_headers.insert(rdkafka::message::Header {
                key: name,
                value: Some(value),
            });
        }
        producer
            .send(
                rdkafka::producer::FutureRecord::to("t")
                    .key("k")
                    .payload("{}")
                    .headers(kafka_headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let labels = crate::observe::metrics::PartitionLabels {
            topic: "t".into(),
            component: "c".into(),
            partition: 0,
        };
        let skipped = async {
            while crate::observe::metrics().handled_at(&labels).is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), skipped)
            .await
            .expect("skipped within 30 s");
        // Requests are accepted and never answered.
        cluster.broker_round_trip_time(1, Duration::from_secs(3600)).unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(30), routes.remove(&key))
            .await
            .expect("the route stopped within 30 s");
        let limit = crate::kafka::close::CLOSE_LIMIT;
        assert!(
            started.elapsed() < limit + Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // The consumer left closing still talks to the cluster.
        std::mem::forget(cluster);
    }
}
