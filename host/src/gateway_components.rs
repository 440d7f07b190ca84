//! The gateway's seam to the components ([`crate::gateway::ComponentQueries`]),
//! implemented on the Wasm runtime: a read runs the component's read-only `query`
//! export ([`Runtime::query`]), so the gateway never reads a component's storage.

use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use crate::config::{ComponentName, Routing};
use crate::gateway::{ComponentQueries, QueryFailure, QueryFuture};
use crate::live::registry::Registry;
use crate::runtime::{QueryError, Runtime};
use crate::store::Db;

/// Queries answered by the running version of each component: a hot swap applies to
/// reads as it does to events.
pub struct RuntimeQueries {
    registry: Arc<Registry>,
    db: Db,
}

/// Queries through a running host's registry (`switchyard run`).
pub fn from_registry(registry: Arc<Registry>, db: &Db) -> Arc<dyn ComponentQueries> {
    Arc::new(RuntimeQueries {
        registry,
        db: db.clone(),
    })
}

/// Loads every component of `routing` for queries against `db`, at the version the
/// database says is active, and follows later deploys and rollbacks for as long as the
/// process runs (`switchyard gateway` on its own).
pub async fn load(routing: &Routing, db: &Db) -> anyhow::Result<Arc<dyn ComponentQueries>> {
    let runtime = Arc::new(Runtime::new().context("starting the wasm runtime for gateway queries")?);
    let registry = Arc::new(Registry::new(runtime, db.clone(), crate::service::default_host_name()));
    for spec in routing.components.values() {
        registry.add(spec).await?;
    }
    let follower = registry.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::live::FOLLOW_EVERY).await;
            if let Err(err) = follower.refresh().await {
                tracing::warn!(error = %err, "cannot follow the activation log");
            }
        }
    });
    Ok(from_registry(registry, db))
}

impl ComponentQueries for RuntimeQueries {
    fn query<'a>(&'a self, component: &'a str, name: &'a str, args: Value) -> QueryFuture<'a> {
        Box::pin(async move {
            let loaded = ComponentName::try_from(component.to_string())
                .ok()
                .and_then(|name| self.registry.get(&name))
                .ok_or_else(|| QueryFailure::NoComponent(component.to_string()))?;
            let args = serde_json::to_vec(&args).expect("JSON values serialize");
            let failed = |reason: String| QueryFailure::Failed {
                component: component.to_string(),
                name: name.to_string(),
                reason,
            };
            match self.registry.runtime().query(&loaded, &self.db, name, &args).await {
                Ok(answer) => {
                    serde_json::from_slice(&answer).map_err(|e| failed(format!("the answer is not JSON: {e}")))
                }
                // Nothing there, or not the asker's: the same to the gateway.
                Err(QueryError::NotFound { .. }) => Ok(Value::Null),
                Err(QueryError::Unknown { .. }) => Err(QueryFailure::UnknownQuery {
                    component: component.to_string(),
                    name: name.to_string(),
                }),
                Err(QueryError::Invalid { reason, .. }) => Err(QueryFailure::BadArguments {
                    component: component.to_string(),
                    name: name.to_string(),
                    reason,
                }),
                Err(other) => Err(failed(other.to_string())),
            }
        })
    }
}
