//! The host side of each WIT interface, one file per interface, each implementing that
//! interface's `Host` trait on [`InvocationState`](super::state::InvocationState).

mod config;
mod log;
mod outbound;
mod publish;
mod storage;
mod timers;

/// Largest key a component may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value or payload a component may store or publish, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

impl super::bindings::types::Host for super::state::InvocationState {}
