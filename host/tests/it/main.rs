//! Every integration test in one binary: each test file used to link wasmtime,
//! librdkafka and sqlx on its own, which cost minutes of linking on 2 cores.

#[macro_use]
mod common;

mod cli;
mod config;
mod console;
mod contract;
mod fault;
mod gateway;
mod hostile;
mod kafka;
mod live;
mod observe;
mod outbound;
mod query;
mod runtime;
mod saga;
mod scaffold;
