//! Switchyard: a WebAssembly host for event-driven microservices.
//!
//! # Layout
//! - [`config`]: `topics.toml` parsed strictly into a validated routing table.
//! - [`protocol`]: the `switchyard-*` headers, the dead-letter record, message limits and
//!   the signature that tells the host's headers from forged ones.
//! - [`event`]: events as the host sees them (id, `requestId`, trace context).
//! - [`store`]: SQLite / PostgreSQL state: component storage, inbox, outbox, timers.
//! - [`runtime`]: wasmtime engine, component loading and checking, and
//!   [`runtime::Runtime::invoke`], which runs one event with exactly-once effects.
//!   `runtime/host/` holds one file per WIT interface the host provides.
//! - [`kafka`]: brokers (real or embedded), route consumers with retries and dead
//!   letters, the outbox relay and timer pump, and operator tools (topics, DLQ).
//! - [`delivery`]: the worker that carries out outbound effects (HTTP, SMTP) after
//!   their invocation committed, at least once, with retries and an outcome event.
//! - [`service`]: `switchyard run`, wiring all of the above with graceful shutdown.
//! - [`gateway`]: the HTTP gateway and mini_auth (axum), on the store, Kafka and a
//!   cache only; [`gateway_components`] connects its query seam to the runtime.
//!
//! The binary (`src/main.rs`) is the `switchyard` CLI on top of these.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod event;
pub mod gateway;
pub mod gateway_components;
pub mod kafka;
pub mod live;
pub mod observe;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod store;
