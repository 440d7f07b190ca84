//! The CLI's side of the admin API: `switchyard status`, `deploy`, `rollback`, `reload`,
//! `versions`, and the running host's brokers for `dlq`, `lag` and `topics`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{BrokersInfo, RollbackRequest};
use crate::live::registry::Swapped;
use crate::live::{ReloadReport, Status, Versions};

/// Where the admin token lives beside the embedded database, so a CLI run with the same
/// settings as the host finds it with no extra step.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// The host's admin token: the one in `<data-dir>/admin-token`, created (random, mode
/// 0600) when absent.
pub fn host_token(data_dir: &Path) -> std::io::Result<String> {
    let path = token_path(data_dir);
    if let Ok(token) = std::fs::read_to_string(&path)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_string());
    }
    std::fs::create_dir_all(data_dir)?;
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// A call to the admin API that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no host answers at {url}: {reason} (is `switchyard run` running? pass --admin-url)")]
    Unreachable { url: String, reason: String },
    #[error("{title}: {detail}")]
    Refused { status: u16, title: String, detail: String },
    #[error("unexpected answer from {url}: {reason}")]
    Garbled { url: String, reason: String },
    #[error("no answer from {url} within {limit:?} (the host is up but busy or stuck: see its log, or retry)")]
    TimedOut { url: String, limit: Duration },
}

/// How long a call may wait for the host's answer. A wedged host must not hang the
/// operator's terminal or a deploy script.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Reads and small changes, answered in milliseconds by a healthy host.
    pub call: Duration,
    /// A deploy or a reload: the host compiles components before it answers (seconds
    /// each in a release build, half a minute in a debug one).
    pub compile: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(60),
            compile: Duration::from_secs(600),
        }
    }
}

/// A client of one host's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    timeouts: Timeouts,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        AdminClient::with_timeouts(base, token, Timeouts::default())
    }

    pub fn with_timeouts(base: &str, token: Option<String>, timeouts: Timeouts) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(timeouts.connect)
                .build()
                .unwrap_or_default(),
            timeouts,
        }
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        self.call_within(request, url, self.timeouts.call).await
    }

    async fn call_within<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let failed = |e: reqwest::Error| {
            if e.is_timeout() && !e.is_connect() {
                ClientError::TimedOut {
                    url: url.to_string(),
                    limit,
                }
            } else {
                ClientError::Unreachable {
                    url: url.to_string(),
                    reason: e.to_string(),
                }
            }
        };
        let response = request.timeout(limit).send().await.map_err(failed)?;
        let status = response.status();
        let body = response.bytes().await.map_err(failed)?;
        if !status.is_success() {
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let text = |k: &str| problem.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                title: Some(text("title"))
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| status.to_string()),
                detail: text("detail"),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Garbled {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api{path}", self.base)
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        let url = self.url("/status");
        self.call(self.http.get(&url), &url).await
    }

    pub async fn brokers(&self) -> Result<BrokersInfo, ClientError> {
        let url = self.url("/brokers");
        self.call(self.http.get(&url), &url).await
    }

    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        let url = self.url("/reload");
        self.call_within(self.http.post(&url), &url, self.timeouts.compile)
            .await
    }

    pub async fn versions(&self, component: &str) -> Result<Versions, ClientError> {
        let url = self.url(&format!("/components/{component}/versions"));
        self.call(self.http.get(&url), &url).await
    }

    pub async fn deploy(&self, component: &str, artifact: Vec<u8>) -> Result<Swapped, ClientError> {
        let url = self.url(&format!("/components/{component}/deploy"));
        self.call_within(self.http.post(&url).body(artifact), &url, self.timeouts.compile)
            .await
    }

    pub async fn rollback(&self, component: &str, to: Option<String>) -> Result<Swapped, ClientError> {
        let url = self.url(&format!("/components/{component}/rollback"));
        self.call(self.http.post(&url).json(&RollbackRequest { to }), &url)
            .await
    }

    pub async fn pause(&self, route: &str) -> Result<super::Changed, ClientError> {
        let url = self.url("/routes/pause");
        let body = super::RouteRequest { route: route.into() };
        self.call(self.http.post(&url).json(&body), &url).await
    }

    /// Every event handled under `request_id`, in order (`switchyard trace`).
    pub async fn timeline(&self, request_id: &str) -> Result<super::views::Timeline, ClientError> {
        let url = self.url("/timeline");
        self.call(self.http.get(&url).query(&[("request", request_id)]), &url)
            .await
    }

    pub async fn resume(&self, route: &str) -> Result<super::Changed, ClientError> {
        let url = self.url("/routes/resume");
        let body = super::RouteRequest { route: route.into() };
        self.call(self.http.post(&url).json(&body), &url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_made_once_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = host_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(host_token(dir.path()).unwrap(), token, "kept across starts");
    }

    async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the client gave up within its limit")
    }

    /// A host that accepts the connection and never answers: the call fails in its time,
    /// naming the address, instead of hanging the terminal.
    #[tokio::test]
    async fn a_host_that_never_answers_times_out_with_the_url_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                open.push(socket);
            }
        });
        let limit = Duration::from_millis(300);
        let client = AdminClient::with_timeouts(
            &format!("http://{addr}"),
            None,
            Timeouts {
                connect: limit,
                call: limit,
                compile: limit * 2,
            },
        );
        let err = bounded(client.status()).await.unwrap_err();
        assert!(matches!(err, ClientError::TimedOut { .. }), "{err:?}");
        let said = err.to_string();
        assert!(
            said.contains(&format!("http://{addr}/api/status")) && said.contains("within 300ms"),
            "{said}"
        );
        let err = bounded(client.deploy("order", b"\0asm".to_vec())).await.unwrap_err();
        assert!(
            matches!(err, ClientError::TimedOut { limit: l, .. } if l == limit * 2),
            "{err:?}"
        );
        held.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_a_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = AdminClient::new(&format!("http://127.0.0.1:{port}"), None)
            .status()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("is `switchyard run` running?"), "{err}");
    }
}
