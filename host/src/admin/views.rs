//! What the console and `switchyard trace` show, as typed JSON under `/api` (behind the
//! admin token like the rest): lag per route and partition, events handled per route per
//! interval, the dead letters with their payload, headers and reason (and replay), and the
//! timeline of one `requestId`.
//!
//! Kafka reads here block (librdkafka), so they run on the blocking pool; lag is cached for
//! [`LAG_CACHE`] so a console left open on several screens costs one read per period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::gateway::problem::Problem;
use crate::kafka::admin::{DeadLetter, Reading, ReplayError, list_dead_letters, read_dead_letter, replay};
use crate::live::Live;
use crate::live::routes::route_key;
use crate::store::now_ms;
use crate::store::timeline::TimelineEntry;

/// How long a lag reading is served before the brokers are asked again.
pub const LAG_CACHE: Duration = Duration::from_millis(1500);
/// Most events one timeline returns.
pub const TIMELINE_LIMIT: i64 = 1000;
/// Bounds of a throughput window: interval length and number of intervals.
pub const INTERVAL_MS: std::ops::RangeInclusive<i64> = 100..=3_600_000;
pub const MAX_BUCKETS: i64 = 720;

/// Where one group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset (0 before its first commit).
    pub committed: i64,
    pub high_watermark: i64,
    /// Events on the partition the group has not committed yet.
    pub lag: i64,
}

/// One route's lag, partition by partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLag {
    pub key: String,
    pub topic: String,
    pub component: String,
    pub group: String,
    /// `running` or `paused`.
    pub state: String,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
    /// Why the offsets could not be read (then `partitions` is empty).
    pub error: Option<String>,
}

/// `GET /api/lag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagView {
    /// When the brokers were read.
    pub read_at_ms: i64,
    pub routes: Vec<RouteLag>,
}

/// Events one route handled per interval, oldest interval first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteThroughput {
    pub key: String,
    pub topic: String,
    pub component: String,
    /// Committed events per interval.
    pub handled: Vec<i64>,
    /// Dead-lettered events per interval.
    pub dead_lettered: Vec<i64>,
}

/// `GET /api/throughput?interval_ms=&buckets=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThroughputView {
    /// Start of the first interval.
    pub since_ms: i64,
    pub interval_ms: i64,
    pub buckets: i64,
    pub routes: Vec<RouteThroughput>,
}

/// One dead letter with what it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub dlq_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub component: String,
    pub source_topic: String,
    pub source_partition: String,
    pub source_offset: String,
    /// `retryable`, `fatal`, `trap`, `deadline`, `memory`, ...
    pub kind: String,
    pub reason: String,
    pub attempts: String,
    pub failed_at_ms: String,
    /// Signed by a host of this database: only these are replayed.
    pub signed: bool,
    pub key: Option<String>,
    /// The original payload as text (invalid UTF-8 replaced, see `payload_utf8`); in a
    /// listing at most its first 16 KiB (see `payload_bytes`).
    pub payload: String,
    pub payload_utf8: bool,
    /// The payload's whole length; more than `payload` holds when the listing cut it.
    pub payload_bytes: usize,
    pub headers: Vec<(String, String)>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(l: &DeadLetter) -> DeadLetterView {
        DeadLetterView {
            dlq_topic: l.dlq_topic.clone(),
            partition: l.partition,
            offset: l.offset,
            event_id: l.event_id.clone(),
            component: l.component.clone(),
            source_topic: l.source_topic.clone(),
            source_partition: l.source_partition.clone(),
            source_offset: l.source_offset.clone(),
            kind: l.kind.clone(),
            reason: l.reason.clone(),
            attempts: l.attempts.clone(),
            failed_at_ms: l.failed_at_ms.clone(),
            signed: l.signed,
            key: l.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: String::from_utf8_lossy(&l.payload).into_owned(),
            // A cut can split a character: only an error before the end is invalid text.
            payload_utf8: match std::str::from_utf8(&l.payload) {
                Ok(_) => true,
                Err(e) => l.payload.len() < l.payload_bytes && e.error_len().is_none(),
            },
            payload_bytes: l.payload_bytes,
            headers: l.headers.clone(),
        }
    }
}

/// `GET /api/dead-letters[?topic=]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersView {
    pub topics: Vec<String>,
    pub letters: Vec<DeadLetterView>,
    /// Dead letters not read in time: the listing is incomplete when this is not 0.
    pub unread: i64,
    /// Older dead letters not listed: each partition lists its newest 500.
    #[serde(default)]
    pub older: i64,
}

/// `POST /api/dead-letters/replay`: the dead letter at `topic[partition]@offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a replay sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed: usize,
    /// Where it went: the topic and partition it failed on.
    pub topic: String,
    pub partition: String,
    pub component: String,
}

/// `GET /api/timeline?request=ID`: every event handled under one request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub request_id: String,
    pub events: Vec<TimelineEntry>,
    /// More than [`TIMELINE_LIMIT`] events: the first ones are shown.
    pub truncated: bool,
}

struct Views {
    live: Arc<Live>,
    lag: tokio::sync::Mutex<Option<(Instant, LagView)>>,
}

/// The console's data routes, to merge under `/api` (inside the token guard).
pub fn router<S>(live: Arc<Live>) -> Router<S> {
    let views = Arc::new(Views {
        live,
        lag: tokio::sync::Mutex::new(None),
    });
    Router::new()
        .route("/lag", get(lag))
        .route("/throughput", get(throughput))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay_one))
        .route("/timeline", get(timeline))
        .with_state(views)
}

async fn lag(State(views): State<Arc<Views>>) -> Result<Json<LagView>, Problem> {
    // Held while reading: concurrent callers wait for the one reading, then share it.
    let mut cached = views.lag.lock().await;
    if let Some((at, view)) = cached.as_ref()
        && at.elapsed() < LAG_CACHE
    {
        return Ok(Json(view.clone()));
    }
    let routing = views.live.routing();
    let states = views.live.routes().status().await;
    let base = views.live.routes().deps().consumer_base.clone();
    // The reader's consumer needs the runtime's context (rdkafka's stream consumer).
    let runtime = tokio::runtime::Handle::current();
    let view = tokio::task::spawn_blocking(move || {
        // One thread per route: each read waits on the group coordinator and the leaders.
        let routes = std::thread::scope(|scope| {
            let reads: Vec<_> = states
                .into_iter()
                .filter_map(|status| {
                    let route = routing.routes.iter().find(|r| route_key(r) == status.key)?;
                    let partitions = routing.topics.get(&route.topic).map_or(1, |t| t.partitions);
                    let (base, runtime) = (&base, &runtime);
                    let read = scope.spawn(move || {
                        let _context = runtime.enter();
                        crate::kafka::dispatch::group_lag(base, route, partitions)
                    });
                    Some((status, read))
                })
                .collect();
            reads
                .into_iter()
                .map(|(status, read)| {
                    let read = read
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the lag reader panicked")));
                    let (partitions, error) = match read {
                        Ok(rows) => (
                            rows.into_iter()
                                .map(|(partition, committed, lag)| PartitionLag {
                                    partition,
                                    committed,
                                    high_watermark: committed + lag,
                                    lag,
                                })
                                .collect::<Vec<_>>(),
                            None,
                        ),
                        Err(err) => (Vec::new(), Some(format!("{err:#}"))),
                    };
                    RouteLag {
                        total_lag: partitions.iter().map(|p| p.lag.max(0)).sum(),
                        key: status.key,
                        topic: status.topic,
                        component: status.component,
                        group: status.group,
                        state: status.state,
                        partitions,
                        error,
                    }
                })
                .collect()
        });
        LagView {
            read_at_ms: now_ms(),
            routes,
        }
    })
    .await
    .map_err(|e| Problem::internal("reading lag", &e))?;
    *cached = Some((Instant::now(), view.clone()));
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
struct ThroughputQuery {
    interval_ms: Option<i64>,
    buckets: Option<i64>,
}

fn bad_request(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad Request", detail)
}

async fn throughput(
    State(views): State<Arc<Views>>,
    Query(query): Query<ThroughputQuery>,
) -> Result<Json<ThroughputView>, Problem> {
    let interval_ms = query.interval_ms.unwrap_or(5_000);
    let buckets = query.buckets.unwrap_or(60);
    if !INTERVAL_MS.contains(&interval_ms) {
        return Err(bad_request(format!(
            "interval_ms={interval_ms} is out of range; give {}..={} milliseconds",
            INTERVAL_MS.start(),
            INTERVAL_MS.end()
        )));
    }
    if !(1..=MAX_BUCKETS).contains(&buckets) {
        return Err(bad_request(format!(
            "buckets={buckets} is out of range; give 1..={MAX_BUCKETS}"
        )));
    }
    // Aligned to the interval, so consecutive reads agree on their shared intervals.
    let since_ms = (now_ms() / interval_ms - (buckets - 1)) * interval_ms;
    let counts = views
        .live
        .routes()
        .deps()
        .db
        .handled_counts(since_ms, interval_ms)
        .await
        .map_err(|e| Problem::internal("counting handled events", &e))?;
    let routing = views.live.routing();
    let mut routes: Vec<RouteThroughput> = routing
        .routes
        .iter()
        .map(|r| RouteThroughput {
            key: route_key(r),
            topic: r.topic.to_string(),
            component: r.component.to_string(),
            handled: vec![0; buckets as usize],
            dead_lettered: vec![0; buckets as usize],
        })
        .collect();
    for count in counts {
        let Some(route) = routes
            .iter_mut()
            .find(|r| r.topic == count.topic && r.component == count.component)
        else {
            continue; // a route since removed
        };
        let Some(slot) = usize::try_from(count.bucket).ok().filter(|b| *b < buckets as usize) else {
            continue; // handled after `now` was read
        };
        let series = if count.outcome == "dead-lettered" {
            &mut route.dead_lettered
        } else {
            &mut route.handled
        };
        series[slot] += count.events;
    }
    Ok(Json(ThroughputView {
        since_ms,
        interval_ms,
        buckets,
        routes,
    }))
}

#[derive(Debug, Deserialize)]
struct DeadLettersQuery {
    topic: Option<String>,
}

/// The dead-letter topics of the running routing, or `topic` when it is one of them.
fn dead_letter_topics(live: &Live, topic: Option<&str>) -> Result<Vec<String>, Problem> {
    let declared: Vec<String> = live
        .routing()
        .dead_letter_topics()
        .iter()
        .map(|t| t.to_string())
        .collect();
    match topic {
        None => Ok(declared),
        Some(t) if declared.iter().any(|d| d == t) => Ok(vec![t.to_string()]),
        Some(t) => Err(Problem::not_found(format!(
            "{t:?} is not a dead-letter topic of the running routing; these are: {}",
            declared.join(", ")
        ))),
    }
}

async fn read_letters(views: &Views, topics: Vec<String>) -> Result<crate::kafka::admin::Listing, Problem> {
    let base = views.live.routes().deps().consumer_base.clone();
    let signer = views.live.routes().deps().db.signer().clone();
    tokio::task::spawn_blocking(move || list_dead_letters(&base, &topics, &signer, Reading::Newest))
        .await
        .map_err(|e| Problem::internal("reading dead letters", &e))?
        .map_err(|e| Problem::unavailable(format!("the dead letters could not be read: {e:#}")))
}

async fn dead_letters(
    State(views): State<Arc<Views>>,
    Query(query): Query<DeadLettersQuery>,
) -> Result<Json<DeadLettersView>, Problem> {
    let topics = dead_letter_topics(&views.live, query.topic.as_deref())?;
    let listing = read_letters(&views, topics.clone()).await?;
    Ok(Json(DeadLettersView {
        topics,
        letters: listing.letters.iter().map(DeadLetterView::from).collect(),
        unread: listing.unread,
        older: listing.older,
    }))
}

async fn replay_one(
    State(views): State<Arc<Views>>,
    Json(request): Json<ReplayRequest>,
) -> Result<Json<Replayed>, Problem> {
    dead_letter_topics(&views.live, Some(&request.topic))?;
    let at = format!("{}[{}]@{}", request.topic, request.partition, request.offset);
    let base = views.live.routes().deps().consumer_base.clone();
    let signer = views.live.routes().deps().db.signer().clone();
    // Read straight from its offset, whole: however many letters the topic holds.
    let (b, s, r) = (base.clone(), signer.clone(), request.clone());
    let letter = tokio::task::spawn_blocking(move || read_dead_letter(&b, &r.topic, r.partition, r.offset, &s))
        .await
        .map_err(|e| Problem::internal("reading a dead letter", &e))?
        .map_err(|e| Problem::unavailable(format!("{at} could not be read: {e:#}")))?;
    let Some(letter) = letter else {
        return Err(Problem::not_found(format!(
            "no dead letter at {at}; the list shows the ones there are"
        )));
    };
    let routing = views.live.routing();
    let replayed = replay(&base, &routing, &signer, std::slice::from_ref(&letter))
        .await
        .map_err(|err| match err {
            ReplayError::Send { .. } => Problem::unavailable(err.to_string()),
            _ => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "replay-refused",
                "Replay refused",
                err.to_string(),
            ),
        })?;
    tracing::info!(dead_letter = %at, component = %letter.component, "dead letter replayed from the admin API");
    Ok(Json(Replayed {
        replayed,
        topic: letter.source_topic,
        partition: letter.source_partition,
        component: letter.component,
    }))
}

#[derive(Debug, Deserialize)]
struct TimelineQuery {
    request: Option<String>,
}

async fn timeline(
    State(views): State<Arc<Views>>,
    Query(query): Query<TimelineQuery>,
) -> Result<Json<Timeline>, Problem> {
    let request_id = query.request.unwrap_or_default().trim().to_string();
    if request_id.is_empty() {
        return Err(bad_request(
            "give the request id to look up: /api/timeline?request=<requestId>".into(),
        ));
    }
    let mut events = views
        .live
        .routes()
        .deps()
        .db
        .request_timeline(&request_id, TIMELINE_LIMIT + 1)
        .await
        .map_err(|e| Problem::internal("reading the request timeline", &e))?;
    if events.is_empty() {
        return Err(Problem::not_found(format!(
            "no handled event carries request id {request_id:?} (the inbox keeps events for its dedup window)"
        )));
    }
    let truncated = events.len() as i64 > TIMELINE_LIMIT;
    events.truncate(TIMELINE_LIMIT as usize);
    Ok(Json(Timeline {
        request_id,
        events,
        truncated,
    }))
}
