//! The HTTP gateway and mini_auth.
//!
//! - `routes`: every route and error path through `tower::ServiceExt::oneshot`, on a
//!   real database and cache (no broker traffic needed).
//! - `tokens`: tokens signed by PyJWT (an independent implementation) accepted, every
//!   bad token refused.
//! - `e2e`: the whole system over HTTP, embedded and on Kafka + PostgreSQL + Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use switchyard::gateway::{self, Gateway, GatewayArgs, GatewayConfig, StatusCache};
use switchyard::kafka::Brokers;
use switchyard::store::Db;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::common::{Backend, TestDb, test_db};

const SECRET: &str = "a-test-secret-that-is-32-bytes-or-more";

fn args(reply_timeout_ms: u64) -> GatewayArgs {
    GatewayArgs {
        http_addr: "127.0.0.1:0".into(),
        jwt_secret: Some(SECRET.into()),
        admins: vec!["root".into()],
        reply_timeout_ms,
        body_limit: 4096,
        ..GatewayArgs::default()
    }
}

/// A [`switchyard::gateway::ComponentQueries`] over the real components of the shipped
/// routing.
async fn queries(db: &Db) -> Arc<dyn gateway::ComponentQueries> {
    let dir = tempfile::tempdir().unwrap();
    let routing = crate::common::saga_routing(dir.path(), "routes");
    switchyard::gateway_components::load(&routing, db).await.unwrap()
}

/// The gateway's router over a fresh database with the in-process cache.
struct Routes {
    gw: Arc<Gateway>,
    _db: Option<TestDb>,
    _brokers: Brokers,
    _stop: watch::Sender<bool>,
}

impl Routes {
    async fn new(config: GatewayConfig, backend: Backend) -> Routes {
        let db = test_db(backend).await.unwrap();
        Routes::on(config, db.db.clone(), Some(db)).await
    }

    async fn on(config: GatewayConfig, db: Db, guard: Option<TestDb>) -> Routes {
        let brokers = Brokers::start(
            None,
            &crate::common::saga_routing(tempfile::tempdir().unwrap().path(), "r"),
        )
        .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let gw = Gateway::new(
            config,
            db.clone(),
            StatusCache::memory(),
            queries(&db).await,
            brokers.client_config(),
            shutdown,
        )
        .await
        .unwrap();
        Routes {
            gw,
            _db: guard,
            _brokers: brokers,
            _stop: stop,
        }
    }

    async fn hs256() -> Routes {
        Routes::new(GatewayConfig::from_args(&args(300)).unwrap(), Backend::Sqlite).await
    }

    /// Sends one request; returns status, headers and the body as JSON (Null if empty).
    async fn call(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = gateway::router(self.gw.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, headers, body)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, axum::http::HeaderMap, Value) {
        self.call(request("POST", path, token, Some(body))).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, axum::http::HeaderMap, Value) {
        self.call(request("GET", path, token, None)).await
    }

    async fn register(&self, username: &str) -> String {
        let (status, _, body) = self
            .post(
                "/auth/register",
                None,
                json!({"username": username, "email": format!("{username}@example.org"), "password": "password-1"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, body) = self
            .post(
                "/auth/login",
                None,
                json!({"username": username, "password": "password-1"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["accessToken"].as_str().unwrap().to_string()
    }
}

fn request(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

fn assert_problem(status: StatusCode, headers: &axum::http::HeaderMap, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json", "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert!(body["type"].as_str().unwrap().starts_with("https://"), "{body}");
    assert!(!body["title"].as_str().unwrap().is_empty(), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
}

/// Unsent outbox rows as (topic, key, payload, headers).
async fn outbox(db: &Db) -> Vec<(String, String, Value, Vec<(String, String)>)> {
    db.unsent_outbox(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.message.topic,
                String::from_utf8(row.message.key.unwrap_or_default()).unwrap(),
                serde_json::from_slice(&row.message.payload).unwrap(),
                row.message.headers,
            )
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no header {name} in {headers:?}"))
}

mod routes {
    use super::*;

    async fn register_writes_the_user_and_its_event_in_one_transaction(db: &Db) {
        let r = Routes::on(GatewayConfig::from_args(&args(300)).unwrap(), db.clone(), None).await;
        let db = r.gw.db.clone();
        let (status, _, body) = r
            .post(
                "/auth/register",
                None,
                json!({"username": "alice", "email": "alice@example.org", "password": "password-1"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["roles"], json!(["user"]));
        let rows = outbox(&db).await;
        assert_eq!(rows.len(), 1);
        let (topic, key, payload, headers) = &rows[0];
        assert_eq!(topic, "users.registered");
        assert_eq!(key, "alice");
        assert_eq!(payload["username"], "alice");
        assert_eq!(payload["email"], "alice@example.org");
        assert_eq!(payload["source"], "gateway");
        assert!(payload["registeredAt"].as_i64().unwrap() > 0);
        assert_eq!(header(headers, "switchyard-source"), "gateway");
        assert!(!header(headers, "switchyard-event-id").is_empty());
        assert!(header(headers, "traceparent").starts_with("00-"));

        // Taken: 409, and nothing more is queued.
        let (status, headers, body) = r
            .post(
                "/auth/register",
                None,
                json!({"username": "alice", "email": "other@example.org", "password": "password-2"}),
            )
            .await;
        assert_problem(status, &headers, &body, StatusCode::CONFLICT);
        assert_eq!(outbox(&db).await.len(), 1);
    }

    /// Input no account or order can have gets the answer for a missing one, on either
    /// database: a NUL in a login or an e-mail (PostgreSQL's text refuses it, which was
    /// a 500), a password longer than any accepted, an order id longer than any order's
    /// keys hold (the order component's key check failed, a 500 too).
    async fn hostile_names_and_ids_get_answers_not_server_errors(db: &Db) {
        let r = Routes::on(GatewayConfig::from_args(&args(300)).unwrap(), db.clone(), None).await;
        let token = r.register("alice").await;
        for (username, password) in [("al\u{0}ice", "long enough"), ("alice", &"x".repeat(129))] {
            let login = json!({"username": username, "password": password});
            let (status, headers, body) = r.post("/auth/login", None, login).await;
            assert_problem(status, &headers, &body, StatusCode::UNAUTHORIZED);
        }
        let nul_email = json!({"username": "bob", "email": "b\u{0}@example.org", "password": "long enough"});
        let (status, headers, body) = r.post("/auth/register", None, nul_email).await;
        assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
        for id in ["a".repeat(600), "a%00b".to_string()] {
            let (status, headers, body) = r.get(&format!("/orders/{id}"), Some(&token)).await;
            assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
        }
    }

    on_both_backends!(
        register_writes_the_user_and_its_event_in_one_transaction,
        hostile_names_and_ids_get_answers_not_server_errors
    );

    #[tokio::test]
    async fn bad_registrations_name_each_field_and_axum_rejections_are_problems() {
        let r = Routes::hs256().await;
        let (status, headers, body) = r
            .post(
                "/auth/register",
                None,
                json!({"username": "x", "email": "nope", "password": "short"}),
            )
            .await;
        assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["username", "email", "password"]);

        // Missing field, malformed JSON, wrong content type, body too large.
        let (status, headers, body) = r.post("/auth/register", None, json!({"username": "bob"})).await;
        assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["detail"].as_str().unwrap().contains("email"), "{body}");
        let raw = |content_type: &str, body: String| {
            Request::builder()
                .method("POST")
                .uri("/auth/register")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap()
        };
        let (status, headers, body) = r.call(raw("application/json", "{not json".into())).await;
        assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
        let (status, headers, body) = r.call(raw("text/plain", "{}".into())).await;
        assert_problem(status, &headers, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let big = json!({"username": "bob", "email": "b@example.org", "password": "x".repeat(10_000)});
        let (status, headers, body) = r.call(raw("application/json", big.to_string())).await;
        assert_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(outbox(&r.gw.db).await.is_empty());

        // Unknown route and wrong method.
        let (status, headers, body) = r.get("/nowhere", None).await;
        assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
        let (status, headers, body) = r.call(request("DELETE", "/auth/login", None, None)).await;
        assert_problem(status, &headers, &body, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn login_issues_a_token_and_refuses_alike_unknown_users_and_wrong_passwords() {
        let r = Routes::hs256().await;
        let token = r.register("alice").await;
        let decode = |token: &str| {
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_required_spec_claims(&["sub", "exp", "iat"]);
            let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims
        };
        let claims = decode(&token);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["roles"], json!(["user"]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);

        let login = |user: &str, password: &str| json!({"username": user, "password": password});
        let started = Instant::now();
        let (status, headers, wrong) = r.post("/auth/login", None, login("alice", "wrong-password")).await;
        let wrong_time = started.elapsed();
        assert_problem(status, &headers, &wrong, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["www-authenticate"], "Bearer");
        let started = Instant::now();
        let (status, headers, unknown) = r.post("/auth/login", None, login("nobody", "wrong-password")).await;
        let unknown_time = started.elapsed();
        assert_problem(status, &headers, &unknown, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong, unknown, "the same answer for both");
        // Both verify one argon2id hash: an unknown user is not answered early.
        assert!(
            unknown_time * 3 > wrong_time,
            "unknown user {unknown_time:?} vs wrong password {wrong_time:?}"
        );

        // Admins from configuration: `user` and `admin`.
        let root = r.register("root").await;
        let (status, _, body) = r.get("/orders/none", Some(&root)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let claims = decode(&root);
        assert_eq!(claims["roles"], json!(["user", "admin"]));
    }

    #[tokio::test]
    async fn orders_are_queued_with_the_token_identity_and_answered_by_their_status() {
        let r = Routes::hs256().await;
        let token = r.register("alice").await;
        let db = r.gw.db.clone();
        let before = outbox(&db).await.len();

        // Client-sent identity headers are replaced by the token's.
        let mut req = request(
            "POST",
            "/orders",
            Some(&token),
            Some(
                json!({"items": [{"productId": "p1", "quantity": 1, "price": 1.5}], "deliveryAddress": "1 Main St", "paymentMethod": "card"}),
            ),
        );
        req.headers_mut().insert("x-username", "mallory".parse().unwrap());
        req.headers_mut().insert("x-roles", "admin".parse().unwrap());
        let call = tokio::spawn({
            let gw = r.gw.clone();
            async move { gateway::router(gw).oneshot(req).await.unwrap() }
        });
        // The order reaches the outbox; answer it as the orders.status consumer would.
        let start = Instant::now();
        let row = loop {
            let rows = outbox(&db).await;
            if rows.len() > before {
                break rows.last().unwrap().clone();
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no order queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (topic, key, payload, headers) = &row;
        assert_eq!(topic, "orders.requests");
        assert_eq!(key, "alice");
        assert_eq!(payload["username"], "alice");
        assert_eq!(header(headers, "X-Username"), "alice");
        assert_eq!(header(headers, "X-Roles"), "user");
        let request_id = payload["requestId"].as_str().unwrap().to_string();
        assert_eq!(header(headers, "switchyard-request-id"), request_id);
        assert_eq!(payload["items"][0]["price"], 1.5);
        let status = |s: &str, metadata: Value| {
            serde_json::from_value::<gateway::status::OrderStatus>(json!({
                "requestId": request_id, "orderId": 7, "username": "alice", "status": s,
                "previousStatus": "PENDING_VALIDATION", "updatedAt": 5, "metadata": metadata
            }))
            .unwrap()
        };
        r.gw.cache.put(status("PAID", json!({"amount": 1.5}))).await.unwrap();
        let response = call.await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["location"], format!("/orders/{request_id}").as_str());
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
        assert_eq!(body["status"], "PAID");
        assert_eq!(body["orderId"], 7);

        // Readable by its owner only.
        let (code, _, view) = r.get(&format!("/orders/{request_id}"), Some(&token)).await;
        assert_eq!(code, StatusCode::OK, "{view}");
        assert_eq!(view["status"]["status"], "PAID");
        let bob = r.register("bob").await;
        let (code, headers, body) = r.get(&format!("/orders/{request_id}"), Some(&bob)).await;
        assert_problem(code, &headers, &body, StatusCode::NOT_FOUND);

        // The answers for the other final statuses.
        let (code, body) = gateway::orders::answer_of(
            &request_id,
            Some(&status(
                "INSUFFICIENT_FUNDS",
                json!({"failureReason": "INSUFFICIENT_FUNDS"}),
            )),
        );
        assert_eq!(code, 402, "{body}");
        let (code, body) = gateway::orders::answer_of(
            &request_id,
            Some(&status("REJECTED", json!({"reason": "items is empty"}))),
        );
        assert_eq!(code, 422);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["detail"], "items is empty");
        assert_eq!(body["order"]["status"], "REJECTED");
        let (code, _) = gateway::orders::answer_of(&request_id, Some(&status("PAYMENT_TIMEOUT", json!({}))));
        assert_eq!(code, 402);
    }

    #[tokio::test]
    async fn reply_timeout_answers_202_and_idempotency_keys_replay_refuse_and_conflict() {
        // No saga behind this gateway: nothing answers until the test does.
        let r = Routes::new(GatewayConfig::from_args(&args(1500)).unwrap(), Backend::Sqlite).await;
        let token = r.register("alice").await;
        let order = json!({"items": [{"productId": "p1", "quantity": 1, "price": 2.0}], "deliveryAddress": "x", "paymentMethod": "card"});
        let keyed = |key: &str, body: &Value| {
            let mut req = request("POST", "/orders", Some(&token), Some(body.clone()));
            req.headers_mut().insert("idempotency-key", key.parse().unwrap());
            req
        };
        let first = tokio::spawn({
            let gw = r.gw.clone();
            let req = keyed("\"k-1\"", &order);
            async move { gateway::router(gw).oneshot(req).await.unwrap() }
        });
        let queued = || async {
            outbox(&r.gw.db)
                .await
                .iter()
                .filter(|(t, ..)| t == "orders.requests")
                .count()
        };
        let start = Instant::now();
        while queued().await == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "no order queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // While the first request waits: the same key is 409, another body 422.
        let (status, headers, body) = r.call(keyed("k-1", &order)).await;
        assert_problem(status, &headers, &body, StatusCode::CONFLICT);
        let other = json!({"items": [{"productId": "p2", "quantity": 1, "price": 2.0}], "deliveryAddress": "x", "paymentMethod": "card"});
        let (status, headers, body) = r.call(keyed("k-1", &other)).await;
        assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);

        // The reply timeout passes: 202 with Location.
        let response = first.await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let first: Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
        let request_id = first["requestId"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/orders/{request_id}"));
        assert_eq!(first["status"], "PENDING");

        // The answer arrives; a retry gets it, and so does every later one.
        let paid: gateway::status::OrderStatus = serde_json::from_value(json!({
            "requestId": request_id, "orderId": 1, "username": "alice", "status": "PAID", "updatedAt": 1, "metadata": {}
        }))
        .unwrap();
        r.gw.cache.put(paid).await.unwrap();
        let (status, _, body) = r.call(keyed("k-1", &order)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["requestId"], request_id.as_str());
        let (status, _, again) = r.call(keyed("k-1", &order)).await;
        assert_eq!((status, &again), (StatusCode::CREATED, &body));
        let queued = outbox(&r.gw.db)
            .await
            .iter()
            .filter(|(t, ..)| t == "orders.requests")
            .count();
        assert_eq!(queued, 1, "a key never makes a second order");

        // A 202 whose final status is not in the cache when the retry comes (a restarted
        // gateway, the cache's retention): the retry asks the order component again with
        // the same requestId (its request index answers with the order's final status,
        // never a second order) and gets the answer it publishes.
        let response = r.call(keyed("k-2", &order)).await;
        assert_eq!(response.0, StatusCode::ACCEPTED, "{}", response.2);
        let request_id = response.2["requestId"].as_str().unwrap().to_string();
        let requests_for = |id: String| {
            let db = r.gw.db.clone();
            async move {
                outbox(&db)
                    .await
                    .iter()
                    .filter(|(t, _, payload, _)| t == "orders.requests" && payload["requestId"] == id.as_str())
                    .count()
            }
        };
        assert_eq!(requests_for(request_id.clone()).await, 1);
        let retry = tokio::spawn({
            let gw = r.gw.clone();
            let req = keyed("k-2", &order);
            async move { gateway::router(gw).oneshot(req).await.unwrap() }
        });
        let start = Instant::now();
        while requests_for(request_id.clone()).await < 2 {
            assert!(start.elapsed() < Duration::from_secs(5), "the retry did not ask again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let paid: gateway::status::OrderStatus = serde_json::from_value(json!({
            "requestId": request_id, "orderId": 2, "username": "alice", "status": "PAID", "updatedAt": 1, "metadata": {}
        }))
        .unwrap();
        r.gw.cache.put(paid).await.unwrap();
        assert_eq!(retry.await.unwrap().status(), StatusCode::CREATED);

        let (status, headers, body) = r.call(keyed("", &order)).await;
        assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn deposits_need_an_open_account_and_a_valid_amount() {
        let r = Routes::hs256().await;
        let token = r.register("alice").await;
        for bad in [json!({"amount": 0}), json!({"amount": -5}), json!({"amount": 1.005})] {
            let (status, headers, body) = r.post("/billing/deposits", Some(&token), bad).await;
            assert_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(body["errors"][0]["field"], "amount");
        }
        // No account yet (no saga behind this gateway): 409 with Retry-After, nothing queued.
        let (status, headers, body) = r
            .post("/billing/deposits", Some(&token), json!({"amount": 12.34}))
            .await;
        assert_problem(status, &headers, &body, StatusCode::CONFLICT);
        assert_eq!(headers["retry-after"], "1");
        assert!(outbox(&r.gw.db).await.iter().all(|(t, ..)| t != "billing.deposits"));
        // Keyed deposits on an open account: the end-to-end tests.
    }

    #[tokio::test]
    async fn every_protected_route_needs_a_token_and_the_user_role() {
        let r = Routes::hs256().await;
        let no_role = {
            let now = switchyard::store::now_ms() / 1000;
            let claims = json!({"sub": "eve", "roles": ["guest"], "iat": now, "exp": now + 60});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let routes = [
            (
                "POST",
                "/orders",
                Some(json!({"items": [], "deliveryAddress": "x", "paymentMethod": "y"})),
            ),
            ("GET", "/orders", None),
            ("GET", "/orders/abc", None),
            ("GET", "/billing/balance", None),
            ("POST", "/billing/deposits", Some(json!({"amount": 1}))),
            ("GET", "/users/me", None),
        ];
        for (method, path, body) in routes {
            let (status, headers, problem) = r.call(request(method, path, None, body.clone())).await;
            assert_problem(status, &headers, &problem, StatusCode::UNAUTHORIZED);
            let (status, headers, problem) = r.call(request(method, path, Some("not.a.token"), body.clone())).await;
            assert_problem(status, &headers, &problem, StatusCode::UNAUTHORIZED);
            let (status, headers, problem) = r.call(request(method, path, Some(&no_role), body)).await;
            assert_problem(status, &headers, &problem, StatusCode::FORBIDDEN);
        }
        let mut req = request("GET", "/users/me", None, None);
        req.headers_mut().insert("authorization", "Basic YTpi".parse().unwrap());
        let (status, headers, problem) = r.call(req).await;
        assert_problem(status, &headers, &problem, StatusCode::UNAUTHORIZED);
    }

    /// A broker that does not answer makes `/ready` a 503 naming it (the cause only in
    /// the log), in the probe's bound.
    #[tokio::test]
    async fn ready_names_a_dependency_that_does_not_answer() {
        let db = test_db(Backend::Sqlite).await.unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let mut nowhere = rdkafka::ClientConfig::new();
        nowhere.set("bootstrap.servers", "127.0.0.1:1");
        let gw = Gateway::new(
            GatewayConfig::from_args(&args(300)).unwrap(),
            db.db.clone(),
            StatusCache::memory(),
            queries(&db.db).await,
            nowhere,
            shutdown,
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let response = gateway::router(gw.clone())
            .oneshot(request("GET", "/ready", None, None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["down"], serde_json::json!(["kafka"]), "{body}");
        assert!(
            !body.to_string().contains("127.0.0.1:1"),
            "causes stay in the log: {body}"
        );
        let first = started.elapsed();
        assert!(first < std::time::Duration::from_secs(5), "{first:?}");
        // A flood of probes: one check runs, the others wait for its answer, and an
        // answer is reused for a second. Each check holds a blocking thread (a new broker
        // client) for up to 2 s; without the reuse these ten took ten checks.
        let router = gateway::router(gw);
        let started = std::time::Instant::now();
        let probes = (0..10).map(|_| router.clone().oneshot(request("GET", "/ready", None, None)));
        for response in futures_util::future::join_all(probes).await {
            assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let flood = started.elapsed();
        assert!(flood < first / 2, "ten probes took {flood:?}, one check {first:?}");
    }

    /// A database that accepts and never answers (hung, or cut off without a reset): a
    /// request that needs it is answered 503 at the request limit instead of holding
    /// the client for as long as TCP retries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_that_stops_answering_gets_a_503_at_the_request_limit() {
        let (direct, url) = crate::common::postgres_database().await.unwrap();
        direct.close().await;
        let (at, rest) = url.split_once('@').unwrap();
        let (server, name) = rest.split_once('/').unwrap();
        let (proxy, silent) = super::cache::silenceable_proxy(server.to_string()).await;
        let db = Db::open(Some(&format!("{at}@{proxy}/{name}")), std::path::Path::new("."))
            .await
            .unwrap();
        let config = GatewayConfig::from_args(&args(300)).unwrap();
        let limit = gateway::request_limit(&config);
        let r = Routes::on(config, db, None).await;
        r.register("slow").await;

        silent.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        let (status, headers, body) = tokio::time::timeout(
            limit + Duration::from_secs(20),
            r.post(
                "/auth/login",
                None,
                json!({"username": "slow", "password": "password-1"}),
            ),
        )
        .await
        .expect("answered, not held");
        let waited = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(body["detail"].as_str().unwrap().contains("not answering"), "{body}");
        // At the request limit, or sooner when it had to wait for a connection (the
        // pool's own limit, 10 s): either way a 503, never a hold.
        assert!(waited < limit + Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test]
    async fn health_ready_and_the_openapi_document() {
        let r = Routes::hs256().await;
        let (status, _, body) = r.get("/health", None).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
        let (status, _, body) = r.get("/ready", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["cache"], "memory");
        let (status, _, doc) = r.get("/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for path in [
            "/auth/register",
            "/auth/login",
            "/orders",
            "/orders/{requestId}",
            "/billing/balance",
            "/billing/deposits",
            "/users/me",
            "/health",
            "/ready",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // A failing database or cache answers 500 or 503 on any route that uses one: the
        // document says so.
        for (path, item) in doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p != "/health")
        {
            let operations = item.as_object().unwrap().iter();
            for (method, operation) in
                operations.filter(|(m, _)| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
            {
                for status in ["500", "503"] {
                    assert_eq!(
                        operation["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{method} {path} {status}: {operation}"
                    );
                }
            }
        }
    }
}

/// `switchyard gateway`'s serve loop: it relays what it wrote, and a shutdown answers
/// the requests still waiting (202) before the server stops.
mod lifecycle {
    use super::*;
    use switchyard::store::Table;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_answers_waiting_requests_and_the_relay_sends_the_outbox() {
        let db = test_db(Backend::Sqlite).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let brokers = Brokers::start(None, &crate::common::saga_routing(dir.path(), "life")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(gateway::serve_on(
            listener,
            GatewayConfig::from_args(&args(60_000)).unwrap(),
            db.db.clone(),
            brokers.client_config(),
            queries(&db.db).await,
            true,
            shutdown,
        ));
        let http = reqwest::Client::new();
        let post = |path: &str, token: Option<&str>, body: Value| {
            let mut req = http.post(format!("{url}{path}")).json(&body);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            req.send()
        };
        let registered = post(
            "/auth/register",
            None,
            json!({"username": "alice", "email": "a@example.org", "password": "password-1"}),
        )
        .await
        .unwrap();
        assert_eq!(registered.status(), 201);
        let login: Value = post(
            "/auth/login",
            None,
            json!({"username": "alice", "password": "password-1"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let token = login["accessToken"].as_str().unwrap().to_string();
        // No saga behind this gateway: the order waits until the shutdown.
        let order = json!({"items": [{"productId": "p", "quantity": 1, "price": 1.0}], "deliveryAddress": "x", "paymentMethod": "card"});
        let waiting = tokio::spawn(post("/orders", Some(&token), order));
        crate::saga::eventually("both events relayed", || async {
            let (all, unsent) = (
                db.db.count(Table::Outbox).await.unwrap(),
                db.db.count(Table::UnsentOutbox).await.unwrap(),
            );
            (all == 2 && unsent == 0).then_some(())
        })
        .await;
        let started = Instant::now();
        stop.send(true).unwrap();
        let answer = waiting.await.unwrap().unwrap();
        assert_eq!(answer.status(), 202);
        assert!(answer.headers()["location"].to_str().unwrap().starts_with("/orders/"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered only after {:?}",
            started.elapsed()
        );
        server.await.unwrap().unwrap();
    }
}

/// The binary: `switchyard gateway` and `switchyard run` serve HTTP until SIGTERM, and
/// a bad gateway setting stops them with the fix.
mod process {
    use super::*;
    use std::process::{Command, Stdio};

    /// The binary with `args` on the embedded defaults under `data`, its HTTP listener on
    /// port 0, its stderr in `log`.
    fn switchyard(args: &[&str], data: &std::path::Path, log: &std::path::Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args(args)
            .current_dir(crate::common::workspace())
            .env_remove("SWITCHYARD_DATABASE_URL")
            .env_remove("SWITCHYARD_BROKERS")
            .env_remove("SWITCHYARD_REDIS_URL")
            .env("SWITCHYARD_DATA_DIR", data)
            .env("SWITCHYARD_HTTP_ADDR", "127.0.0.1:0")
            .env("SWITCHYARD_JWT_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        command
    }

    async fn serves_http_until_sigterm(command: &str) {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("stderr.log");
        // Port 0, the address read from the process's log: a port picked here and
        // released could be taken by another test before the process binds it.
        let mut child = switchyard(&[command], data.path(), &log)
            .env("SWITCHYARD_ADMIN_ADDR", "127.0.0.1:0")
            .env("SWITCHYARD_METRICS_ADDR", "127.0.0.1:0")
            .env("SWITCHYARD_METRICS_INTERVAL_MS", "200")
            .env("SWITCHYARD_LOG", "info")
            .spawn()
            .unwrap();
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut url = None;
        loop {
            if url.is_none() {
                url = said()
                    .lines()
                    .find(|l| l.contains("HTTP gateway listening"))
                    .and_then(|l| l.split("addr=").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|addr| format!("http://{addr}"));
            }
            let last = match &url {
                None => "not listening yet".to_string(),
                Some(url) => match http.get(format!("{url}/ready")).send().await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(err) => err.to_string(),
                },
            };
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "`switchyard {command}` exited with {status} before it was ready:\n{}",
                    said()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "`switchyard {command}` not ready after 120 s (last: {last}):\n{}",
                said()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = url.unwrap();
        let registered = http
            .post(format!("{url}/auth/register"))
            .json(&json!({"username": "alice", "email": "a@example.org", "password": "password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
        // `--metrics-addr` serves this process's metrics, the request above among them
        // (`switchyard gateway` has no admin listener to serve them otherwise).
        let metrics = said()
            .lines()
            .find_map(|l| {
                l.split("metrics at ")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no metrics listener in the log:\n{}", said()));
        // A path no route matches is counted under `unmatched`, never its raw path.
        let unknown = http.get(format!("{url}/no/such/path-7f3a")).send().await.unwrap();
        assert_eq!(unknown.status(), 404);
        let text = http.get(&metrics).send().await.unwrap().text().await.unwrap();
        assert!(
            text.contains(
                r#"http_server_request_duration_seconds_count{method="POST",route="/auth/register",status="201"} 1"#
            ),
            "{metrics}:\n{text}"
        );
        assert!(
            text.contains(
                r#"http_server_request_duration_seconds_count{method="GET",route="unmatched",status="404"} 1"#
            ),
            "{metrics}:\n{text}"
        );
        assert!(!text.contains("path-7f3a"), "a raw path reached the metrics:\n{text}");
        // Both commands sample the database's backlogs (SWITCHYARD_METRICS_INTERVAL_MS
        // is short here); `gateway` runs no route, so it samples without one. A timer
        // due in an hour, written beside the process, stays pending in both.
        let db = switchyard::store::Db::open(None, data.path()).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let message = switchyard::store::OutboundMessage {
            topic: "orders.timeouts".into(),
            key: None,
            payload: b"{}".to_vec(),
            headers: vec![],
        };
        let in_an_hour = switchyard::store::now_ms() + 3_600_000;
        tx.insert_timer("sampled-timer", "order", in_an_hour, &message)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        db.close().await;
        let started = Instant::now();
        loop {
            let text = http.get(&metrics).send().await.unwrap().text().await.unwrap();
            if text.lines().any(|l| l == "switchyard_timers_pending 1") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "`switchyard {command}` did not sample its timers:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "`switchyard {command}` exited with {status}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "`switchyard {command}` did not stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switchyard_gateway_serves_http_until_sigterm() {
        serves_http_until_sigterm("gateway").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switchyard_run_serves_http_until_sigterm() {
        serves_http_until_sigterm("run").await;
    }

    /// `--metrics-addr` is bound before the start goes on: an address in use stops
    /// `switchyard gateway` with the fix rather than leaving it running unscraped.
    #[test]
    fn a_taken_metrics_address_stops_the_binary_with_the_fix() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("stderr.log");
        let taken_addr = taken.local_addr().unwrap().to_string();
        let mut child = switchyard(&["gateway", "--metrics-addr", &taken_addr], data.path(), &log)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!(
                    "still running 60 s after being given a taken metrics address:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("choose a free --metrics-addr"), "{stderr}");
    }

    #[test]
    fn a_bad_gateway_setting_stops_the_binary_with_the_fix() {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["gateway", "--jwt-secret", "short"])
            .current_dir(crate::common::workspace())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 32"), "{stderr}");
    }
}

/// The Redis status cache shared by replicas.
mod cache {
    use super::*;
    use gateway::status::{OrderStatus, Wait};

    fn status(request_id: &str, s: &str) -> OrderStatus {
        serde_json::from_value(json!({
            "requestId": request_id, "orderId": 1, "username": "u", "status": s, "updatedAt": 1, "metadata": {}
        }))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_status_stored_by_one_replica_completes_a_wait_on_another_before_or_after_it_began() {
        let url = crate::common::service("SWITCHYARD_TEST_REDIS_URL");
        let (_stop, shutdown) = watch::channel(false);
        let a = StatusCache::redis(&url, shutdown.clone()).await.unwrap();
        let b = StatusCache::redis(&url, shutdown.clone()).await.unwrap();
        assert_eq!(b.check().await, Ok(()));

        // Stored before the wait began: found in the cache.
        let early = uuid::Uuid::new_v4().to_string();
        a.put(status(&early, "PAID")).await.unwrap();
        let found = b
            .wait_final(b.subscribe(), &early, Duration::from_secs(2), shutdown.clone())
            .await
            .unwrap();
        assert!(matches!(found, Wait::Final(s) if s.status == "PAID"));

        // Stored while it waits: delivered through the subscription; a non-final
        // status does not end the wait.
        let late = uuid::Uuid::new_v4().to_string();
        let sub = b.subscribe();
        let waiter = tokio::spawn({
            let (b, late, shutdown) = (b.clone(), late.clone(), shutdown.clone());
            async move {
                b.wait_final(sub, &late, Duration::from_secs(10), shutdown)
                    .await
                    .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.put(status(&late, "PENDING_VALIDATION")).await.unwrap();
        a.put(status(&late, "REJECTED")).await.unwrap();
        let started = Instant::now();
        assert!(matches!(waiter.await.unwrap(), Wait::Final(s) if s.status == "REJECTED"));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(b.get(&late).await.unwrap().unwrap().status, "REJECTED");
    }

    /// A TCP proxy to the Redis of `url` that forwards until the flag is set, then holds
    /// every byte: a Redis that accepts and never answers (hung, or cut off without a
    /// reset). Returns the proxy's URL and the flag.
    async fn silenceable(url: &str) -> (String, Arc<std::sync::atomic::AtomicBool>) {
        let target = url.trim_start_matches("redis://").split('/').next().unwrap();
        let (addr, silent) = silenceable_proxy(target.to_string()).await;
        (format!("redis://{addr}"), silent)
    }

    /// A TCP proxy to `target` (host:port) that forwards until the flag is set, then
    /// holds every byte.
    pub(super) async fn silenceable_proxy(
        target: String,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(in_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(out_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(out_read), Box::new(in_write)),
                ] {
                    let silent = flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf).await {
                            if silent.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        (addr, silent)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_stops_answering_fails_reads_and_writes_within_the_timeout() {
        let (url, silent) = silenceable(&crate::common::service("SWITCHYARD_TEST_REDIS_URL")).await;
        let (_stop, shutdown) = watch::channel(false);
        let cache = StatusCache::redis(&url, shutdown).await.unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        cache.put(status(&id, "PAID")).await.unwrap();
        assert_eq!(cache.get(&id).await.unwrap().unwrap().status, "PAID");

        silent.store(true, std::sync::atomic::Ordering::SeqCst);
        let limit = gateway::status::REDIS_TIMEOUT + Duration::from_secs(3);
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(30), cache.get(&id))
            .await
            .expect("the read ended within 30 s");
        assert!(read.is_err(), "{read:?}");
        assert!(started.elapsed() < limit, "read: {:?}", started.elapsed());
        let started = Instant::now();
        let write = tokio::time::timeout(Duration::from_secs(30), cache.put(status(&id, "REJECTED")))
            .await
            .expect("the write ended within 30 s");
        assert!(write.is_err(), "{write:?}");
        assert!(started.elapsed() < limit, "write: {:?}", started.elapsed());
        assert!(cache.check().await.is_err(), "not ready while Redis does not answer");
    }

    /// A Redis that goes silent under an open status subscription: the subscription's ping
    /// finds out, the replica says it is not ready, and once Redis answers again the
    /// subscription is reopened and a status another replica stores reaches this one's
    /// waiter. Without the ping a subscribed connection never sends, so it would stay
    /// "open" and deaf.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_to_a_redis_that_stops_answering_is_noticed_and_reopened() {
        use gateway::status::{REDIS_TIMEOUT, SUBSCRIPTION_PING};
        use std::sync::atomic::Ordering::SeqCst;
        let direct = crate::common::service("SWITCHYARD_TEST_REDIS_URL");
        let (url, silent) = silenceable(&direct).await;
        let (_stop, shutdown) = watch::channel(false);
        let a = StatusCache::redis(&url, shutdown.clone()).await.unwrap();
        let b = StatusCache::redis(&direct, shutdown.clone()).await.unwrap();

        silent.store(true, SeqCst);
        let limit = SUBSCRIPTION_PING + REDIS_TIMEOUT + Duration::from_secs(3);
        let started = Instant::now();
        loop {
            let checked = a.check().await;
            if checked.as_ref().err().map(String::as_str) == Some("the Redis subscription is reconnecting") {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "the silent subscription went unnoticed for {:?} (last check: {checked:?})",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        silent.store(false, SeqCst);
        let started = Instant::now();
        while a.check().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not ready 20 s after Redis answers again: {:?}",
                a.check().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let sub = a.subscribe();
        let waiter = tokio::spawn({
            let (a, id, shutdown) = (a.clone(), id.clone(), shutdown.clone());
            async move { a.wait_final(sub, &id, Duration::from_secs(10), shutdown).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.put(status(&id, "PAID")).await.unwrap();
        assert!(matches!(waiter.await.unwrap(), Wait::Final(s) if s.status == "PAID"));
    }
}

/// Tokens from PyJWT (`scripts/bootstrap.sh` installs it), and every bad token.
mod tokens {
    use super::*;

    /// Runs python3 with PyJWT; panics with the fix when it is missing.
    fn python(script: &str, args: &[&str]) -> String {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 is needed: run scripts/bootstrap.sh");
        assert!(
            out.status.success(),
            "python failed (PyJWT missing? run scripts/bootstrap.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    const SIGN: &str = "import jwt, json, sys\n\
        key = sys.argv[3]\n\
        if key.startswith('@'): key = open(key[1:]).read()\n\
        print(jwt.encode(json.loads(sys.argv[1]), key, algorithm=sys.argv[2]))";

    const KEYS: &str = "import sys\n\
        from cryptography.hazmat.primitives import serialization as s\n\
        from cryptography.hazmat.primitives.asymmetric import rsa, ed25519\n\
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048) if sys.argv[1] == 'RS256' else ed25519.Ed25519PrivateKey.generate()\n\
        open(sys.argv[2], 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\n\
        open(sys.argv[3], 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))";

    fn claims(sub: &str, iat_offset: i64, exp_offset: i64, nbf_offset: Option<i64>) -> String {
        let now = switchyard::store::now_ms() / 1000;
        let mut c = json!({"sub": sub, "roles": ["user"], "iat": now + iat_offset, "exp": now + exp_offset});
        if let Some(nbf) = nbf_offset {
            c["nbf"] = json!(now + nbf);
        }
        c.to_string()
    }

    /// Whether the gateway lets `token` through (404 for an unknown order means it did).
    async fn accepted(r: &Routes, token: &str) -> bool {
        let (status, headers, body) = r.get("/orders/no-such-order", Some(token)).await;
        match status {
            StatusCode::NOT_FOUND => true,
            StatusCode::UNAUTHORIZED => {
                assert_problem(status, &headers, &body, StatusCode::UNAUTHORIZED);
                false
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }

    #[tokio::test]
    async fn hs256_tokens_from_pyjwt_are_accepted_and_bad_ones_refused() {
        let r = Routes::hs256().await;
        let good = python(SIGN, &[&claims("alice", 0, 600, None), "HS256", SECRET]);
        assert!(accepted(&r, &good).await);
        let expired = python(SIGN, &[&claims("alice", -7200, -3600, None), "HS256", SECRET]);
        assert!(!accepted(&r, &expired).await);
        let not_yet = python(SIGN, &[&claims("alice", 0, 7200, Some(3600)), "HS256", SECRET]);
        assert!(!accepted(&r, &not_yet).await);
        let wrong_key = python(
            SIGN,
            &[
                &claims("alice", 0, 600, None),
                "HS256",
                "another-secret-another-secret-another",
            ],
        );
        assert!(!accepted(&r, &wrong_key).await);
        let none = python(SIGN, &[&claims("alice", 0, 600, None), "none", ""]);
        assert!(!accepted(&r, &none).await);
        let hs512 = python(SIGN, &[&claims("alice", 0, 600, None), "HS512", SECRET]);
        assert!(!accepted(&r, &hs512).await, "only the configured algorithm");
        for malformed in ["", "abc", "a.b.c", &good[..good.len() - 3]] {
            assert!(!accepted(&r, malformed).await, "{malformed:?}");
        }
    }

    async fn asymmetric(alg: &str) {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("private.pem"), dir.path().join("public.pem"));
        python(KEYS, &[alg, private.to_str().unwrap(), public.to_str().unwrap()]);
        let config = GatewayConfig::from_args(&GatewayArgs {
            jwt_algorithm: alg.into(),
            jwt_secret: None,
            jwt_private_key: Some(private.clone()),
            jwt_public_key: Some(public.clone()),
            ..args(300)
        })
        .unwrap();
        let r = Routes::new(config, Backend::Sqlite).await;
        // Our own tokens and PyJWT's verify alike.
        let ours = r.register("alice").await;
        assert!(accepted(&r, &ours).await);
        let key = format!("@{}", private.display());
        let theirs = python(SIGN, &[&claims("alice", 0, 600, None), alg, &key]);
        assert!(accepted(&r, &theirs).await);
        let expired = python(SIGN, &[&claims("alice", -7200, -3600, None), alg, &key]);
        assert!(!accepted(&r, &expired).await);
        // The classic confusion: HS256 "signed" with the public key as the secret.
        let public_pem = std::fs::read(&public).unwrap();
        let now = switchyard::store::now_ms() / 1000;
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "alice", "roles": ["user"], "iat": now, "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert!(!accepted(&r, &confused).await);
        // A key pair of someone else's.
        let (p2, q2) = (dir.path().join("p2.pem"), dir.path().join("q2.pem"));
        python(KEYS, &[alg, p2.to_str().unwrap(), q2.to_str().unwrap()]);
        let forged = python(
            SIGN,
            &[&claims("alice", 0, 600, None), alg, &format!("@{}", p2.display())],
        );
        assert!(!accepted(&r, &forged).await);
    }

    #[tokio::test]
    async fn rs256_tokens_from_pyjwt_are_accepted_and_hs256_with_the_public_key_refused() {
        asymmetric("RS256").await;
    }

    #[tokio::test]
    async fn eddsa_tokens_from_pyjwt_are_accepted() {
        asymmetric("EdDSA").await;
    }
}

/// The whole system behind HTTP: routes, relay, gateway replicas.
pub mod e2e {
    use super::*;
    use tokio::task::JoinHandle;

    /// How long the routes and gateways may take to stop once told to: they finish the
    /// event or request in hand, seconds at most.
    const TEARDOWN: Duration = Duration::from_secs(120);

    /// The system under test: the shipped routing on a broker and a database.
    pub struct Env {
        pub run: String,
        pub routing: switchyard::config::Routing,
        pub brokers: Brokers,
        pub db: Db,
        pub real: bool,
        _dir: tempfile::TempDir,
        _db: TestDb,
        _saga: Option<tokio::sync::MutexGuard<'static, ()>>,
    }

    impl Env {
        /// `real`: Kafka, PostgreSQL and Redis; else the embedded broker and SQLite.
        pub async fn new(real: bool) -> Env {
            let saga = crate::common::saga_topics(real).await;
            let dir = tempfile::tempdir().unwrap();
            let run = format!("gw{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let routing = crate::common::saga_routing(dir.path(), &run);
            let brokers = if real {
                let brokers = Brokers::start(Some(&crate::common::kafka_brokers()), &routing).unwrap();
                switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing)
                    .await
                    .unwrap();
                crate::common::start_groups_at_the_end(&brokers.client_config(), &routing);
                brokers
            } else {
                Brokers::start(None, &routing).unwrap()
            };
            let test_db = test_db(if real { Backend::Postgres } else { Backend::Sqlite })
                .await
                .unwrap();
            Env {
                run,
                routing,
                brokers,
                db: test_db.db.clone(),
                real,
                _dir: dir,
                _db: test_db,
                _saga: saga,
            }
        }

        /// Runs the routes (`switchyard run` without HTTP) beside `replicas` gateways
        /// while `scenario` runs, then shuts everything down.
        pub async fn run<F, Fut>(&self, replicas: &[Replica], scenario: F)
        where
            F: FnOnce(Arc<Stack>) -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            let (stop, shutdown) = watch::channel(false);
            let stack = Stack::start(self, replicas, shutdown.clone()).await;
            let mut stopping = shutdown.clone();
            let routes = switchyard::service::serve(&self.routing, self.db.clone(), &self.brokers, shutdown);
            // A shutdown that hangs fails here, naming the part, rather than holding the
            // saga topics' lock (and every later real-stack test) until CI's time runs out.
            let routes = async {
                tokio::select! {
                    served = routes => served,
                    _ = async {
                        let _ = stopping.wait_for(|s| *s).await;
                        tokio::time::sleep(TEARDOWN).await;
                    } => panic!("the routes did not stop within {TEARDOWN:?} of the shutdown signal"),
                }
            };
            let driven = async {
                scenario(stack.clone()).await;
                stop.send(true).unwrap();
            };
            let (served, ()) = tokio::join!(routes, driven);
            served.unwrap();
            let stack = Arc::try_unwrap(stack).ok().expect("the scenario keeps no stack handle");
            for (i, task) in stack.tasks.into_iter().enumerate() {
                tokio::time::timeout(TEARDOWN, task)
                    .await
                    .unwrap_or_else(|_| panic!("gateway replica {i} did not stop within {TEARDOWN:?}"))
                    .unwrap()
                    .unwrap();
            }
        }
    }

    /// Gateways of a running [`Env`], with an HTTP client.
    pub struct Stack {
        pub urls: Vec<String>,
        pub http: reqwest::Client,
        tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    }

    /// One gateway of a stack: its reply timeout and consumer group suffix (replicas
    /// that share a suffix share the work of `orders.status`).
    pub struct Replica {
        pub reply_timeout_ms: u64,
        pub group: &'static str,
    }

    impl Stack {
        async fn start(env: &Env, replicas: &[Replica], shutdown: watch::Receiver<bool>) -> Arc<Stack> {
            let mut tasks = Vec::new();
            let mut urls = Vec::new();
            let mut started_groups = std::collections::HashSet::new();
            for replica in replicas {
                let mut a = args(replica.reply_timeout_ms);
                a.body_limit = 64 * 1024;
                a.gateway_group = format!("{}-{}", env.run, replica.group);
                if env.real {
                    a.redis_url = Some(crate::common::service("SWITCHYARD_TEST_REDIS_URL"));
                }
                // Once per group, before its first replica joins: a commit from outside a
                // group with members fails (UnknownMemberId).
                if env.real && started_groups.insert(a.gateway_group.clone()) {
                    // orders.status holds every earlier run's statuses on a shared broker:
                    // a new group reading them all first missed the 60 s reply timeout.
                    let (status, topic) = env
                        .routing
                        .topics
                        .iter()
                        .find(|(name, _)| name.as_str() == "orders.status")
                        .unwrap();
                    crate::common::start_group_at_the_end(
                        &env.brokers.client_config(),
                        &a.gateway_group,
                        status.as_str(),
                        topic.partitions,
                    );
                }
                let config = GatewayConfig::from_args(&a).unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                urls.push(format!("http://{}", listener.local_addr().unwrap()));
                let queries = switchyard::gateway_components::load(&env.routing, &env.db)
                    .await
                    .unwrap();
                let (db, kafka, shutdown) = (env.db.clone(), env.brokers.client_config(), shutdown.clone());
                // The routes relay the outbox already; these gateways share their database.
                tasks.push(tokio::spawn(async move {
                    gateway::serve_on(listener, config, db, kafka, queries, false, shutdown).await
                }));
            }
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .unwrap();
            let stack = Stack { urls, http, tasks };
            for url in &stack.urls {
                eventually("the gateway to be ready", || async {
                    let r = stack.http.get(format!("{url}/ready")).send().await.ok()?;
                    r.status().is_success().then_some(())
                })
                .await;
            }
            Arc::new(stack)
        }

        pub async fn call(
            &self,
            replica: usize,
            method: &str,
            path: &str,
            token: Option<&str>,
            body: Option<Value>,
            key: Option<&str>,
        ) -> (u16, reqwest::header::HeaderMap, Value) {
            let url = format!("{}{path}", self.urls[replica]);
            let mut req = match method {
                "POST" => self.http.post(url),
                _ => self.http.get(url),
            };
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            let response = req.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, headers, body)
        }

        /// Registers and logs in `user`; returns the token.
        pub async fn user(&self, replica: usize, user: &str) -> String {
            let (status, _, body) = self
                .call(
                    replica,
                    "POST",
                    "/auth/register",
                    None,
                    Some(json!({"username": user, "email": format!("{user}@example.org"), "password": "password-1"})),
                    None,
                )
                .await;
            assert_eq!(status, 201, "{body}");
            let (status, _, body) = self
                .call(
                    replica,
                    "POST",
                    "/auth/login",
                    None,
                    Some(json!({"username": user, "password": "password-1"})),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["accessToken"].as_str().unwrap().to_string()
        }

        /// Tops up through `POST /billing/deposits`, retrying while the account is not
        /// open yet (409), as a client should.
        pub async fn deposit(&self, replica: usize, token: &str, amount: f64) {
            eventually("the deposit to be accepted", || async {
                let (status, _, body) = self
                    .call(
                        replica,
                        "POST",
                        "/billing/deposits",
                        Some(token),
                        Some(json!({"amount": amount})),
                        None,
                    )
                    .await;
                match status {
                    202 => Some(()),
                    409 => None,
                    _ => panic!("deposit: {status} {body}"),
                }
            })
            .await;
        }

        /// The caller's balance in cents, through `GET /billing/balance` (None: no account).
        pub async fn balance_minor(&self, token: &str) -> Option<i64> {
            let (status, _, body) = self.call(0, "GET", "/billing/balance", Some(token), None, None).await;
            match status {
                200 => Some(body["balanceCents"].as_i64().unwrap()),
                404 => None,
                _ => panic!("balance: {status} {body}"),
            }
        }

        pub async fn await_balance(&self, token: &str, cents: i64) {
            eventually(&format!("the balance to be {cents}"), || async {
                (self.balance_minor(token).await == Some(cents)).then_some(())
            })
            .await;
        }
    }

    use crate::saga::eventually;

    pub fn order(quantity: i64, price: f64) -> Value {
        json!({"items": [{"productId": "p1", "quantity": quantity, "price": price}], "deliveryAddress": "1 Main St", "paymentMethod": "card"})
    }

    async fn scenario(real: bool) {
        let env = Env::new(real).await;
        env.run(
            &[
                Replica {
                    reply_timeout_ms: 60_000,
                    group: "gateway",
                },
                // Answers 202 at once: the reply-timeout path.
                Replica {
                    reply_timeout_ms: 1,
                    group: "impatient",
                },
            ],
            scenario_steps,
        )
        .await;
    }

    async fn scenario_steps(stack: Arc<Stack>) {
        let user = format!("alice{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let token = stack.user(0, &user).await;
        let t = Some(token.as_str());

        stack.deposit(0, &token, 25.0).await;
        stack.await_balance(&token, 2500).await;

        // Paid: 201 with the order's status; 25.00 - 2 x 9.99 = 5.02.
        let (status, headers, paid) = stack.call(0, "POST", "/orders", t, Some(order(2, 9.99)), None).await;
        assert_eq!(status, 201, "{paid}");
        assert_eq!(paid["status"], "PAID");
        assert_eq!(
            headers["location"],
            format!("/orders/{}", paid["requestId"].as_str().unwrap()).as_str()
        );
        assert_eq!(stack.balance_minor(&token).await, Some(502));

        // An idempotent retry returns the same order and charges once.
        let (status, _, first) = stack
            .call(0, "POST", "/orders", t, Some(order(1, 1.0)), Some("retry-1"))
            .await;
        assert_eq!(status, 201, "{first}");
        let (status, _, again) = stack
            .call(0, "POST", "/orders", t, Some(order(1, 1.0)), Some("retry-1"))
            .await;
        assert_eq!((status, &again), (201, &first));
        assert_eq!(stack.balance_minor(&token).await, Some(402));

        // Refused for funds: 402 with the order.
        let (status, _, refused) = stack.call(0, "POST", "/orders", t, Some(order(1, 100.0)), None).await;
        assert_eq!(status, 402, "{refused}");
        assert_eq!(refused["order"]["status"], "INSUFFICIENT_FUNDS");

        // Rejected by the order component: 422 with its reason.
        let (status, _, rejected) = stack.call(0, "POST", "/orders", t, Some(order(0, 1.0)), None).await;
        assert_eq!(status, 422, "{rejected}");
        assert_eq!(rejected["order"]["status"], "REJECTED");
        assert!(rejected["detail"].as_str().unwrap().contains("quantity"), "{rejected}");

        // Reply timeout: 202 with Location, then readable there.
        let (status, headers, accepted) = stack.call(1, "POST", "/orders", t, Some(order(1, 0.02)), None).await;
        assert_eq!(status, 202, "{accepted}");
        let location = headers["location"].to_str().unwrap().to_string();
        let view = eventually("the accepted order to be paid", || async {
            let (status, _, view) = stack.call(1, "GET", &location, t, None, None).await;
            (status == 200 && view["status"]["status"] == "PAID").then_some(view)
        })
        .await;
        assert_eq!(view["requestId"], accepted["requestId"]);
        assert_eq!(stack.balance_minor(&token).await, Some(400));

        // A keyed deposit retried: the same answer, credited once.
        let keyed = || {
            stack.call(
                0,
                "POST",
                "/billing/deposits",
                t,
                Some(json!({"amount": 1.0})),
                Some("dep-1"),
            )
        };
        let (status, headers, first) = keyed().await;
        assert_eq!(status, 202, "{first}");
        assert_eq!(headers["location"], "/billing/balance");
        let (status, _, again) = keyed().await;
        assert_eq!((status, &again), (202, &first));
        stack.await_balance(&token, 500).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(stack.balance_minor(&token).await, Some(500));

        // Reads come from the components: balance above, the profile and the orders here.
        let (status, _, me) = stack.call(0, "GET", "/users/me", t, None, None).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["profile"]["email"], format!("{user}@example.org").as_str());
        assert_eq!(me["roles"], json!(["user"]));
        let (status, _, page) = stack.call(0, "GET", "/orders", t, None, None).await;
        assert_eq!(status, 200, "{page}");
        let statuses: Vec<&str> = page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["status"].as_str().unwrap())
            .collect();
        // Newest first; the rejected request made no order.
        assert_eq!(statuses, ["PAID", "INSUFFICIENT_FUNDS", "PAID", "PAID"]);
        let paid_id = paid["requestId"].as_str().unwrap();
        let (status, _, view) = stack.call(0, "GET", &format!("/orders/{paid_id}"), t, None, None).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["order"]["totalCost"], 19.98);
        assert_eq!(view["status"]["status"], "PAID");
        // Someone else's order does not exist for this user.
        let other = stack.user(0, &format!("{user}b")).await;
        let (status, _, body) = stack
            .call(0, "GET", &format!("/orders/{paid_id}"), Some(&other), None, None)
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, _, body) = stack.call(0, "GET", "/billing/balance", Some(&other), None, None).await;
        assert!(
            status == 404 || (status == 200 && body["balanceCents"] == 0),
            "{status} {body}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn register_deposit_and_orders_over_http_embedded() {
        scenario(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn register_deposit_and_orders_over_http_on_kafka_postgres_and_redis() {
        scenario(true).await;
    }

    /// 200 orders from 20 users at once through two replicas sharing Redis and one
    /// consumer group: each replica consumes part of `orders.status`, so many answers
    /// reach their request through the other replica.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_concurrent_orders_through_two_replicas_charge_exactly() {
        let replica = || Replica {
            reply_timeout_ms: 120_000,
            group: "gateway",
        };
        let env = Env::new(true).await;
        env.run(&[replica(), replica()], two_hundred_orders).await;
    }

    async fn two_hundred_orders(stack: Arc<Stack>) {
        let run = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let users: Vec<String> = (0..20).map(|i| format!("u{i}x{run}")).collect();
        let mut tokens = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let token = stack.user(i % 2, user).await;
            tokens.push(token);
        }
        // Deposits once the accounts are open (registration travels through the saga).
        for (i, token) in tokens.iter().enumerate() {
            stack.deposit(i % 2, token, 50.0).await;
        }
        for token in &tokens {
            stack.await_balance(token, 5000).await;
        }
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..200 {
            let (stack, token, u) = (stack.clone(), tokens[n % 20].clone(), n % 20);
            calls.spawn(async move {
                let (status, _, body) = stack
                    .call(n % 2, "POST", "/orders", Some(&token), Some(order(1, 7.77)), None)
                    .await;
                (u, status, body)
            });
        }
        let mut paid = [0i64; 20];
        let mut answers = std::collections::BTreeMap::new();
        let mut request_ids = std::collections::HashSet::new();
        while let Some(result) = calls.join_next().await {
            let (u, status, body) = result.unwrap();
            match status {
                201 => {
                    paid[u] += 1;
                    assert!(request_ids.insert(body["requestId"].as_str().unwrap().to_string()));
                }
                // Refused, or (when the saga falls behind the payment timeout) cancelled.
                402 => assert!(
                    ["INSUFFICIENT_FUNDS", "PAYMENT_TIMEOUT"].contains(&body["order"]["status"].as_str().unwrap()),
                    "{body}"
                ),
                _ => panic!("no final answer: {status} {body}"),
            }
            let kind = body["status"]
                .as_str()
                .or(body["order"]["status"].as_str())
                .unwrap()
                .to_string();
            *answers.entry(kind).or_insert(0) += 1;
        }
        eprintln!("200 orders answered in {:?}: {answers:?}", started.elapsed());
        for (u, user) in users.iter().enumerate() {
            // 50.00 covers six orders of 7.77, never more; a payment that arrives after
            // its order timed out is refunded, so the balance settles on the paid ones.
            assert!(paid[u] <= 6, "{user} paid {} orders", paid[u]);
            let expected = 5000 - paid[u] * 777;
            eventually(&format!("{user}'s balance to settle at {expected}"), || async {
                (stack.balance_minor(&tokens[u]).await == Some(expected)).then_some(())
            })
            .await;
        }
    }

    /// schemathesis (installed by scripts/bootstrap.sh) fuzzes the gateway from its
    /// `/openapi.json`: no 5xx, no response that breaks the schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
        let env = Env::new(false).await;
        let replica = Replica {
            reply_timeout_ms: 200,
            group: "gateway",
        };
        env.run(&[replica], |stack| async move {
            let token = stack.user(0, "fuzzer").await;
            let url = stack.urls[0].clone();
            // schemathesis keeps a cache in its working directory: give it a scratch one.
            let scratch = tempfile::tempdir().unwrap();
            let cwd = scratch.path().to_path_buf();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("schemathesis")
                    .current_dir(cwd)
                    .args([
                        "run",
                        &format!("{url}/openapi.json"),
                        "--checks",
                        "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                        "--max-examples",
                        "25",
                        "--header",
                        &format!("Authorization: Bearer {token}"),
                        "--workers",
                        "2",
                        "--no-color",
                    ])
                    .output()
                    .expect("schemathesis is needed: run scripts/bootstrap.sh")
            })
            .await
            .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "schemathesis failed:\n{text}");
            // A run that tested nothing would also exit 0.
            assert!(text.contains("Tested: 10"), "schemathesis did not test every operation:\n{text}");
        })
        .await;
    }
}
