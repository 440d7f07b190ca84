//! HTTP deliveries (webhooks) with reqwest: the delivery id as `Idempotency-Key` on every
//! attempt, credentials from the host's environment, no redirects.

use serde::{Deserialize, Serialize};

use super::{Attempt, Settings};
use crate::config::env_key;

/// The idempotency header (IETF draft `Idempotency-Key`).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Headers the host sets or that would change the connection; a component may not.
pub const HOST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "idempotency-key",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "expect",
    "traceparent",
    "tracestate",
];

/// Methods a component may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A checked request, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Hex, so a binary body survives the JSON column.
    #[serde(with = "hex")]
    pub body: Vec<u8>,
}

/// The environment variable whose value becomes the `Authorization` header of requests
/// to `url`'s host and port: `SWITCHYARD_HTTP_<HOST>_<PORT>_AUTHORIZATION`.
pub fn authorization_env(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("SWITCHYARD_HTTP_{}_AUTHORIZATION", env_key(host, port)))
}

/// The worker's client: bounded attempts, no redirects (their target could be outside
/// the component's reach), rustls.
pub fn client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.http_timeout)
        .connect_timeout(settings.http_timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// One attempt; `traceparent` continues the trace of the invocation that asked for it.
pub async fn send(client: &reqwest::Client, id: &str, request: &HttpRequest, traceparent: Option<&str>) -> Attempt {
    let refused = |reason: String| Attempt::Refused { status: None, reason };
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return refused(format!("invalid method {:?}", request.method));
    };
    let Ok(url) = reqwest::Url::parse(&request.url) else {
        return refused(format!("invalid URL {:?}", request.url));
    };
    let mut builder = client
        .request(method, url.clone())
        .header(IDEMPOTENCY_KEY, id)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some(traceparent) = traceparent {
        builder = builder.header("traceparent", traceparent);
    }
    if let Some(auth) = authorization_env(&url).and_then(|var| std::env::var(var).ok()) {
        builder = builder.header(reqwest::header::AUTHORIZATION, auth);
    }
    match builder.send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                return Attempt::Delivered {
                    status: status.as_u16(),
                };
            }
            let excerpt: String = String::from_utf8_lossy(&body_prefix(response, EXCERPT_BYTES).await)
                .chars()
                .take(200)
                .collect();
            let reason = format!("HTTP {status} from {}: {}", url, excerpt.trim());
            let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429);
            if transient {
                Attempt::Failed {
                    status: Some(status.as_u16()),
                    reason,
                }
            } else {
                Attempt::Refused {
                    status: Some(status.as_u16()),
                    reason,
                }
            }
        }
        Err(err) => Attempt::Failed {
            status: None,
            reason: format!("{url}: {}", error_chain(&err)),
        },
    }
}

/// Bytes of a refused answer's body read for its reason (200 characters kept).
const EXCERPT_BYTES: usize = 1024;

/// The first `limit` bytes of `response`'s body. The rest is never read: a target that
/// answers an error with an endless body costs a kilobyte, not the worker's memory.
async fn body_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    body
}

/// An error with its causes ("connection refused" sits deep in reqwest's chain).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_looked_up_by_host_and_port() {
        let url = reqwest::Url::parse("https://hooks.example.com/a").unwrap();
        assert_eq!(
            authorization_env(&url).unwrap(),
            "SWITCHYARD_HTTP_HOOKS_EXAMPLE_COM_443_AUTHORIZATION"
        );
    }

    /// A one-connection HTTP server on a thread: writes `head`, then `body_chunks`
    /// chunks of 64 KiB of `x` (chunked), for as long as the client reads.
    fn answering(head: &'static str, body_chunks: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(head.as_bytes());
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            for _ in 0..body_chunks {
                if stream.write_all(chunk.as_bytes()).is_err() {
                    return; // the client hung up
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        });
        url
    }

    fn request(url: String) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url,
            headers: vec![],
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn an_endless_error_body_is_cut_to_an_excerpt() {
        // 64 GiB if read whole: only the excerpt is.
        let url = answering("HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n", 1 << 20);
        let client = client(&crate::delivery::Settings::default()).unwrap();
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send(&client, "d-1", &request(url), None),
        )
        .await
        .expect("answers without reading the whole body");
        match attempt {
            Attempt::Failed {
                status: Some(500),
                reason,
            } => assert!(
                reason.contains("HTTP 500") && reason.ends_with(&"x".repeat(100)),
                "{reason}"
            ),
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_redirect_is_refused_not_followed() {
        let url = answering(
            "HTTP/1.1 302 Found\r\nlocation: http://10.255.255.1/elsewhere\r\ntransfer-encoding: chunked\r\n\r\n",
            0,
        );
        let client = client(&crate::delivery::Settings::default()).unwrap();
        match send(&client, "d-2", &request(url), None).await {
            Attempt::Refused {
                status: Some(302),
                reason,
            } => assert!(reason.contains("302"), "{reason}"),
            other => panic!("expected the redirect refused, got {other:?}"),
        }
    }

    #[test]
    fn bodies_round_trip_through_json() {
        let request = HttpRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:1/".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: vec![0, 255, b'{'],
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains("\"00ff7b\""), "{text}");
        assert_eq!(serde_json::from_str::<HttpRequest>(&text).unwrap(), request);
    }
}
