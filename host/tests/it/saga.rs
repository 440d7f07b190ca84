//! The order saga of ADR-0003 through Kafka with the real handlers and the shipped
//! topics.toml: a user registers and tops up, one order is paid and notified, one runs
//! out of money. On the embedded broker with SQLite, and on Kafka with PostgreSQL.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{Value, json};
use switchyard::kafka::{Brokers, admin, producer_config};
use switchyard::service::serve;
use switchyard::store::Db;

use crate::common::{Backend, saga_routing, start_groups_at_the_end, test_db};

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &Value) {
    let body = value.to_string();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&body),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

pub(crate) async fn stored(db: &Db, component: &str, key: &str) -> Option<Value> {
    db.peek(component, key)
        .await
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

/// Polls `probe` until it yields a value, failing after 60 s with `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order_status(db: &Db, user: &str, request_id: &str) -> Option<String> {
    let id = stored(db, "order", &format!("request/{user}/{request_id}")).await?;
    let order = stored(db, "order", &format!("order/{id}")).await?;
    Some(order["status"].as_str()?.to_string())
}

async fn saga(real: bool, backend: Backend) {
    let _saga = crate::common::saga_topics(real).await;
    let dir = tempfile::tempdir().unwrap();
    let run = format!("saga{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let routing = saga_routing(dir.path(), &run);
    let brokers = if real {
        let servers = crate::common::kafka_brokers();
        let brokers = Brokers::start(Some(&servers), &routing).unwrap();
        admin::sync_topics(&brokers.client_config(), &routing).await.unwrap();
        start_groups_at_the_end(&brokers.client_config(), &routing);
        brokers
    } else {
        Brokers::start(None, &routing).unwrap()
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    let base = brokers.client_config();
    let user = format!("alice-{run}");
    let (paid, broke) = (format!("{run}-paid"), format!("{run}-broke"));

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let scenario = async {
        let producer: FutureProducer = producer_config(&base).create().unwrap();
        let mut sent = base.clone();
        sent.set("group.id", format!("{run}-observer"))
            .set("auto.offset.reset", "earliest");
        let observer: StreamConsumer = sent.create().unwrap();
        observer.subscribe(&["notifications.sent"]).unwrap();

        send(
            &producer,
            "users.registered",
            &user,
            &json!({
                "username": user, "email": format!("{user}@example.com"), "registeredAt": 1, "source": "test"
            }),
        )
        .await;
        eventually("the profile", || async {
            stored(&db, "user", &format!("profile/{user}")).await
        })
        .await;
        eventually("the account", || async {
            stored(&db, "billing", &format!("account/{user}")).await
        })
        .await;
        send(
            &producer,
            "billing.deposits",
            &user,
            &json!({
                "requestId": format!("{run}-dep"), "username": user, "amount": 25.0, "requestedAt": 2
            }),
        )
        .await;
        eventually("the deposit", || async {
            let account = stored(&db, "billing", &format!("account/{user}")).await?;
            (account["balanceMinor"] == 2500).then_some(())
        })
        .await;

        let order = |request_id: &str, quantity: i64| {
            json!({
                "requestId": request_id, "username": user,
                "items": [{"productId": "p1", "quantity": quantity, "price": 9.99}],
                "deliveryAddress": "1 Main St", "paymentMethod": "card", "createdAt": 3
            })
        };
        send(&producer, "orders.requests", &user, &order(&paid, 2)).await;
        let status = eventually("the paid order", || async {
            order_status(&db, &user, &paid)
                .await
                .filter(|s| s != "PENDING_VALIDATION")
        })
        .await;
        assert_eq!(status, "PAID");
        // 25.00 - 2 x 9.99 = 5.02, in cents, no drift.
        let account = stored(&db, "billing", &format!("account/{user}")).await.unwrap();
        assert_eq!(account["balanceMinor"], 502);

        send(&producer, "orders.requests", &user, &order(&broke, 1)).await;
        let status = eventually("the unpaid order", || async {
            order_status(&db, &user, &broke)
                .await
                .filter(|s| s != "PENDING_VALIDATION")
        })
        .await;
        assert_eq!(status, "INSUFFICIENT_FUNDS");

        // Both outcomes reach the user: the sender publishes NotificationSent for each.
        let mut notified = std::collections::BTreeMap::new();
        let start = Instant::now();
        while notified.len() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "notifications so far: {notified:?}"
            );
            let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), observer.recv()).await else {
                continue;
            };
            // The real broker's notifications.sent is shared with other runs; skip what is
            // not a notification rather than fail on someone else's message.
            let Ok(event) = serde_json::from_slice::<Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            let request = event["requestId"].as_str().unwrap_or_default().to_string();
            if request == paid || request == broke {
                assert_eq!(event["username"], user.as_str());
                assert_eq!(event["success"], true);
                notified.insert(request, event["recipient"].clone());
            }
        }
        assert_eq!(notified[&paid], format!("{user}@example.com").as_str());
        stop.send(true).unwrap();
    };
    let (served, ()) = tokio::join!(serve(&routing, db.clone(), &brokers, shutdown), scenario);
    served.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_on_the_embedded_broker_and_sqlite() {
    saga(false, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_on_kafka_and_postgres() {
    saga(true, Backend::Postgres).await;
}
