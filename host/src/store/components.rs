//! Component versions and activations: every artifact a component may run (its bytes, so
//! any host on the database can load it) and the ordered log of which version was made
//! active, by whom and why. The newest activation of a component is its active version.

use serde::Serialize;

use super::{Db, StoreError, now_ms, on_conn, on_pool};

/// One row of the activation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Activation {
    pub seq: i64,
    pub component: String,
    pub version: String,
    /// `start`, `file`, `deploy` or `rollback`.
    pub reason: String,
    pub host: String,
    pub activated_at_ms: i64,
}

/// A stored version of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoredVersion {
    pub version: String,
    /// `file:<path>` or `api`.
    pub source: String,
    pub size_bytes: i64,
    pub created_at_ms: i64,
}

type ActivationRow = (i64, String, String, String, String, i64);

fn activation((seq, component, version, reason, host, activated_at_ms): ActivationRow) -> Activation {
    Activation {
        seq,
        component,
        version,
        reason,
        host,
        activated_at_ms,
    }
}

impl Db {
    /// Stores `artifact` as `version` of `component` (once: a version is its content) and
    /// makes it active, in one transaction. Returns the new activation.
    pub async fn activate_version(
        &self,
        component: &str,
        version: &str,
        artifact: &[u8],
        source: &str,
        reason: &str,
        host: &str,
    ) -> Result<Activation, StoreError> {
        const VERSION: &str = "INSERT INTO component_versions (component, version, artifact, source, created_at_ms) \
                               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (component, version) DO NOTHING";
        const ACTIVATE: &str = "INSERT INTO component_activations (component, version, reason, host, activated_at_ms) \
                                VALUES ($1, $2, $3, $4, $5) RETURNING seq";
        let at = now_ms();
        let mut tx = self.begin().await?;
        on_conn!(&mut tx, |c| sqlx::query(VERSION)
            .bind(component)
            .bind(version)
            .bind(artifact)
            .bind(source)
            .bind(at)
            .execute(c)
            .await?
            .rows_affected());
        let seq: i64 = on_conn!(&mut tx, |c| sqlx::query_scalar(ACTIVATE)
            .bind(component)
            .bind(version)
            .bind(reason)
            .bind(host)
            .bind(at)
            .fetch_one(c)
            .await?);
        tx.commit().await?;
        Ok(Activation {
            seq,
            component: component.to_string(),
            version: version.to_string(),
            reason: reason.to_string(),
            host: host.to_string(),
            activated_at_ms: at,
        })
    }

    /// The newest activation of every component.
    pub async fn active_versions(&self) -> Result<Vec<Activation>, StoreError> {
        const SQL: &str = "SELECT a.seq, a.component, a.version, a.reason, a.host, a.activated_at_ms \
                           FROM component_activations a \
                           JOIN (SELECT component, MAX(seq) AS seq FROM component_activations GROUP BY component) m \
                           ON a.seq = m.seq ORDER BY a.component";
        let rows: Vec<ActivationRow> = on_pool!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?);
        Ok(rows.into_iter().map(activation).collect())
    }

    /// The activations of `component`, newest first, at most `limit`.
    pub async fn activation_history(&self, component: &str, limit: i64) -> Result<Vec<Activation>, StoreError> {
        const SQL: &str = "SELECT seq, component, version, reason, host, activated_at_ms FROM component_activations \
                           WHERE component = $1 ORDER BY seq DESC LIMIT $2";
        let rows: Vec<ActivationRow> = on_pool!(self, |p| sqlx::query_as(SQL)
            .bind(component)
            .bind(limit)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(activation).collect())
    }

    /// The version the artifact file last brought in (an activation at start or on a
    /// file change), to tell at start whether the file changed while no host ran.
    pub async fn last_file_version(&self, component: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT version FROM component_activations \
                           WHERE component = $1 AND reason IN ('start', 'file') ORDER BY seq DESC LIMIT 1";
        Ok(on_pool!(self, |p| sqlx::query_scalar(SQL)
            .bind(component)
            .fetch_optional(p)
            .await?))
    }

    /// The bytes of a stored version.
    pub async fn version_artifact(&self, component: &str, version: &str) -> Result<Option<Vec<u8>>, StoreError> {
        const SQL: &str = "SELECT artifact FROM component_versions WHERE component = $1 AND version = $2";
        Ok(on_pool!(self, |p| sqlx::query_scalar(SQL)
            .bind(component)
            .bind(version)
            .fetch_optional(p)
            .await?))
    }

    /// The stored versions of `component`, newest first.
    pub async fn stored_versions(&self, component: &str) -> Result<Vec<StoredVersion>, StoreError> {
        const SQL: &str = "SELECT version, source, CAST(LENGTH(artifact) AS BIGINT), created_at_ms FROM component_versions \
                           WHERE component = $1 ORDER BY created_at_ms DESC, version";
        let rows: Vec<(String, String, i64, i64)> =
            on_pool!(self, |p| sqlx::query_as(SQL).bind(component).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(version, source, size_bytes, created_at_ms)| StoredVersion {
                version,
                source,
                size_bytes,
                created_at_ms,
            })
            .collect())
    }

    /// Deletes the stored artifacts of `component` beyond the `keep` most recently
    /// activated versions (the active one always stays). Returns how many went.
    pub async fn prune_versions(&self, component: &str, keep: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM component_versions WHERE component = $1 AND version NOT IN \
                           (SELECT version FROM component_activations WHERE component = $1 \
                            GROUP BY version ORDER BY MAX(seq) DESC LIMIT $2)";
        Ok(on_pool!(self, |p| sqlx::query(SQL)
            .bind(component)
            .bind(keep)
            .execute(p)
            .await?
            .rows_affected()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite;

    #[tokio::test]
    async fn the_newest_activation_is_active_and_old_artifacts_are_pruned() {
        let (_dir, db) = sqlite().await;
        let a = db
            .activate_version("c", "v1", b"one", "file:x", "start", "h")
            .await
            .unwrap();
        let b = db
            .activate_version("c", "v2", b"two", "api", "deploy", "h")
            .await
            .unwrap();
        let c = db
            .activate_version("c", "v1", b"one", "api", "rollback", "h")
            .await
            .unwrap();
        assert!(a.seq < b.seq && b.seq < c.seq);
        let active = db.active_versions().await.unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(
            (active[0].version.as_str(), active[0].reason.as_str()),
            ("v1", "rollback")
        );
        assert_eq!(db.last_file_version("c").await.unwrap().as_deref(), Some("v1"));
        assert_eq!(
            db.version_artifact("c", "v2").await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(db.stored_versions("c").await.unwrap().len(), 2);
        assert_eq!(db.prune_versions("c", 1).await.unwrap(), 1);
        assert_eq!(db.version_artifact("c", "v2").await.unwrap(), None);
        assert!(db.version_artifact("c", "v1").await.unwrap().is_some());
    }
}
