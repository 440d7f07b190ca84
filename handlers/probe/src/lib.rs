//! A test component that carries out the steps its event payload lists, so host tests
//! can drive every capability and every failure from outside:
//!
//! ```json
//! {"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "fail", "retryable": false}]}
//! ```
//!
//! [`Step`] lists the operations. The plan itself is plain data, tested natively.

use serde::Deserialize;
use switchyard_sdk::{Event, HandleError, Handler, QueryError, config, log, outbound, publish, storage, timers};

/// What the event asks the probe to do, in order.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// One operation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Increment {
        key: String,
        delta: i64,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: Option<String>,
        swapped: bool,
    },
    /// Fails unless `key` holds `value` (`null`: absent).
    Expect {
        key: String,
        value: Option<String>,
    },
    /// Fails unless the keys under `prefix` are exactly `keys`.
    ExpectPrefix {
        prefix: String,
        keys: Vec<String>,
    },
    /// Copies config `name` into storage under `key` (absent: "<unset>").
    ConfigToStorage {
        name: String,
        key: String,
    },
    Publish {
        topic: String,
        key: Option<String>,
        payload: String,
    },
    Schedule {
        topic: String,
        delay_ms: u64,
        payload: String,
    },
    Log {
        message: String,
    },
    Print {
        line: String,
    },
    Fail {
        retryable: bool,
        reason: String,
    },
    /// Fails (fatally) unless config `name` is set.
    RequireConfig {
        name: String,
    },
    /// Fails (retryably) until the host's `switchyard-attempt` header reaches `attempt`.
    FailUntilAttempt {
        attempt: u32,
    },
    Panic,
    Loop,
    /// Allocates and touches this many MiB.
    Alloc {
        mib: u32,
    },
    /// Reads a byte this many Wasm pages past the end of its own memory: the host must
    /// stop it with a trap (bounds are checked in code; there are no guard pages).
    ReadPastMemory {
        pages: u32,
    },
    /// Sleeps in WASI (blocked in a host call, not computing).
    Sleep {
        ms: u64,
    },
    /// Runs `step` this many times (floods of publishes, logs, prints).
    Repeat {
        times: u32,
        step: Box<Step>,
    },
    /// Stores a value of this many KiB under `key`.
    PutBig {
        key: String,
        kib: u32,
    },
    /// Publishes with a key of this many bytes and these extra headers.
    PublishRaw {
        topic: String,
        key_bytes: u32,
        headers: Vec<(String, String)>,
        payload_kib: u32,
    },
    /// Fails fatally with a reason of this many KiB.
    FailLong {
        kib: u32,
    },
    /// Stores which build of the probe ran ("v1", or "v2" for `probe-v2.wasm`) under
    /// `key`, failing fatally if something was stamped there before.
    Stamp {
        key: String,
    },
    /// Asks the host to POST `body` to `url` (wit `outbound`). With `record`, the delivery
    /// id or the error is stored under that key and the plan goes on; without, an error
    /// fails the event.
    PostJson {
        url: String,
        body: serde_json::Value,
        result_topic: String,
        context: String,
        record: Option<String>,
    },
    /// Asks the host to e-mail `to` (wit `outbound`); `record` as for `post-json`.
    Email {
        to: Vec<String>,
        subject: String,
        text: String,
        result_topic: String,
        context: String,
        record: Option<String>,
    },
    /// Fails fatally if the sandbox lets the guest read files, see environment
    /// variables, open sockets, or keep state from an earlier invocation.
    SandboxEscape,
}

/// Which build this is: see `Step::Stamp`.
pub const VARIANT: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

/// Touched by `SandboxEscape`: a fresh instance per event starts it at 0 every time.
static INVOCATIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Plan {
    pub fn parse(payload: &[u8]) -> Result<Plan, HandleError> {
        serde_json::from_slice(payload).map_err(|e| HandleError::fatal(format!("bad plan: {e}")))
    }
}

struct Probe;

impl Handler for Probe {
    fn handle(event: Event) -> Result<(), HandleError> {
        let plan = Plan::parse(&event.payload)?;
        let attempt = event
            .headers
            .iter()
            .find(|h| h.name == "switchyard-attempt")
            .and_then(|h| h.value.parse::<u32>().ok())
            .unwrap_or(1);
        for step in plan.steps {
            run(step, attempt)?;
        }
        Ok(())
    }

    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        if name != "run" {
            return Err(switchyard_sdk::query::unknown("probe", &name, &["run"]));
        }
        let plan: Plan = switchyard_sdk::query::args(&name, &args)?;
        let outcomes: Vec<String> = plan
            .steps
            .into_iter()
            .map(|step| match run(step, 1) {
                Ok(()) => "ok".to_string(),
                Err(err) => format!("{err:?}"),
            })
            .collect();
        switchyard_sdk::query::answer(&serde_json::json!({ "outcomes": outcomes }))
    }
}

fn message(topic: String, key: Option<String>, payload: String) -> publish::Message {
    publish::Message {
        topic,
        key: key.map(String::into_bytes),
        payload: payload.into_bytes(),
        headers: Vec::new(),
    }
}

/// Stores a delivery's id, or its error, under `record`; without one, an error fails.
fn recorded(record: Option<String>, result: Result<String, outbound::Error>) -> Result<(), HandleError> {
    match (record, result) {
        (Some(key), Ok(id)) => storage::put(&key, id.as_bytes())?,
        (Some(key), Err(err)) => storage::put(&key, format!("error: {}", outbound::reason(&err)).as_bytes())?,
        (None, result) => {
            result?;
        }
    }
    Ok(())
}

/// Carries out one step; `attempt` is the host's delivery attempt of the event.
fn run(step: Step, attempt: u32) -> Result<(), HandleError> {
    match step {
        Step::Put { key, value } => storage::put(&key, value.as_bytes())?,
        Step::Delete { key } => {
            storage::delete(&key)?;
        }
        Step::Increment { key, delta } => {
            storage::increment(&key, delta)?;
        }
        Step::Cas {
            key,
            expected,
            new,
            swapped,
        } => {
            let got = storage::compare_and_swap(
                &key,
                expected.as_ref().map(|v| v.as_bytes()),
                new.as_ref().map(|v| v.as_bytes()),
            )?;
            if got != swapped {
                return Err(HandleError::fatal(format!("cas on {key}: swapped={got}")));
            }
        }
        Step::Expect { key, value } => {
            let got = storage::get(&key)?.map(|v| String::from_utf8_lossy(&v).into_owned());
            if got != value {
                return Err(HandleError::fatal(format!("{key}: expected {value:?}, found {got:?}")));
            }
        }
        Step::ExpectPrefix { prefix, keys } => {
            let got: Vec<String> = storage::list_prefix(&prefix, None, 1000)?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            if got != keys {
                return Err(HandleError::fatal(format!(
                    "{prefix}*: expected {keys:?}, found {got:?}"
                )));
            }
        }
        Step::ConfigToStorage { name, key } => {
            let value = config::get(&name).unwrap_or_else(|| "<unset>".to_string());
            storage::put(&key, value.as_bytes())?;
        }
        Step::Publish { topic, key, payload } => publish::send(&message(topic, key, payload))?,
        Step::Schedule {
            topic,
            delay_ms,
            payload,
        } => {
            timers::schedule(delay_ms, &message(topic, None, payload))?;
        }
        Step::Log { message } => switchyard_sdk::log(log::Level::Info, &message, &[("source", "probe")]),
        Step::Print { line } => println!("{line}"),
        Step::Fail {
            retryable: true,
            reason,
        } => return Err(HandleError::retryable(reason)),
        Step::Fail {
            retryable: false,
            reason,
        } => return Err(HandleError::fatal(reason)),
        Step::RequireConfig { name } => {
            if config::get(&name).is_none() {
                return Err(HandleError::fatal(format!("config {name} is not set")));
            }
        }
        Step::FailUntilAttempt { attempt: needed } => {
            if attempt < needed {
                return Err(HandleError::retryable(format!("attempt {attempt} of {needed}")));
            }
        }
        Step::Panic => panic!("probe asked to panic"),
        Step::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Step::Alloc { mib } => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib {
                hog.push(vec![1u8; 1 << 20]);
            }
            std::hint::black_box(&hog);
        }
        Step::ReadPastMemory { pages } => {
            #[cfg(target_arch = "wasm32")]
            {
                let end = core::arch::wasm32::memory_size(0) * 65536;
                let at = end.wrapping_add(pages as usize * 65536);
                // SAFETY: none; the read is outside the memory on purpose, for the host to stop.
                std::hint::black_box(unsafe { core::ptr::read_volatile(at as *const u8) });
            }
            #[cfg(not(target_arch = "wasm32"))]
            let _ = pages;
        }
        Step::Sleep { ms } => std::thread::sleep(std::time::Duration::from_millis(ms)),
        Step::Repeat { times, step } => {
            for _ in 0..times {
                run((*step).clone(), attempt)?;
            }
        }
        Step::PutBig { key, kib } => storage::put(&key, &vec![b'x'; kib as usize * 1024])?,
        Step::PublishRaw {
            topic,
            key_bytes,
            headers,
            payload_kib,
        } => publish::send(&publish::Message {
            topic,
            key: Some(vec![b'k'; key_bytes as usize]),
            payload: vec![b'p'; payload_kib as usize * 1024],
            headers: headers
                .into_iter()
                .map(|(name, value)| switchyard_sdk::Header { name, value })
                .collect(),
        })?,
        Step::FailLong { kib } => return Err(HandleError::fatal("r".repeat(kib as usize * 1024))),
        Step::Stamp { key } => {
            if !storage::compare_and_swap(&key, None, Some(VARIANT.as_bytes()))? {
                return Err(HandleError::fatal(format!("{key} was stamped before")));
            }
        }
        Step::PostJson {
            url,
            body,
            result_topic,
            context,
            record,
        } => recorded(record, outbound::post_json(&url, &body, &result_topic, &context))?,
        Step::Email {
            to,
            subject,
            text,
            result_topic,
            context,
            record,
        } => {
            let email = outbound::Email {
                relay: None,
                sender: "Probe <probe@switchyard.test>".into(),
                recipients: to,
                reply_to: None,
                subject,
                text,
            };
            recorded(record, outbound::send_email(email, &result_topic, &context))?
        }
        Step::SandboxEscape => {
            let mut breaches = Vec::new();
            if INVOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) != 0 {
                breaches.push("state survived from an earlier invocation".to_string());
            }
            for path in ["/", ".", "/etc/passwd", "topics.toml"] {
                if std::fs::read_dir(path).is_ok() || std::fs::read(path).is_ok() {
                    breaches.push(format!("could read {path}"));
                }
            }
            if std::fs::write("escape.txt", b"x").is_ok() {
                breaches.push("could write a file".into());
            }
            if let Some((k, _)) = std::env::vars().next() {
                breaches.push(format!("could see environment variable {k}"));
            }
            if std::net::TcpStream::connect("127.0.0.1:55432").is_ok() {
                breaches.push("could open a socket".into());
            }
            if !breaches.is_empty() {
                return Err(HandleError::fatal(breaches.join("; ")));
            }
        }
    }
    Ok(())
}

switchyard_sdk::export_handler!(Probe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plan() {
        let plan = Plan::parse(
            br#"{"steps":[{"op":"put","key":"a","value":"1"},{"op":"fail","retryable":true,"reason":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(
            plan.steps,
            vec![
                Step::Put {
                    key: "a".into(),
                    value: "1".into()
                },
                Step::Fail {
                    retryable: true,
                    reason: "x".into()
                }
            ]
        );
    }

    #[test]
    fn rejects_unknown_ops() {
        assert!(matches!(
            Plan::parse(br#"{"steps":[{"op":"rm -rf"}]}"#),
            Err(HandleError::Fatal(_))
        ));
    }
}
