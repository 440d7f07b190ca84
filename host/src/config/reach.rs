//! `reach`: where a component's outbound effects (wit `outbound`) may go. Entries are
//! validated newtypes; config/mod.rs reports a bad one at its exact position.
//!
//! ```toml
//! reach = { http = ["https://hooks.example.com/", "http://127.0.0.1:*"], smtp = ["127.0.0.1:2525"] }
//! ```

use std::fmt;

use super::RetryPolicy;
use reqwest::Url;

/// What a component may reach, and how hard the host tries.
#[derive(Debug, Clone, PartialEq)]
pub struct Reach {
    pub http: Vec<HttpPrefix>,
    pub smtp: Vec<SmtpRelay>,
    /// Attempts and backoff of each delivery; after the last attempt it is a dead letter.
    pub retry: RetryPolicy,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            http: Vec::new(),
            smtp: Vec::new(),
            retry: default_delivery_retry(),
        }
    }
}

/// Deliveries retry longer than events by default: a webhook or a mail relay being down
/// for minutes is ordinary. 10 attempts, 1 s doubling to 5 min: about 20 minutes.
pub fn default_delivery_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 10,
        initial_backoff: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(300),
    }
}

impl Reach {
    /// Whether `url` falls under one of the `http` prefixes.
    pub fn allows_url(&self, url: &Url) -> bool {
        self.http.iter().any(|p| p.matches(url))
    }

    /// The relay an e-mail names (as written in `smtp`), or the only one when it names none.
    pub fn relay(&self, named: Option<&str>) -> Result<&SmtpRelay, String> {
        match named {
            Some(name) => self.smtp.iter().find(|r| r.as_str() == name).ok_or_else(|| {
                format!(
                    "relay {name:?} is not in reach.smtp of this component (allowed: {})",
                    self.smtp_list()
                )
            }),
            None => match self.smtp.as_slice() {
                [only] => Ok(only),
                [] => Err("this component has no reach.smtp relay in topics.toml".into()),
                _ => Err(format!(
                    "several relays are allowed ({}): name one in email.relay",
                    self.smtp_list()
                )),
            },
        }
    }

    fn smtp_list(&self) -> String {
        let all: Vec<&str> = self.smtp.iter().map(SmtpRelay::as_str).collect();
        if all.is_empty() { "none".into() } else { all.join(", ") }
    }
}

/// An allowed URL prefix: scheme, host and port must equal the request's (port `*`: any
/// port), and the request's path must start with the prefix's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPrefix {
    text: String,
    scheme: String,
    host: String,
    /// None: any port (`:*`).
    port: Option<u16>,
    path: String,
}

impl TryFrom<String> for HttpPrefix {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let fix =
            "write an absolute http(s) URL prefix such as \"https://hooks.example.com/\" or \"http://127.0.0.1:*\"";
        // `:*` is not URL syntax: parse with a placeholder port and remember "any".
        let (parsable, any_port) = match text.find(":*") {
            Some(at) if text[at + 2..].is_empty() || text[at + 2..].starts_with('/') => {
                (format!("{}:1{}", &text[..at], &text[at + 2..]), true)
            }
            _ => (text.clone(), false),
        };
        let url = Url::parse(&parsable).map_err(|e| format!("invalid reach.http entry {text:?}: {e}; {fix}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid reach.http entry {text:?}: scheme must be http or https; {fix}"
            ));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("invalid reach.http entry {text:?}: no host; {fix}"));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid reach.http entry {:?}: credentials do not belong in topics.toml; set SWITCHYARD_HTTP_<HOST>_<PORT>_AUTHORIZATION in the host's environment (docs/topics.md)",
                without_credentials(&url)
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid reach.http entry {text:?}: a prefix has no query or fragment; {fix}"
            ));
        }
        Ok(HttpPrefix {
            scheme: url.scheme().to_string(),
            host: host.to_string(),
            port: if any_port { None } else { url.port_or_known_default() },
            path: url.path().to_string(),
            text,
        })
    }
}

impl HttpPrefix {
    pub fn matches(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && self.port.is_none_or(|p| url.port_or_known_default() == Some(p))
            && url.path().starts_with(&self.path)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HttpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An SMTP relay: `host:port` or `smtp://host:port` (plain), `smtp://host:port?tls=required`
/// (STARTTLS required) or `smtps://host:port` (TLS from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpRelay {
    text: String,
    /// The lettre transport URL, without credentials.
    url: String,
    host: String,
    port: u16,
}

impl TryFrom<String> for SmtpRelay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let fix =
            "write \"host:port\", \"smtp://host:port\", \"smtp://host:port?tls=required\" or \"smtps://host:port\"";
        let full = if text.contains("://") {
            text.clone()
        } else {
            format!("smtp://{text}")
        };
        let url = Url::parse(&full).map_err(|e| format!("invalid reach.smtp relay {text:?}: {e}; {fix}"))?;
        if !matches!(url.scheme(), "smtp" | "smtps") {
            return Err(format!(
                "invalid reach.smtp relay {text:?}: scheme must be smtp or smtps; {fix}"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid reach.smtp relay {:?}: credentials do not belong in topics.toml; set SWITCHYARD_SMTP_<HOST>_<PORT>_USER and _PASSWORD in the host's environment (docs/topics.md)",
                without_credentials(&url)
            ));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port()) else {
            return Err(format!(
                "invalid reach.smtp relay {text:?}: give a host and a port; {fix}"
            ));
        };
        if !matches!(url.query(), None | Some("tls=required") | Some("tls=opportunistic")) {
            return Err(format!(
                "invalid reach.smtp relay {text:?}: the only option is ?tls=required (or ?tls=opportunistic); {fix}"
            ));
        }
        Ok(SmtpRelay {
            host: host.to_string(),
            port,
            url: full,
            text,
        })
    }
}

impl SmtpRelay {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The transport URL for lettre (without credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `HOST_PORT` in upper case with every other character `_`: the middle of the
    /// environment variables that hold this relay's credentials.
    pub fn env_key(&self) -> String {
        env_key(&self.host, self.port)
    }
}

/// `url` with user and password left out, so an error message does not spread them.
fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// `hooks.example.com`, 443 -> `HOOKS_EXAMPLE_COM_443`.
pub fn env_key(host: &str, port: u16) -> String {
    format!("{host}_{port}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl fmt::Display for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> HttpPrefix {
        HttpPrefix::try_from(s.to_string()).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn prefixes_match_scheme_host_port_and_path() {
        let hooks = prefix("https://hooks.example.com/notify/");
        assert!(hooks.matches(&url("https://hooks.example.com/notify/a?x=1")));
        assert!(hooks.matches(&url("https://hooks.example.com:443/notify/")));
        assert!(!hooks.matches(&url("http://hooks.example.com/notify/a")));
        assert!(!hooks.matches(&url("https://hooks.example.com:8443/notify/a")));
        assert!(!hooks.matches(&url("https://hooks.example.com.evil.org/notify/a")));
        assert!(!hooks.matches(&url("https://hooks.example.com/other")));
        let local = prefix("http://127.0.0.1:*");
        assert!(local.matches(&url("http://127.0.0.1:4567/hook")));
        assert!(local.matches(&url("http://127.0.0.1/")));
        assert!(!local.matches(&url("http://127.0.0.2:4567/hook")));
        assert!(!local.matches(&url("https://127.0.0.1:4567/hook")));
    }

    #[test]
    fn bad_prefixes_and_relays_say_how_to_fix_them() {
        for bad in ["hooks.example.com", "ftp://x/", "https://x/?a=1"] {
            let err = HttpPrefix::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        for bad in ["mail.example.com", "imap://x:1", "smtp://x:25?tls=maybe"] {
            let err = SmtpRelay::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        // Credentials are refused without being repeated.
        let err = HttpPrefix::try_from("https://u:secret@x/".to_string()).unwrap_err();
        assert!(err.contains("https://x/") && !err.contains("secret"), "{err}");
        let err = SmtpRelay::try_from("smtp://u:secret@x:25".to_string()).unwrap_err();
        assert!(err.contains("smtp://x:25") && !err.contains("secret"), "{err}");
        let relay = SmtpRelay::try_from("127.0.0.1:2525".to_string()).unwrap();
        assert_eq!(relay.url(), "smtp://127.0.0.1:2525");
        assert_eq!(relay.env_key(), "127_0_0_1_2525");
        let tls = SmtpRelay::try_from("smtp://mail.example.com:587?tls=required".to_string()).unwrap();
        assert_eq!(tls.env_key(), "MAIL_EXAMPLE_COM_587");
    }

    #[test]
    fn an_unnamed_relay_is_the_only_one() {
        let mut reach = Reach::default();
        assert!(reach.relay(None).is_err());
        reach.smtp.push(SmtpRelay::try_from("a:25".to_string()).unwrap());
        assert_eq!(reach.relay(None).unwrap().as_str(), "a:25");
        reach.smtp.push(SmtpRelay::try_from("b:25".to_string()).unwrap());
        assert!(reach.relay(None).unwrap_err().contains("name one"));
        assert_eq!(reach.relay(Some("b:25")).unwrap().as_str(), "b:25");
        assert!(reach.relay(Some("c:25")).unwrap_err().contains("not in reach.smtp"));
    }
}
