//! Invalid routing files, each kept beside the exact error it must produce
//! (`tests/config-invalid/NAME.toml` and `NAME.err`). Set `UPDATE_GOLDEN=1` to rewrite
//! the `.err` files after an intended change of wording, then review the diff.

use std::path::Path;

use switchyard::config::Routing;

#[test]
fn invalid_configs_fail_with_their_golden_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases went missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&case).unwrap();
        let err = match Routing::parse(Path::new(&name), &text) {
            Ok(_) => panic!("{name} was accepted"),
            Err(err) => format!("{err}\n"),
        };
        let golden = case.with_extension("err");
        if update {
            std::fs::write(&golden, &err).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|_| panic!("{} missing", golden.display()));
        if expected != err {
            mismatches.push(format!("{name}:\n  expected: {expected}  actual:   {err}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_shipped_topics_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topics.toml");
    let routing = Routing::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(routing.routes.len() >= 8, "the saga's routes are missing");
}
