//! Gateway settings: flags / environment in ([`GatewayArgs`]), validated settings out
//! ([`GatewayConfig`]), with errors that name the bad value and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// The gateway's flags; `switchyard run` and `switchyard gateway` both take them.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Where the HTTP gateway listens.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// JWT signing algorithm: HS256 (shared secret), RS256 or EdDSA (PEM key files).
    #[arg(long, env = "SWITCHYARD_JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// HS256 secret (at least 32 bytes). Without it a random one is made at start, so
    /// tokens die with the process.
    #[arg(long, env = "SWITCHYARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/EdDSA: PEM file of the private key that signs tokens.
    #[arg(long, env = "SWITCHYARD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
    /// RS256/EdDSA: PEM file of the public key that verifies tokens.
    #[arg(long, env = "SWITCHYARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "SWITCHYARD_JWT_TTL_SECS", default_value_t = 3600)]
    pub jwt_ttl_secs: u64,
    /// Usernames that get the `admin` role (comma-separated).
    #[arg(long, env = "SWITCHYARD_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// How long `POST /orders` waits for the order's final status before answering 202.
    #[arg(long, env = "SWITCHYARD_REPLY_TIMEOUT_MS", default_value_t = 30_000)]
    pub reply_timeout_ms: u64,
    /// Redis for the order status cache (redis://...); in-process without it.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Consumer group the gateway replicas share to read `orders.status`.
    #[arg(long, env = "SWITCHYARD_GATEWAY_GROUP", default_value = "switchyard-gateway")]
    pub gateway_group: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHYARD_HTTP_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        GatewayArgs {
            http_addr: "127.0.0.1:8080".into(),
            jwt_algorithm: "HS256".into(),
            jwt_secret: None,
            jwt_private_key: None,
            jwt_public_key: None,
            jwt_ttl_secs: 3600,
            admins: Vec::new(),
            reply_timeout_ms: 30_000,
            redis_url: None,
            gateway_group: "switchyard-gateway".into(),
            body_limit: 64 * 1024,
        }
    }
}

/// A gateway setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--http-addr {0:?} is not an address: give HOST:PORT, e.g. 127.0.0.1:8080")]
    Addr(String),
    #[error("--jwt-algorithm {0:?} is not supported: use HS256, RS256 or EdDSA")]
    Algorithm(String),
    #[error("--jwt-secret is {0} bytes long: HS256 needs at least 32 random bytes (e.g. `openssl rand -hex 32`)")]
    ShortSecret(usize),
    #[error("--jwt-algorithm {0} signs with key files: pass --jwt-private-key and --jwt-public-key (PEM)")]
    MissingKeys(&'static str),
    #[error("cannot read {what} key {path}: {source}")]
    ReadKey {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} key {path} is not a {alg} PEM key: {source}")]
    BadKey {
        what: &'static str,
        path: String,
        alg: &'static str,
        source: jsonwebtoken::errors::Error,
    },
    #[error("--reply-timeout-ms must be positive")]
    ZeroTimeout,
    #[error("--jwt-ttl-secs must be positive")]
    ZeroTtl,
    #[error("--redis-url {0:?} is not a Redis URL: {1}; use redis://HOST:PORT")]
    Redis(String, redis::RedisError),
}

/// How tokens are signed and checked.
#[derive(Clone)]
pub struct JwtKeys {
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    pub ttl: Duration,
}

/// Validated gateway settings.
#[derive(Clone)]
pub struct GatewayConfig {
    pub addr: SocketAddr,
    pub jwt: JwtKeys,
    pub admins: Vec<String>,
    pub reply_timeout: Duration,
    pub redis_url: Option<String>,
    pub group: String,
    pub body_limit: usize,
}

impl GatewayConfig {
    pub fn from_args(args: &GatewayArgs) -> Result<GatewayConfig, SettingsError> {
        let addr = args
            .http_addr
            .parse()
            .map_err(|_| SettingsError::Addr(args.http_addr.clone()))?;
        let algorithm = match args.jwt_algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "EDDSA" => Algorithm::EdDSA,
            _ => return Err(SettingsError::Algorithm(args.jwt_algorithm.clone())),
        };
        if args.jwt_ttl_secs == 0 {
            return Err(SettingsError::ZeroTtl);
        }
        if args.reply_timeout_ms == 0 {
            return Err(SettingsError::ZeroTimeout);
        }
        let (encoding, decoding) = match algorithm {
            Algorithm::HS256 => {
                let secret = match &args.jwt_secret {
                    Some(secret) if secret.len() < 32 => return Err(SettingsError::ShortSecret(secret.len())),
                    Some(secret) => secret.clone().into_bytes(),
                    None => {
                        tracing::warn!(
                            "no --jwt-secret / SWITCHYARD_JWT_SECRET: signing with a random secret; tokens stop working when this process exits"
                        );
                        format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()).into_bytes()
                    }
                };
                (EncodingKey::from_secret(&secret), DecodingKey::from_secret(&secret))
            }
            Algorithm::RS256 | Algorithm::EdDSA => {
                let name = if algorithm == Algorithm::RS256 {
                    "RS256"
                } else {
                    "EdDSA"
                };
                let (Some(private), Some(public)) = (&args.jwt_private_key, &args.jwt_public_key) else {
                    return Err(SettingsError::MissingKeys(name));
                };
                let private_pem = read_key("private", private)?;
                let public_pem = read_key("public", public)?;
                let bad = |what: &'static str, path: &Path| {
                    let path = path.display().to_string();
                    move |source| SettingsError::BadKey {
                        what,
                        path,
                        alg: name,
                        source,
                    }
                };
                if algorithm == Algorithm::RS256 {
                    (
                        EncodingKey::from_rsa_pem(&private_pem).map_err(bad("private", private))?,
                        DecodingKey::from_rsa_pem(&public_pem).map_err(bad("public", public))?,
                    )
                } else {
                    (
                        EncodingKey::from_ed_pem(&private_pem).map_err(bad("private", private))?,
                        DecodingKey::from_ed_pem(&public_pem).map_err(bad("public", public))?,
                    )
                }
            }
            _ => unreachable!("only the algorithms matched above"),
        };
        if let Some(url) = &args.redis_url {
            redis::Client::open(url.as_str()).map_err(|e| SettingsError::Redis(crate::store::redact(url), e))?;
        }
        Ok(GatewayConfig {
            addr,
            jwt: JwtKeys {
                algorithm,
                encoding,
                decoding,
                ttl: Duration::from_secs(args.jwt_ttl_secs),
            },
            admins: args
                .admins
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            reply_timeout: Duration::from_millis(args.reply_timeout_ms),
            redis_url: args.redis_url.clone(),
            group: args.gateway_group.clone(),
            body_limit: args.body_limit,
        })
    }
}

fn read_key(what: &'static str, path: &Path) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|source| SettingsError::ReadKey {
        what,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_settings_with_the_fix() {
        let args = |f: fn(&mut GatewayArgs)| {
            let mut a = GatewayArgs {
                jwt_secret: Some("x".repeat(32)),
                ..GatewayArgs::default()
            };
            f(&mut a);
            GatewayConfig::from_args(&a).err().map(|e| e.to_string())
        };
        assert_eq!(args(|_| {}), None);
        assert!(args(|a| a.http_addr = "nowhere".into()).unwrap().contains("HOST:PORT"));
        assert!(
            args(|a| a.jwt_algorithm = "none".into())
                .unwrap()
                .contains("HS256, RS256 or EdDSA")
        );
        assert!(
            args(|a| a.jwt_secret = Some("short".into()))
                .unwrap()
                .contains("at least 32")
        );
        assert!(
            args(|a| a.jwt_algorithm = "RS256".into())
                .unwrap()
                .contains("--jwt-private-key")
        );
        assert!(args(|a| a.reply_timeout_ms = 0).unwrap().contains("positive"));
        assert!(
            args(|a| a.redis_url = Some("http://x".into()))
                .unwrap()
                .contains("redis://")
        );
        // A password never reaches the message.
        let refused = args(|a| a.redis_url = Some("rediss+bad://:hunter2@cache:6379".into())).unwrap();
        assert!(
            refused.contains(":***@cache") && !refused.contains("hunter2"),
            "{refused}"
        );
    }
}
