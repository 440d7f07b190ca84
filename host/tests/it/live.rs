//! Live operations on a running host: hot swaps between two real builds of the probe
//! (`probe.wasm` stamps "v1", `probe-v2.wasm` stamps "v2") and routing edits, under
//! traffic, through the admin API the CLI uses.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::json;
use switchyard::admin::client::{AdminClient, ClientError};
use switchyard::config::Routing;
use switchyard::runtime::version_of;
use switchyard::service::{self, Options};
use switchyard::store::Db;
use tokio::sync::watch;

use crate::common::{Backend, KillOnDrop, artifact, test_db, wait_at_most};
use crate::kafka::{brokers_for, prefix, producer};

const TOKEN: &str = "test-admin-token";

fn routing_text(p: &str, retry_attempts: u32, added_route: bool) -> String {
    let probe = artifact("probe").display().to_string();
    let mut text = format!(
        r#"
[topics."{p}.in"]
partitions = 6
[topics."{p}.other"]
partitions = 1
[topics."{p}.added"]
partitions = 1

[components.stamp]
artifact = "{probe}"
limits = {{ memory-mib = 32, deadline-ms = 5000 }}

[components.other]
artifact = "{probe}"

[[routes]]
topic = "{p}.in"
component = "stamp"
group = "{p}-stamp"
concurrency = 6
retry = {{ attempts = {retry_attempts}, initial-backoff-ms = 50, max-backoff-ms = 200 }}

[[routes]]
topic = "{p}.other"
component = "other"
group = "{p}-other"
"#
    );
    if added_route {
        text.push_str(&format!(
            r#"
[[routes]]
topic = "{p}.added"
component = "other"
group = "{p}-added"
"#
        ));
    }
    text
}

/// Replaces the routing file the way editors do: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Rows of the inbox of `component` on `topic`: (partition, offset, version, activation, outcome).
async fn handled(db: &Db, component: &str, topic: &str) -> Vec<(i32, i64, String, i64, String)> {
    const SQL: &str = "SELECT partition, \"offset\", version, activation, outcome FROM inbox \
                       WHERE component = $1 AND topic = $2";
    if let Some(pool) = db.postgres_pool() {
        sqlx::query_as(SQL)
            .bind(component)
            .bind(topic)
            .fetch_all(pool)
            .await
            .unwrap()
    } else {
        let pool = db.sqlite_pool().unwrap();
        sqlx::query_as(SQL)
            .bind(component)
            .bind(topic)
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

async fn stamps(db: &Db, component: &str) -> HashMap<String, String> {
    const SQL: &str = "SELECT key, value FROM kv WHERE component = $1";
    let rows: Vec<(String, Vec<u8>)> = if let Some(pool) = db.postgres_pool() {
        sqlx::query_as(SQL).bind(component).fetch_all(pool).await.unwrap()
    } else {
        sqlx::query_as(SQL)
            .bind(component)
            .fetch_all(db.sqlite_pool().unwrap())
            .await
            .unwrap()
    };
    rows.into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const EVENTS: usize = 10_000;
const SWAPS: usize = 20;

/// 10,000 events over 6 partitions while the component is swapped 20 times between two
/// builds and the routing file is edited 5 times (a route added, removed and added again,
/// a retry policy changed twice): every event handled exactly once, by exactly one
/// version; per partition, activations never go back; the untouched route never
/// rebalances.
async fn swaps_and_edits_under_traffic(real: bool, backend: Backend) {
    let db = test_db(backend).await.unwrap();
    let db = &db.db;
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.toml");
    std::fs::write(&path, routing_text(&p, 3, false)).unwrap();
    let routing = Routing::load(&path).unwrap();
    let brokers = brokers_for(real, &routing).await.unwrap();
    let (url, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;

    let v1 = std::fs::read(artifact("probe")).unwrap();
    let v2 = std::fs::read(artifact("probe-v2")).unwrap();
    let (v1_version, v2_version) = (version_of(&v1), version_of(&v2));

    // Each build is compiled once before the traffic (the engine caches compiled code), so
    // the swaps under traffic take milliseconds. Compiling v2 from nothing in a debug build
    // on a busy 2-core machine took longer than the whole traffic: a fresh clone's CI run
    // saw every event on one activation after the engine's settings (part of the cache
    // key) changed.
    wait_for("the admin API", Duration::from_secs(30), async || {
        admin.status().await.is_ok()
    })
    .await;
    for bytes in [&v2, &v1] {
        admin.deploy("stamp", bytes.clone()).await.unwrap();
    }

    // Traffic: 10,000 stamps at a steady pace, each event's (partition, offset) recorded.
    let base = brokers.client_config();
    let topic_in = format!("{p}.in");
    let traffic = {
        let producer = producer(&base);
        let topic = topic_in.clone();
        tokio::spawn(async move {
            let mut sent = HashMap::new();
            let mut batch = Vec::new();
            for n in 0..EVENTS {
                let payload = json!({"steps": [{"op": "stamp", "key": format!("s/{n}")}]}).to_string();
                let key = n.to_string();
                let record = FutureRecord::to(&topic)
                    .partition((n % 6) as i32)
                    .key(&key)
                    .payload(&payload);
                batch.push((n, producer.send_result(record).map_err(|(e, _)| e).unwrap()));
                if batch.len() == 100 {
                    for (n, delivery) in batch.drain(..) {
                        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                        let (partition, offset) = (delivered.partition, delivered.offset);
                        sent.insert((partition, offset), n);
                    }
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            }
            for (n, delivery) in batch.drain(..) {
                let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                let (partition, offset) = (delivered.partition, delivered.offset);
                sent.insert((partition, offset), n);
            }
            sent
        })
    };

    // 20 swaps between the builds, with a routing edit after every fourth.
    let topic_added = format!("{p}.added");
    let side = producer(&base);
    for swap in 0..SWAPS {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (bytes, version) = if swap % 2 == 0 {
            (&v2, &v2_version)
        } else {
            (&v1, &v1_version)
        };
        let swapped = admin.deploy("stamp", bytes.clone()).await.unwrap();
        assert_eq!(&swapped.to, version);
        if swap % 4 == 3 {
            let edit = swap / 4; // 0..5
            let (attempts, added) = match edit {
                0 => (3, true),  // a route added
                1 => (7, true),  // a retry policy changed
                2 => (7, false), // a route removed
                3 => (7, true),  // added again: resumes from its committed offsets
                _ => (3, true),  // the retry policy changed back
            };
            write_atomically(&path, &routing_text(&p, attempts, added));
            let report = admin.reload().await.unwrap();
            let (added_key, stamp_key) = (format!("{p}.added -> other"), format!("{p}.in -> stamp"));
            if report.is_empty() {
                // The host follows the file too (every 250 ms once it stops changing) and
                // got there first on a busy machine: the edit must be in force all the same.
                let status = admin.status().await.unwrap();
                let route = |key: &str| status.routes.iter().find(|r| r.key == key);
                assert_eq!(route(&added_key).is_some(), added, "edit {edit}: {status:?}");
                let stamp = route(&stamp_key).expect("the stamp route");
                assert_eq!(stamp.retry_attempts, attempts, "edit {edit}");
            } else {
                match edit {
                    0 | 3 => assert_eq!(report.routes_added, vec![added_key]),
                    2 => assert_eq!(report.routes_removed, vec![added_key]),
                    _ => assert_eq!(report.routes_changed, vec![stamp_key]),
                }
            }
            if added {
                // Events for the added route; handled before its removal or after it comes back.
                for k in 0..5 {
                    let payload = json!({"steps": [{"op": "stamp", "key": format!("a/{edit}/{k}")}]}).to_string();
                    side.send(
                        FutureRecord::to(&topic_added).key("k").payload(&payload),
                        Timeout::Never,
                    )
                    .await
                    .unwrap();
                }
            }
        }
    }
    let sent = traffic.await.unwrap();
    assert_eq!(sent.len(), EVENTS);

    wait_for("every event handled", Duration::from_secs(600), async || {
        handled(db, "stamp", &topic_in).await.len() >= EVENTS
    })
    .await;
    wait_for("the added route's events", Duration::from_secs(60), async || {
        stamps(db, "other").await.keys().filter(|k| k.starts_with("a/")).count() == 20
    })
    .await;

    let rows = handled(db, "stamp", &topic_in).await;
    let stamped = stamps(db, "stamp").await;
    assert_eq!(rows.len(), EVENTS, "exactly once: one inbox row per event");
    assert_eq!(stamped.len(), EVENTS, "exactly once: one stamp per event");
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    let mut activations = std::collections::BTreeSet::new();
    for (partition, offset, version, activation, outcome) in &rows {
        assert_eq!(outcome, "committed", "{partition}/{offset} was {outcome}");
        let n = sent[&(*partition, *offset)];
        // The code that ran is the version the host recorded for it.
        let expected = if *version == v1_version {
            "v1"
        } else {
            assert_eq!(*version, v2_version, "unknown version {version}");
            "v2"
        };
        assert_eq!(
            stamped[&format!("s/{n}")],
            expected,
            "event {n} at {partition}/{offset}"
        );
        by_partition.entry(*partition).or_default().push((*offset, *activation));
        activations.insert(*activation);
    }
    for (partition, mut events) in by_partition {
        events.sort();
        for pair in events.windows(2) {
            assert!(
                pair[1].1 >= pair[0].1,
                "partition {partition}: offset {} ran on activation {} after offset {} ran on {}",
                pair[1].0,
                pair[1].1,
                pair[0].0,
                pair[0].1
            );
        }
    }
    assert!(activations.len() >= 5, "swaps under traffic: only {activations:?} seen");

    let status = admin.status().await.unwrap();
    let other = status
        .routes
        .iter()
        .find(|r| r.key == format!("{p}.other -> other"))
        .unwrap();
    assert_eq!(other.assignments, 1, "an untouched route rebalanced: {other:?}");
    let stamp_route = status
        .routes
        .iter()
        .find(|r| r.key == format!("{p}.in -> stamp"))
        .unwrap();
    assert_eq!((stamp_route.assignments, stamp_route.retry_attempts), (1, 3));
    let component = status.components.iter().find(|c| c.name == "stamp").unwrap();
    assert_eq!(component.version, v1_version, "the last swap was to v1");
    assert!(component.history.len() >= 10);

    // The route an edit added has its lag sampled too (the sampler follows the routing),
    // and /metrics answers on the admin listener without the token.
    let metrics_url = format!("{url}/metrics");
    let series = format!("switchyard_consumer_lag_messages{{topic=\"{p}.added\"");
    wait_for("the added route's lag series", Duration::from_secs(20), async || {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        text.contains(&series)
    })
    .await;

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

/// A bad artifact and a bad routing edit are refused while traffic goes on; `status`
/// says why, and the running version and routing keep serving.
async fn bad_artifacts_and_edits_are_refused(real: bool, backend: Backend) {
    let db = test_db(backend).await.unwrap();
    let db = &db.db;
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.toml");
    std::fs::write(&path, routing_text(&p, 3, false)).unwrap();
    let routing = Routing::load(&path).unwrap();
    let brokers = brokers_for(real, &routing).await.unwrap();
    let (url, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    let before = admin.status().await.unwrap();
    let version = before
        .components
        .iter()
        .find(|c| c.name == "stamp")
        .unwrap()
        .version
        .clone();

    // No token, wrong token: refused.
    let err = AdminClient::new(&url, None).status().await.unwrap_err().to_string();
    assert!(err.contains("Bearer"), "{err}");
    let err = AdminClient::new(&url, Some("nope".into()))
        .status()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    // axum's own rejections are problem details too, like every other admin API error.
    let http = reqwest::Client::new();
    for (method, path, body) in [
        ("POST", "/api/routes/pause", "{not json"),
        ("GET", "/api/throughput?interval_ms=abc", ""),
        ("GET", "/api/no-such-path", ""),
        ("DELETE", "/api/status", ""),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(status.is_client_error(), "{method} {path}: {status}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status.as_u16(), "{problem}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{problem}");
    }

    let producer = producer(&brokers.client_config());
    let topic_in = format!("{p}.in");
    let send = |n: usize| {
        let payload = json!({"steps": [{"op": "stamp", "key": format!("s/{n}")}]}).to_string();
        let producer = producer.clone();
        let topic = topic_in.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&n.to_string()).payload(&payload),
                    Timeout::Never,
                )
                .await
                .unwrap();
        }
    };
    for n in 0..50 {
        send(n).await;
    }

    // Not a component; a core module that is not a component; a component of another world.
    for (bytes, says) in [
        (b"not wasm at all".to_vec(), "not a valid Wasm component"),
        (wat_module(), "not a valid Wasm component"),
        (wat_component_of_other_world(), "does not fit world"),
    ] {
        let err = admin.deploy("stamp", bytes).await.unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }

    // A broken edit through the file: refused with check's line:column message.
    write_atomically(
        &path,
        &routing_text(&p, 3, false).replace("concurrency = 6", "concurrency = \"six\""),
    );
    wait_for("the refused edit in status", Duration::from_secs(10), async || {
        admin.status().await.unwrap().last_rejected_edit.is_some()
    })
    .await;
    let status = admin.status().await.unwrap();
    let rejected = status.last_rejected_edit.unwrap().error;
    assert!(
        rejected.contains("topics.toml:20:15") && rejected.contains("\"six\""),
        "{rejected}"
    );
    assert_eq!(status.rejected_deploys.len(), 3);
    // And through `reload`: the same refusal.
    let err = admin.reload().await.unwrap_err().to_string();
    assert!(err.contains("topics.toml:20:15"), "{err}");

    for n in 50..100 {
        send(n).await;
    }
    wait_for("traffic handled throughout", Duration::from_secs(60), async || {
        handled(db, "stamp", &topic_in).await.len() == 100
    })
    .await;
    let rows = handled(db, "stamp", &topic_in).await;
    assert!(rows.iter().all(|r| r.2 == version && r.4 == "committed"));
    let status = admin.status().await.unwrap();
    assert_eq!(
        status.components.iter().find(|c| c.name == "stamp").unwrap().version,
        version
    );
    assert_eq!(status.routes.len(), 2);

    // Fixing the file applies it and clears the refusal.
    write_atomically(&path, &routing_text(&p, 3, true));
    wait_for("the fixed edit applied", Duration::from_secs(10), async || {
        let status = admin.status().await.unwrap();
        status.routes.len() == 3 && status.last_rejected_edit.is_none()
    })
    .await;

    // An edit whose swap cannot start (stamp moved to v2 under a memory cap below its
    // initial memory), with a route setting changed beside it: refused whole. Checked
    // only at the swap, it had already put the old code under the 1 MiB cap, and every
    // later event failed.
    let probe_line = format!("artifact = \"{}\"", artifact("probe").display());
    let cannot_start = routing_text(&p, 4, true)
        .replacen(
            &probe_line,
            &format!("artifact = \"{}\"", artifact("probe-v2").display()),
            1,
        )
        .replace("memory-mib = 32", "memory-mib = 1");
    write_atomically(&path, &cannot_start);
    wait_for(
        "the edit that cannot start refused",
        Duration::from_secs(30),
        async || admin.status().await.unwrap().last_rejected_edit.is_some(),
    )
    .await;
    let rejected = admin.status().await.unwrap().last_rejected_edit.unwrap().error;
    assert!(
        rejected.contains("traps at load") && rejected.contains("memory cap"),
        "{rejected}"
    );
    for n in 100..120 {
        send(n).await;
    }
    wait_for(
        "traffic handled by the running version",
        Duration::from_secs(60),
        async || {
            let rows = handled(db, "stamp", &topic_in).await;
            rows.len() == 120 && rows.iter().all(|r| r.2 == version && r.4 == "committed")
        },
    )
    .await;
    let status = admin.status().await.unwrap();
    assert_eq!(
        status.components.iter().find(|c| c.name == "stamp").unwrap().version,
        version
    );
    // The file put back as it runs: valid, nothing to change, and the refusal is cleared.
    write_atomically(&path, &routing_text(&p, 3, true));
    wait_for("the refusal cleared", Duration::from_secs(10), async || {
        admin.status().await.unwrap().last_rejected_edit.is_none()
    })
    .await;
    // The same cap on the running code alone: refused too.
    write_atomically(
        &path,
        &routing_text(&p, 3, true).replace("memory-mib = 32", "memory-mib = 1"),
    );
    wait_for(
        "the cap on the running code refused",
        Duration::from_secs(30),
        async || admin.status().await.unwrap().last_rejected_edit.is_some(),
    )
    .await;
    let rejected = admin.status().await.unwrap().last_rejected_edit.unwrap().error;
    assert!(rejected.contains("under the new limits"), "{rejected}");
    write_atomically(&path, &routing_text(&p, 3, true));
    wait_for("the refusal cleared again", Duration::from_secs(10), async || {
        admin.status().await.unwrap().last_rejected_edit.is_none()
    })
    .await;

    // Rollback: v2 by file swap, then back to the version before.
    let v2 = std::fs::read(artifact("probe-v2")).unwrap();
    let swapped = admin.deploy("stamp", v2).await.unwrap();
    assert_eq!(swapped.from.as_deref(), Some(version.as_str()));
    let back = admin.rollback("stamp", None).await.unwrap();
    assert_eq!(back.to, version);
    let versions = admin.versions("stamp").await.unwrap();
    assert_eq!(versions.active, version);
    assert_eq!(versions.history[0].reason, "rollback");
    let err = admin
        .rollback("stamp", Some("0000".into()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no version \"0000\""), "{err}");

    // A component brought back by an edit runs the version the database has active, and
    // that version is what the edit checks first. Here its stored artifact is gone, and
    // the same edit moves stamp to v2: refused whole. Checked only when the component was
    // added, stamp had swapped to v2 already.
    let probe = artifact("probe").display().to_string();
    let without_other = routing_text(&p, 3, false)
        .replace(&format!("[components.other]\nartifact = \"{probe}\"\n"), "")
        .replace(
            &format!("[[routes]]\ntopic = \"{p}.other\"\ncomponent = \"other\"\ngroup = \"{p}-other\"\n"),
            "",
        );
    assert!(!without_other.contains("component = \"other\""), "{without_other}");
    write_atomically(&path, &without_other);
    wait_for("other removed", Duration::from_secs(30), async || {
        let status = admin.status().await.unwrap();
        status.routes.len() == 1 && status.components.len() == 1 && status.last_rejected_edit.is_none()
    })
    .await;
    let forget = "DELETE FROM component_versions WHERE component = 'other'";
    match db.postgres_pool() {
        Some(pool) => sqlx::query(forget).execute(pool).await.unwrap().rows_affected(),
        None => sqlx::query(forget)
            .execute(db.sqlite_pool().unwrap())
            .await
            .unwrap()
            .rows_affected(),
    };
    write_atomically(
        &path,
        &routing_text(&p, 3, false).replacen(
            &probe_line,
            &format!("artifact = \"{}\"", artifact("probe-v2").display()),
            1,
        ),
    );
    wait_for("the return of other refused", Duration::from_secs(30), async || {
        admin.status().await.unwrap().last_rejected_edit.is_some()
    })
    .await;
    let status = admin.status().await.unwrap();
    let rejected = status.last_rejected_edit.unwrap().error;
    assert!(rejected.contains("not stored"), "{rejected}");
    assert_eq!(
        status
            .components
            .iter()
            .map(|c| (c.name.as_str(), c.version.as_str()))
            .collect::<Vec<_>>(),
        vec![("stamp", version.as_str())]
    );

    // An edit the database fails under is not refused, and not lost: the admin API
    // answers 503 without the database's text, and the watcher tries the edit again
    // until it applies. (Before, the watcher took the file as seen, and the edit waited
    // for the next change of the file.) `other` comes back from its file this time.
    let sql = |statement: &'static str| async move {
        match db.postgres_pool() {
            Some(pool) => sqlx::query(statement).execute(pool).await.unwrap().rows_affected(),
            None => sqlx::query(statement)
                .execute(db.sqlite_pool().unwrap())
                .await
                .unwrap()
                .rows_affected(),
        }
    };
    write_atomically(&path, &without_other);
    wait_for("the refusal cleared once more", Duration::from_secs(10), async || {
        admin.status().await.unwrap().last_rejected_edit.is_none()
    })
    .await;
    sql("DELETE FROM component_activations WHERE component = 'other'").await;
    sql("ALTER TABLE component_activations RENAME TO component_activations_away").await;
    write_atomically(&path, &routing_text(&p, 3, false));
    wait_for("the edit not applied", Duration::from_secs(30), async || {
        admin.status().await.unwrap().last_rejected_edit.is_some()
    })
    .await;
    match admin.reload().await.unwrap_err() {
        ClientError::Refused { status, detail, .. } => assert!(
            status == 503 && detail.contains("try again") && !detail.contains("component_activations"),
            "{status} {detail}"
        ),
        other => panic!("expected a 503, got {other}"),
    }
    assert_eq!(admin.status().await.unwrap().components.len(), 1);
    sql("ALTER TABLE component_activations_away RENAME TO component_activations").await;
    wait_for(
        "the edit applied once the database answers",
        Duration::from_secs(30),
        async || {
            let status = admin.status().await.unwrap();
            status.components.len() == 2 && status.routes.len() == 2 && status.last_rejected_edit.is_none()
        },
    )
    .await;

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

/// The watcher and edits together, on a component whose artifact file the test owns:
/// a file rewritten right before a routing edit is still swapped in (the reload used to
/// take its change as seen); the same bytes written again after a rollback do not undo
/// it (the file is compared with what it last brought in, not with what runs); and a
/// paused route whose group an edit changes stays paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_swaps_survive_edits_and_rollbacks_and_pauses_survive_regrouping() {
    let db = test_db(Backend::Sqlite).await.unwrap();
    let db = &db.db;
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let stamp_file = dir.path().join("stamp.wasm");
    std::fs::copy(artifact("probe"), &stamp_file).unwrap();
    let probe_line = format!("artifact = \"{}\"", artifact("probe").display());
    let text = |retry_attempts: u32, other_group: &str| {
        routing_text(&p, retry_attempts, false)
            .replacen(&probe_line, &format!("artifact = \"{}\"", stamp_file.display()), 1)
            .replace(
                &format!("group = \"{p}-other\""),
                &format!("group = \"{p}-{other_group}\""),
            )
    };
    let path = dir.path().join("topics.toml");
    std::fs::write(&path, text(3, "other")).unwrap();
    let routing = Routing::load(&path).unwrap();
    let brokers = brokers_for(false, &routing).await.unwrap();
    let (_, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    let v1 = version_of(&std::fs::read(artifact("probe")).unwrap());
    let v2_bytes = std::fs::read(artifact("probe-v2")).unwrap();
    let v2 = version_of(&v2_bytes);
    let stamp_version = || async {
        let status = admin.status().await.unwrap();
        status
            .components
            .iter()
            .find(|c| c.name == "stamp")
            .unwrap()
            .version
            .clone()
    };
    assert_eq!(stamp_version().await, v1);

    // The artifact and the routing file rewritten together: both apply.
    std::fs::write(&stamp_file, &v2_bytes).unwrap();
    write_atomically(&path, &text(4, "other"));
    wait_for(
        "the rewritten artifact swapped in beside the edit",
        Duration::from_secs(15),
        async || stamp_version().await == v2,
    )
    .await;

    // Rolled back, then the same v2 bytes written again: the rollback stands.
    admin.rollback("stamp", None).await.unwrap();
    assert_eq!(stamp_version().await, v1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&stamp_file, &v2_bytes).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // eight ticks of the watcher
    assert_eq!(stamp_version().await, v1, "the same file bytes undid the rollback");

    // A paused route moved to a new group stays paused.
    let other = format!("{p}.other -> other");
    admin.pause(&other).await.unwrap();
    write_atomically(&path, &text(4, "regrouped"));
    wait_for("the route in its new group", Duration::from_secs(15), async || {
        admin
            .status()
            .await
            .unwrap()
            .routes
            .iter()
            .any(|r| r.key == other && r.group == format!("{p}-regrouped"))
    })
    .await;
    let status = admin.status().await.unwrap();
    let route = status.routes.iter().find(|r| r.key == other).unwrap();
    assert_eq!(route.state, "paused", "{route:?}");

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

/// A host of `routing` serving the admin API: its URL and client, the stop switch and
/// the host's task.
async fn host_with_admin(
    routing: &Routing,
    db: &Db,
    brokers: &switchyard::kafka::Brokers,
) -> (
    String,
    AdminClient,
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, shutdown) = watch::channel(false);
    let options = Options {
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        admin_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let host = service::start(routing, db.clone(), brokers, options, shutdown)
        .await
        .unwrap();
    let url = format!("http://{}", host.admin_addr.unwrap());
    let admin = AdminClient::new(&url, Some(TOKEN.into()));
    (url, admin, stop, tokio::spawn(host.run()))
}

/// WAT text: the host compiles it like a binary artifact (wasmtime's `wat` feature).
fn wat_module() -> Vec<u8> {
    b"(module)".to_vec()
}

fn wat_component_of_other_world() -> Vec<u8> {
    br#"(component (import "example:other/thing@1.0.0" (instance)))"#.to_vec()
}

crate::on_both_stacks!(swaps_and_edits_under_traffic, bad_artifacts_and_edits_are_refused);

/// A host that starts runs what the database has active, not what its artifact file
/// holds: a deploy and a rollback made through the admin API survive restarts. A file
/// that changed while no host ran is deployed at the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_runs_the_active_version_and_a_file_changed_meanwhile() {
    let db = test_db(Backend::Sqlite).await.unwrap();
    let db = &db.db;
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let owned = dir.path().join("stamp.wasm");
    std::fs::copy(artifact("probe"), &owned).unwrap();
    let path = dir.path().join("topics.toml");
    let probe_line = format!("artifact = \"{}\"", artifact("probe").display());
    let text = routing_text(&p, 3, false).replacen(&probe_line, &format!("artifact = \"{}\"", owned.display()), 1);
    std::fs::write(&path, &text).unwrap();
    let routing = Routing::load(&path).unwrap();
    let brokers = brokers_for(false, &routing).await.unwrap();
    let v2 = std::fs::read(artifact("probe-v2")).unwrap();
    let running_stamp = async |admin: &AdminClient| {
        let status = admin.status().await.unwrap();
        let stamp = status.components.iter().find(|c| c.name == "stamp").unwrap();
        (stamp.version.clone(), stamp.history.first().map(|h| h.reason.clone()))
    };

    // First start: the file's version; then v2 through the admin API.
    let (_, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    let (v1, _) = running_stamp(&admin).await;
    let deployed = admin.deploy("stamp", v2.clone()).await.unwrap().to;
    assert_ne!(deployed, v1);
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    // Restarted with the file unchanged: v2 still runs; then a rollback to v1.
    let (_, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    assert_eq!(running_stamp(&admin).await.0, deployed, "the deploy survives a restart");
    assert_eq!(admin.rollback("stamp", None).await.unwrap().to, v1);
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    // Restarted again: the rollback holds. Then the file changes while no host runs.
    let (_, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    assert_eq!(running_stamp(&admin).await, (v1.clone(), Some("rollback".to_string())));
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    std::fs::write(&owned, &v2).unwrap();
    let (_, admin, stop, running) = host_with_admin(&routing, db, &brokers).await;
    assert_eq!(
        running_stamp(&admin).await,
        (deployed.clone(), Some("file".to_string())),
        "a file changed while no host ran is deployed at the start"
    );
    // An edit that points stamp at another file holding the version it runs swaps
    // nothing: no new activation, no host swapped to what it runs (what a retried edit
    // that had swapped before the database failed under it meets).
    let activations = admin.versions("stamp").await.unwrap().history.len();
    let copy = dir.path().join("stamp-copy.wasm");
    std::fs::write(&copy, &v2).unwrap();
    std::fs::write(
        &path,
        text.replacen(&owned.display().to_string(), &copy.display().to_string(), 1),
    )
    .unwrap();
    let report = admin.reload().await.unwrap();
    assert!(report.swapped.is_empty(), "{report:?}");
    assert_eq!(admin.versions("stamp").await.unwrap().history.len(), activations);
    assert_eq!(running_stamp(&admin).await.0, deployed);
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

/// Runs the binary with none of the caller's SWITCHYARD_* settings.
fn switchyard_cmd(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_")) {
        command.env_remove(name);
    }
    command.current_dir(dir);
    command
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `switchyard run` on the embedded default, and the operator commands run beside it
/// with the same settings and no token or broker flags: status, versions, rollback,
/// reload, dlq and lag all reach the running host; a changed artifact file is a swap; a
/// SIGHUP reloads instead of ending the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_beside_an_embedded_host_needs_no_extra_step() {
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let artifact_path = dir.path().join("stamp.wasm");
    std::fs::copy(artifact("probe"), &artifact_path).unwrap();
    let text = routing_text(&p, 1, false).replace(&artifact("probe").display().to_string(), "stamp.wasm");
    std::fs::write(dir.path().join("topics.toml"), &text).unwrap();
    let admin_url = format!("http://127.0.0.1:{}", free_port());
    let admin_addr = admin_url.trim_start_matches("http://").to_string();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut host = switchyard_cmd(dir.path())
        .args(["run", "--admin-addr", &admin_addr, "--http-addr", &http_addr])
        .env("SWITCHYARD_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")
        .env("SWITCHYARD_ADMINS", "root")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("host.log")).unwrap())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        let out = switchyard_cmd(dir.path())
            .args(args)
            .env("SWITCHYARD_ADMIN_URL", &admin_url)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let log = || std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
    let start = Instant::now();
    while !cli(&["status"]).0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host did not come up:\n{}",
            log()
        );
        assert!(host.try_wait().unwrap().is_none(), "host exited:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (v1, v2) = (
        version_of(&std::fs::read(artifact("probe")).unwrap()),
        version_of(&std::fs::read(artifact("probe-v2")).unwrap()),
    );
    let (ok, out) = cli(&["status"]);
    assert!(
        ok && out.contains(&format!("{p}.in -> stamp")) && out.contains(&v1),
        "{out}"
    );

    // A gateway JWT with the admin role opens the admin API too; one without it does not.
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in ["root", "bob"] {
        let account =
            json!({"username": user, "email": format!("{user}@example.org"), "password": "correct horse battery"});
        let gateway = format!("http://{http_addr}");
        http.post(format!("{gateway}/auth/register"))
            .json(&account)
            .send()
            .await
            .unwrap();
        let login: serde_json::Value = http
            .post(format!("{gateway}/auth/login"))
            .json(&json!({"username": user, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(
            login["accessToken"]
                .as_str()
                .unwrap_or_else(|| panic!("{login}"))
                .to_string(),
        );
    }
    assert!(
        AdminClient::new(&admin_url, Some(tokens[0].clone()))
            .status()
            .await
            .is_ok()
    );
    let err = AdminClient::new(&admin_url, Some(tokens[1].clone()))
        .status()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin"), "{err}");

    // Events, one of which fails for good, through the host's own embedded broker.
    let (_, json) = cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", status["brokers"].as_str().unwrap());
    let producer = producer(&config);
    for (n, steps) in [
        (0, json!([{"op": "stamp", "key": "s/0"}])),
        (1, json!([{"op": "fail", "retryable": false, "reason": "bad order"}])),
    ] {
        let payload = json!({ "steps": steps }).to_string();
        producer
            .send(
                FutureRecord::to(&format!("{p}.in"))
                    .key(&n.to_string())
                    .payload(&payload),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let start = Instant::now();
    loop {
        let (ok, out) = cli(&["dlq", "list"]);
        if ok && out.contains("bad order") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no dead letter listed: {out}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = cli(&["lag"]);
    assert!(ok && out.contains(&format!("{p}-stamp")), "{out}");
    let (ok, out) = cli(&["topics", "sync"]);
    assert!(ok && out.contains("embedded broker has the topics"), "{out}");

    // The artifact file changes: the host swaps to it.
    std::fs::copy(artifact("probe-v2"), &artifact_path).unwrap();
    let start = Instant::now();
    loop {
        let (_, out) = cli(&["versions", "stamp"]);
        if out.contains(&format!("active {v2}")) {
            assert!(out.contains("file"), "{out}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no swap from the file: {out}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = cli(&["rollback", "stamp"]);
    assert!(ok && out.contains(&format!("{v2} -> {v1}")), "{out}");

    // An edit applied by `reload`, another by SIGHUP; the host keeps running.
    std::fs::write(
        dir.path().join("topics.toml"),
        text.replace("retry = { attempts = 1", "retry = { attempts = 2"),
    )
    .unwrap();
    let (ok, out) = cli(&["reload"]);
    assert!(
        ok && (out.contains("routes_changed") || out.contains("unchanged")),
        "{out}"
    );
    std::fs::write(
        dir.path().join("topics.toml"),
        text.replace("retry = { attempts = 1", "retry = { attempts = 4"),
    )
    .unwrap();
    let pid = host.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        let (_, json) = cli(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let attempts = status["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["key"] == format!("{p}.in -> stamp")))
            .map(|r| r["retry_attempts"].clone());
        if attempts == Some(json!(4)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "edit not applied: {json}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(host.try_wait().unwrap().is_none(), "SIGHUP ended the host:\n{}", log());
    assert!(
        log().contains("SIGHUP") || log().contains("routing file changed"),
        "{}",
        log()
    );

    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = host.wait().unwrap();
    assert!(status.success(), "{status}\n{}", log());
}

/// Two hosts on one cluster and one database: a deploy through one reaches both; one
/// host is SIGKILLed in the middle of a swap; every event is still handled exactly once,
/// by exactly one version, and within a partition activations never go back, across the
/// partition's move to the surviving host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_follow_one_deploy_and_survive_a_kill_mid_swap() {
    const TOTAL: usize = 3000;
    let (db, url) = crate::common::postgres_database().await.unwrap();
    let kafka = crate::common::kafka_brokers();
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topics.toml"), routing_text(&p, 3, false)).unwrap();
    let routing = Routing::load(&dir.path().join("topics.toml")).unwrap();
    let brokers = brokers_for(true, &routing).await.unwrap();

    let spawn = |name: &str| {
        let admin_url = format!("http://127.0.0.1:{}", free_port());
        let data_dir = dir.path().join(name);
        let child = switchyard_cmd(dir.path())
            .args([
                "run",
                "--admin-addr",
                admin_url.trim_start_matches("http://"),
                "--http-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--brokers",
                &kafka,
                "--database-url",
                &url,
                "--data-dir",
                &data_dir.display().to_string(),
            ])
            .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
            .env("SWITCHYARD_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        (child, AdminClient::new(&admin_url, Some(TOKEN.into())))
    };
    let (mut host_a, admin_a) = spawn("a");
    let (mut host_b, admin_b) = spawn("b");
    let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();
    for (admin, name) in [(&admin_a, "a"), (&admin_b, "b")] {
        let start = Instant::now();
        while admin.status().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "host {name} did not come up:\n{}",
                log(name)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let v1 = std::fs::read(artifact("probe")).unwrap();
    let v2 = std::fs::read(artifact("probe-v2")).unwrap();
    let (v1_version, v2_version) = (version_of(&v1), version_of(&v2));
    let base = brokers.client_config();
    let topic_in = format!("{p}.in");
    let traffic = {
        let producer = producer(&base);
        let topic = topic_in.clone();
        tokio::spawn(async move {
            let mut sent = HashMap::new();
            for chunk in 0..TOTAL / 100 {
                let mut batch = Vec::new();
                for n in chunk * 100..(chunk + 1) * 100 {
                    let payload = json!({"steps": [{"op": "stamp", "key": format!("s/{n}")}]}).to_string();
                    let key = n.to_string();
                    let record = FutureRecord::to(&topic)
                        .partition((n % 6) as i32)
                        .key(&key)
                        .payload(&payload);
                    batch.push((n, producer.send_result(record).map_err(|(e, _)| e).unwrap()));
                }
                for (n, delivery) in batch {
                    let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                    sent.insert((delivered.partition, delivered.offset), n);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        })
    };

    // A deploy through A reaches B.
    tokio::time::sleep(Duration::from_millis(800)).await;
    admin_a.deploy("stamp", v2.clone()).await.unwrap();
    let start = Instant::now();
    loop {
        let status = admin_b.status().await.unwrap();
        if status
            .components
            .iter()
            .any(|c| c.name == "stamp" && c.version == v2_version)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "host b never ran the deploy made through a"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // B is killed in the middle of a swap it was asked for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deploy = tokio::spawn(async move { admin_b.deploy("stamp", v1).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    host_b.kill().unwrap();
    host_b.wait().unwrap();
    let _ = deploy.await.unwrap(); // either it answered or the host died first

    let sent = traffic.await.unwrap();
    wait_for(
        "every event handled by the surviving host",
        Duration::from_secs(120),
        async || handled(&db, "stamp", &topic_in).await.len() >= TOTAL,
    )
    .await;
    // Once more through A, after the kill: the log moves on.
    admin_a.rollback("stamp", Some(v2_version.clone())).await.unwrap();

    let rows = handled(&db, "stamp", &topic_in).await;
    let stamped = stamps(&db, "stamp").await;
    assert_eq!(rows.len(), TOTAL, "exactly once: one inbox row per event");
    assert_eq!(stamped.len(), TOTAL, "exactly once: one stamp per event");
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for (partition, offset, version, activation, _) in &rows {
        let n = sent[&(*partition, *offset)];
        let expected = if *version == v1_version { "v1" } else { "v2" };
        assert!(*version == v1_version || *version == v2_version);
        assert_eq!(stamped[&format!("s/{n}")], expected, "event {n}");
        by_partition.entry(*partition).or_default().push((*offset, *activation));
    }
    for (partition, mut events) in by_partition {
        events.sort();
        assert!(
            events.windows(2).all(|w| w[1].1 >= w[0].1),
            "partition {partition}: an event ran on an older activation than one before it"
        );
    }
    let status = admin_a.status().await.unwrap();
    let route = status
        .routes
        .iter()
        .find(|r| r.key == format!("{p}.in -> stamp"))
        .unwrap();
    assert_eq!(
        route.partitions,
        vec![0, 1, 2, 3, 4, 5],
        "the survivor owns every partition"
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &host_a.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(host_a.wait().unwrap().success(), "{}", log("a"));
}

/// A handler that sleeps in a host call up to its long deadline holds its partition's
/// event, so a graceful stop waits for it: past `--shutdown-grace-secs`, or at a second
/// signal, `switchyard run` exits anyway, with status 1 and the reason in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_hangs_ends_at_the_grace_period_or_a_second_signal() {
    for second_signal in [false, true] {
        let p = prefix();
        let dir = tempfile::tempdir().unwrap();
        let text = routing_text(&p, 1, false).replace("deadline-ms = 5000", "deadline-ms = 120000");
        std::fs::write(dir.path().join("topics.toml"), &text).unwrap();
        let admin_url = format!("http://127.0.0.1:{}", free_port());
        let grace = if second_signal { "600" } else { "2" };
        let mut host = KillOnDrop(
            switchyard_cmd(dir.path())
                .args(["run", "--shutdown-grace-secs", grace])
                .args(["--admin-addr", admin_url.trim_start_matches("http://")])
                .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
                .env("SWITCHYARD_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("host.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let log = || std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
        let start = Instant::now();
        let brokers = loop {
            if let Ok(info) = AdminClient::new(
                &admin_url,
                std::fs::read_to_string(dir.path().join(".switchyard/admin-token")).ok(),
            )
            .brokers()
            .await
            {
                break info.bootstrap_servers;
            }
            assert!(host.0.try_wait().unwrap().is_none(), "host exited:\n{}", log());
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "host did not come up:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &brokers);
        let payload = json!({"steps": [
            {"op": "log", "message": "asleep in a host call"},
            {"op": "sleep", "ms": 100_000},
        ]})
        .to_string();
        producer(&config)
            .send(
                FutureRecord::to(&format!("{p}.in")).key("k").payload(&payload),
                Timeout::Never,
            )
            .await
            .unwrap();
        let start = Instant::now();
        while !log().contains("asleep in a host call") {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the event did not start:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let pid = host.0.id().to_string();
        let term = || {
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
        };
        assert!(term().success());
        if second_signal {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                host.0.try_wait().unwrap().is_none(),
                "exited before the event finished:\n{}",
                log()
            );
            assert!(term().success());
        }
        let status = wait_at_most(&mut host.0, Duration::from_secs(30), "the host's stop after SIGTERM");
        assert_eq!(status.code(), Some(1), "{}", log());
        let said = if second_signal {
            "a second signal: exiting now"
        } else {
            "shutdown did not finish within 2s; exiting now"
        };
        assert!(log().contains(said), "{}", log());
    }
}
