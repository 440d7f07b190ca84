//! The exporter's settings, from the standard `OTEL_*` environment variables.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::sampler::Sampler;

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} {problem}; {remedy}")]
pub struct SettingsError {
    var: &'static str,
    value: String,
    problem: &'static str,
    remedy: &'static str,
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub endpoint: String,
    pub headers: HeaderMap,
    pub timeout: Duration,
    /// `service.name` first, then `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub sampler: Sampler,
}

impl Settings {
    /// The settings in this process's environment, or `None` when no endpoint is set.
    pub fn from_env() -> Result<Option<Settings>, SettingsError> {
        Settings::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings `var` names (an environment, or a map in tests); `None` without an
    /// endpoint. Defaults are the OpenTelemetry specification's.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, SettingsError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // The signal's own variable is used as given; the general one gets the path.
            (Some(traces), _) => url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)?,
            (None, Some(base)) => {
                let base = url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None) => return Ok(None),
        };
        let mut headers = HeaderMap::new();
        for var_name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(value) = set(var_name) {
                for (name, value) in pairs(var_name, &value)? {
                    let bad = || SettingsError {
                        var: var_name,
                        value: format!("{name}={value}"),
                        problem: "is not a valid HTTP header",
                        remedy: "give comma-separated name=value pairs, percent-encoding other characters",
                    };
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                    let value = HeaderValue::from_str(&value).map_err(|_| bad())?;
                    headers.insert(name, value);
                }
            }
        }
        let timeout = set("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", v))
            .or_else(|| set("OTEL_EXPORTER_OTLP_TIMEOUT").map(|v| ("OTEL_EXPORTER_OTLP_TIMEOUT", v)))
            .map(|(name, v)| millis(name, &v))
            .transpose()?
            .unwrap_or(Duration::from_secs(10));
        let mut resource = vec![(
            "service.name".to_string(),
            set("OTEL_SERVICE_NAME").unwrap_or_else(|| "switchyard".into()),
        )];
        if let Some(value) = set("OTEL_RESOURCE_ATTRIBUTES") {
            for (key, value) in pairs("OTEL_RESOURCE_ATTRIBUTES", &value)? {
                // OTEL_SERVICE_NAME wins over a service.name given here, as the spec says.
                if key == "service.name" && set("OTEL_SERVICE_NAME").is_some() {
                    continue;
                }
                resource.retain(|(k, _)| *k != key);
                resource.push((key, value));
            }
        }
        let count = |name: &'static str, default: usize| {
            set(name)
                .map(|v| {
                    v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or(SettingsError {
                        var: name,
                        value: v,
                        problem: "is not a positive whole number",
                        remedy: "give e.g. 2048, or unset it",
                    })
                })
                .transpose()
                .map(|n| n.unwrap_or(default))
        };
        let schedule_delay = set("OTEL_BSP_SCHEDULE_DELAY")
            .map(|v| millis("OTEL_BSP_SCHEDULE_DELAY", &v))
            .transpose()?
            .unwrap_or(Duration::from_millis(5000));
        let max_queue_size = count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let max_export_batch_size = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue_size);
        let sampler = Sampler::from_vars(
            set("OTEL_TRACES_SAMPLER").as_deref(),
            set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )
        .map_err(|(var, value, problem, remedy)| SettingsError {
            var,
            value,
            problem,
            remedy,
        })?;
        Ok(Some(Settings {
            endpoint,
            headers,
            timeout,
            resource,
            schedule_delay,
            max_queue_size,
            max_export_batch_size,
            sampler,
        }))
    }
}

fn url(var: &'static str, value: String) -> Result<String, SettingsError> {
    match reqwest::Url::parse(value.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(value.trim().to_string()),
        _ => Err(SettingsError {
            var,
            value,
            problem: "is not an http(s) URL",
            remedy: "give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318",
        }),
    }
}

fn millis(var: &'static str, value: &str) -> Result<Duration, SettingsError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| SettingsError {
            var,
            value: value.to_string(),
            problem: "is not a whole number of milliseconds",
            remedy: "give e.g. 5000, or unset it",
        })
}

/// `a=b,c=d` with percent-encoded values (the W3C baggage format the spec uses).
fn pairs(var: &'static str, value: &str) -> Result<Vec<(String, String)>, SettingsError> {
    value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| SettingsError {
                var,
                value: pair.to_string(),
                problem: "is not a name=value pair",
                remedy: "give comma-separated name=value pairs",
            })?;
            let decoded = percent_decode(v.trim()).ok_or_else(|| SettingsError {
                var,
                value: pair.to_string(),
                problem: "has a bad percent-encoding",
                remedy: "write % as %25",
            })?;
            Ok((k.trim().to_string(), decoded))
        })
        .collect()
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, SettingsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert!(settings(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap().is_none());
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_and_the_signal_endpoint_is_used_as_given() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/spans"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://t:1/spans");
        assert_eq!(s.schedule_delay, Duration::from_secs(5));
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (2048, 512));
        assert_eq!(s.resource, vec![("service.name".to_string(), "switchyard".to_string())]);
    }

    #[test]
    fn headers_resource_and_batching_are_read() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc, x-tenant=t1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,deployment.environment=prod",
            ),
            ("OTEL_SERVICE_NAME", "orders-host"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.headers["authorization"], "Bearer abc");
        assert_eq!(s.headers["x-tenant"], "t1");
        assert_eq!(
            s.resource,
            vec![
                ("service.name".to_string(), "orders-host".to_string()),
                ("deployment.environment".to_string(), "prod".to_string())
            ]
        );
        assert_eq!(s.schedule_delay, Duration::from_millis(100));
        // A batch is never larger than the queue.
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (64, 64));
    }

    #[test]
    fn bad_values_are_named_with_a_remedy() {
        let err = |vars: &[(&str, &str)]| settings(vars).unwrap_err().to_string();
        assert_eq!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT=\"collector:4318\" is not an http(s) URL; give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318"
        );
        assert_eq!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_BSP_SCHEDULE_DELAY", "5s")
            ]),
            "OTEL_BSP_SCHEDULE_DELAY=\"5s\" is not a whole number of milliseconds; give e.g. 5000, or unset it"
        );
        assert_eq!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "0")
            ]),
            "OTEL_BSP_MAX_QUEUE_SIZE=\"0\" is not a positive whole number; give e.g. 2048, or unset it"
        );
        assert_eq!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "token")
            ]),
            "OTEL_EXPORTER_OTLP_HEADERS=\"token\" is not a name=value pair; give comma-separated name=value pairs"
        );
        assert_eq!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a b=c")
            ]),
            "OTEL_EXPORTER_OTLP_HEADERS=\"a b=c\" is not a valid HTTP header; give comma-separated name=value pairs, percent-encoding other characters"
        );
    }
}
