//! `cargo xtask new NAME --topics a,b [--publishes x,y] [--print]`: a new handler crate
//! under `handlers/NAME` (a thin `lib.rs` routing with the SDK's `Router`, decisions in
//! `logic.rs`, native tests of both) and its `topics.toml` stanza (missing topics, the
//! component, one route per topic), appended to `topics.toml` unless `--print`. After
//! `cargo xtask handlers NAME` it passes `switchyard check` as generated.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// What to scaffold, parsed from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaffold {
    pub name: String,
    pub topics: Vec<String>,
    pub publishes: Vec<String>,
    /// Print the stanza only; leave topics.toml alone.
    pub print_only: bool,
}

const USAGE: &str = "usage: cargo xtask new NAME --topics TOPIC[,TOPIC...] [--publishes TOPIC,...] [--print]";

/// Crate names a handler cannot take: the workspace's own crates and Rust's.
const TAKEN: &[&str] = &[
    "switchyard",
    "switchyard-sdk",
    "xtask",
    "sdk",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
];

impl Scaffold {
    pub fn parse(args: &[String]) -> Result<Scaffold> {
        let mut name = None;
        let mut topics = Vec::new();
        let mut publishes = Vec::new();
        let mut print_only = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--topics" => topics = list(it.next(), "--topics")?,
                "--publishes" => publishes = list(it.next(), "--publishes")?,
                "--print" => print_only = true,
                flag if flag.starts_with('-') => bail!("unknown option {flag:?}\n{USAGE}"),
                positional if name.is_none() => name = Some(positional.to_string()),
                extra => bail!("unexpected argument {extra:?}: give one NAME\n{USAGE}"),
            }
        }
        let name = name.with_context(|| format!("the handler needs a NAME\n{USAGE}"))?;
        check_component_name(&name)?;
        if topics.is_empty() {
            bail!("--topics is required: the topics the handler consumes, e.g. --topics orders.status\n{USAGE}");
        }
        for topic in topics.iter().chain(&publishes) {
            check_topic_name(topic)?;
        }
        Ok(Scaffold {
            name,
            topics,
            publishes,
            print_only,
        })
    }
}

fn list(value: Option<&String>, flag: &str) -> Result<Vec<String>> {
    let value = value.with_context(|| format!("{flag} needs a comma-separated list of topics\n{USAGE}"))?;
    let mut seen = BTreeSet::new();
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && seen.insert(t.to_string()))
        .map(String::from)
        .collect())
}

/// The rules of topics.toml's component names (host/src/config/names.rs), checked here so
/// the crate is never created under a name `switchyard check` would refuse.
fn check_component_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !rest_ok || name.len() > 63 || name.ends_with('-') {
        bail!(
            "invalid handler name {name:?}: use a lowercase letter followed by up to 62 lowercase letters, digits or '-' (not ending in '-'); it becomes the crate, the component and its storage namespace"
        );
    }
    if TAKEN.contains(&name) {
        bail!("handler name {name:?} is taken by a crate of the workspace or of Rust; pick another");
    }
    Ok(())
}

/// Kafka's topic name rules, as topics.toml checks them.
fn check_topic_name(topic: &str) -> Result<()> {
    let valid_chars = topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if topic.len() > 249 || !valid_chars || topic == "." || topic == ".." {
        bail!("invalid topic name {topic:?}: use 1 to 249 characters of letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Creates the crate and appends (or prints) the stanza; returns the stanza.
pub fn run(root: &Path, scaffold: &Scaffold) -> Result<String> {
    let dir = root.join("handlers").join(&scaffold.name);
    if dir.exists() {
        bail!("{} exists already: pick another name or remove it first", dir.display());
    }
    let config_path = root.join("topics.toml");
    let config_text =
        std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: toml::Table = toml::from_str(&config_text).with_context(|| {
        format!(
            "{} is not valid TOML; fix it before adding a handler",
            config_path.display()
        )
    })?;
    if config.get("components").and_then(|c| c.get(&scaffold.name)).is_some() {
        bail!(
            "{} already declares [components.{}]: pick another name",
            config_path.display(),
            scaffold.name
        );
    }
    let declared: BTreeSet<String> = config
        .get("topics")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let stanza = stanza(scaffold, &declared);

    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [
        ("Cargo.toml", cargo_toml(scaffold)),
        ("src/lib.rs", lib_rs(scaffold)),
        ("src/logic.rs", logic_rs(scaffold)),
        ("src/glue_tests.rs", glue_tests_rs(scaffold)),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // Lay the code out as `cargo fmt` would (line breaks depend on the names given), so
    // the new crate passes `just lint` as generated. Without rustfmt it stays as written.
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(dir.join("src/lib.rs"))
        .current_dir(root)
        .status();
    if !scaffold.print_only {
        let mut text = config_text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&stanza);
        std::fs::write(&config_path, text).with_context(|| format!("writing {}", config_path.display()))?;
    }
    Ok(stanza)
}

/// The topics.toml lines for the handler: topics not declared yet, the component, and
/// one route per consumed topic.
pub fn stanza(s: &Scaffold, declared: &BTreeSet<String>) -> String {
    let mut out = format!("\n# ---- {} (created by `cargo xtask new`) ----\n", s.name);
    let mut added = BTreeSet::new();
    for topic in s.topics.iter().chain(&s.publishes) {
        if !declared.contains(topic) && added.insert(topic) {
            out.push_str(&format!("[topics.\"{topic}\"]\npartitions = 1\n"));
        }
    }
    let publishes: Vec<String> = s.publishes.iter().map(|t| format!("\"{t}\"")).collect();
    out.push_str(&format!(
        "[components.{name}]\nartifact = \"target/components/{name}.wasm\"\npublishes = [{}]\n",
        publishes.join(", "),
        name = s.name
    ));
    for topic in &s.topics {
        out.push_str(&format!(
            "\n[[routes]]\ntopic = \"{topic}\"\ncomponent = \"{}\"\n",
            s.name
        ));
    }
    out
}

/// A Rust constant name for a topic: `orders.status` → `ORDERS_STATUS`.
fn const_name(topic: &str) -> String {
    let mut name: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "TOPIC_");
    }
    name
}

/// Constants for the consumed topics, made unique (`a.b` and `a-b` both map to `A_B`).
fn topic_consts(s: &Scaffold) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    s.topics
        .iter()
        .map(|topic| {
            let base = const_name(topic);
            let mut name = base.clone();
            let mut n = 2;
            while !seen.insert(name.clone()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            (name, topic.clone())
        })
        .collect()
}

fn cargo_toml(s: &Scaffold) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "The {name} component: handles {topics}."
edition.workspace = true
version.workspace = true
license.workspace = true
rust-version.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
serde.workspace = true
serde_json.workspace = true
switchyard-sdk = {{ path = "../sdk" }}
"#,
        name = s.name,
        topics = s.topics.join(", ")
    )
}

fn lib_rs(s: &Scaffold) -> String {
    let consts = topic_consts(s);
    let const_lines: String = consts
        .iter()
        .map(|(name, topic)| format!("    pub const {name}: &str = \"{topic}\";\n"))
        .collect();
    let routes: String = consts
        .iter()
        .map(|(name, _)| format!("            .on(topics::{name}, on_event)\n"))
        .collect();
    format!(
        r#"//! The `{name}` component: wasm glue around [`logic`], which holds the decisions and
//! is tested natively (`cargo test -p {name}`), as is this glue (`glue_tests.rs`, on the
//! SDK's in-memory host). Build the component with `cargo xtask handlers {name}`; its
//! routes are in topics.toml.

pub mod logic;

use serde_json::Value;
use switchyard_sdk::{{Event, HandleError, Handler, Router, storage}};

use logic::Decision;

/// The topics this component consumes (one `[[routes]]` entry each in topics.toml).
pub mod topics {{
{const_lines}}}

struct Component;

impl Handler for Component {{
    fn handle(event: Event) -> Result<(), HandleError> {{
        // Each topic's payload is decoded into the type its function takes.
        Router::new("{name}", &event)
{routes}            .finish()
    }}
}}

fn on_event(payload: Value, event: &Event) -> Result<(), HandleError> {{
    match logic::decide(&event.topic, &payload) {{
        Decision::Count {{ key }} => {{
            let seen = storage::increment(&key, 1)?;
            switchyard_sdk::info!("event counted", topic = event.topic, seen = seen);
            Ok(())
        }}
        Decision::Refuse(why) => Err(HandleError::fatal(why)),
    }}
}}

switchyard_sdk::export_handler!(Component);

#[cfg(test)]
mod glue_tests;
"#,
        name = s.name,
    )
}

fn glue_tests_rs(s: &Scaffold) -> String {
    let first = &s.topics[0];
    format!(
        r#"//! The glue of lib.rs on the SDK's in-memory host, natively.

use serde_json::json;
use switchyard_sdk::HandleError;
use switchyard_sdk::testing::{{TestHost, event}};

use super::Component;

#[test]
fn events_are_counted_in_storage() {{
    let mut host = TestHost::new();
    host.deliver::<Component>(event("{first}", &json!({{"id": 1}})))
        .unwrap();
    host.deliver::<Component>(event("{first}", &json!({{"id": 2}})))
        .unwrap();
    assert_eq!(host.get_json::<i64>("seen/{first}"), Some(2));
}}

#[test]
fn a_refused_event_leaves_nothing() {{
    let mut host = TestHost::new();
    let result = host.deliver::<Component>(event("{first}", &json!(3)));
    assert!(matches!(result, Err(HandleError::Fatal(_))), "{{result:?}}");
    assert!(host.state.storage.is_empty());
}}
"#
    )
}

fn logic_rs(s: &Scaffold) -> String {
    let first = &s.topics[0];
    format!(
        r#"//! Decisions of the `{name}` component as pure functions: (topic, payload) in, what
//! to do out. No host calls here, so all of it is tested natively. Replace the example
//! decision (count events per topic) with the handler's own.

use serde_json::Value;

/// What one event does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {{
    /// Add one to the counter under `key`.
    Count {{ key: String }},
    /// The event can never be handled: it goes to the dead-letter topic.
    Refuse(String),
}}

/// Storage key of the counter of `topic`.
pub fn counter_key(topic: &str) -> String {{
    format!("seen/{{topic}}")
}}

/// Decides what an event of `topic` with JSON `payload` does.
pub fn decide(topic: &str, payload: &Value) -> Decision {{
    if !payload.is_object() {{
        return Decision::Refuse(format!("payload on {{topic}} must be a JSON object, got {{payload}}"));
    }}
    Decision::Count {{
        key: counter_key(topic),
    }}
}}

#[cfg(test)]
mod tests {{
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_events_per_topic() {{
        assert_eq!(
            decide("{first}", &json!({{"id": 1}})),
            Decision::Count {{
                key: "seen/{first}".into()
            }}
        );
    }}

    #[test]
    fn refuses_payloads_that_are_not_objects() {{
        assert!(matches!(decide("{first}", &json!(3)), Decision::Refuse(_)));
    }}
}}
"#,
        name = s.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_names_and_topic_lists() {
        let s = Scaffold::parse(&args(
            "audit --topics orders.status,users.registered --publishes audit.log",
        ))
        .unwrap();
        assert_eq!(s.name, "audit");
        assert_eq!(s.topics, ["orders.status", "users.registered"]);
        assert_eq!(s.publishes, ["audit.log"]);
        assert!(!s.print_only);
    }

    #[test]
    fn refuses_bad_input_with_the_fix() {
        for (line, needle) in [
            ("Audit --topics a", "invalid handler name"),
            ("audit", "--topics is required"),
            ("audit --topics", "comma-separated"),
            ("audit --topics a/b", "invalid topic name"),
            ("xtask --topics a", "taken"),
            ("audit --topics a --frobnicate", "unknown option"),
        ] {
            let err = Scaffold::parse(&args(line)).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }

    #[test]
    fn stanza_declares_only_missing_topics_and_one_route_each() {
        let s = Scaffold::parse(&args("audit --topics orders.status,audit.in --publishes audit.out")).unwrap();
        let declared = BTreeSet::from(["orders.status".to_string()]);
        let text = stanza(&s, &declared);
        assert!(!text.contains("[topics.\"orders.status\"]"), "{text}");
        assert!(
            text.contains("[topics.\"audit.in\"]") && text.contains("[topics.\"audit.out\"]"),
            "{text}"
        );
        assert_eq!(text.matches("[[routes]]").count(), 2);
        assert!(text.contains("publishes = [\"audit.out\"]"));
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["components"]["audit"]["artifact"].as_str(),
            Some("target/components/audit.wasm")
        );
    }

    #[test]
    fn print_only_creates_the_crate_and_leaves_topics_toml_alone() {
        let root = std::env::temp_dir().join(format!("xtask-new-{}", std::process::id()));
        std::fs::create_dir_all(root.join("handlers")).unwrap();
        let original = "[topics.\"a\"]\npartitions = 1\n";
        std::fs::write(root.join("topics.toml"), original).unwrap();
        let s = Scaffold::parse(&args("audit --topics a --print")).unwrap();
        let stanza = run(&root, &s).unwrap();
        assert!(stanza.contains("[components.audit]"));
        assert_eq!(std::fs::read_to_string(root.join("topics.toml")).unwrap(), original);
        for file in ["Cargo.toml", "src/lib.rs", "src/logic.rs", "src/glue_tests.rs"] {
            assert!(root.join("handlers/audit").join(file).exists(), "{file}");
        }
        // A second run refuses rather than overwrite.
        assert!(run(&root, &s).unwrap_err().to_string().contains("exists already"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn topic_constants_are_valid_and_unique() {
        let s = Scaffold::parse(&args("audit --topics a.b,a-b,9lives")).unwrap();
        let names: Vec<String> = topic_consts(&s).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["A_B", "A_B_2", "TOPIC_9LIVES"]);
    }
}
