//! A test component that carries out the steps its event payload lists, so host tests
//! can drive every capability and every failure from outside:
//!
//! ```json
//! {"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "fail", "retryable": false}]}
//! ```
//!
//! [`Step`] lists the operations. The plan itself is plain data, tested natively.

use serde::Deserialize;
use switchyard_sdk::{Event, HandleError, Handler, QueryError, config, log, publish, storage, timers};

/// What the event asks the probe to do, in order.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// One operation.
#[derive(Debug, Deserialize, PartialEq)]
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
}

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
