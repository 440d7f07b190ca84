//! Shared test setup: real components from `target/components` (built by `just
//! handlers`), and a database per test on SQLite or a real PostgreSQL server.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use switchyard::config::{ComponentName, ComponentSpec, Limits, Location, Routing, TopicName};
use switchyard::store::Db;

/// Waits for `child` at most `limit`; past it, kills it and fails naming `what`, so a hung
/// step fails this test with its output instead of stalling the whole suite.
pub fn wait_at_most(child: &mut std::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (SIGKILL) when the test ends, also by a failed assertion: a host
/// left running goes on consuming and producing beside the next test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a component built from handlers/; fails with the fix when it is missing or
/// older than its sources (a stale artifact would test code that no longer exists).
pub fn artifact(name: &str) -> PathBuf {
    let root = workspace();
    let path = root.join("target/components").join(format!("{name}.wasm"));
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: run `just handlers` first", path.display()));
    // `probe-v2` is the probe built with its `v2` feature.
    let krate = name.strip_suffix("-v2").unwrap_or(name);
    let sources = [
        root.join("handlers").join(krate),
        root.join("handlers/sdk"),
        root.join("handlers/saga-events"),
        root.join("wit"),
    ];
    if let Some(newer) = sources.iter().find_map(|dir| newer_file(dir, built)) {
        panic!(
            "{} is older than {}: run `just handlers` (or `just test`, which rebuilds them)",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A file under `dir` modified after `than`, if any.
fn newer_file(dir: &std::path::Path, than: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = newer_file(&path, than) {
                return Some(found);
            }
        } else if entry.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > than) {
            return Some(path);
        }
    }
    None
}

/// A component spec for tests: the probe under another name, with tight limits.
pub fn spec(name: &str, artifact_name: &str, publishes: &[&str]) -> ComponentSpec {
    ComponentSpec {
        name: ComponentName::try_from(name.to_string()).unwrap(),
        artifact: artifact(artifact_name),
        artifact_at: Location {
            path: "test.toml".into(),
            line: 1,
            column: 1,
        },
        publishes: publishes
            .iter()
            .map(|t| TopicName::try_from(t.to_string()).unwrap())
            .collect::<BTreeSet<_>>(),
        reach: Default::default(),
        config: BTreeMap::from([("greeting".to_string(), "hello".to_string())]),
        limits: Limits {
            memory_bytes: 32 << 20,
            deadline: Duration::from_millis(2000),
        },
    }
}

/// Partition 0, offset 0 of `topic` in a log of tests' own.
pub fn at(topic: &str) -> switchyard::event::LogPosition<'_> {
    switchyard::event::LogPosition {
        origin: "test",
        topic,
        partition: 0,
        offset: 0,
    }
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database; the temp dir (SQLite) lives as long as the guard.
pub struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

/// A real service's address from the environment. A missing service fails the test
/// rather than skipping it: a skipped test that counts as passed proves nothing.
pub fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `just test`, which starts PostgreSQL, Redis and Kafka (scripts/services.sh) and exports it")
    })
}

/// The PostgreSQL server URL tests use (`scripts/services.sh env` prints it).
pub fn postgres_url() -> Option<String> {
    Some(service("SWITCHYARD_TEST_DATABASE_URL"))
}

/// The real Kafka broker tests use.
pub fn kafka_brokers() -> String {
    service("SWITCHYARD_TEST_KAFKA_BROKERS")
}

pub async fn test_db(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(None, dir.path()).await.unwrap();
            Some(TestDb { db, _dir: Some(dir) })
        }
        Backend::Postgres => {
            let (db, _) = postgres_database().await?;
            Some(TestDb { db, _dir: None })
        }
    }
}

/// A fresh database of its own on the test PostgreSQL server, so tests can run in
/// parallel and start empty; also returns its URL for host processes.
pub async fn postgres_database() -> Option<(Db, String)> {
    let url = postgres_url()?;
    let name = format!("sy_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("connecting to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("{}/{name}", url.rsplit_once('/').map(|(base, _)| base).unwrap());
    let db = Db::open(Some(&url), std::path::Path::new(".")).await.unwrap();
    Some((db, url))
}

/// Declares `$name_sqlite` and `$name_postgres` tests running `$scenario(db)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let db = $crate::common::test_db($crate::common::Backend::Sqlite).await.unwrap();
                    super::$scenario(&db.db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = $crate::common::test_db($crate::common::Backend::Postgres).await {
                        super::$scenario(&db.db).await;
                    }
                }
            )*
        }
    };
}

/// Tests that run the saga on the real broker share its topics (the components publish to
/// fixed names), so each would also handle every other one's orders, and the retries those
/// foreign events cause would hold its own up: they take turns. Hold the guard for the
/// whole test, and take it before [`start_groups_at_the_end`].
pub async fn saga_topics(real: bool) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static SHARED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if real { Some(SHARED.lock().await) } else { None }
}

/// The shipped routing, with consumer groups unique to this run so that a new group
/// starts at the beginning of the topics.
pub fn saga_routing(dir: &std::path::Path, run: &str) -> Routing {
    let text = std::fs::read_to_string(workspace().join("topics.toml")).unwrap();
    let components = workspace().join("target/components");
    let mut text = text.replace(
        "artifact = \"target/components/",
        &format!("artifact = \"{}/", components.display()),
    );
    // One group per route, as the host requires.
    for component in ["order", "billing", "user", "notif"] {
        let needle = format!("component = \"{component}\"\n");
        let mut n = 0;
        while let Some(at) = text.find(&needle) {
            n += 1;
            let group = format!("component  = \"{component}\"\ngroup = \"{run}-{component}-{n}\"\n");
            text.replace_range(at..at + needle.len(), &group);
        }
    }
    let path = dir.join("topics.toml");
    std::fs::write(&path, text).unwrap();
    Routing::load(&path).unwrap()
}

/// The saga's topics on a shared broker hold earlier runs' events, whose order ids would
/// collide with this run's fresh database: start this run's groups after them.
pub fn start_groups_at_the_end(base: &rdkafka::ClientConfig, routing: &Routing) {
    for route in &routing.routes {
        let partitions = routing.topics[&route.topic].partitions;
        start_group_at_the_end(base, &route.group, route.topic.as_str(), partitions);
    }
}

/// Commits `group`'s offsets on `topic` at the current end, so a new group (a gateway's
/// `orders.status` readers too) does not first read every earlier run's messages.
pub fn start_group_at_the_end(base: &rdkafka::ClientConfig, group: &str, topic: &str, partitions: u32) {
    let mut config = base.clone();
    config.set("group.id", group);
    let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        // Right after the topics are created a partition leader may not serve offset
        // requests yet (NotLeaderForPartition): ask again for a while.
        let start = Instant::now();
        let high = loop {
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(err) if start.elapsed() < Duration::from_secs(30) => {
                    eprintln!("watermarks of {topic}[{partition}] not ready: {err}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("watermarks of {topic}[{partition}]: {err}"),
            }
        };
        offsets
            .add_partition_offset(topic, partition, rdkafka::Offset::Offset(high))
            .unwrap();
    }
    let start = Instant::now();
    while let Err(err) = consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "committing start offsets of {group}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Declares each `$scenario(real, backend)` twice: on the embedded broker with SQLite,
/// and on the real broker with PostgreSQL.
#[macro_export]
macro_rules! on_both_stacks {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(false, $crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(true, $crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}
