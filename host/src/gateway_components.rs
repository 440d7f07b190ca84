//! The gateway's seam to the components ([`crate::gateway::ComponentQueries`]),
//! implemented on the Wasm runtime: a read runs the component's read-only `query`
//! export ([`Runtime::query`]), so the gateway never reads a component's storage.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use crate::config::Routing;
use crate::gateway::{ComponentQueries, QueryFailure, QueryFuture};
use crate::runtime::{self, LoadedComponent, QueryError, Runtime};
use crate::store::Db;

/// The components of a routing file, loaded for queries.
pub struct RuntimeQueries {
    runtime: Runtime,
    components: HashMap<String, LoadedComponent>,
    db: Db,
}

/// Loads every component of `routing` for queries against `db`.
pub fn load(routing: &Routing, db: &Db) -> anyhow::Result<Arc<dyn ComponentQueries>> {
    let runtime = Runtime::new().context("starting the wasm runtime for gateway queries")?;
    let loaded = runtime::load_all(&runtime, routing.components.values().cloned())
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let components = loaded.into_iter().map(|c| (c.spec.name.to_string(), c)).collect();
    Ok(Arc::new(RuntimeQueries {
        runtime,
        components,
        db: db.clone(),
    }))
}

impl ComponentQueries for RuntimeQueries {
    fn query<'a>(&'a self, component: &'a str, name: &'a str, args: Value) -> QueryFuture<'a> {
        Box::pin(async move {
            let loaded = self
                .components
                .get(component)
                .ok_or_else(|| QueryFailure::NoComponent(component.to_string()))?;
            let args = serde_json::to_vec(&args).expect("JSON values serialize");
            let failed = |reason: String| QueryFailure::Failed {
                component: component.to_string(),
                name: name.to_string(),
                reason,
            };
            match self.runtime.query(loaded, &self.db, name, &args).await {
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
