//! mini_auth: registration (argon2id hash, user row and `UserRegistered` in one
//! transaction), login (a JWT with `sub`, `roles`, `iat`, `exp`), and the middleware that
//! checks the token on every other route and sets `X-Username` / `X-Roles` from it.

use crate::store::on_conn;
use crate::store::on_pool;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Argon2, password_hash};
use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problem::{FieldError, Problem, ProblemJson};
use super::{Gateway, publish};
use crate::event::TraceContext;
use crate::store::{Db, StoreError, Tx, now_ms};

/// The role every registered user has.
pub const ROLE_USER: &str = "user";
/// The role of usernames listed in `--admins`.
pub const ROLE_ADMIN: &str = "admin";
/// Headers set from the verified token (ADR step 2); client-sent ones are dropped.
pub const X_USERNAME: &str = "x-username";
pub const X_ROLES: &str = "x-roles";

/// The claims of a gateway token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub roles: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Who is calling, from a verified token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub username: String,
    pub roles: Vec<String>,
}

impl AuthUser {
    /// 403 unless the caller has `role`.
    pub fn require(&self, role: &str) -> Result<(), Problem> {
        if self.roles.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this route needs the role {role:?}; the token has {:?}",
                self.roles
            )))
        }
    }

    pub fn roles_header(&self) -> String {
        self.roles.join(",")
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RegisterRequest {
    /// 3 to 32 characters: letters, digits, `.`, `_`, `-`.
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = "alice@example.org")]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery")]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub username: String,
    pub email: String,
    pub roles: Vec<String>,
    pub registered_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Checks every field of a registration and names each bad one.
pub fn validate_registration(req: &RegisterRequest) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    if let Err(message) = check_username(&req.username) {
        bad("username", message);
    }
    let email = req.email.trim();
    let valid_email = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !valid_email {
        bad(
            "email",
            format!("{:?} is not an e-mail address like name@example.org", req.email),
        );
    }
    let len = req.password.chars().count();
    if !(8..=MAX_PASSWORD_CHARS).contains(&len) {
        bad(
            "password",
            format!("must be 8 to {MAX_PASSWORD_CHARS} characters, got {len}"),
        );
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Longest password accepted: argon2 hashes any length, so a cap keeps a login cheap to refuse.
const MAX_PASSWORD_CHARS: usize = 128;

/// A username as registration accepts it, or why not.
fn check_username(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if !(3..=32).contains(&chars) {
        return Err(format!("must be 3 to 32 characters, got {chars}"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("{name:?} may contain only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Hashes computed at once, per core: each argon2id call holds about 19 MiB and a
/// blocking thread for tens of milliseconds, so a flood of logins queues here instead
/// of taking the memory and the blocking pool (where swapped components compile).
const HASHES_PER_CORE: usize = 2;
/// How long a login or registration waits for its turn before it is answered 503.
pub const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn hashing_turns() -> &'static Arc<tokio::sync::Semaphore> {
    static TURNS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cores * HASHES_PER_CORE))
    })
}

/// Runs `work` (a hash or a verification) on a blocking thread once a turn is free,
/// waiting at most `wait`. The turn is held until `work` ends, also when the request
/// is dropped first.
async fn hashing<T: Send + 'static>(
    wait: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    let turn = tokio::time::timeout(wait, hashing_turns().clone().acquire_owned())
        .await
        .map_err(|_| Problem::unavailable("too many logins and registrations at once; retry in a second"))?
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| Problem::internal("hashing the password", &e))
}

/// Password hashing with argon2id (the crate's defaults follow OWASP's advice).
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// A hash of nothing anyone knows, verified against when the user does not exist, so
/// an unknown user costs the same time as a wrong password.
pub fn decoy_hash() -> String {
    hash_password(&uuid::Uuid::new_v4().to_string()).expect("hashing a fresh random password")
}

/// A stored user.
struct UserRow {
    password_hash: String,
}

async fn insert_user(tx: &mut Tx, username: &str, email: &str, hash: &str, at: i64) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO gateway_users (username, email, password_hash, created_at_ms) \
                       VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING";
    let n = on_conn!(tx, |c| sqlx::query(SQL)
        .bind(username)
        .bind(email)
        .bind(hash)
        .bind(at)
        .execute(c)
        .await?
        .rows_affected());
    Ok(n == 1)
}

async fn find_user(db: &Db, username: &str) -> Result<Option<UserRow>, StoreError> {
    const SQL: &str = "SELECT password_hash FROM gateway_users WHERE username = $1";
    let row: Option<(String,)> = on_pool!(db, |p| sqlx::query_as(SQL).bind(username).fetch_optional(p).await?);
    Ok(row.map(|(password_hash,)| UserRow { password_hash }))
}

/// `POST /auth/register`
#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "registered; `UserRegistered` is on its way", body = Registered),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the username is taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "too many logins and registrations at once; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(gw): State<Arc<Gateway>>,
    Extension(trace): Extension<TraceContext>,
    ProblemJson(req): ProblemJson<RegisterRequest>,
) -> Result<Response, Problem> {
    validate_registration(&req).map_err(Problem::invalid_fields)?;
    let password = req.password.clone();
    let hash = hashing(HASHING_WAIT, move || hash_password(&password))
        .await?
        .map_err(|e| Problem::internal("hashing the password", &e))?;
    let at = now_ms();
    let email = req.email.trim().to_string();
    let event = serde_json::json!({
        "username": req.username, "email": email, "registeredAt": at, "source": "gateway"
    });
    let mut tx = gw.db.begin().await.map_err(|e| Problem::internal("registering", &e))?;
    if !insert_user(&mut tx, &req.username, &email, &hash, at)
        .await
        .map_err(|e| Problem::internal("registering", &e))?
    {
        let _ = tx.rollback().await;
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "username-taken",
            "Username taken",
            format!("the username {:?} is taken; choose another", req.username),
        ));
    }
    let user = AuthUser {
        username: req.username.clone(),
        roles: gw.roles_of(&req.username),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    publish(&mut tx, "users.registered", &user, &request_id, &trace, &event)
        .await
        .map_err(|e| Problem::internal("registering", &e))?;
    tx.commit().await.map_err(|e| Problem::internal("registering", &e))?;
    tracing::info!(username = %req.username, request_id = %request_id, "user registered");
    let body = Registered {
        username: req.username,
        email,
        roles: user.roles,
        registered_at: at,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `POST /auth/login`
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "a bearer token", body = TokenResponse),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unknown user or wrong password (the same answer, in the same time)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "missing fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "too many logins and registrations at once; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(gw): State<Arc<Gateway>>,
    ProblemJson(req): ProblemJson<LoginRequest>,
) -> Result<axum::Json<TokenResponse>, Problem> {
    // No such account can exist: refused before the database and the hash (the rules
    // are public, so answering sooner tells nothing about who is registered).
    if check_username(&req.username).is_err() || req.password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(Problem::unauthorized("unknown username or wrong password"));
    }
    let user = find_user(&gw.db, &req.username)
        .await
        .map_err(|e| Problem::internal("logging in", &e))?;
    // Always verify one hash: the decoy for an unknown user.
    let hash = user.map(|u| u.password_hash).unwrap_or_else(|| gw.decoy_hash.clone());
    let known = gw.decoy_hash != hash;
    let password = req.password;
    let matches = hashing(HASHING_WAIT, move || verify_password(&hash, &password)).await?;
    if !(known && matches) {
        return Err(Problem::unauthorized("unknown username or wrong password"));
    }
    let token = gw
        .issue_token(&req.username)
        .map_err(|e| Problem::internal("signing the token", &e))?;
    Ok(axum::Json(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: gw.config.jwt.ttl.as_secs(),
    }))
}

impl Gateway {
    /// The roles a user gets at login.
    pub fn roles_of(&self, username: &str) -> Vec<String> {
        let mut roles = vec![ROLE_USER.to_string()];
        if self.config.admins.iter().any(|a| a == username) {
            roles.push(ROLE_ADMIN.to_string());
        }
        roles
    }

    pub fn issue_token(&self, username: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_ms() / 1000;
        let claims = Claims {
            sub: username.to_string(),
            roles: self.roles_of(username),
            iat,
            exp: iat + self.config.jwt.ttl.as_secs() as i64,
            nbf: None,
        };
        jsonwebtoken::encode(
            &Header::new(self.config.jwt.algorithm),
            &claims,
            &self.config.jwt.encoding,
        )
    }

    /// Verifies a bearer token: the configured algorithm only, signature, `exp`, `nbf`.
    pub fn verify_token(&self, token: &str) -> Result<AuthUser, Problem> {
        verify_token(&self.config.jwt, token)
    }
}

/// Verifies a bearer token against `keys`: their algorithm only, signature, `exp`, `nbf`.
/// Shared by the gateway and the admin API (which accepts a token with the admin role).
pub fn verify_token(keys: &crate::gateway::settings::JwtKeys, token: &str) -> Result<AuthUser, Problem> {
    {
        let mut validation = Validation::new(keys.algorithm);
        validation.set_required_spec_claims(&["sub", "exp", "iat"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            let why = match e.kind() {
                ExpiredSignature => "the token has expired; log in again".to_string(),
                ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                InvalidSignature => "the token's signature does not verify".to_string(),
                InvalidAlgorithm => format!("the token must be signed with {:?}", keys.algorithm),
                MissingRequiredClaim(claim) => format!("the token lacks the {claim:?} claim"),
                _ => "the token is malformed or signed with another algorithm".to_string(),
            };
            tracing::debug!(error = %e, "token refused");
            Problem::unauthorized(why)
        })?;
        if data.claims.sub.is_empty() {
            return Err(Problem::unauthorized("the token's sub is empty"));
        }
        Ok(AuthUser {
            username: data.claims.sub,
            roles: data.claims.roles,
        })
    }
}

/// The bearer token of a request, if well-formed.
fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("send `Authorization: Bearer <token>` (POST /auth/login gives one)"))?;
    let text = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(Problem::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// Middleware of every protected route: drops client-sent `X-Username` / `X-Roles`,
/// verifies the token, sets both headers from it and hands the handler an [`AuthUser`].
pub async fn authenticate(State(gw): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    headers.remove(X_USERNAME);
    headers.remove(X_ROLES);
    let user = match bearer(headers).and_then(|token| gw.verify_token(token)) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    tracing::Span::current().record("username", user.username.as_str());
    if let (Ok(name), Ok(roles)) = (
        HeaderValue::from_str(&user.username),
        HeaderValue::from_str(&user.roles_header()),
    ) {
        headers.insert(X_USERNAME, name);
        headers.insert(X_ROLES, roles);
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_names_every_bad_field() {
        let ok = RegisterRequest {
            username: "alice".into(),
            email: "alice@example.org".into(),
            password: "long enough".into(),
        };
        assert!(validate_registration(&ok).is_ok());
        let bad = RegisterRequest {
            username: "a b".into(),
            email: "nope".into(),
            password: "short".into(),
        };
        let fields: Vec<String> = validate_registration(&bad)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["username", "email", "password"]);
    }

    #[test]
    fn usernames_and_emails_with_control_characters_are_refused() {
        let req = |username: &str, email: &str| RegisterRequest {
            username: username.into(),
            email: email.into(),
            password: "long enough".into(),
        };
        let fields = |r: RegisterRequest| -> Vec<String> {
            validate_registration(&r)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(req("al\u{0}ice", "alice@example.org")), ["username"]);
        assert_eq!(fields(req("alice", "a\u{0}@example.org")), ["email"]);
        assert_eq!(fields(req("alice", "a@exam\u{7}ple.org")), ["email"]);
    }

    /// With every turn taken, a hash waits its limit and is answered 503, not queued
    /// without end; a turn given back lets the next one run.
    #[tokio::test]
    async fn hashing_waits_for_a_turn_at_most_its_limit() {
        let all = hashing_turns().available_permits() as u32;
        let taken = hashing_turns().clone().acquire_many_owned(all).await.unwrap();
        let refused = hashing(std::time::Duration::from_millis(50), || 1).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(taken);
        assert_eq!(hashing(std::time::Duration::from_millis(50), || 2).await.unwrap(), 2);
    }

    #[test]
    fn argon2id_hashes_verify_and_differ() {
        let a = hash_password("secret password").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password(&a, "secret password"));
        assert!(!verify_password(&a, "other password"));
        assert_ne!(a, hash_password("secret password").unwrap());
    }
}
