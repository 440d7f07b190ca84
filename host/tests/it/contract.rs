//! The WIT contract's versioning rule (wit/handler.wit): under 0.x a minor bump is
//! breaking, because wasmtime matches `0.x` interfaces by exact minor; patches match.

use switchyard::runtime::{LoadError, Runtime};

use crate::common::spec;

/// A component that imports only `config` at `version` and exports nothing.
fn config_importer(version: &str) -> String {
    format!(
        r#"(component
  (import "switchyard:handler/config@{version}" (instance
    (export "get" (func (param "key" string) (result (option string))))))
)"#
    )
}

fn load_error(wat: &str) -> String {
    let runtime = Runtime::new().unwrap();
    let err = runtime
        .load_bytes(&spec("old", "probe", &[]), wat.as_bytes())
        .err()
        .expect("an exportless component must be rejected");
    assert!(matches!(err, LoadError::World { .. }), "{err}");
    err.to_string()
}

#[test]
fn components_of_another_minor_are_refused_and_patches_are_accepted() {
    // 0.1.0: the import itself does not resolve (the previous minor of the contract).
    let old = load_error(&config_importer("0.1.0"));
    assert!(old.contains("switchyard:handler/config@0.1.0"), "{old}");
    // 0.2.0 (built before `outbound` was added in 0.2.1): the import resolves to the
    // host's 0.2.1; only the missing exports are wrong.
    let patch = load_error(&config_importer("0.2.0"));
    assert!(!patch.contains("switchyard:handler/config"), "{patch}");
    assert!(patch.contains("handle") || patch.contains("query"), "{patch}");
}
