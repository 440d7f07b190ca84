//! The component registry: which version of each component runs, on this host.
//!
//! Workers look their component up here per event, so a swap takes effect between
//! events: an invocation that started keeps the version it started with, the next one
//! gets the new one. The database is the truth about which version is active (the
//! newest row of `component_activations`): a deploy or rollback through any host writes
//! there first and installs locally after, and every host follows the log ([`Registry::refresh`]),
//! so all hosts on one database converge. A host only ever moves a component to a
//! newer activation, and it refreshes before handling a partition it was just assigned:
//! within a partition, once an event ran on a version, no later event runs on an older
//! activation, whichever host owns the partition next.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::config::{ComponentName, ComponentSpec};
use crate::runtime::{LoadError, LoadedComponent, Runtime, version_of};
use crate::store::{Activation, Db, StoreError};

/// How many versions of a component keep their artifact for a rollback.
pub const KEPT_VERSIONS: i64 = 10;

/// A deploy, rollback or load that did not happen; the running version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no component named {0:?} in the routing table (add it to topics.toml first)")]
    UnknownComponent(String),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("component \"{component}\" version {version} traps at load: {reason} (fix its start-up code)")]
    TrapsAtLoad {
        component: String,
        version: String,
        reason: String,
    },
    #[error(
        "component \"{component}\" is to run version {version:?}, active in the database, but that version's \
         artifact is not stored there any more; deploy a version (`switchyard deploy`) or change its artifact file"
    )]
    ActiveArtifactMissing { component: String, version: String },
    #[error("component \"{component}\" has no version {version:?} to roll back to; known: {known}")]
    UnknownVersion {
        component: String,
        version: String,
        known: String,
    },
    #[error("component \"{0}\" has no earlier version to roll back to")]
    NoEarlierVersion(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// A change of the running version on this host.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Swapped {
    pub component: String,
    pub from: Option<String>,
    pub to: String,
    pub activation: i64,
    pub reason: String,
}

/// A component about to be brought in, checked (see [`Registry::prepare_add`]).
pub enum Incoming {
    /// The artifact file's version, to be activated (`reason`: start or file).
    File {
        loaded: LoadedComponent,
        bytes: Vec<u8>,
        reason: &'static str,
    },
    /// The version the database has active.
    Stored {
        loaded: LoadedComponent,
        active: Activation,
    },
}

/// Loaded components by name, with the activation each runs under.
pub struct Registry {
    runtime: Arc<Runtime>,
    db: Db,
    /// Names this host in activation rows.
    host: String,
    slots: RwLock<HashMap<ComponentName, Arc<LoadedComponent>>>,
    /// Serializes installs, so two concurrent swaps cannot interleave their checks.
    installing: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>, db: Db, host: String) -> Registry {
        Registry {
            runtime,
            db,
            host,
            slots: RwLock::default(),
            installing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The running version of `name`.
    pub fn get(&self, name: &ComponentName) -> Option<Arc<LoadedComponent>> {
        self.slots.read().expect("registry lock").get(name).cloned()
    }

    /// Every running component.
    pub fn all(&self) -> Vec<Arc<LoadedComponent>> {
        let mut all: Vec<_> = self.slots.read().expect("registry lock").values().cloned().collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    /// Brings `spec` in at start or when a routing edit adds it: [`Registry::prepare_add`]
    /// then [`Registry::add_prepared`].
    pub async fn add(&self, spec: &ComponentSpec) -> Result<Option<Swapped>, DeployError> {
        let incoming = self.prepare_add(spec).await?;
        self.add_prepared(spec, incoming).await
    }

    /// Decides which version bringing `spec` in runs, compiles it and starts it once
    /// under `spec`'s limits; nothing changes. The database decides, with the artifact
    /// file as an input: the first time, or when the file's content differs from what the
    /// file last brought in (it changed while no host watched), the file's version is
    /// activated; otherwise the active version stays (it may be a deploy or a rollback
    /// through the admin API), and is the one checked.
    pub async fn prepare_add(&self, spec: &ComponentSpec) -> Result<Incoming, DeployError> {
        let file = std::fs::read(&spec.artifact);
        let active = self
            .db
            .active_versions()
            .await?
            .into_iter()
            .find(|a| a.component == spec.name.as_str());
        let file_version = file.as_ref().ok().map(|bytes| version_of(bytes));
        let file_changed = match (&file_version, &active) {
            (Some(_), None) => true,
            (Some(v), Some(_)) => self.db.last_file_version(spec.name.as_str()).await?.as_ref() != Some(v),
            (None, _) => false,
        };
        let reason = if active.is_none() { "start" } else { "file" };
        let Some(active) = active.filter(|_| !file_changed) else {
            let bytes = file.map_err(|source| LoadError::Read {
                at: spec.artifact_at.to_string(),
                component: spec.name.to_string(),
                path: spec.artifact.display().to_string(),
                source,
            })?;
            let loaded = self.check(spec, &bytes).await?;
            return Ok(Incoming::File { loaded, bytes, reason });
        };
        if let Err(err) = &file {
            tracing::warn!(component = %spec.name, path = %spec.artifact.display(), error = %err,
                "artifact file unreadable; running the active version from the database");
        }
        let loaded = self.compile_stored(spec, &active).await?;
        self.check_start(&loaded).await?;
        Ok(Incoming::Stored { loaded, active })
    }

    /// Runs what [`Registry::prepare_add`] decided and checked.
    pub async fn add_prepared(&self, spec: &ComponentSpec, incoming: Incoming) -> Result<Option<Swapped>, DeployError> {
        match incoming {
            Incoming::File { loaded, bytes, reason } => self
                .deploy_checked(spec, loaded, &bytes, &file_source(spec), reason)
                .await
                .map(Some),
            Incoming::Stored { loaded, active } => self.install_compiled(loaded, &active).await,
        }
    }

    /// Forgets a component a routing edit removed (its routes are stopped first).
    pub fn remove(&self, name: &ComponentName) {
        self.slots.write().expect("registry lock").remove(name);
        crate::observe::metrics().component_removed(name.as_str());
    }

    /// Applies edited settings (`publishes`, `config`, `limits`) to the running code.
    /// Taken in turn with installs, so an install that compiled under the old settings
    /// meanwhile neither loses the edit nor is replaced by the older code.
    pub async fn respec(&self, spec: &ComponentSpec) -> Result<(), DeployError> {
        let _guard = self.installing.lock().await;
        let current = self
            .get(&spec.name)
            .ok_or_else(|| DeployError::UnknownComponent(spec.name.to_string()))?;
        let updated = current.with_spec(&self.runtime, spec)?;
        self.slots
            .write()
            .expect("registry lock")
            .insert(spec.name.clone(), Arc::new(updated));
        Ok(())
    }

    /// Makes `bytes` the running code of `spec`'s component on every host: compiled,
    /// checked against the world and instantiated once before the switch, so a bad
    /// artifact is refused and the running version keeps serving.
    pub async fn deploy_bytes(
        &self,
        spec: &ComponentSpec,
        bytes: &[u8],
        source: &str,
        reason: &str,
    ) -> Result<Swapped, DeployError> {
        let loaded = self.check(spec, bytes).await?;
        self.deploy_checked(spec, loaded, bytes, source, reason).await
    }

    /// `bytes` compiled for `spec` (off the event workers' threads: compiling takes a
    /// core for a while), linked against the world, and instantiated once under
    /// `spec`'s limits. Nothing changes.
    pub async fn check(&self, spec: &ComponentSpec, bytes: &[u8]) -> Result<LoadedComponent, DeployError> {
        let runtime = self.runtime.clone();
        let (owned_spec, owned_bytes) = (spec.clone(), bytes.to_vec());
        let loaded = tokio::task::spawn_blocking(move || runtime.load_bytes(&owned_spec, &owned_bytes))
            .await
            .expect("compile task")?;
        self.check_start(&loaded).await?;
        Ok(loaded)
    }

    /// Instantiates `loaded` once, read-only and under its limits: start-up code that
    /// traps, loops or outgrows its memory is refused here rather than at its first event.
    pub async fn check_start(&self, loaded: &LoadedComponent) -> Result<(), DeployError> {
        self.runtime
            .trial_instantiate(loaded, &self.db)
            .await
            .map_err(|reason| DeployError::TrapsAtLoad {
                component: loaded.spec.name.to_string(),
                version: loaded.version.to_string(),
                reason,
            })
    }

    /// Makes `loaded`, which passed [`Registry::check`], the running code of `spec`'s
    /// component on every host.
    pub async fn deploy_checked(
        &self,
        spec: &ComponentSpec,
        loaded: LoadedComponent,
        bytes: &[u8],
        source: &str,
        reason: &str,
    ) -> Result<Swapped, DeployError> {
        let _guard = self.installing.lock().await;
        let activation = self
            .db
            .activate_version(spec.name.as_str(), &loaded.version, bytes, source, reason, &self.host)
            .await?;
        if let Err(err) = self.db.prune_versions(spec.name.as_str(), KEPT_VERSIONS).await {
            tracing::warn!(component = %spec.name, error = %err, "cannot prune old versions");
        }
        Ok(self
            .install(loaded.activated(activation.seq), &activation)
            .unwrap_or_else(|| Swapped {
                component: spec.name.to_string(),
                from: None,
                to: activation.version.clone(),
                activation: activation.seq,
                reason: activation.reason.clone(),
            }))
    }

    /// Returns `spec`'s component to `to`, or without it to the version active before
    /// the current one.
    pub async fn rollback(&self, spec: &ComponentSpec, to: Option<&str>) -> Result<Swapped, DeployError> {
        let name = spec.name.as_str();
        let history = self.db.activation_history(name, 1000).await?;
        let current = history.first().map(|a| a.version.clone());
        let target = match to {
            Some(version) => version.to_string(),
            None => history
                .iter()
                .map(|a| &a.version)
                .find(|v| Some(*v) != current.as_ref())
                .cloned()
                .ok_or_else(|| DeployError::NoEarlierVersion(name.to_string()))?,
        };
        let Some(bytes) = self.db.version_artifact(name, &target).await? else {
            let known = self.db.stored_versions(name).await?;
            return Err(DeployError::UnknownVersion {
                component: name.to_string(),
                version: target,
                known: known.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", "),
            });
        };
        self.deploy_bytes(spec, &bytes, "api", "rollback").await
    }

    /// Follows the activation log: installs every component whose active version in the
    /// database is newer than what runs here (deployed or rolled back through another
    /// host). Cheap when nothing changed: one query.
    pub async fn refresh(&self) -> Result<Vec<Swapped>, DeployError> {
        self.refresh_where(|_| true).await
    }

    /// [`Registry::refresh`] for one component: what a partition of its route needs
    /// before its first event, whatever the other components' state.
    pub async fn refresh_one(&self, component: &ComponentName) -> Result<Vec<Swapped>, DeployError> {
        self.refresh_where(|name| name == component).await
    }

    /// Installs every newer activation of the components `wanted` picks; one that fails
    /// does not keep the others back (the first error is returned after all were tried).
    async fn refresh_where(&self, wanted: impl Fn(&ComponentName) -> bool) -> Result<Vec<Swapped>, DeployError> {
        let mut swapped = Vec::new();
        let mut failed = None;
        for active in self.db.active_versions().await? {
            let Ok(name) = ComponentName::try_from(active.component.clone()) else {
                continue;
            };
            if !wanted(&name) {
                continue;
            }
            let Some(current) = self.get(&name) else {
                continue;
            };
            if active.seq <= current.activation {
                continue;
            }
            match self.install_stored(&current.spec, &active).await {
                Ok(Some(s)) => swapped.push(s),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(component = %name, version = %active.version, error = %err, "cannot install the active version");
                    failed.get_or_insert(err);
                }
            }
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(swapped),
        }
    }

    /// Installs the stored version an activation names, compiling it (the engine's cache
    /// makes a version this machine compiled before cheap).
    async fn install_stored(&self, spec: &ComponentSpec, active: &Activation) -> Result<Option<Swapped>, DeployError> {
        let loaded = self.compile_stored(spec, active).await?;
        self.install_compiled(loaded, active).await
    }

    /// The stored version an activation names, compiled for `spec`.
    async fn compile_stored(&self, spec: &ComponentSpec, active: &Activation) -> Result<LoadedComponent, DeployError> {
        let bytes = self
            .db
            .version_artifact(spec.name.as_str(), &active.version)
            .await?
            .ok_or_else(|| DeployError::ActiveArtifactMissing {
                component: spec.name.to_string(),
                version: active.version.clone(),
            })?;
        let runtime = self.runtime.clone();
        let owned_spec = spec.clone();
        Ok(
            tokio::task::spawn_blocking(move || runtime.load_bytes(&owned_spec, &bytes))
                .await
                .expect("compile task")?,
        )
    }

    /// Installs `loaded`, the compiled version `active` names.
    async fn install_compiled(
        &self,
        loaded: LoadedComponent,
        active: &Activation,
    ) -> Result<Option<Swapped>, DeployError> {
        let _guard = self.installing.lock().await;
        // Settings edited while it compiled apply to it too.
        let running_spec = self.get(&loaded.spec.name).map(|c| c.spec.clone());
        let loaded = match running_spec {
            Some(running) if *running != *loaded.spec => loaded.with_spec(&self.runtime, &running)?,
            _ => loaded,
        };
        Ok(self.install(loaded.activated(active.seq), active))
    }

    /// Puts `loaded` in its slot unless a newer activation runs already.
    fn install(&self, loaded: LoadedComponent, activation: &Activation) -> Option<Swapped> {
        let mut slots = self.slots.write().expect("registry lock");
        let name = loaded.spec.name.clone();
        let from = slots.get(&name).map(|c| (c.version.to_string(), c.activation));
        if from.as_ref().is_some_and(|(_, seq)| *seq >= loaded.activation) {
            return None;
        }
        let to = loaded.version.to_string();
        slots.insert(name.clone(), Arc::new(loaded));
        drop(slots);
        crate::observe::metrics().component_loaded(name.as_str(), &to);
        tracing::info!(
            component = %name,
            from = from.as_ref().map(|(v, _)| v.as_str()).unwrap_or(""),
            to = %to,
            activation = activation.seq,
            reason = %activation.reason,
            by = %activation.host,
            "component version active"
        );
        Some(Swapped {
            component: name.to_string(),
            from: from.map(|(v, _)| v),
            to,
            activation: activation.seq,
            reason: activation.reason.clone(),
        })
    }
}

/// The `source` of a version read from the component's artifact file.
pub fn file_source(spec: &ComponentSpec) -> String {
    format!("file:{}", spec.artifact.display())
}
