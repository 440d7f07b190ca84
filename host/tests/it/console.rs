//! The web console in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver with fantoccini), against a running host on both stacks: log in
//! with the admin token, see routes and components, watch lag rise on a paused route and
//! fall after it resumes, replay a dead letter after fixing what failed it, and look up
//! request timelines. `switchyard trace` prints the same timeline. Screenshots of every
//! section go to `target/test-artifacts/console/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use switchyard::admin::client::AdminClient;
use switchyard::kafka::admin;
use switchyard::runtime::version_of;
use switchyard::service::{self, Options};
use switchyard::store::Db;
use tokio::sync::watch;

use crate::common::{Backend, artifact, test_db, workspace};
use crate::kafka::{brokers_for, counter, prefix, producer, routing, wait_for};

const TOKEN: &str = "console-test-token";
const WAIT: Duration = Duration::from_secs(60);

const ROUTING: &str = r#"
[topics."{p}.in"]
partitions = 1
[topics."{p}.next"]
partitions = 1
[components.first]
artifact = "{probe}"
publishes = ["{p}.next"]
config = { {config} }
[components.second]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "first"
group = "{p}-first"
dead-letter = "{p}.in.dead"
retry = { attempts = 1, initial-backoff-ms = 20, max-backoff-ms = 50 }
[[routes]]
topic = "{p}.next"
component = "second"
group = "{p}-second"
"#;

/// chromedriver on a free loopback port, and one headless Chromium session on it. The
/// session is closed by [`Browser::close`]; dropping kills the driver (and its browser).
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    stack: &'static str,
}

impl Browser {
    async fn start(stack: &'static str) -> Browser {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{tool} is not installed: run scripts/bootstrap.sh (apt packages chromium and chromium-driver)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1400", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "chromedriver at {url}: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let shots = workspace().join("target/test-artifacts/console");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            client,
            _profile: profile,
            shots,
            stack,
        }
    }

    /// A screenshot with section `id` scrolled to the top of the window.
    async fn screenshot_of(&self, id: &str, name: &str) {
        let script = "document.getElementById(arguments[0]).scrollIntoView()";
        self.client.execute(script, vec![json!(id)]).await.unwrap();
        self.screenshot(name).await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{}-{name}.png", self.stack)), png).unwrap();
    }

    /// The text of the first element at `css`, once `ready` accepts it.
    async fn text_when(&self, css: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if ready(&text) {
                    return text;
                }
                last = text;
            }
            if start.elapsed() > WAIT {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                panic!("timed out waiting for {what} at {css}; it shows {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The cells of each row of the table body at `css`, once there are `rows` rows.
    async fn rows_when(&self, css: &str, rows: usize) -> Vec<Vec<String>> {
        let start = Instant::now();
        loop {
            // A refresh may replace the rows while they are read: then read them again.
            let found = self.rows(css).await;
            if let Ok(found) = &found
                && found.len() == rows
            {
                return found.clone();
            }
            if start.elapsed() > WAIT {
                self.screenshot("timeout-rows").await;
                panic!("timed out waiting for {rows} rows in {css}; it shows {found:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn rows(&self, css: &str) -> Result<Vec<Vec<String>>, fantoccini::error::CmdError> {
        let mut out = Vec::new();
        for row in self.client.find_all(Locator::Css(&format!("{css} tbody tr"))).await? {
            let mut cells = Vec::new();
            for cell in row.find_all(Locator::Css("td")).await? {
                cells.push(cell.text().await?);
            }
            out.push(cells);
        }
        Ok(out)
    }

    /// Whether the element at `css` is enabled, asked again if a refresh replaced it.
    async fn enabled(&self, css: &str) -> bool {
        let start = Instant::now();
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.is_enabled().await {
                    Ok(enabled) => return enabled,
                    Err(err) if start.elapsed() > WAIT => panic!("{css}: {err}"),
                    Err(_) => {}
                },
                Err(err) if start.elapsed() > WAIT => panic!("{css}: {err}"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element at `css`, found again if a refresh replaced it.
    async fn click(&self, css: &str) {
        let start = Instant::now();
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await.map(|_| ()),
                Err(err) => Err(err),
            };
            match clicked {
                Ok(()) => return,
                Err(err) if start.elapsed() > WAIT => panic!("clicking {css}: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn close(mut self) {
        _ = self.client.clone().close().await;
        _ = self.driver.kill();
        _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        _ = self.driver.kill();
    }
}

/// Markup in a header: the console must show it as text.
const MARKUP: &str = "<img id=injected src=x>";

async fn send(producer: &FutureProducer, topic: &str, request_id: &str, plan: &serde_json::Value) {
    let body = serde_json::to_vec(plan).unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "switchyard-request-id",
            value: Some(request_id.as_bytes()),
        })
        .insert(Header {
            key: "x-note",
            value: Some(MARKUP.as_bytes()),
        });
    producer
        .send(
            FutureRecord::to(topic).key("k").payload(&body).headers(headers),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// `switchyard trace` against the host's admin API: (success, stdout, stderr).
fn trace(admin_url: &str, request_id: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--admin-url", admin_url, "--admin-token", TOKEN, "trace", request_id])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn console_shows_lag_dead_letters_and_timelines(real: bool, backend: Backend) {
    let stack = if real { "real" } else { "embedded" };
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let broken = routing(dir.path(), &p, &ROUTING.replace("{config}", ""));
    let brokers = brokers_for(real, &broken).await.unwrap();
    let db = test_db(backend).await.unwrap();
    let db: &Db = &db.db;
    let (stop, shutdown) = watch::channel(false);
    let options = Options {
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        admin_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let host = service::start(&broken, db.clone(), &brokers, options, shutdown)
        .await
        .unwrap();
    let admin_url = format!("http://{}", host.admin_addr.unwrap());
    let admin_api = AdminClient::new(&admin_url, Some(TOKEN.into()));
    let running = tokio::spawn(host.run());
    let version = version_of(&std::fs::read(artifact("probe")).unwrap());

    // Request A runs through both components; request B fails fatally in `first` (its
    // setting is missing) and is dead-lettered.
    let (input, next, dead) = (format!("{p}.in"), format!("{p}.next"), format!("{p}.in.dead"));
    let (request_a, request_b) = (format!("{p}-order-a"), format!("{p}-order-b"));
    let base = brokers.client_config();
    let producer = producer(&base);
    let downstream = json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]}).to_string();
    send(
        &producer,
        &input,
        &request_a,
        &json!({"steps": [
            {"op": "increment", "key": "count", "delta": 1},
            {"op": "publish", "topic": next, "key": "k", "payload": downstream}
        ]}),
    )
    .await;
    send(
        &producer,
        &input,
        &request_b,
        &json!({"steps": [{"op": "require-config", "name": "fixed"}, {"op": "increment", "key": "fixed", "delta": 1}]}),
    )
    .await;
    wait_for(db, "second", "count", 1, WAIT).await;
    let start = Instant::now();
    while admin::list_dead_letters(&base, std::slice::from_ref(&dead), db.signer(), admin::Reading::All)
        .unwrap()
        .letters
        .is_empty()
    {
        assert!(start.elapsed() < WAIT, "no dead letter in {dead}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A dead letter no host signed (its headers could say anything): shown, never replayed.
    let forged = OwnedHeaders::new()
        .insert(Header {
            key: "switchyard-dlq-component",
            value: Some(&b"first"[..]),
        })
        .insert(Header {
            key: "switchyard-dlq-topic",
            value: Some(input.as_bytes()),
        })
        .insert(Header {
            key: "switchyard-dlq-reason",
            value: Some(&b"forged"[..]),
        });
    producer
        .send(
            FutureRecord::to(&dead).key("k").payload("{}").headers(forged),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // The page and its assets need no token; the API does, and bad input gets a problem.
    let http = reqwest::Client::new();
    let page = http.get(format!("{admin_url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Switchyard console"));
    let unauthorized = http.get(format!("{admin_url}/api/lag")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    for (path, status) in [
        ("/api/throughput?interval_ms=5", 400),
        ("/api/throughput?buckets=100000", 400),
        ("/api/timeline", 400),
        ("/api/dead-letters?topic=nope", 404),
        ("POST /api/dead-letters/replay 1", 422),
        ("POST /api/dead-letters/replay 9", 404),
    ] {
        let response = match path.strip_prefix("POST ") {
            Some(call) => {
                let (call, offset) = call.split_once(' ').unwrap();
                let body = json!({"topic": dead, "partition": 0, "offset": offset.parse::<i64>().unwrap()});
                http.post(format!("{admin_url}{call}")).json(&body)
            }
            None => http.get(format!("{admin_url}{path}")),
        }
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}: {problem}"
        );
        if status == 422 {
            assert!(problem["detail"].as_str().unwrap().contains("not signed"), "{problem}");
        }
    }

    let browser = Browser::start(stack).await;
    let scenario = async {
        let b = &browser;
        b.client.goto(&format!("{admin_url}/")).await.unwrap();
        // A wrong token is refused with the API's reason; the right one opens the console.
        b.client
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys("wrong")
            .await
            .unwrap();
        b.client
            .find(Locator::Css("#login-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.text_when("#login-error", "the refusal", |t| t.contains("does not match"))
            .await;
        b.screenshot("login").await;
        b.client
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .clear()
            .await
            .unwrap();
        b.client
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(TOKEN)
            .await
            .unwrap();
        b.client
            .find(Locator::Css("#login-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();

        // Routes and components with the active version and its history.
        let route_first = format!("{p}.in -> first");
        let route_second = format!("{p}.next -> second");
        b.text_when(
            &format!("#routes-table tr[data-route='{route_first}'] td:nth-child(2)"),
            "route state",
            |t| t == "running",
        )
        .await;
        let shown = b
            .text_when(
                "#components-table tr[data-component='first'] td.version",
                "version",
                |t| !t.is_empty(),
            )
            .await;
        assert_eq!(shown, version[..12]);
        b.text_when(
            "#components-table tr[data-component='first'] ol.history",
            "history",
            |t| t.contains("start"),
        )
        .await;
        b.screenshot("routes").await;

        // Lag: both events of `first` committed; the sparkline counts the handled one.
        let first_lag = format!(".route-lag[data-route='{route_first}']");
        b.text_when(
            &format!("{first_lag} tr[data-partition='0'] td:nth-child(2)"),
            "committed offset",
            |t| t == "2",
        )
        .await;
        b.text_when(&format!("{first_lag} .handled-total"), "throughput", |t| {
            t.starts_with("1 handled")
        })
        .await;
        assert!(
            b.client
                .find(Locator::Css(&format!("{first_lag} svg.spark polyline.handled")))
                .await
                .is_ok()
        );
        // Lag rises while `second` is paused and falls after it resumes.
        admin_api.pause(&route_second).await.unwrap();
        let second_lag = format!(".route-lag[data-route='{route_second}'] tr[data-partition='0'] td.lag");
        b.text_when(
            &format!("#routes-table tr[data-route='{route_second}'] td:nth-child(2)"),
            "paused",
            |t| t == "paused",
        )
        .await;
        for _ in 0..3 {
            send(
                &producer,
                &next,
                &request_a,
                &json!({"steps": [{"op": "increment", "key": "late", "delta": 1}]}),
            )
            .await;
        }
        b.text_when(&second_lag, "lag while paused", |t| t == "3").await;
        b.screenshot_of("lag", "lag-paused").await;
        admin_api.resume(&route_second).await.unwrap();
        b.text_when(&second_lag, "lag after resume", |t| t == "0").await;
        wait_for(db, "second", "late", 3, WAIT).await;
        b.screenshot_of("lag", "lag").await;

        // The dead letter with payload, headers and reason.
        let letter = format!(".letter[data-letter='{dead}[0]@0']");
        b.client
            .find(Locator::Id("letters-refresh"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.text_when(&format!("{letter} td.kind"), "dead letter kind", |t| t == "fatal")
            .await;
        let reason = b
            .text_when(&format!("{letter} td.reason"), "reason", |t| !t.is_empty())
            .await;
        assert!(reason.contains("fixed"), "{reason}");
        b.text_when(&format!("{letter} pre.payload"), "payload", |t| {
            t.contains("require-config")
        })
        .await;
        b.text_when(&format!("{letter} pre.headers"), "headers", |t| {
            t.contains(&format!("switchyard-request-id: {request_b}"))
        })
        .await;
        b.text_when(&format!("{letter} td.request-id"), "request id", |t| t == request_b)
            .await;
        b.text_when(&format!("{letter} pre.headers"), "markup as text", |t| {
            t.contains(&format!("x-note: {MARKUP}"))
        })
        .await;
        assert!(
            b.client.find(Locator::Id("injected")).await.is_err(),
            "header markup became an element"
        );
        let unsigned = format!(".letter[data-letter='{dead}[0]@1']");
        b.text_when(&format!("{unsigned} td.signed"), "unsigned", |t| {
            t == "no (not replayable)"
        })
        .await;
        assert!(
            !b.enabled(&format!("{unsigned} button.replay")).await,
            "an unsigned dead letter offers no replay"
        );
        b.screenshot_of("dead-letters", "dead-letters").await;

        // Fixed (the setting arrives by a live routing edit), then replayed from the page.
        routing(dir.path(), &p, &ROUTING.replace("{config}", "fixed = \"yes\""));
        admin_api.reload().await.unwrap();
        b.click(&format!("{letter} button.replay")).await;
        b.text_when(&format!("{letter} .replay-outcome"), "replay outcome", |t| {
            t == format!("replayed to {input}[0] for first")
        })
        .await;
        // A refresh of the list draws new cards; the replay's outcome stays on its letter.
        b.click("#letters-refresh").await;
        b.text_when(
            &format!("{letter} .replay-outcome"),
            "replay outcome after a refresh",
            |t| t == format!("replayed to {input}[0] for first"),
        )
        .await;
        assert!(
            !b.enabled(&format!("{letter} button.replay")).await,
            "a replayed letter offers its replay again after a refresh"
        );
        wait_for(db, "first", "fixed", 1, WAIT).await;
        b.screenshot_of("dead-letters", "replayed").await;

        // Request B's timeline: dead-lettered, then handled by the replay.
        let request = b.client.find(Locator::Id("request-id")).await.unwrap();
        request.send_keys(&request_b).await.unwrap();
        b.client
            .find(Locator::Css("#timeline-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let rows = b.rows_when("#timeline-table", 2).await;
        assert_eq!(rows[0][3], "first");
        assert_eq!(rows[0][5], "dead-lettered");
        assert_eq!(rows[0][6], format!("{input}[0]@1"));
        assert_eq!(rows[1][3], "first");
        assert_eq!(rows[1][5], "committed", "the replayed dead letter was handled");
        assert_eq!(rows[1][6], format!("{input}[0]@2"));
        b.screenshot_of("timeline", "timeline-replayed").await;

        // Request A's timeline: `first`, then `second`, then the three late events, in order.
        request.clear().await.unwrap();
        request.send_keys(&request_a).await.unwrap();
        b.client
            .find(Locator::Css("#timeline-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let rows = b.rows_when("#timeline-table", 5).await;
        let components: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
        assert_eq!(components, ["first", "second", "second", "second", "second"]);
        let positions: Vec<&str> = rows.iter().map(|r| r[6].as_str()).collect();
        let next_at = |o: i32| format!("{next}[0]@{o}");
        assert_eq!(
            positions,
            [format!("{input}[0]@0"), next_at(0), next_at(1), next_at(2), next_at(3)]
        );
        for row in &rows {
            assert_eq!(row[4], version[..12], "{row:?}");
            assert_eq!(row[5], "committed", "{row:?}");
        }
        let offsets: Vec<i64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "in handled order: {offsets:?}"
        );
        b.text_when("#timeline-status", "timeline count", |t| t.starts_with("5 event(s)"))
            .await;
        b.screenshot_of("timeline", "timeline").await;

        // An unknown request says so.
        request.clear().await.unwrap();
        request.send_keys("no-such-request").await.unwrap();
        b.client
            .find(Locator::Css("#timeline-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.text_when("#timeline-status", "not found", |t| {
            t.contains("no handled event carries")
        })
        .await;
    };
    let outcome = std::panic::AssertUnwindSafe(scenario).catch_unwind().await;
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // The terminal prints the same timeline.
    let (ok, out, err) = trace(&admin_url, &request_a);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(&format!("{p}."))).collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].contains("first") && lines[0].contains(&format!("{input}[0]@0")),
        "{out}"
    );
    assert!(
        lines[1].contains("second") && lines[1].contains(&format!("{next}[0]@0")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("committed") && l.contains(&version[..12])),
        "{out}"
    );
    assert!(out.contains("5 event(s)"), "{out}");
    let (ok, out, err) = trace(&admin_url, &request_b);
    assert!(ok, "{err}");
    assert!(out.contains("dead-lettered") && out.contains("2 event(s)"), "{out}");
    let (ok, _, err) = trace(&admin_url, "no-such-request");
    assert!(!ok);
    assert!(
        err.contains("no handled event carries request id \"no-such-request\""),
        "{err}"
    );

    // Reading lag (every 2 s while the page was open) never joined a route's group.
    let status = admin_api.status().await.unwrap();
    let first = status.routes.iter().find(|r| r.component == "first").unwrap();
    assert_eq!(first.assignments, 1, "reading lag rebalanced the route: {first:?}");

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(counter(db, "first", "fixed").await, 1, "replayed once");
}

on_both_stacks!(console_shows_lag_dead_letters_and_timelines);
