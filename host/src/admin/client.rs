//! The CLI's side of the admin API: `switchyard status`, `deploy`, `rollback`, `reload`,
//! `versions`, and the running host's brokers for `dlq`, `lag` and `topics`.

use std::path::{Path, PathBuf};

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
}

/// A client of one host's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
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
        self.call(self.http.post(&url), &url).await
    }

    pub async fn versions(&self, component: &str) -> Result<Versions, ClientError> {
        let url = self.url(&format!("/components/{component}/versions"));
        self.call(self.http.get(&url), &url).await
    }

    pub async fn deploy(&self, component: &str, artifact: Vec<u8>) -> Result<Swapped, ClientError> {
        let url = self.url(&format!("/components/{component}/deploy"));
        self.call(self.http.post(&url).body(artifact), &url).await
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
