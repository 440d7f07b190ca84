//! `topics.toml`: topics, components and routes, parsed strictly and resolved into a
//! fixed [`Routing`] table before anything starts. Every error names the file, line and
//! column of the fault and says how to fix it. docs/topics.md documents the format.

mod names;
mod reach;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use names::{ComponentName, TopicName};
pub use reach::{HttpPrefix, Reach, SmtpRelay, default_delivery_retry, env_key};

/// A config problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source} (pass the routing file with --config)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A position in topics.toml, kept so that later checks (loading an artifact) can
/// point at the line that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    topics: BTreeMap<Spanned<String>, RawTopic>,
    #[serde(default)]
    components: BTreeMap<Spanned<String>, RawComponent>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTopic {
    #[serde(default = "default_partitions")]
    partitions: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawComponent {
    artifact: Spanned<String>,
    #[serde(default)]
    publishes: Vec<Spanned<TopicName>>,
    #[serde(default)]
    config: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    limits: RawLimits,
    /// Where outbound effects may go (`reach.rs`).
    #[serde(default)]
    reach: RawReach,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReach {
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    smtp: Vec<Spanned<String>>,
    #[serde(default)]
    retry: RawRetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    memory_mib: Option<Spanned<i64>>,
    deadline_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoute {
    topic: Spanned<TopicName>,
    component: Spanned<ComponentName>,
    group: Option<Spanned<String>>,
    dead_letter: Option<Spanned<TopicName>>,
    #[serde(default)]
    retry: RawRetry,
    concurrency: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRetry {
    attempts: Option<Spanned<i64>>,
    initial_backoff_ms: Option<Spanned<i64>>,
    max_backoff_ms: Option<Spanned<i64>>,
}

fn default_partitions() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}

// ---- the resolved table --------------------------------------------------------------

/// The validated routing table the host runs.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub topics: BTreeMap<TopicName, TopicSpec>,
    pub components: BTreeMap<ComponentName, ComponentSpec>,
    pub routes: Vec<Route>,
}

/// A declared topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: TopicName,
    /// Partition count `topics sync` creates it with.
    pub partitions: u32,
}

/// A component and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub name: ComponentName,
    /// Path of the Wasm component, resolved against the routing file's folder.
    pub artifact: PathBuf,
    /// Where `artifact` was written, so load errors can point at it.
    pub artifact_at: Location,
    /// Topics the component may publish to and schedule timers on.
    pub publishes: BTreeSet<TopicName>,
    /// Where its outbound effects may go, and their retries.
    pub reach: Reach,
    /// The component's own settings, served by the `config` import.
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
}

/// Per-invocation bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Linear memory cap of one instance.
    pub memory_bytes: u64,
    /// Wall-clock budget of one `handle` call, host calls included.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_millis(1000),
        }
    }
}

/// One subscription: events of `topic` go to `component`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub topic: TopicName,
    pub component: ComponentName,
    /// Kafka consumer group; hosts sharing it split the partitions.
    pub group: String,
    /// Where events go that cannot be handled.
    pub dead_letter: TopicName,
    pub retry: RetryPolicy,
    /// How many partitions of this route may be handled at once.
    pub concurrency: usize,
}

/// Exponential backoff for retryable failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total tries, the first included; 1 means no retry.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before try number `attempt + 1` (attempt counts from 1): doubles each
    /// time from the initial backoff, capped at the max.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

impl Routing {
    /// Reads and resolves a routing file.
    pub fn load(path: &Path) -> Result<Routing, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Routing::parse(path, &text)
    }

    /// Resolves routing text; `path` names it in messages and anchors relative artifacts.
    pub fn parse(path: &Path, text: &str) -> Result<Routing, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|err| {
            let message = err.message().trim().to_string();
            at(err.span().unwrap_or(0..0), message)
        })?;
        let base = path.parent().unwrap_or(Path::new("."));

        let mut topics = BTreeMap::new();
        for (name, topic) in raw.topics {
            let span = name.span();
            let name = TopicName::try_from(name.into_inner()).map_err(|m| at(span, m))?;
            let partitions =
                range_check(&topic.partitions, 1, 10_000, "partitions").map_err(|m| at(topic.partitions.span(), m))?;
            topics.insert(
                name.clone(),
                TopicSpec {
                    name,
                    partitions: partitions as u32,
                },
            );
        }
        let declared = |topic: &Spanned<TopicName>, what: &str| {
            if topics.contains_key(topic.get_ref()) {
                Ok(())
            } else {
                Err(at(
                    topic.span(),
                    format!(
                        "{what} topic \"{}\" is not declared; add [topics.\"{}\"] or fix the name (declared: {})",
                        topic.get_ref(),
                        topic.get_ref(),
                        list(topics.keys())
                    ),
                ))
            }
        };

        let mut components = BTreeMap::new();
        for (name, raw_component) in raw.components {
            let span = name.span();
            let name = ComponentName::try_from(name.into_inner()).map_err(|m| at(span, m))?;
            let artifact_text = raw_component.artifact.get_ref();
            if artifact_text.trim().is_empty() {
                return Err(at(
                    raw_component.artifact.span(),
                    "artifact is empty: give the path of the component's .wasm file".into(),
                ));
            }
            let (line, column) = line_column(text, raw_component.artifact.span().start);
            let mut publishes = BTreeSet::new();
            for topic in &raw_component.publishes {
                declared(topic, "published")?;
                publishes.insert(topic.get_ref().clone());
            }
            let mut config = BTreeMap::new();
            for (key, value) in raw_component.config {
                let text_value = match value.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(at(
                            value.span(),
                            format!(
                                "config value of \"{key}\" must be a string, number or boolean, not {}",
                                other.type_str()
                            ),
                        ));
                    }
                };
                config.insert(key, text_value);
            }
            let mut limits = Limits::default();
            if let Some(mib) = &raw_component.limits.memory_mib {
                limits.memory_bytes =
                    (range_check(mib, 1, 4096, "memory-mib").map_err(|m| at(mib.span(), m))? as u64) << 20;
            }
            if let Some(ms) = &raw_component.limits.deadline_ms {
                limits.deadline = Duration::from_millis(
                    range_check(ms, 1, 600_000, "deadline-ms").map_err(|m| at(ms.span(), m))? as u64,
                );
            }
            // Entries are checked here rather than by serde so errors point at the entry.
            let mut http = Vec::new();
            for entry in &raw_component.reach.http {
                http.push(HttpPrefix::try_from(entry.get_ref().clone()).map_err(|m| at(entry.span(), m))?);
            }
            let mut smtp = Vec::new();
            for entry in &raw_component.reach.smtp {
                smtp.push(SmtpRelay::try_from(entry.get_ref().clone()).map_err(|m| at(entry.span(), m))?);
            }
            let reach = Reach {
                http,
                smtp,
                retry: resolve_retry(&raw_component.reach.retry, default_delivery_retry(), &at)?,
            };
            components.insert(
                name.clone(),
                ComponentSpec {
                    name,
                    artifact: base.join(artifact_text),
                    artifact_at: Location {
                        path: path.to_path_buf(),
                        line,
                        column,
                    },
                    publishes,
                    reach,
                    config,
                    limits,
                },
            );
        }

        let mut routes: Vec<Route> = Vec::new();
        // Where each route's dead-letter topic and group were given, for errors that
        // compare routes.
        let mut dead_letter_spans = Vec::new();
        for raw_route in raw.routes {
            let route_span = raw_route.span();
            let raw_route = raw_route.into_inner();
            declared(&raw_route.topic, "routed")?;
            let component = raw_route.component.get_ref().clone();
            if !components.contains_key(&component) {
                return Err(at(
                    raw_route.component.span(),
                    format!(
                        "component \"{component}\" is not declared; add [components.{component}] or fix the name (declared: {})",
                        list(components.keys())
                    ),
                ));
            }
            let topic = raw_route.topic.get_ref().clone();
            if routes.iter().any(|r| r.topic == topic && r.component == component) {
                return Err(at(
                    route_span,
                    format!("route {topic} -> {component} is declared twice; remove one"),
                ));
            }
            let dead_letter = match &raw_route.dead_letter {
                Some(dl) => {
                    if dl.get_ref() == &topic {
                        return Err(at(
                            dl.span(),
                            format!("dead-letter topic of {topic} is {topic} itself: pick another topic"),
                        ));
                    }
                    dl.get_ref().clone()
                }
                None => TopicName::try_from(format!("{topic}.dlq")).map_err(|m| at(route_span.clone(), m))?,
            };
            let group = match &raw_route.group {
                Some(group) if group.get_ref().trim().is_empty() => {
                    return Err(at(
                        group.span(),
                        "group is empty: omit it for the default or name a consumer group".into(),
                    ));
                }
                Some(group) => group.get_ref().clone(),
                // One group per route: routes of one component rebalance independently.
                None => format!("switchyard.{component}.{topic}"),
            };
            let retry = resolve_retry(&raw_route.retry, RetryPolicy::default(), &at)?;
            if let Some(other) = routes.iter().find(|r| r.group == group) {
                let span = raw_route.group.as_ref().map_or(route_span.clone(), |g| g.span());
                return Err(at(
                    span,
                    format!(
                        "group \"{group}\" is already the group of route {} -> {}: two routes in one group split the partitions between them, so each would miss events; give each route its own group (or omit it)",
                        other.topic, other.component
                    ),
                ));
            }
            dead_letter_spans.push(raw_route.dead_letter.as_ref().map_or(route_span.clone(), |d| d.span()));
            let concurrency = match &raw_route.concurrency {
                Some(c) => range_check(c, 1, 1024, "concurrency").map_err(|m| at(c.span(), m))? as usize,
                None => topics[&topic].partitions as usize,
            };
            routes.push(Route {
                topic,
                component,
                group,
                dead_letter,
                retry,
                concurrency,
            });
        }

        for (route, span) in routes.iter().zip(dead_letter_spans) {
            if let Some(consumer) = routes.iter().find(|r| r.topic == route.dead_letter) {
                return Err(at(
                    span,
                    format!(
                        "dead-letter topic {} of route {} -> {} is the input of route {} -> {}: its failures would be handled again as new events; pick a topic no route consumes",
                        route.dead_letter, route.topic, route.component, consumer.topic, consumer.component
                    ),
                ));
            }
        }

        Ok(Routing {
            source: path.to_path_buf(),
            topics,
            components,
            routes,
        })
    }

    /// Routes that deliver `topic`.
    pub fn routes_for<'a>(&'a self, topic: &'a TopicName) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| &r.topic == topic)
    }

    /// Every dead-letter topic the routes name, which `topics sync` must create too.
    pub fn dead_letter_topics(&self) -> BTreeSet<TopicName> {
        self.routes.iter().map(|r| r.dead_letter.clone()).collect()
    }
}

/// Attempts and backoff of a route or a component's deliveries, over `default`.
fn resolve_retry(
    raw: &RawRetry,
    default: RetryPolicy,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<RetryPolicy, ConfigError> {
    let mut retry = default;
    if let Some(attempts) = &raw.attempts {
        retry.attempts = range_check(attempts, 1, 100, "attempts").map_err(|m| at(attempts.span(), m))? as u32;
    }
    if let Some(ms) = &raw.initial_backoff_ms {
        retry.initial_backoff = Duration::from_millis(
            range_check(ms, 1, 3_600_000, "initial-backoff-ms").map_err(|m| at(ms.span(), m))? as u64,
        );
    }
    if let Some(ms) = &raw.max_backoff_ms {
        retry.max_backoff = Duration::from_millis(
            range_check(ms, 1, 3_600_000, "max-backoff-ms").map_err(|m| at(ms.span(), m))? as u64,
        );
        if retry.max_backoff < retry.initial_backoff {
            return Err(at(
                ms.span(),
                format!(
                    "max-backoff-ms {} is below initial-backoff-ms {}: raise it",
                    retry.max_backoff.as_millis(),
                    retry.initial_backoff.as_millis()
                ),
            ));
        }
    } else if let Some(ms) = &raw.initial_backoff_ms
        && retry.initial_backoff > retry.max_backoff
    {
        // Against the default max, every delay would be capped below the initial one.
        return Err(at(
            ms.span(),
            format!(
                "initial-backoff-ms {} is above the default max-backoff-ms {}: lower it, or set max-backoff-ms",
                retry.initial_backoff.as_millis(),
                retry.max_backoff.as_millis()
            ),
        ));
    }
    Ok(retry)
}

fn range_check(value: &Spanned<i64>, min: i64, max: i64, what: &str) -> Result<i64, String> {
    let v = *value.get_ref();
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what} = {v} is out of range: use {min} to {max}"))
    }
}

fn list<'a, T: std::fmt::Display + 'a>(items: impl Iterator<Item = &'a T>) -> String {
    let names: Vec<String> = items.map(|i| i.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[topics."orders.requests"]
partitions = 3
[topics."orders.created"]

[components.order]
artifact = "order.wasm"
publishes = ["orders.created"]
config = { payment-timeout-ms = 30000, mode = "strict" }
limits = { memory-mib = 32, deadline-ms = 250 }

[[routes]]
topic = "orders.requests"
component = "order"
retry = { attempts = 3, initial-backoff-ms = 10, max-backoff-ms = 50 }
"#;

    #[test]
    fn resolves_defaults_and_relative_artifacts() {
        let routing = Routing::parse(Path::new("/etc/sy/topics.toml"), GOOD).unwrap();
        let order = &routing.components[&ComponentName::try_from("order".to_string()).unwrap()];
        assert_eq!(order.artifact, PathBuf::from("/etc/sy/order.wasm"));
        assert_eq!(order.artifact_at.line, 7);
        assert_eq!(order.config["payment-timeout-ms"], "30000");
        assert_eq!(
            order.limits,
            Limits {
                memory_bytes: 32 << 20,
                deadline: Duration::from_millis(250)
            }
        );
        let route = &routing.routes[0];
        assert_eq!(route.group, "switchyard.order.orders.requests");
        assert_eq!(route.dead_letter.as_str(), "orders.requests.dlq");
        assert_eq!(route.concurrency, 3);
        assert_eq!(routing.topics[&route.topic].partitions, 3);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        let delays: Vec<u128> = (1..=5).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
