//! The `switchyard` binary as an operator uses it: `check` and `invoke`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the binary with none of the caller's SWITCHYARD_* settings (a developer's
/// SWITCHYARD_CONFIG or database would change what is tested).
fn switchyard<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path) -> Output {
    switchyard_with(args, dir, &[])
}

/// [`switchyard`] with `env` set, and no OTEL_* settings but those in it.
fn switchyard_with<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_") || n.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.args(args).current_dir(dir).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_shipped_routing_and_its_components() {
    let out = switchyard(&["check"], &workspace());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("topics.toml: ok") && stdout.contains("billing, notif, order, user"),
        "{stdout}"
    );
}

#[test]
fn check_points_at_config_faults_and_wrong_components() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[topics.\"a\"]\npartitions = \"three\"\n").unwrap();
    let out = switchyard(&["--config", "bad.toml", "check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.toml:2:14:"), "{stderr}");

    // A component that is not a handler: it imports an interface the host lacks.
    std::fs::write(
        dir.path().join("evil.wat"),
        r#"(component (import "acme:net/socket" (instance (export "connect" (func)))))"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("evil.toml"),
        "[components.evil]\nartifact = \"evil.wat\"\n",
    )
    .unwrap();
    let out = switchyard(&["--config", "evil.toml", "check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("evil.toml:2:12: component \"evil\"") && stderr.contains("acme:net/socket"),
        "{stderr}"
    );
}

/// `invoke` of the order component on `event.json`, with the shipped routing and the data
/// directory `data`.
fn invoke_order_args() -> Vec<String> {
    let config = workspace().join("topics.toml");
    [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        "data",
        "invoke",
        "--component",
        "order",
        "--event",
        "event.json",
    ]
    .map(String::from)
    .to_vec()
}

fn order_event() -> serde_json::Value {
    serde_json::json!({
        "topic": "orders.requests",
        "key": "alice",
        "payload": {
            "requestId": "r-1", "username": "alice",
            "items": [{"productId": "p1", "quantity": 2, "price": 9.99}],
            "deliveryAddress": "1 Main St", "paymentMethod": "card", "createdAt": 1_700_000_000_000_i64
        }
    })
}

#[test]
fn invoke_runs_one_event_and_reports_its_effects() {
    let dir = tempfile::tempdir().unwrap();
    let event = order_event();
    std::fs::write(dir.path().join("event.json"), event.to_string()).unwrap();
    let args = invoke_order_args();
    let out = switchyard(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A dry run by default: the effects are reported, and none is left for `run` to relay.
    assert_eq!(report["outcome"], "dry-run");
    let published = report["effects"]["published"].as_array().unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["topic"], "orders.created");
    let created: serde_json::Value = serde_json::from_str(published[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(created["totalCost"], 19.98);
    assert_eq!(report["effects"]["timers"][0]["topic"], "orders.timeouts");

    let db = dir.path().join("data/switchyard.db");
    assert_eq!(count_rows(&db, "outbox"), 0, "a dry run leaves no outbox rows");
    assert_eq!(count_rows(&db, "timers"), 0, "a dry run leaves no timers");
    assert_eq!(count_rows(&db, "inbox"), 0, "a dry run claims nothing");

    // --commit keeps them; with an "id" a second run is a duplicate. Without an id every
    // run is a new event of its own origin, never one of a live log.
    let mut with_id = event.clone();
    with_id["id"] = "cli-1".into();
    std::fs::write(dir.path().join("event.json"), with_id.to_string()).unwrap();
    let mut commit = args.clone();
    commit.push("--commit".into());
    let out = switchyard(&commit, dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "committed", "{}", text(&out.stderr));
    assert_eq!(count_rows(&db, "outbox"), 1);
    let out = switchyard(&commit, dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "duplicate");
}

/// Every line logged while an event runs names its component, event id, requestId and
/// trace id, and `SWITCHYARD_LOG_FORMAT=json` writes lines a log pipeline can parse.
#[test]
fn log_lines_of_an_event_carry_its_ids_as_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("event.json"), order_event().to_string()).unwrap();
    let env = [("SWITCHYARD_LOG_FORMAT", "json"), ("SWITCHYARD_LOG", "debug")];
    let out = switchyard_with(&invoke_order_args(), dir.path(), &env);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        !lines.is_empty() && lines.len() == stderr.lines().count(),
        "every line is JSON:\n{stderr}"
    );
    let handled = lines
        .iter()
        .find(|l| l["fields"]["message"] == "handled")
        .unwrap_or_else(|| panic!("no `handled` line:\n{stderr}"));
    let span = &handled["span"];
    assert_eq!(
        (&span["component"], &span["request_id"]),
        (&"order".into(), &"r-1".into()),
        "{handled}"
    );
    assert!(span["event_id"].as_str().is_some_and(|id| !id.is_empty()), "{handled}");
    assert_eq!(span["trace_id"].as_str().map(str::len), Some(32), "{handled}");
}

#[test]
fn a_bad_trace_setting_is_named_at_start_and_the_host_runs_without_exporting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("event.json"), order_event().to_string()).unwrap();
    let args = invoke_order_args();
    let bad = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
    ];
    let out = switchyard_with(&args, dir.path(), &bad);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "OTEL_BSP_SCHEDULE_DELAY=\"5s\" is not a whole number of milliseconds; give e.g. 5000, or unset it; no traces are exported"
        ),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "dry-run", "{report}");
}

fn count_rows(db: &Path, table: &str) -> i64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM ' + sys.argv[2]).fetchone()[0])",
        ])
        .arg(db)
        .arg(table)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn outbound_deliveries_are_listed_with_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let db = switchyard::store::Db::open(None, &dir.path().join("data"))
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.insert_effect(&switchyard::store::NewEffect {
        id: "d-1",
        component: "notif",
        kind: "email",
        request: "{}",
        result_topic: "notifications.delivered",
        result_event_id: "r-1",
        result_headers: &[],
        context: "",
        max_attempts: 1,
        initial_backoff_ms: 1,
        max_backoff_ms: 1,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    db.close().await;
    let out = switchyard(
        &["--data-dir", "data", "effects", "--component", "notif", "--json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (row["id"].as_str(), row["kind"].as_str(), row["outcome"].as_str()),
        (Some("d-1"), Some("email"), None)
    );
    let out = switchyard(&["--data-dir", "data", "effects", "--component", "notif"], dir.path());
    assert!(text(&out.stdout).contains("pending"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn parked_outbox_rows_are_listed_and_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let db = switchyard::store::Db::open(None, &dir.path().join("data"))
        .await
        .unwrap();
    let message = switchyard::store::OutboundMessage {
        topic: "gone".into(),
        key: None,
        payload: b"p".to_vec(),
        headers: vec![],
    };
    let mut tx = db.begin().await.unwrap();
    tx.insert_outbox("e1", "order", &message).await.unwrap();
    tx.commit().await.unwrap();
    let row = db.unsent_outbox(1).await.unwrap().remove(0);
    db.park(row.id, "Broker: Unknown topic or partition").await.unwrap();
    db.close().await;

    let out = switchyard(&["--data-dir", "data", "outbox", "parked", "--json"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parked["topic"], "gone");
    assert_eq!(parked["reason"], "Broker: Unknown topic or partition");
    let out = switchyard(&["--data-dir", "data", "outbox", "requeue"], dir.path());
    assert!(text(&out.stdout).contains("requeued 1 row"), "{}", text(&out.stdout));
    let out = switchyard(&["--data-dir", "data", "outbox", "parked", "--json"], dir.path());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}
