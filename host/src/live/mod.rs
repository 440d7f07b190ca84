//! Live operation of a running host: hot-swapping component versions, applying
//! `topics.toml` edits as a diff, and what `status` reports about both.
//!
//! Where the truth lives (docs/operations.md says the same for operators):
//! - **Component versions**: the database. A deploy, rollback or changed artifact file
//!   on any host appends an activation; every host on the database follows the log
//!   within [`FOLLOW_EVERY`], and at once before handling a newly assigned partition.
//! - **Routing**: each host's own `topics.toml`. A host applies an edit of its file when
//!   the file changes, on SIGHUP and on `switchyard reload`; hosts sharing a cluster
//!   should be given the same file.

pub mod registry;
pub mod routes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{ComponentName, Route, Routing};
use crate::runtime::LoadError;
use crate::store::{Activation, Db, StoredVersion, now_ms};

use registry::{DeployError, Registry, Swapped, file_source};
use routes::{RouteStatus, Routes, route_key};

/// How often a host follows the activation log and looks at its files.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// An edit of the routing file that was refused; the routing before it keeps running.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RejectedEdit {
    pub at_ms: i64,
    /// What refused it: the same text as `switchyard check` prints.
    pub error: String,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ReloadReport {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub components_added: Vec<String>,
    pub components_removed: Vec<String>,
    pub components_changed: Vec<String>,
    pub swapped: Vec<String>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        *self == ReloadReport::default()
    }
}

/// A component as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub version: String,
    pub activation: i64,
    /// Newest first.
    pub history: Vec<Activation>,
}

/// `switchyard status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    pub host: String,
    pub routing_file: String,
    pub brokers: String,
    pub database: String,
    pub routes: Vec<RouteStatus>,
    pub components: Vec<ComponentStatus>,
    pub last_rejected_edit: Option<RejectedEdit>,
    /// Swaps refused since start (bad artifacts), newest last.
    pub rejected_deploys: Vec<RejectedEdit>,
}

/// `switchyard versions COMPONENT`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Versions {
    pub component: String,
    pub active: String,
    pub stored: Vec<StoredVersion>,
    pub history: Vec<Activation>,
}

/// A failure of a live operation.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("the routing edit was refused, the running routing stays: {0}")]
    Rejected(String),
    #[error("no route {0:?}; `switchyard status` lists them")]
    UnknownRoute(String),
}

/// How an edit's check failed: the edit's fault (refused, the running routing stays), or
/// the database's (kept as [`DeployError::Store`]: the admin API answers 503 without its
/// text, and the file watcher tries the edit again).
fn refusal(err: DeployError) -> LiveError {
    match err {
        DeployError::Store(ref e) if !e.is_caused_by_data() => LiveError::Deploy(err),
        err => LiveError::Rejected(err.to_string()),
    }
}

/// True when `result` is an edit the database failed under (see [`refusal`]).
fn unapplied(result: &Result<ReloadReport, LiveError>) -> bool {
    matches!(result, Err(LiveError::Deploy(DeployError::Store(e))) if !e.is_caused_by_data())
}

/// How long the file watcher waits before it tries again an edit the database failed.
const RETRY_UNAPPLIED: Duration = Duration::from_secs(2);

/// The running host as live operations see it.
pub struct Live {
    routing_path: PathBuf,
    routing: Mutex<Routing>,
    registry: Arc<Registry>,
    routes: Routes,
    db: Db,
    brokers: String,
    /// Creates the topics an edit adds.
    topics: crate::kafka::TopicMaker,
    last_rejected: Mutex<Option<RejectedEdit>>,
    rejected_deploys: Mutex<Vec<RejectedEdit>>,
    /// One reload or deploy at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Live {
    pub fn new(
        routing: Routing,
        registry: Arc<Registry>,
        routes: Routes,
        db: Db,
        brokers: String,
        topics: crate::kafka::TopicMaker,
    ) -> Live {
        Live {
            routing_path: routing.source.clone(),
            routing: Mutex::new(routing),
            registry,
            routes,
            db,
            brokers,
            topics,
            last_rejected: Mutex::new(None),
            rejected_deploys: Mutex::new(Vec::new()),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// True when the host runs the in-process broker.
    pub fn embedded_brokers(&self) -> bool {
        matches!(self.topics, crate::kafka::TopicMaker::Embedded(_))
    }

    pub fn routing(&self) -> Routing {
        self.routing.lock().expect("routing lock").clone()
    }

    fn spec(&self, component: &str) -> Result<crate::config::ComponentSpec, DeployError> {
        let routing = self.routing.lock().expect("routing lock");
        routing
            .components
            .iter()
            .find(|(n, _)| n.as_str() == component)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| DeployError::UnknownComponent(component.to_string()))
    }

    /// Makes `bytes` the running code of `component` on every host of the database.
    pub async fn deploy(&self, component: &str, bytes: &[u8]) -> Result<Swapped, LiveError> {
        let _changing = self.changing.lock().await;
        let spec = self.spec(component)?;
        self.registry
            .deploy_bytes(&spec, bytes, "api", "deploy")
            .await
            .inspect_err(|e| self.record_rejected_deploy(e))
            .map_err(LiveError::from)
    }

    /// Returns `component` to `to`, or to the version active before the current one.
    pub async fn rollback(&self, component: &str, to: Option<&str>) -> Result<Swapped, LiveError> {
        let _changing = self.changing.lock().await;
        let spec = self.spec(component)?;
        Ok(self.registry.rollback(&spec, to).await?)
    }

    fn record_rejected_deploy(&self, err: &DeployError) {
        tracing::error!(error = %err, "deploy refused; the running version keeps serving");
        let mut rejected = self.rejected_deploys.lock().expect("rejected lock");
        rejected.push(RejectedEdit {
            at_ms: now_ms(),
            error: err.to_string(),
        });
        let excess = rejected.len().saturating_sub(20);
        rejected.drain(..excess);
    }

    pub async fn versions(&self, component: &str) -> Result<Versions, LiveError> {
        let spec = self.spec(component)?;
        let active = self
            .registry
            .get(&spec.name)
            .map(|c| c.version.to_string())
            .unwrap_or_default();
        let stored = self.db.stored_versions(component).await.map_err(DeployError::from)?;
        let history = self
            .db
            .activation_history(component, 50)
            .await
            .map_err(DeployError::from)?;
        Ok(Versions {
            component: component.to_string(),
            active,
            stored,
            history,
        })
    }

    pub async fn status(&self) -> Status {
        let mut components = Vec::new();
        for c in self.registry.all() {
            let history = self
                .db
                .activation_history(c.spec.name.as_str(), 10)
                .await
                .unwrap_or_default();
            components.push(ComponentStatus {
                name: c.spec.name.to_string(),
                version: c.version.to_string(),
                activation: c.activation,
                history,
            });
        }
        Status {
            host: self.registry.host().to_string(),
            routing_file: self.routing_path.display().to_string(),
            brokers: self.brokers.clone(),
            database: self.db.kind().to_string(),
            routes: self.routes.status().await,
            components,
            last_rejected_edit: self.last_rejected.lock().expect("rejected lock").clone(),
            rejected_deploys: self.rejected_deploys.lock().expect("rejected lock").clone(),
        }
    }

    pub async fn pause(&self, key: &str) -> Result<bool, LiveError> {
        self.routes
            .pause(key)
            .await
            .ok_or_else(|| LiveError::UnknownRoute(key.to_string()))
    }

    pub async fn resume(&self, key: &str) -> Result<bool, LiveError> {
        self.routes
            .resume(key)
            .await
            .ok_or_else(|| LiveError::UnknownRoute(key.to_string()))
    }

    /// Reads the routing file again and applies what changed (see [`Live::apply`]); an
    /// invalid file is refused, remembered for `status`, and changes nothing.
    pub async fn reload(&self, trigger: &str) -> Result<ReloadReport, LiveError> {
        let _changing = self.changing.lock().await;
        let result = match Routing::load(&self.routing_path) {
            Ok(new) => self.apply(new).await,
            Err(err) => Err(LiveError::Rejected(err.to_string())),
        };
        match &result {
            Ok(report) => {
                // Valid again, changed or not (a broken file put back as it was, say).
                *self.last_rejected.lock().expect("rejected lock") = None;
                if report.is_empty() {
                    tracing::debug!(trigger, "routing unchanged");
                } else {
                    tracing::info!(trigger, ?report, "routing edit applied");
                }
            }
            Err(err) if unapplied(&result) => {
                tracing::error!(trigger, error = %err, "routing edit not applied: the database failed under it");
                *self.last_rejected.lock().expect("rejected lock") = Some(RejectedEdit {
                    at_ms: now_ms(),
                    error: format!("not applied, the database failed: {err}"),
                });
            }
            Err(err) => {
                tracing::error!(trigger, error = %err, "routing edit refused");
                *self.last_rejected.lock().expect("rejected lock") = Some(RejectedEdit {
                    at_ms: now_ms(),
                    error: err.to_string(),
                });
            }
        }
        result
    }

    /// Applies `new` as a diff against the running routing: components new or with a
    /// new artifact are compiled, checked and started once first, running code given new
    /// limits is started once under them (any failure refuses the whole edit);
    /// then added routes start, removed ones drain and leave their group, edited
    /// settings apply from the next event, and routes the edit does not touch keep
    /// running untouched (no rebalance).
    async fn apply(&self, new: Routing) -> Result<ReloadReport, LiveError> {
        let old = self.routing();
        let mut report = ReloadReport::default();

        // Check every new artifact, and running code given new limits, before anything
        // changes: compiled, linked and started once under the new settings. Start-up
        // code that traps, loops or outgrows the memory it is given refuses the edit
        // here; found at the swap, it left the topics, settings and swaps before it applied.
        let mut incoming = Vec::new();
        let mut added = Vec::new();
        for (name, spec) in &new.components {
            let Some(before) = old.components.get(name) else {
                // The version it will run: the file's, or the one the database has active.
                let prepared = self.registry.prepare_add(spec).await.map_err(refusal)?;
                added.push((spec.clone(), prepared));
                continue;
            };
            if before.artifact != spec.artifact {
                let bytes = std::fs::read(&spec.artifact).map_err(|source| {
                    LiveError::Rejected(
                        LoadError::Read {
                            at: spec.artifact_at.to_string(),
                            component: spec.name.to_string(),
                            path: spec.artifact.display().to_string(),
                            source,
                        }
                        .to_string(),
                    )
                })?;
                let loaded = self.registry.check(spec, &bytes).await.map_err(refusal)?;
                incoming.push((spec.clone(), loaded, bytes));
            } else if before.limits != spec.limits
                && let Some(running) = self.registry.get(name)
            {
                let relimited = running
                    .with_spec(self.registry.runtime(), spec)
                    .map_err(|e| LiveError::Rejected(e.to_string()))?;
                self.registry.check_start(&relimited).await.map_err(|e| match e {
                    DeployError::Store(_) => refusal(e),
                    e => LiveError::Rejected(format!("{e} under the new limits")),
                })?;
            }
        }
        if let Err(err) = self.topics.ensure(&new).await {
            return Err(LiveError::Rejected(format!(
                "cannot create the topics it declares: {err:#}"
            )));
        }

        for (spec, loaded, bytes) in incoming {
            // Already running it: an earlier try of this edit swapped it before the
            // database failed under a later step. Activating it again would swap every
            // host to what it runs.
            let running = self.registry.get(&spec.name).map(|c| c.version.clone());
            if running.as_deref() == Some(&*loaded.version) {
                if let Err(err) = self.registry.respec(&spec).await {
                    tracing::warn!(error = %err, "cannot apply the new settings to the running version");
                }
                continue;
            }
            // The new code carries the new settings already; the old code never runs
            // under settings it was not started with. Applied after the swap, they
            // reach a newer version another host activated meanwhile.
            self.registry
                .deploy_checked(&spec, loaded, &bytes, &file_source(&spec), "file")
                .await?;
            if let Err(err) = self.registry.respec(&spec).await {
                tracing::warn!(error = %err, "cannot apply the new settings to the running version");
            }
            report.swapped.push(spec.name.to_string());
        }
        for (spec, prepared) in added {
            self.registry.add_prepared(&spec, prepared).await?;
            report.components_added.push(spec.name.to_string());
        }
        for (name, spec) in &new.components {
            if let Some(before) = old.components.get(name)
                && before.artifact == spec.artifact
                && (before.publishes != spec.publishes
                    || before.config != spec.config
                    || before.limits != spec.limits
                    || before.reach != spec.reach)
            {
                self.registry.respec(spec).await?;
                report.components_changed.push(name.to_string());
            }
        }

        let old_routes: BTreeMap<String, &Route> = old.routes.iter().map(|r| (route_key(r), r)).collect();
        let new_routes: BTreeMap<String, &Route> = new.routes.iter().map(|r| (route_key(r), r)).collect();
        // Paused routes the edit restarts (a new group) stay paused.
        let mut paused = std::collections::BTreeSet::new();
        for (key, before) in &old_routes {
            match new_routes.get(key) {
                Some(after) if after.group == before.group => {}
                _ => {
                    if self.routes.remove(key).await == Some(true) {
                        paused.insert(key.clone());
                    }
                    report.routes_removed.push(key.clone());
                }
            }
        }
        for (key, after) in &new_routes {
            match old_routes.get(key) {
                Some(before) if before.group == after.group => {
                    if *before != *after {
                        self.routes.update((*after).clone()).await;
                        report.routes_changed.push(key.clone());
                    }
                }
                _ => {
                    self.routes.start_as((*after).clone(), paused.contains(key)).await;
                    report.routes_added.push(key.clone());
                }
            }
        }
        for name in old.components.keys() {
            if !new.components.contains_key(name) {
                self.registry.remove(name);
                report.components_removed.push(name.to_string());
            }
        }
        *self.routing.lock().expect("routing lock") = new;
        Ok(report)
    }

    /// Until `shutdown`: follows the activation log, applies edits of the routing file
    /// and swaps in changed artifact files, and reloads on SIGHUP. A file is acted on
    /// once it stayed the same for one tick, so a half-written file is not mistaken for
    /// a broken one.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut routing_seen = file_digest(&self.routing_path);
        let mut retry_routing_at: Option<Instant> = None;
        let mut routing_last = routing_seen;
        let mut artifacts_seen = self.artifact_fingerprints();
        let mut artifacts_last = artifacts_seen.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    // Artifact files stay watched as they were: one rewritten just before
                    // the reload (a deploy script, `git pull`) is still swapped in below.
                    if unapplied(&self.reload("SIGHUP").await) {
                        retry_routing_at = Some(Instant::now() + RETRY_UNAPPLIED);
                    } else {
                        routing_seen = file_digest(&self.routing_path);
                        retry_routing_at = None;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            if let Err(err) = self.registry.refresh().await {
                tracing::warn!(error = %err, "cannot follow the activation log");
            }
            let digest = file_digest(&self.routing_path);
            let settled = digest == routing_last;
            routing_last = digest;
            let retry_due = retry_routing_at.is_some_and(|at| Instant::now() >= at);
            if settled && ((digest != routing_seen && retry_routing_at.is_none()) || retry_due) {
                // An edit the database failed under (by this watcher or a SIGHUP) is not
                // refused: tried again until it applies or is refused, not lost until the
                // next change of the file.
                if unapplied(&self.reload("routing file changed").await) {
                    retry_routing_at = Some(Instant::now() + RETRY_UNAPPLIED);
                } else {
                    routing_seen = digest;
                    retry_routing_at = None;
                }
                continue;
            }
            let now = self.artifact_fingerprints();
            for (name, fingerprint) in &now {
                let settled = artifacts_last.get(name) == Some(fingerprint);
                if settled && fingerprint.is_some() && artifacts_seen.get(name) != Some(fingerprint) {
                    self.swap_from_file(name).await;
                    artifacts_seen.insert(name.clone(), *fingerprint);
                }
            }
            artifacts_last = now;
        }
    }

    /// A component's artifact file changed: deploy it (a bad one is refused and logged).
    async fn swap_from_file(&self, name: &ComponentName) {
        let _changing = self.changing.lock().await;
        let Ok(spec) = self.spec(name.as_str()) else {
            return;
        };
        let bytes = match std::fs::read(&spec.artifact) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(component = %name, error = %err, "artifact file unreadable");
                return;
            }
        };
        // Only content the file has not brought in before is deployed (as at start-up):
        // the same bytes written again must not undo a rollback or an admin deploy.
        let version = crate::runtime::version_of(&bytes);
        match self.db.last_file_version(name.as_str()).await {
            Ok(Some(last)) if last == version => return,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(component = %name, error = %err, "cannot read what the file last brought in; retrying at its next change");
                return;
            }
        }
        if self.registry.get(name).is_some_and(|c| *c.version == version) {
            return;
        }
        if let Err(err) = self
            .registry
            .deploy_bytes(&spec, &bytes, &file_source(&spec), "file")
            .await
        {
            self.record_rejected_deploy(&err);
        }
    }

    /// Size and modification time of each artifact file: cheap to take every tick; a
    /// change leads to reading and hashing the file, and only a new version swaps.
    fn artifact_fingerprints(&self) -> BTreeMap<ComponentName, Option<(std::time::SystemTime, u64)>> {
        self.routing()
            .components
            .values()
            .map(|s| {
                let meta = std::fs::metadata(&s.artifact).ok();
                (s.name.clone(), meta.and_then(|m| Some((m.modified().ok()?, m.len()))))
            })
            .collect()
    }
}

/// The sha256 of a file, None when unreadable. Content, not mtime: a rewrite with the
/// same bytes is no change, and a change within one mtime tick is still seen.
fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    std::fs::read(path).ok().map(|bytes| sha2::Sha256::digest(bytes).into())
}
