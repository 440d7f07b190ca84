//! The Kafka runtime end to end: real components, real PostgreSQL (or SQLite), and a
//! real Kafka broker (`SWITCHYARD_TEST_KAFKA_BROKERS`) or the embedded one. The crash
//! and rebalance scenarios run `switchyard run` as separate processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use switchyard::config::Routing;
use switchyard::kafka::{Brokers, admin};
use switchyard::service::serve;
use switchyard::store::{Db, Table};

use crate::common::{Backend, artifact, test_db};

/// The real broker under test.
fn real_brokers() -> Option<String> {
    Some(crate::common::kafka_brokers())
}

/// Routing for a test, with topic and group names unique to it.
pub(crate) fn routing(dir: &Path, prefix: &str, body: &str) -> Routing {
    let text = body
        .replace("{p}", prefix)
        .replace("{probe}", &artifact("probe").display().to_string());
    let path = dir.join("topics.toml");
    std::fs::write(&path, &text).unwrap();
    Routing::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub(crate) fn prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub(crate) async fn brokers_for(real: bool, routing: &Routing) -> Option<Brokers> {
    if real {
        let servers = real_brokers()?;
        let brokers = Brokers::start(Some(&servers), routing).unwrap();
        admin::sync_topics(&brokers.client_config(), routing).await.unwrap();
        Some(brokers)
    } else {
        Some(Brokers::start(None, routing).unwrap())
    }
}

pub(crate) fn producer(base: &ClientConfig) -> FutureProducer {
    switchyard::kafka::producer_config(base).create().unwrap()
}

pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    partition: Option<i32>,
    payload: &serde_json::Value,
) {
    let body = serde_json::to_vec(payload).unwrap();
    let mut record = FutureRecord::to(topic).key(key).payload(&body);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(10)))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The decimal counter under `key` of `component`, 0 when absent.
pub(crate) async fn counter(db: &Db, component: &str, key: &str) -> i64 {
    db.peek(component, key)
        .await
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Waits until `component`'s counter reaches `want`, failing after `limit`.
pub(crate) async fn wait_for(db: &Db, component: &str, key: &str, want: i64, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = counter(db, component, key).await;
        if got >= want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{component}/{key} reached only {got} of {want} in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn increment(key: &str) -> serde_json::Value {
    json!({"op": "increment", "key": key, "delta": 1})
}

const TWO_STAGE: &str = r#"
[topics."{p}.in"]
partitions = 3
[topics."{p}.mid"]
partitions = 3
[components.first]
artifact = "{probe}"
publishes = ["{p}.mid"]
[components.second]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "first"
group = "{p}-first"
[[routes]]
topic = "{p}.mid"
component = "second"
group = "{p}-second"
"#;

/// Runs the service beside `scenario`, then stops it gracefully.
pub(crate) async fn with_service<F: std::future::Future<Output = ()>>(
    routing: &Routing,
    db: &Db,
    brokers: &Brokers,
    scenario: F,
) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let service = serve(routing, db.clone(), brokers, shutdown);
    let test = async {
        scenario.await;
        stop.send(true).unwrap();
    };
    let (served, ()) = tokio::join!(service, test);
    served.unwrap();
}

async fn event_flows_through_two_components_once(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, TWO_STAGE);
    let Some(brokers) = brokers_for(real, &routing).await else {
        return;
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    const N: i64 = 30;
    with_service(&routing, &db, &brokers, async {
        let producer = producer(&brokers.client_config());
        for i in 0..N {
            let downstream = json!({"steps": [increment("count")]}).to_string();
            let plan = json!({"steps": [
                increment("count"),
                {"op": "publish", "topic": format!("{p}.mid"), "key": format!("k{i}"), "payload": downstream}
            ]});
            send(&producer, &format!("{p}.in"), &format!("k{i}"), None, &plan).await;
        }
        wait_for(&db, "second", "count", N, Duration::from_secs(60)).await;
        // Give any duplicate a chance to show up before counting.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await;
    assert_eq!(counter(&db, "first", "count").await, N);
    assert_eq!(counter(&db, "second", "count").await, N);
    assert_eq!(db.count(Table::Inbox).await.unwrap(), 2 * N);
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 0);
}

const POISON: &str = r#"
[topics."{p}.in"]
partitions = 2
[components.worker]
artifact = "{probe}"
config = { {config} }
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
dead-letter = "{p}.in.dead"
retry = { attempts = 2, initial-backoff-ms = 50, max-backoff-ms = 100 }
"#;

async fn poison_event_is_dead_lettered_and_replayed_after_a_fix(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let broken = routing(dir.path(), &p, &POISON.replace("{config}", ""));
    let Some(brokers) = brokers_for(real, &broken).await else {
        return;
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    let base = brokers.client_config();
    let dead = vec![format!("{p}.in.dead")];
    with_service(&broken, &db, &brokers, async {
        let producer = producer(&base);
        // The poison event first, then good events behind it on the same partition.
        let poison = json!({"steps": [{"op": "require-config", "name": "fixed"}, increment("count")]});
        send(&producer, &format!("{p}.in"), "same", Some(0), &poison).await;
        send(
            &producer,
            &format!("{p}.in"),
            "same",
            Some(0),
            &json!("not even a plan"),
        )
        .await;
        for _ in 0..5 {
            send(
                &producer,
                &format!("{p}.in"),
                "same",
                Some(0),
                &json!({"steps": [increment("count")]}),
            )
            .await;
        }
        wait_for(&db, "worker", "count", 5, Duration::from_secs(60)).await;
        let start = Instant::now();
        loop {
            let letters = admin::list_dead_letters(&base, &dead, db.signer(), admin::Reading::All)
                .unwrap()
                .letters;
            if letters.len() == 2 {
                let poison = &letters[0];
                assert_eq!(poison.component, "worker");
                assert_eq!(poison.kind, "fatal");
                assert_eq!(poison.reason, "config fixed is not set");
                assert_eq!(poison.attempts, "1");
                assert_eq!(poison.source_topic, format!("{p}.in"));
                assert_eq!(poison.source_partition, "0");
                assert!(poison.signed, "the host signs its dead letters");
                assert!(letters[1].reason.contains("bad plan"), "{:?}", letters[1]);
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "dead letters: {letters:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if real {
            // The operator's view of the same: `switchyard dlq list`.
            let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .arg("--config")
                .arg(dir.path().join("topics.toml"))
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--brokers", &brokers.bootstrap_servers(), "dlq", "list", "--json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let lines: Vec<serde_json::Value> = out
                .stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 2);
            assert_eq!(lines[0]["reason"], "config fixed is not set");
            assert_eq!(lines[0]["source_topic"], format!("{p}.in"));

            // `switchyard lag`: partition 0 got all seven events; its lag drains to 0.
            let start = Instant::now();
            loop {
                let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
                    .arg("--config")
                    .arg(dir.path().join("topics.toml"))
                    .args(["--brokers", &brokers.bootstrap_servers(), "lag"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let table = String::from_utf8_lossy(&out.stdout).into_owned();
                let row: Vec<String> = table
                    .lines()
                    .find(|l| l.starts_with(&format!("{p}.in ")) && l.split_whitespace().nth(3) == Some("0"))
                    .map(|l| l.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                if row.get(4).map(String::as_str) == Some("7") && row.get(5).map(String::as_str) == Some("0") {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "lag never drained:\n{table}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    })
    .await;

    // The fix: the component now has its setting. Replay the poison event only.
    let fixed = routing(dir.path(), &p, &POISON.replace("{config}", "fixed = \"yes\""));
    with_service(&fixed, &db, &brokers, async {
        let letters = admin::list_dead_letters(&base, &dead, db.signer(), admin::Reading::All)
            .unwrap()
            .letters;
        admin::replay(&base, &fixed, db.signer(), &letters[..1]).await.unwrap();
        admin::replay(&base, &fixed, db.signer(), &letters[..1]).await.unwrap(); // a second replay is absorbed
        wait_for(&db, "worker", "count", 6, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    })
    .await;
    assert_eq!(counter(&db, "worker", "count").await, 6);
}

/// A long dead-letter topic: a listing reads each partition's newest letters, their
/// payloads cut, so browsing a million big letters costs the host little; one letter is
/// read whole straight from its offset (for a replay), however far back it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_dead_letter_topic_lists_its_newest_letters_and_reads_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, &POISON.replace("{config}", ""));
    // The real broker: the embedded one keeps only a few megabytes per partition.
    let brokers = brokers_for(true, &routing).await.unwrap();
    let db = test_db(Backend::Sqlite).await.unwrap();
    let base = brokers.client_config();
    let dead = format!("{p}.in.dead");
    let producer = producer(&base);
    let big = "x".repeat(40 << 10);
    let total = admin::NEWEST_PER_PARTITION + 20;
    let sends = (0..total).map(|i| {
        let payload = format!("{i:04}:{big}");
        let (producer, dead) = (producer.clone(), dead.clone());
        async move {
            producer
                .send(
                    FutureRecord::to(&dead).partition(0).key("k").payload(&payload),
                    Timeout::Never,
                )
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(sends).await;

    let signer = db.db.signer();
    let listing = admin::list_dead_letters(&base, std::slice::from_ref(&dead), signer, admin::Reading::Newest).unwrap();
    assert_eq!(
        (listing.letters.len() as i64, listing.older, listing.unread),
        (admin::NEWEST_PER_PARTITION, 20, 0)
    );
    assert_eq!(listing.letters[0].offset, 20, "the newest, in order");
    let whole = 5 + big.len();
    for letter in &listing.letters {
        assert_eq!(
            (letter.payload.len(), letter.payload_bytes),
            (admin::LISTED_PAYLOAD_BYTES, whole)
        );
    }

    let letter = admin::read_dead_letter(&base, &dead, 0, 3, signer).unwrap().unwrap();
    assert_eq!(
        (letter.offset, letter.payload.len(), letter.payload_bytes),
        (3, whole, whole)
    );
    assert!(letter.payload.starts_with(b"0003:"));
    assert!(
        admin::read_dead_letter(&base, &dead, 0, total, signer)
            .unwrap()
            .is_none()
    );
}

const RETRY: &str = r#"
[topics."{p}.in"]
partitions = 3
[components.worker]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
retry = { attempts = 4, initial-backoff-ms = 200, max-backoff-ms = 1000 }
"#;

async fn retries_back_off_and_block_only_their_partition(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, RETRY);
    let Some(brokers) = brokers_for(real, &routing).await else {
        return;
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    with_service(&routing, &db, &brokers, async {
        let producer = producer(&brokers.client_config());
        let start = Instant::now();
        let flaky = json!({"steps": [{"op": "fail-until-attempt", "attempt": 4}, increment("flaky")]});
        send(&producer, &format!("{p}.in"), "a", Some(0), &flaky).await;
        for i in 0..10 {
            let partition = 1 + (i % 2);
            send(
                &producer,
                &format!("{p}.in"),
                "b",
                Some(partition),
                &json!({"steps": [increment("others")]}),
            )
            .await;
        }
        wait_for(&db, "worker", "others", 10, Duration::from_secs(60)).await;
        let others_done = start.elapsed();
        assert_eq!(
            counter(&db, "worker", "flaky").await,
            0,
            "other partitions finished while partition 0 retries"
        );
        wait_for(&db, "worker", "flaky", 1, Duration::from_secs(60)).await;
        let flaky_done = start.elapsed();
        // Three waits before the fourth try: 200 + 400 + 800 ms. A constant 200 ms
        // backoff would be done after 600 ms, so this shows the doubling too.
        assert!(
            flaky_done >= Duration::from_millis(1400),
            "retried too fast: {flaky_done:?}"
        );
        let _ = others_done;
    })
    .await;
    assert_eq!(counter(&db, "worker", "flaky").await, 1);
}

const TIMERS: &str = r#"
[topics."{p}.in"]
partitions = 1
[topics."{p}.later"]
partitions = 1
[components.sched]
artifact = "{probe}"
publishes = ["{p}.later"]
[components.counter]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "sched"
group = "{p}-sched"
[[routes]]
topic = "{p}.later"
component = "counter"
group = "{p}-counter"
"#;

async fn timers_fire_once_and_survive_a_restart(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, TIMERS);
    let Some(brokers) = brokers_for(real, &routing).await else {
        return;
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    let later = json!({"steps": [increment("fired")]}).to_string();
    let plan =
        json!({"steps": [{"op": "schedule", "topic": format!("{p}.later"), "delay_ms": 2500, "payload": later}]});
    // Schedule, then stop the host before the timer is due.
    with_service(&routing, &db, &brokers, async {
        send(
            &producer(&brokers.client_config()),
            &format!("{p}.in"),
            "k",
            None,
            &plan,
        )
        .await;
        let start = Instant::now();
        while db.count(Table::Timers).await.unwrap() == 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "timer never scheduled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(counter(&db, "counter", "fired").await, 0, "fired too early");
    assert_eq!(
        db.count(Table::Timers).await.unwrap(),
        1,
        "the timer is still pending when the first host stops, so the restart is what fires it"
    );
    // A new host fires it, once.
    with_service(&routing, &db, &brokers, async {
        wait_for(&db, "counter", "fired", 1, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert_eq!(counter(&db, "counter", "fired").await, 1);
    assert_eq!(db.count(Table::Timers).await.unwrap(), 0);
}

const PARALLEL: &str = r#"
[topics."{p}.in"]
partitions = 2
[components.worker]
artifact = "{probe}"
limits = { deadline-ms = 10000 }
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
"#;

/// While an event of partition 0 is in the middle of its run (blocked 4 s in a host
/// call), partition 1's events commit: on SQLite too, the run holds no write lock.
async fn a_running_event_holds_up_no_other_partition(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, PARALLEL);
    let Some(brokers) = brokers_for(real, &routing).await else {
        return;
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    with_service(&routing, &db, &brokers, async {
        let producer = producer(&brokers.client_config());
        let slow = json!({"steps": [{"op": "put", "key": "slow-started", "value": "1"}, {"op": "sleep", "ms": 4000}, increment("slow")]});
        send(&producer, &format!("{p}.in"), "a", Some(0), &slow).await;
        for _ in 0..5 {
            send(&producer, &format!("{p}.in"), "b", Some(1), &json!({"steps": [increment("others")]})).await;
        }
        wait_for(&db, "worker", "others", 5, Duration::from_secs(60)).await;
        assert_eq!(
            counter(&db, "worker", "slow").await,
            0,
            "partition 1 finished while partition 0's event was still running"
        );
        wait_for(&db, "worker", "slow", 1, Duration::from_secs(60)).await;
    })
    .await;
    assert_eq!(
        db.peek("worker", "slow-started").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

on_both_stacks!(
    a_running_event_holds_up_no_other_partition,
    event_flows_through_two_components_once,
    poison_event_is_dead_lettered_and_replayed_after_a_fix,
    retries_back_off_and_block_only_their_partition,
    timers_fire_once_and_survive_a_restart,
);

// ---- separate host processes (real broker and PostgreSQL only: the embedded broker
// dies with its process) ----------------------------------------------------------------

const STREAM: &str = r#"
[topics."{p}.in"]
partitions = 4
[topics."{p}.out"]
partitions = 1
[components.worker]
artifact = "{probe}"
publishes = ["{p}.out"]
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
"#;

/// A `switchyard run` process; killed on drop if still running.
struct HostProcess(Child);

impl HostProcess {
    /// Starts a host; its log (rebalances at info) goes to `log`.
    fn start(config: &Path, brokers: &str, database_url: &str, log: &Path) -> HostProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "--config",
                &config.display().to_string(),
                "--brokers",
                brokers,
                "--database-url",
                database_url,
            ])
            .arg("run")
            // Several hosts at once: each its own free HTTP port.
            .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .env(
                "SWITCHYARD_LOG",
                "warn,switchyard::kafka::dispatch=info,switchyard::kafka::relay=info",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("starting switchyard run");
        HostProcess(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }

    /// SIGTERM and wait for the graceful exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "graceful shutdown failed: {status}");
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn send_stream(brokers: &Brokers, p: &str, n: usize) {
    let producer = producer(&brokers.client_config());
    for i in 0..n {
        let plan = json!({"steps": [
            increment("count"),
            {"op": "put", "key": format!("seen/{i:04}"), "value": "1"},
            {"op": "publish", "topic": format!("{p}.out"), "key": format!("k{i}"), "payload": format!("out {i}")}
        ]});
        send(&producer, &format!("{p}.in"), &format!("k{}", i % 16), None, &plan).await;
    }
}

/// Every event's effects exactly once: counter, keys, inbox rows and outbox rows.
async fn assert_exactly_once(db: &Db, n: i64) {
    assert_eq!(counter(db, "worker", "count").await, n, "counter");
    assert_eq!(db.count(Table::Inbox).await.unwrap(), n, "inbox rows");
    assert_eq!(db.count(Table::Kv).await.unwrap(), n + 1, "seen keys plus the counter");
    assert_eq!(db.count(Table::Outbox).await.unwrap(), n, "published messages");
    let start = Instant::now();
    while db.count(Table::UnsentOutbox).await.unwrap() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "outbox not relayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_applies_every_event_once() {
    let Some(servers) = real_brokers() else { return };
    let Some((db, url)) = crate::common::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, STREAM);
    let brokers = brokers_for(true, &routing).await.unwrap();
    const N: i64 = 300;
    send_stream(&brokers, &p, N as usize).await;

    let config = dir.path().join("topics.toml");
    let mut host = HostProcess::start(&config, &servers, &url, &dir.path().join("first.log"));
    // Kill it while it is in the middle of the stream.
    let start = Instant::now();
    loop {
        let done = counter(&db, "worker", "count").await;
        if done >= 40 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "host made no progress ({done})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill();
    let at_kill = counter(&db, "worker", "count").await;
    assert!(at_kill < N, "the kill came too late to prove anything ({at_kill})");

    let second_log = dir.path().join("second.log");
    let _host = HostProcess::start(&config, &servers, &url, &second_log);
    wait_for(&db, "worker", "count", N, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for any duplicate
    assert_exactly_once(&db, N).await;
    // The restarted host was handed events the killed one had handled but not yet
    // committed the offsets of: the inbox, not luck, kept them once.
    let log = std::fs::read_to_string(&second_log).unwrap();
    assert!(
        log.contains("event id already handled; skipped"),
        "no redelivery was seen, so the inbox was not exercised:\n{log}"
    );
}

/// The transaction id of a group commit of the host in flight: a transaction of another
/// session of this database that has written inbox rows and not committed yet.
async fn group_commit_in_flight(pool: &sqlx::PgPool) -> Option<String> {
    const SQL: &str = "SELECT a.backend_xid::text FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
                       WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
                       AND a.backend_xid IS NOT NULL AND l.locktype = 'relation' \
                       AND l.relation = 'inbox'::regclass AND l.mode = 'RowExclusiveLock' LIMIT 1";
    sqlx::query_as::<_, (String,)>(SQL)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|(xid,)| xid)
}

/// SIGKILL lands while one of the host's group commits is open in PostgreSQL (seen in
/// `pg_locks`, and proven afterwards: no row carries that transaction's id). After a
/// restart every event's effects are there exactly once, and events did share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_group_commit_loses_and_repeats_nothing() {
    let Some(servers) = real_brokers() else { return };
    let Some((db, url)) = crate::common::postgres_database().await else {
        return;
    };
    let pool = db.postgres_pool().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, STREAM);
    let brokers = brokers_for(true, &routing).await.unwrap();
    const N: i64 = 2000;
    send_stream(&brokers, &p, N as usize).await;

    let config = dir.path().join("topics.toml");
    let mut killed_mid_commit = None;
    for attempt in 0..5 {
        let mut host = HostProcess::start(
            &config,
            &servers,
            &url,
            &dir.path().join(format!("killed-{attempt}.log")),
        );
        let start = Instant::now();
        let xid = loop {
            if let Some(xid) = group_commit_in_flight(&pool).await {
                break xid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no group commit was ever seen in flight"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        host.kill();
        // The server notices the dropped connection and rolls the transaction back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inbox WHERE xmin::text = $1")
            .bind(&xid)
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows == 0 {
            killed_mid_commit = Some(xid);
            break;
        }
        // That commit finished before the signal landed: try again.
    }
    let done = counter(&db, "worker", "count").await;
    assert!(
        killed_mid_commit.is_some(),
        "the kill never landed inside a group commit"
    );
    assert!(done < N, "the kill came too late to prove anything ({done})");

    let _host = HostProcess::start(&config, &servers, &url, &dir.path().join("restarted.log"));
    wait_for(&db, "worker", "count", N, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for any duplicate
    assert_exactly_once(&db, N).await;
    let (largest,): (i64,) =
        sqlx::query_as("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM inbox GROUP BY xmin::text) AS commits")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(largest > 1, "every event committed alone: no group commit happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_partitions_and_one_leaving_loses_nothing() {
    let Some(servers) = real_brokers() else { return };
    let Some((db, url)) = crate::common::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, STREAM);
    let brokers = brokers_for(true, &routing).await.unwrap();
    let config = dir.path().join("topics.toml");
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut first = HostProcess::start(&config, &servers, &url, &first_log);
    let _second = HostProcess::start(&config, &servers, &url, &second_log);
    // Both join the group and each is given a share of the four partitions.
    let start = Instant::now();
    // The partitions a host was last given, from its "partitions assigned" log lines.
    let share = |log: &Path| -> Option<Vec<i32>> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let line = text.lines().rev().find(|l| l.contains("partitions assigned"))?;
        let list = line.split("partitions=[").nth(1)?.split(']').next()?;
        Some(list.split(',').filter_map(|p| p.trim().parse().ok()).collect())
    };
    // The outbox shards a host last relayed, from its "relays outbox shards" log lines.
    // Waited for too: the first host to start holds every shard and hands half over at
    // its next rebalance (every second); rows it relayed before that would show a shard
    // as relayed by both hosts (seen once in a local run).
    let shards = |log: &Path| -> Option<Vec<i16>> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let line = text.lines().rev().find(|l| l.contains("relays outbox shards"))?;
        let list = line.split("shards=").nth(1)?.split('[').nth(1)?.split(']').next()?;
        Some(list.split(',').filter_map(|s| s.trim().parse().ok()).collect())
    };
    loop {
        let (a, b) = (share(&first_log), share(&second_log));
        let (sa, sb) = (shards(&first_log), shards(&second_log));
        if let (Some(a), Some(b), Some(sa), Some(sb)) = (&a, &b, &sa, &sb) {
            let mut all: Vec<i32> = a.iter().chain(b).copied().collect();
            all.sort();
            let mut all_shards: Vec<i16> = sa.iter().chain(sb).copied().collect();
            all_shards.sort();
            let every_shard: Vec<i16> = (0..switchyard::store::RELAY_SHARDS).collect();
            if !a.is_empty()
                && !b.is_empty()
                && all == [0, 1, 2, 3]
                && !sa.is_empty()
                && !sb.is_empty()
                && all_shards == every_shard
            {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "hosts did not split the partitions and outbox shards: {a:?} {b:?}, shards {sa:?} {sb:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const N: i64 = 400;
    send_stream(&brokers, &p, N as usize).await;
    // Both hosts took partitions: each handles part of the stream. Polled, not read once
    // at a count: on a loaded machine one host can finish a hundred events of its own
    // partitions before the other's first fetch returns (seen in CI: 0 and 101).
    let first_share = share(&first_log).unwrap();
    let start = Instant::now();
    loop {
        let (in_first, in_second): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE partition = ANY($1)), COUNT(*) FILTER (WHERE NOT partition = ANY($1)) FROM inbox",
        )
        .bind(&first_share)
        .fetch_one(db.postgres_pool().unwrap())
        .await
        .unwrap();
        if in_first > 0 && in_second > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "one host handled nothing: first {in_first}, second {in_second}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both hosts relay the outbox, each its own shards: every shard's rows so far were
    // sent by one host, and both hosts sent some.
    let relayed = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i16, String)>(
            "SELECT DISTINCT shard, relayed_by FROM outbox WHERE relayed_by IS NOT NULL ORDER BY shard",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let start = Instant::now();
    let shares = loop {
        let shares = relayed(db.postgres_pool().unwrap().clone()).await;
        let hosts: std::collections::BTreeSet<&String> = shares.iter().map(|(_, by)| by).collect();
        if hosts.len() == 2 {
            break shares;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "one host relayed everything: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut shards: Vec<i16> = shares.iter().map(|(shard, _)| *shard).collect();
    shards.dedup();
    assert_eq!(
        shards.len(),
        shares.len(),
        "a shard was relayed by both hosts: {shares:?}"
    );
    first.terminate(); // leaves the group; the other host takes its partitions over
    wait_for(&db, "worker", "count", N, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&db, N).await;
    let partitions: Vec<(i32,)> = sqlx::query_as("SELECT DISTINCT partition FROM inbox ORDER BY partition")
        .fetch_all(db.postgres_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(partitions.len(), 4, "every partition was consumed");
}

/// Two hosts on one PostgreSQL database both run the timer pump: each pending timer
/// fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_pending_timers_fire_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, TIMERS);
    let brokers = brokers_for(true, &routing).await.unwrap();
    let (db, _url) = crate::common::postgres_database().await.unwrap();
    const N: i64 = 200;
    let fired = serde_json::to_vec(&json!({"steps": [increment("fired")]})).unwrap();
    let mut tx = db.begin().await.unwrap();
    for i in 0..N {
        let message = switchyard::store::OutboundMessage {
            topic: format!("{p}.later"),
            key: Some(format!("k{i}").into_bytes()),
            payload: fired.clone(),
            headers: vec![(switchyard::protocol::names::EVENT_ID.to_string(), format!("timer-{i}"))],
        };
        tx.insert_timer(
            &format!("timer-{i}"),
            "sched",
            switchyard::store::now_ms() + 500,
            &message,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let hosts = async {
        tokio::join!(
            serve(&routing, db.clone(), &brokers, shutdown.clone()),
            serve(&routing, db.clone(), &brokers, shutdown.clone()),
        )
    };
    let check = async {
        wait_for(&db, "counter", "fired", N, Duration::from_secs(90)).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // room for a double firing
        stop.send(true).unwrap();
    };
    let ((a, b), ()) = tokio::join!(hosts, check);
    a.unwrap();
    b.unwrap();
    assert_eq!(counter(&db, "counter", "fired").await, N);
    assert_eq!(db.count(Table::Timers).await.unwrap(), 0);
    assert_eq!(db.count(Table::Outbox).await.unwrap(), N, "one outbox row per timer");
}
