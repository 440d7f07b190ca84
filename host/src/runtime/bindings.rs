//! The one `bindgen!` of the host, for world `handler` of `wit/handler.wit`. Imports are
//! async because storage calls run SQL inside the invocation's transaction.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: { default: async },
    exports: { default: async },
});

pub use self::switchyard::handler::{config, log, outbound, publish, storage, timers, types};
