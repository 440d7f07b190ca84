//! Read-only queries: [`Runtime::query`] asks a component a question (billing's
//! `balance`, user's `profile`) through its `query` export, so callers such as the HTTP
//! gateway read a component's data through the component and never its storage keys.
//!
//! A query runs like an event (a fresh instance, the component's deadline and memory
//! cap) inside a transaction that is always rolled back; the host calls that could change
//! anything (storage writes, publishes, timers) fail with a `read-only` guest error
//! because [`Origin::read_only`](super::state::Origin::read_only) is set.

use std::time::Instant;

use tracing::Instrument;

use crate::event::TraceContext;
use crate::store::{Db, Staged, StoreError};

use super::bindings::types::QueryError as GuestQueryError;
use super::state::DeadlineExceeded;
use super::{FailureKind, LoadedComponent, Origin, Runtime, classify_trap, forward_output};

/// Why a query gave no answer. The first four come from the component itself (see
/// `query-error` in wit/handler.wit); the rest are failures around it.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("component \"{component}\" has no query {name:?}: {reason}")]
    Unknown {
        component: String,
        name: String,
        reason: String,
    },
    #[error("query {name:?} of component \"{component}\" refused its arguments: {reason}")]
    Invalid {
        component: String,
        name: String,
        reason: String,
    },
    #[error("query {name:?} of component \"{component}\" found nothing: {reason}")]
    NotFound {
        component: String,
        name: String,
        reason: String,
    },
    #[error("query {name:?} of component \"{component}\" failed: {reason}; asking again later may help")]
    Failed {
        component: String,
        name: String,
        reason: String,
    },
    /// The guest trapped or outgrew its deadline or memory cap.
    #[error("query {name:?} of component \"{component}\" was stopped ({kind}): {reason}")]
    Stopped {
        component: String,
        name: String,
        kind: &'static str,
        reason: String,
    },
    #[error("query {name:?} of component \"{component}\": storage failed: {source}")]
    Store {
        component: String,
        name: String,
        source: StoreError,
    },
    #[error("cannot instantiate component \"{component}\" for query {name:?}: {reason}")]
    Instantiate {
        component: String,
        name: String,
        reason: String,
    },
}

impl QueryError {
    /// True when the same query may succeed later (a database or limit failure), as
    /// opposed to an answer about the query itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueryError::Failed { .. } | QueryError::Store { .. } | QueryError::Instantiate { .. }
        ) || matches!(self, QueryError::Stopped { kind, .. } if *kind == FailureKind::Deadline.as_str())
    }
}

impl Runtime {
    /// Runs `component`'s query `name` with `args` (JSON by convention) and returns its
    /// answer. Nothing the query does is kept: its transaction is always rolled back and
    /// every write, publish or timer call fails inside the guest.
    pub async fn query(
        &self,
        component: &LoadedComponent,
        db: &Db,
        name: &str,
        args: &[u8],
    ) -> Result<Vec<u8>, QueryError> {
        let span = tracing::info_span!("query", component = %component.spec.name, query = name);
        self.query_inner(component, db, name, args).instrument(span).await
    }

    async fn query_inner(
        &self,
        component: &LoadedComponent,
        db: &Db,
        name: &str,
        args: &[u8],
    ) -> Result<Vec<u8>, QueryError> {
        let spec = &component.spec;
        let (component_name, query_name) = (spec.name.to_string(), name.to_string());
        let slot = self.instance_slot().await;
        let staged = Staged::for_query(db, spec.name.as_str());

        let started = Instant::now();
        let mut store = self.new_store(
            slot,
            staged,
            Origin {
                component: spec.clone(),
                event_id: format!("query:{}", uuid::Uuid::now_v7()),
                version: component.version.clone(),
                request_id: None,
                trace: TraceContext::new_root(),
                read_only: true,
            },
        );
        let budget_ms = spec.limits.deadline.as_millis();

        // The epoch deadline stops guest code; this bound also covers time blocked in
        // host calls (a lock wait), so a query can never hold its transaction open long.
        let call = async {
            match component.pre.instantiate_async(&mut store).await {
                Ok(handler) => match handler.call_query(&mut store, name, args).await {
                    Ok(answer) => Ran::Answered(answer),
                    Err(trap) => Ran::Stopped(trap),
                },
                // Instantiation traps too when start-up code blows the limits.
                Err(e) if store.data().memory.exceeded || e.downcast_ref::<DeadlineExceeded>().is_some() => {
                    Ran::Stopped(e)
                }
                Err(e) => Ran::NotInstantiated(e),
            }
        };
        let ran = match tokio::time::timeout(spec.limits.deadline, call).await {
            Ok(ran) => ran,
            Err(_) => Ran::Stopped(DeadlineExceeded(budget_ms).into()),
        };
        let state = store.into_data().free_slot();
        forward_output(&state);
        let poisoned = state.guard.poisoned.clone();
        let memory_exceeded = state.memory.exceeded;
        state.staged.discard().await;

        let (component, name) = (component_name, query_name);
        let elapsed_us = started.elapsed().as_micros() as u64;
        let answer = match ran {
            Ran::Answered(Ok(bytes)) => match poisoned {
                // The guest answered from a transaction that failed under it.
                Some(why) => Err(QueryError::Failed {
                    component,
                    name,
                    reason: format!("database failed during the query: {why}"),
                }),
                None => Ok(bytes),
            },
            Ran::Answered(Err(err)) => Err(match err {
                GuestQueryError::Unknown(reason) => QueryError::Unknown {
                    component,
                    name,
                    reason,
                },
                GuestQueryError::Invalid(reason) => QueryError::Invalid {
                    component,
                    name,
                    reason,
                },
                GuestQueryError::NotFound(reason) => QueryError::NotFound {
                    component,
                    name,
                    reason,
                },
                GuestQueryError::Failed(reason) => QueryError::Failed {
                    component,
                    name,
                    reason,
                },
            }),
            Ran::Stopped(err) => {
                let failure = classify_trap(&err, memory_exceeded);
                Err(QueryError::Stopped {
                    component,
                    name,
                    kind: failure.kind.as_str(),
                    reason: failure.reason,
                })
            }
            Ran::NotInstantiated(err) => Err(QueryError::Instantiate {
                component,
                name,
                reason: format!("{err:#}"),
            }),
        };
        match &answer {
            Ok(bytes) => tracing::debug!(elapsed_us, bytes = bytes.len(), "query answered"),
            Err(err) => tracing::info!(elapsed_us, error = %err, "query gave no answer"),
        }
        answer
    }
}

/// How the guest call ended, before its transaction is rolled back.
enum Ran {
    Answered(Result<Vec<u8>, GuestQueryError>),
    /// A trap, or a deadline or memory kill.
    Stopped(wasmtime::Error),
    NotInstantiated(wasmtime::Error),
}
