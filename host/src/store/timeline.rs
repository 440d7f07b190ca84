//! What the inbox knows about one business request and about recent throughput: every
//! event handled under a `requestId`, in handled order (`switchyard trace`, the console's
//! timeline), and how many events each route handled per interval (the console's
//! sparklines). Both read the inbox rows the invocations already write; nothing extra is
//! recorded on the hot path.

use serde::{Deserialize, Serialize};

use super::{Db, StoreError, on_pool};

/// One event handled under a request: where it sat, what ran it, how it ended and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub component: String,
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub handled_at_ms: i64,
    /// The component version that ran it (absent on rows older than versions).
    pub version: Option<String>,
    pub activation: Option<i64>,
    pub trace_id: Option<String>,
    /// `committed` or `dead-lettered`.
    pub outcome: Option<String>,
}

/// Events one route (topic and component) handled in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandledCount {
    pub topic: String,
    pub component: String,
    /// Index of the interval counted from the window's start.
    pub bucket: i64,
    pub outcome: String,
    pub events: i64,
}

type TimelineRow = (
    String,
    String,
    String,
    i32,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

impl Db {
    /// Every inbox row of `request_id` in the order the events were handled (ties by
    /// topic, partition and offset), at most `limit`. Rows leave with the inbox's dedup
    /// window, so an old request's timeline shrinks to nothing.
    pub async fn request_timeline(&self, request_id: &str, limit: i64) -> Result<Vec<TimelineEntry>, StoreError> {
        const SQL: &str = "SELECT component, event_id, topic, partition, \"offset\", handled_at_ms, \
                           version, activation, trace_id, outcome FROM inbox WHERE request_id = $1 \
                           ORDER BY handled_at_ms, topic, partition, \"offset\", component LIMIT $2";
        let rows: Vec<TimelineRow> = on_pool!(self, |p| sqlx::query_as(SQL)
            .bind(request_id)
            .bind(limit)
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(
                |(
                    component,
                    event_id,
                    topic,
                    partition,
                    offset,
                    handled_at_ms,
                    version,
                    activation,
                    trace_id,
                    outcome,
                )| {
                    TimelineEntry {
                        component,
                        event_id,
                        topic,
                        partition,
                        offset,
                        handled_at_ms,
                        version,
                        activation,
                        trace_id,
                        outcome,
                    }
                },
            )
            .collect())
    }

    /// Events handled per topic, component and outcome in each `interval_ms` from
    /// `since_ms` on (the inbox's `handled_at_ms` index bounds the scan to the window).
    pub async fn handled_counts(&self, since_ms: i64, interval_ms: i64) -> Result<Vec<HandledCount>, StoreError> {
        const SQL: &str = "SELECT topic, component, (handled_at_ms - $1) / $2 AS bucket, \
                           COALESCE(outcome, 'committed') AS outcome, COUNT(*) AS events FROM inbox \
                           WHERE handled_at_ms >= $1 \
                           GROUP BY topic, component, bucket, COALESCE(outcome, 'committed')";
        let rows: Vec<(String, String, i64, String, i64)> = on_pool!(self, |p| sqlx::query_as(SQL)
            .bind(since_ms)
            .bind(interval_ms.max(1))
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(topic, component, bucket, outcome, events)| HandledCount {
                topic,
                component,
                bucket,
                outcome,
                events,
            })
            .collect())
    }
}
