//! Project tasks:
//!
//! - `cargo xtask handlers [CRATE...]`: builds every component crate under `handlers/` (a
//!   crate whose lib has `crate-type = ["cdylib", ...]`) for `wasm32-wasip1` and turns each
//!   core module into a component at `target/components/<crate>.wasm`.
//! - `cargo xtask new NAME --topics a,b`: scaffolds a handler crate and its topics.toml
//!   stanza (see [`new`]).
//!
//! Two toolchains are supported: rustup with the `wasm32-wasip1` target installed (a
//! developer laptop), or, where rustup cannot add targets, Debian's `rustc-web` /
//! `cargo-web` / `rust-web-src` building `std` from source with `-Zbuild-std`, linked by
//! `wasm-ld-19` against Debian's `wasi-libc` (see docs/toolchain.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

mod new;

const TARGET: &str = "wasm32-wasip1";
/// Cargo profile used for handlers (size-optimised release, see the workspace manifest).
const PROFILE: &str = "wasm";
/// Overrides where the wasm build keeps its artifacts (default `target/wasm`), so a
/// scratch copy of the workspace can reuse an already built `std`.
const WASM_TARGET_DIR_ENV: &str = "SWITCHYARD_WASM_TARGET_DIR";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("handlers") => build_handlers(&args[1..]),
        Some("new") => {
            let scaffold = new::Scaffold::parse(&args[1..])?;
            let root = workspace_root();
            let stanza = new::run(&root, &scaffold)?;
            let name = &scaffold.name;
            eprintln!("created handlers/{name} (lib.rs, logic.rs, glue_tests.rs)");
            if scaffold.print_only {
                eprintln!("add this to topics.toml:");
            } else {
                eprintln!("appended to topics.toml:");
            }
            println!("{stanza}");
            eprintln!("next: cargo test -p {name} && cargo xtask handlers {name} && cargo run -p switchyard -- check");
            Ok(())
        }
        _ => bail!(
            "usage: cargo xtask handlers [CRATE...]\n       cargo xtask new NAME --topics TOPIC[,TOPIC...] [--publishes TOPIC,...] [--print]"
        ),
    }
}

/// The workspace `cargo xtask` was run in: found from the current directory at run
/// time, not baked in at build time, so checkouts sharing one target directory (git
/// worktrees) each build their own handlers.
fn workspace_root() -> PathBuf {
    let start = std::env::current_dir().expect("a current directory");
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
                && dir.join("handlers").is_dir()
        })
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives in the workspace")
                .to_path_buf()
        })
}

/// Crates under handlers/ that build a cdylib, i.e. components.
fn component_crates(root: &Path) -> Result<Vec<String>> {
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root.join("handlers")).context("reading handlers/")? {
        let manifest = entry?.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
        let is_component = doc
            .get("lib")
            .and_then(|lib| lib.get("crate-type"))
            .and_then(|types| types.as_array())
            .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
        if is_component {
            let name = doc["package"]["name"].as_str().context("package.name")?.to_string();
            crates.push(name);
        }
    }
    crates.sort();
    Ok(crates)
}

/// Components built a second time with a feature, under another name: (crate, feature,
/// component name). `probe-v2` is the probe that stamps "v2" where the probe stamps
/// "v1", so tests can hot-swap between two real versions and see which one ran.
const VARIANTS: &[(&str, &str, &str)] = &[("probe", "v2", "probe-v2")];

fn build_handlers(only: &[String]) -> Result<()> {
    let root = workspace_root();
    let crates = if only.is_empty() {
        component_crates(&root)?
    } else {
        only.to_vec()
    };
    if crates.is_empty() {
        bail!("no component crates under handlers/ (a crate needs `crate-type = [\"cdylib\"]`)");
    }
    let target_dir = std::env::var_os(WASM_TARGET_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("wasm"));
    let out_dir = root.join("target").join("components");
    std::fs::create_dir_all(&out_dir)?;
    // Variants first, so the plain build of the same crate is what stays in target_dir.
    for (krate, feature, out_name) in VARIANTS.iter().filter(|(k, _, _)| crates.iter().any(|c| c == k)) {
        cargo_wasm_build(
            &root,
            &target_dir,
            &[krate.to_string()],
            Some(&format!("{krate}/{feature}")),
        )?;
        encode_component(&target_dir, krate, &out_dir, out_name)?;
    }
    cargo_wasm_build(&root, &target_dir, &crates, None)?;
    for name in &crates {
        encode_component(&target_dir, name, &out_dir, name)?;
    }
    Ok(())
}

fn cargo_wasm_build(root: &Path, target_dir: &Path, crates: &[String], features: Option<&str>) -> Result<()> {
    let mut cmd = cargo_for_wasm()?;
    cmd.current_dir(root)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(target_dir);
    for name in crates {
        cmd.args(["-p", name]);
    }
    if let Some(features) = features {
        cmd.args(["--features", features]);
    }
    eprintln!("building {} for {TARGET}: {cmd:?}", crates.join(", "));
    let status = cmd.status().context("running cargo for the wasm build")?;
    if !status.success() {
        bail!("cargo build for {TARGET} failed ({status})");
    }
    Ok(())
}

/// Turns the built module of crate `name` into `<out_dir>/<out_name>.wasm`.
fn encode_component(target_dir: &Path, name: &str, out_dir: &Path, out_name: &str) -> Result<()> {
    {
        let file = name.replace('-', "_");
        let module_path = target_dir.join(TARGET).join(PROFILE).join(format!("{file}.wasm"));
        let module = std::fs::read(&module_path).with_context(|| format!("reading {}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&module)
            .and_then(|enc| enc.adapter("wasi_snapshot_preview1", WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER))
            .and_then(|mut enc| enc.encode())
            .with_context(|| format!("turning {} into a component", module_path.display()))?;
        let out = out_dir.join(format!("{out_name}.wasm"));
        std::fs::write(&out, component)?;
        eprintln!("component {}", out.display());
    }
    Ok(())
}

/// True when rustup's toolchain has the wasm target installed.
fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET))
        .unwrap_or(false)
}

/// The cargo command that can build for the wasm target on this machine.
fn cargo_for_wasm() -> Result<Command> {
    if rustup_has_target() {
        return Ok(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())));
    }
    // Debian recipe: every piece must be there, and a missing one is named with its package.
    let needs = [
        ("/usr/bin/cargo", "cargo-web", "Debian's cargo matching rustc-web"),
        (
            "/usr/bin/rustc",
            "rustc-web",
            "Debian's rustc that can build std for wasm",
        ),
        (
            "/usr/lib/rustlib/src/rust/library",
            "rust-web-src",
            "the std sources for -Zbuild-std",
        ),
        ("/usr/bin/wasm-ld-19", "lld-19", "the wasm linker"),
        (
            "/usr/lib/wasm32-wasi/libc.a",
            "wasi-libc",
            "WASI libc for wasm32-wasip1",
        ),
    ];
    let missing: Vec<String> = needs
        .iter()
        .filter(|(path, _, _)| !Path::new(path).exists())
        .map(|(path, pkg, why)| format!("  {path} ({why}): apt-get install {pkg}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot build handlers: rustup has no `{TARGET}` target and the Debian toolchain is incomplete:\n{}\n\
             Run `just toolchain` (installs the Debian packages) or `rustup target add {TARGET}`.",
            missing.join("\n")
        );
    }
    let mut cmd = Command::new("/usr/bin/cargo");
    // rustup's proxies set these for the outer cargo; the Debian cargo must not inherit them.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld-19")
        .env(
            "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS",
            "-L /usr/lib/wasm32-wasi -C link-self-contained=no",
        )
        .arg("-Zbuild-std=std,panic_abort");
    Ok(cmd)
}
