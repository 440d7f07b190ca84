//! The host side of each WIT interface, one file per interface. Each implements its
//! interface's `Host` trait on a view that borrows from
//! [`InvocationState`](super::state::InvocationState) only what the interface needs
//! (wasmtime's `HasData`), the way wasmtime-wasi-http keeps its state apart from WASI's.

use wasmtime::component::{HasSelf, Linker};

use super::bindings;
use super::state::InvocationState;

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

impl bindings::types::Host for InvocationState {}

/// Links every interface of world `handler` to its view.
pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    bindings::types::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;
    bindings::storage::add_to_linker::<_, storage::Storage>(linker, storage::StorageView::of)?;
    bindings::publish::add_to_linker::<_, publish::Publish>(linker, publish::PublishView::of)?;
    bindings::timers::add_to_linker::<_, timers::Timers>(linker, timers::TimersView::of)?;
    bindings::outbound::add_to_linker::<_, outbound::Outbound>(linker, outbound::OutboundView::of)?;
    bindings::log::add_to_linker::<_, log::Log>(linker, log::LogView::of)?;
    bindings::config::add_to_linker::<_, config::Config>(linker, config::ConfigView::of)?;
    Ok(())
}

/// Marks a view type as the data of one interface.
macro_rules! view_of {
    ($marker:ident => $view:ident) => {
        pub(crate) struct $marker;
        impl wasmtime::component::HasData for $marker {
            type Data<'a> = $view<'a>;
        }
    };
}
use view_of;
