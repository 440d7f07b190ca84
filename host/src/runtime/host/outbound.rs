//! wit `outbound`: a component asks for an HTTP request or an e-mail. Every check a
//! guest can fail (reach, sizes, a malformed URL, header or address) is made here and
//! answered with an error variant, never a trap; what passes is recorded in the
//! invocation's transaction and carried out by [`crate::delivery`] after the commit.

use crate::config::ComponentSpec;
use crate::delivery::Request;
use crate::delivery::http::{HOST_HEADERS, HttpRequest, METHODS};
use crate::delivery::smtp::{self, Email};
use crate::runtime::bindings::outbound::{self as wit, Error, Host};
use crate::runtime::state::{Delivery, Guard, InvocationState, Origin};
use crate::store::{Staged, StagedEffect};

use super::publish::host_headers;
use super::{MAX_VALUE_BYTES, view_of};

/// What wit `outbound` works on: the staged deliveries, and those it reports.
pub(crate) struct OutboundView<'a> {
    origin: &'a Origin,
    staged: &'a mut Staged,
    deliveries: &'a mut Vec<Delivery>,
    guard: &'a mut Guard,
}

view_of!(Outbound => OutboundView);

impl OutboundView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> OutboundView<'_> {
        OutboundView {
            origin: &s.origin,
            staged: &mut s.staged,
            deliveries: &mut s.effects.deliveries,
            guard: &mut s.guard,
        }
    }
}

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Most extra headers of one HTTP request, and their bytes together.
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// Most recipients of one e-mail.
pub const MAX_RECIPIENTS: usize = 50;
/// Longest subject (the RFC 5322 line limit).
pub const MAX_SUBJECT_BYTES: usize = 998;
/// Longest context handed back in the outcome.
pub const MAX_CONTEXT_BYTES: usize = 64 << 10;

/// Checks a guest's HTTP request against the component's reach and the caps.
pub(crate) fn check_http(spec: &ComponentSpec, request: wit::HttpRequest) -> Result<HttpRequest, Error> {
    let method = request.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(Error::Invalid(format!(
            "method {:?} is not allowed: use one of {}",
            request.method,
            METHODS.join(", ")
        )));
    }
    if request.url.len() > MAX_URL_BYTES {
        return Err(Error::TooLarge(request.url.len() as u64));
    }
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| Error::Invalid(format!("URL {:?} is not an absolute URL: {e}", request.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Invalid(format!("URL {:?}: only http and https", request.url)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Invalid(format!(
            "URL {:?} carries credentials: the host adds them from its configuration",
            request.url
        )));
    }
    if !spec.reach.allows_url(&url) {
        let allowed: Vec<&str> = spec.reach.http.iter().map(|p| p.as_str()).collect();
        return Err(Error::NotAllowed(format!(
            "URL {:?} is outside reach.http of component {} (allowed: {})",
            request.url,
            spec.name,
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )));
    }
    if request.body.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge(request.body.len() as u64));
    }
    let header_bytes: usize = request.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if request.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Err(Error::TooLarge(header_bytes as u64));
    }
    for header in &request.headers {
        if reqwest::header::HeaderName::from_bytes(header.name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(&header.value).is_err()
        {
            return Err(Error::Invalid(format!(
                "header {:?} is not a valid HTTP header (name token, visible ASCII value)",
                header.name
            )));
        }
        if HOST_HEADERS.contains(&header.name.to_ascii_lowercase().as_str()) {
            return Err(Error::Invalid(format!(
                "header {:?} is set by the host (credentials come from its configuration)",
                header.name
            )));
        }
    }
    Ok(HttpRequest {
        method,
        url: url.to_string(),
        headers: request.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        body: request.body,
    })
}

/// Checks a guest's e-mail: an allowed relay, addresses that parse, the caps.
pub(crate) fn check_email(spec: &ComponentSpec, email: wit::Email, id: &str) -> Result<Email, Error> {
    let relay = spec.reach.relay(email.relay.as_deref()).map_err(Error::NotAllowed)?;
    if email.recipients.len() > MAX_RECIPIENTS {
        return Err(Error::TooLarge(email.recipients.len() as u64));
    }
    if email.subject.len() > MAX_SUBJECT_BYTES {
        return Err(Error::TooLarge(email.subject.len() as u64));
    }
    if email.text.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge(email.text.len() as u64));
    }
    let checked = Email {
        relay: relay.as_str().to_string(),
        relay_url: relay.url().to_string(),
        relay_env_key: relay.env_key(),
        sender: email.sender,
        recipients: email.recipients,
        reply_to: email.reply_to,
        subject: email.subject,
        text: email.text,
    };
    // Building the message once checks every address and header as the worker will.
    smtp::build(id, &checked).map_err(Error::Invalid)?;
    Ok(checked)
}

impl Host for OutboundView<'_> {
    #[tracing::instrument(level = "debug", name = "outbound.deliver", skip_all, fields(otel.kind = "internal"))]
    async fn deliver(&mut self, delivery: wit::Delivery) -> Result<String, Error> {
        crate::observe::metrics().host_call("outbound");
        if let Some(why) = self.origin.refuse_write("outbound deliver") {
            return Err(Error::ReadOnly(why));
        }
        if !self
            .origin
            .component
            .publishes
            .iter()
            .any(|t| t.as_str() == delivery.result_topic)
        {
            return Err(Error::TopicNotAllowed(delivery.result_topic));
        }
        if delivery.context.len() > MAX_CONTEXT_BYTES {
            return Err(Error::TooLarge(delivery.context.len() as u64));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let (request, target) = match delivery.request {
            wit::Request::Http(request) => {
                let checked = check_http(&self.origin.component, request)?;
                let target = checked.url.clone();
                (Request::Http(checked), target)
            }
            wit::Request::Email(email) => {
                let checked = check_email(&self.origin.component, email, &id)?;
                let target = checked.recipients.join(", ");
                (Request::Email(checked), target)
            }
        };
        let stored = serde_json::to_string(&request).expect("a request serializes");
        self.guard
            .count_message(stored.len() + delivery.context.len())
            .map_err(Error::Unavailable)?;
        let result_event_id = uuid::Uuid::now_v7().to_string();
        let component = self.origin.component.name.to_string();
        let result_headers = host_headers(
            &component,
            &self.origin.version,
            &result_event_id,
            &self.origin.event_id,
            self.origin.request_id.as_deref(),
            &self.origin.trace,
        );
        let retry = &self.origin.component.reach.retry;
        let effect = StagedEffect {
            id: id.clone(),
            kind: request.kind().to_string(),
            request: stored,
            result_topic: delivery.result_topic.clone(),
            result_event_id,
            result_headers,
            context: delivery.context,
            max_attempts: retry.attempts,
            initial_backoff_ms: retry.initial_backoff.as_millis() as i64,
            max_backoff_ms: retry.max_backoff.as_millis() as i64,
        };
        self.staged.insert_effect(effect);
        self.deliveries.push(Delivery {
            id: id.clone(),
            kind: request.kind().to_string(),
            target,
            result_topic: delivery.result_topic,
        });
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::{ComponentName, HttpPrefix, Limits, Location, Reach, SmtpRelay};
    use crate::runtime::bindings::types::Header;

    fn spec() -> ComponentSpec {
        ComponentSpec {
            name: ComponentName::try_from("notif".to_string()).unwrap(),
            artifact: "notif.wasm".into(),
            artifact_at: Location {
                path: "t.toml".into(),
                line: 1,
                column: 1,
            },
            publishes: BTreeSet::new(),
            reach: Reach {
                http: vec![HttpPrefix::try_from("https://hooks.example.com/in/".to_string()).unwrap()],
                smtp: vec![SmtpRelay::try_from("127.0.0.1:2525".to_string()).unwrap()],
                ..Reach::default()
            },
            config: BTreeMap::new(),
            limits: Limits::default(),
        }
    }

    fn post(url: &str, headers: &[(&str, &str)]) -> wit::HttpRequest {
        wit::HttpRequest {
            method: "post".into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn http_requests_stay_inside_reach_and_leave_credentials_to_the_host() {
        let ok = check_http(
            &spec(),
            post(
                "https://hooks.example.com/in/a",
                &[("content-type", "application/json")],
            ),
        );
        assert_eq!(ok.unwrap().method, "POST");
        let outside = check_http(&spec(), post("https://evil.example.com/in/a", &[]));
        assert!(
            matches!(outside, Err(Error::NotAllowed(m)) if m.contains("evil.example.com") && m.contains("hooks.example.com/in/"))
        );
        assert!(matches!(
            check_http(&spec(), post("hooks.example.com/in", &[])),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            check_http(&spec(), post("https://u:p@hooks.example.com/in/a", &[])),
            Err(Error::Invalid(_))
        ));
        for host_header in ["Authorization", "Idempotency-Key", "host"] {
            assert!(matches!(
                check_http(&spec(), post("https://hooks.example.com/in/a", &[(host_header, "x")])),
                Err(Error::Invalid(m)) if m.contains(host_header)
            ));
        }
        assert!(matches!(
            check_http(
                &spec(),
                post("https://hooks.example.com/in/a", &[("x-a", "line\r\nbreak")])
            ),
            Err(Error::Invalid(_))
        ));
        let mut big = post("https://hooks.example.com/in/a", &[]);
        big.body = vec![0; MAX_VALUE_BYTES + 1];
        assert!(matches!(check_http(&spec(), big), Err(Error::TooLarge(_))));
        let mut odd = post("https://hooks.example.com/in/a", &[]);
        odd.method = "CONNECT".into();
        assert!(matches!(check_http(&spec(), odd), Err(Error::Invalid(_))));
    }

    fn email(relay: Option<&str>, to: &str) -> wit::Email {
        wit::Email {
            relay: relay.map(String::from),
            sender: "shop@example.org".into(),
            recipients: vec![to.into()],
            reply_to: None,
            subject: "s".into(),
            text: "t".into(),
        }
    }

    #[test]
    fn emails_go_through_allowed_relays_to_real_addresses() {
        let ok = check_email(&spec(), email(None, "alice@example.org"), "d").unwrap();
        assert_eq!(ok.relay_url, "smtp://127.0.0.1:2525");
        assert!(matches!(
            check_email(&spec(), email(Some("mail.evil.org:25"), "alice@example.org"), "d"),
            Err(Error::NotAllowed(_))
        ));
        assert!(matches!(
            check_email(&spec(), email(None, "alice at example"), "d"),
            Err(Error::Invalid(m)) if m.contains("alice at example")
        ));
    }
}
