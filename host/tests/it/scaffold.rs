//! `cargo xtask new` as a new user runs it, in a scratch copy of the workspace: the crate
//! it creates passes its native test, builds into a component, passes `switchyard check`
//! with the appended topics.toml stanza untouched, and handles an event.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::config::{ComponentName, ComponentSpec, Limits, Location};
use switchyard::event::{InboundEvent, headers};
use switchyard::runtime::{Outcome, Runtime};
use switchyard::store::Db;

use crate::common::{KillOnDrop, wait_at_most, workspace};

/// Copies the workspace's sources to `to`: what git tracks or would track, so neither
/// `target/` nor the services' data under `.services/` comes along. The latter cost a CI
/// run its 90 minutes: after a full suite Kafka's data holds thousands of partitions, each
/// with two 10 MiB index files that are sparse on disk but written out whole by a copy.
fn copy_sources(from: &Path, to: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(from)
        .output()
        .expect("git lists the workspace's files");
    assert!(
        listed.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for file in listed.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).expect("a UTF-8 path"));
        let (src, dst) = (from.join(file), to.join(file));
        // A tracked file deleted in the work tree is not part of the sources any more.
        if !src.is_file() {
            continue;
        }
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    }
}

/// Runs `command` to completion within `limit`, its output captured through files (pipes
/// would need a reader thread each to avoid filling up).
fn output_within(mut command: Command, limit: Duration, what: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let status = wait_at_most(&mut child, limit, what);
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// A CLI call against a local host answers in milliseconds.
const CLI_LIMIT: Duration = Duration::from_secs(60);

fn cargo(dir: &Path, args: &[&str], target_dir: &Path, wasm_target_dir: &Path) -> Output {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(args)
        .current_dir(dir)
        // Its own build dir: the `cargo test` running this test may hold the shared one.
        .env("CARGO_TARGET_DIR", target_dir)
        // Reuse the wasm `std` already built for this workspace (minutes to rebuild).
        .env("SWITCHYARD_WASM_TARGET_DIR", wasm_target_dir);
    // A cold build of the new crate takes about two minutes on 2 busy cores.
    output_within(
        command,
        Duration::from_secs(15 * 60),
        &format!("cargo {}", args.join(" ")),
    )
}

fn ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_handler_builds_passes_check_untouched_and_handles_events() {
    let root = workspace();
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("ws");
    copy_sources(&root, &copy);
    // `check` loads every component topics.toml names, the shipped ones included.
    std::fs::create_dir_all(copy.join("target/components")).unwrap();
    for name in ["order", "billing", "notif", "user"] {
        let built = crate::common::artifact(name);
        std::fs::copy(&built, copy.join(format!("target/components/{name}.wasm"))).unwrap();
    }
    let (target_dir, wasm_dir) = (root.join("target/scaffold-test"), root.join("target/wasm"));

    let out = cargo(
        &copy,
        // The command of docs/handlers.md, step 1.
        &[
            "xtask",
            "new",
            "audit",
            "--topics",
            "orders.status,audit.in",
            "--publishes",
            "audit.out",
        ],
        &target_dir,
        &wasm_dir,
    );
    let stanza = ok(&out, "cargo xtask new");
    assert!(stanza.contains("[components.audit]"), "{stanza}");
    let config = std::fs::read_to_string(copy.join("topics.toml")).unwrap();
    assert!(
        config.ends_with(&stanza) || config.contains(stanza.trim()),
        "stanza appended:\n{config}"
    );
    // orders.status is declared already and must not be declared twice.
    assert_eq!(config.matches("[topics.\"orders.status\"]").count(), 1);
    assert!(config.contains("[topics.\"audit.out\"]") && config.contains("publishes = [\"audit.out\"]"));

    // A second run refuses rather than overwrite.
    let again = cargo(
        &copy,
        &["xtask", "new", "audit", "--topics", "x"],
        &target_dir,
        &wasm_dir,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    ok(
        &cargo(&copy, &["test", "-p", "audit"], &target_dir, &wasm_dir),
        "cargo test -p audit",
    );
    ok(
        &cargo(&copy, &["fmt", "-p", "audit", "--check"], &target_dir, &wasm_dir),
        "cargo fmt --check: the generated code is laid out as rustfmt would",
    );
    ok(
        &cargo(&copy, &["xtask", "handlers", "audit"], &target_dir, &wasm_dir),
        "cargo xtask handlers audit",
    );
    let artifact = copy.join("target/components/audit.wasm");
    assert!(artifact.exists(), "{} was not built", artifact.display());

    let mut check = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    check.args(["check"]).current_dir(&copy).env_remove("SWITCHYARD_CONFIG");
    // A debug build compiles the five components with no cache in about 30 s.
    let check = output_within(check, Duration::from_secs(5 * 60), "switchyard check");
    let stdout = ok(&check, "switchyard check");
    assert!(stdout.contains("audit"), "{stdout}");

    // The generated glue really runs: an event is counted in the component's storage.
    let data = tempfile::tempdir().unwrap();
    let db = Db::open(None, data.path()).await.unwrap();
    let runtime = Runtime::new().unwrap();
    let spec = ComponentSpec {
        name: ComponentName::try_from("audit".to_string()).unwrap(),
        artifact,
        artifact_at: Location {
            path: "topics.toml".into(),
            line: 1,
            column: 1,
        },
        publishes: Default::default(),
        reach: Default::default(),
        config: Default::default(),
        limits: Limits::default(),
    };
    let audit = runtime.load(&spec).unwrap();
    let event = InboundEvent::from_message(
        &crate::common::at("audit.in"),
        None,
        serde_json::to_vec(&json!({"id": 1})).unwrap(),
        vec![(headers::EVENT_ID.into(), "e1".into())],
        Some(1),
    );
    assert!(matches!(
        runtime.invoke(&audit, &db, &event).await.unwrap(),
        Outcome::Committed(_)
    ));
    assert_eq!(
        db.peek("audit", "seen/audit.in").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );

    // The guide's last step: the handler hot-swapped into a running host. `switchyard run`
    // on the embedded default; the handler edited and rebuilt with the guide's command;
    // the host swaps to the new build by itself; `status` and `rollback` as the guide says.
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let admin_url = format!("http://127.0.0.1:{}", port());
    let switchyard = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_")) {
            command.env_remove(name);
        }
        command
            .args(args)
            .current_dir(&copy)
            .env("SWITCHYARD_ADMIN_URL", &admin_url);
        command
    };
    let mut host = KillOnDrop(
        switchyard(&[
            "run",
            "--admin-addr",
            admin_url.trim_start_matches("http://"),
            "--http-addr",
            &format!("127.0.0.1:{}", port()),
        ])
        .env("SWITCHYARD_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("host.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let log = || std::fs::read_to_string(scratch.path().join("host.log")).unwrap_or_default();
    let audit_version = || {
        let out = output_within(switchyard(&["status", "--json"]), CLI_LIMIT, "switchyard status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["components"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "audit"))
            .and_then(|c| c["version"].as_str().map(str::to_string))
    };
    let start = Instant::now();
    let first = loop {
        if let Some(version) = audit_version() {
            break version;
        }
        assert!(host.0.try_wait().unwrap().is_none(), "host exited:\n{}", log());
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host did not come up:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let logic = copy.join("handlers/audit/src/logic.rs");
    let edited = std::fs::read_to_string(&logic)
        .unwrap()
        .replace("\"seen/{topic}\"", "\"count/{topic}\"");
    std::fs::write(&logic, edited).unwrap();
    ok(
        &cargo(&copy, &["xtask", "handlers", "audit"], &target_dir, &wasm_dir),
        "cargo xtask handlers audit (the edit)",
    );
    let start = Instant::now();
    let second = loop {
        match audit_version() {
            Some(version) if version != first => break version,
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no hot swap:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let rollback = output_within(switchyard(&["rollback", "audit"]), CLI_LIMIT, "switchyard rollback");
    let said = ok(&rollback, "switchyard rollback audit");
    assert!(said.contains(&format!("{second} -> {first}")), "{said}");
    assert_eq!(audit_version().as_deref(), Some(first.as_str()));
    assert!(
        Command::new("kill")
            .args(["-TERM", &host.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let stopped = wait_at_most(&mut host.0, Duration::from_secs(60), "the host's shutdown on SIGTERM");
    assert!(stopped.success(), "{}", log());
}
