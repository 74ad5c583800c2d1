//! auth-service configuration: every variable of CONTRACT §1 that concerns this service,
//! parsed once into real types. `auth-service --help` lists them all.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use tollgate_shared::{
    client_addr::TrustedProxies,
    config::{SecretString, parse_duration, parse_socket_addr},
    db,
    serve::RequestTimeout,
};

use crate::{clients::ClientRegistry, sealing::KeyEncryptionKeys};

/// The key-encryption key of `Config::for_tests` (tests sharing a database share it).
const TEST_KEY_ENCRYPTION_KEY: &str = "dGVzdC1vbmx5IGtleS1lbmNyeXB0aW9uIGtleSwgMzIgYnl0ZXMrIQ==";

#[derive(Clone, Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "Tollgate's users, sessions, tokens and signing keys"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// gRPC listen address (`tollgate.auth.v1.AuthService`, health, reflection). Port 0 picks a
    /// free port.
    #[arg(long, env = "AUTH_GRPC_ADDR", default_value = "127.0.0.1:50051", value_parser = parse_socket_addr)]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address (JSON API, JWKS, health, metrics). Port 0 picks a free port.
    #[arg(long, env = "AUTH_HTTP_ADDR", default_value = "127.0.0.1:8081", value_parser = parse_socket_addr)]
    pub http_addr: SocketAddr,

    /// `postgres://…` or `sqlite://…`. Unset: an embedded SQLite file, `tollgate-auth.db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://tollgate-auth.db"
    )]
    pub database_url: SecretString,

    /// Maximum database connections.
    #[arg(long, env = "AUTH_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    #[command(flatten)]
    pub database_timeouts: db::Timeouts,

    #[command(flatten)]
    pub request_timeout: RequestTimeout,

    /// `redis://…`. Unset: the in-process engine (one replica only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,

    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "tollgate")]
    pub redis_prefix: String,

    /// `iss` of every token.
    #[arg(long, env = "AUTH_ISSUER", default_value = "tollgate-auth")]
    pub issuer: String,

    /// `aud` of user access tokens.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "tollgate")]
    pub audience: String,

    /// Lifetime of access tokens.
    #[arg(long, env = "AUTH_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens (and so of an idle session).
    #[arg(long, env = "AUTH_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long a just-rotated refresh token may be presented again, once (a lost response).
    #[arg(long, env = "AUTH_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// Absolute lifetime of a session: refreshing slides its expiry, never past this long
    /// after login.
    #[arg(long, env = "AUTH_SESSION_MAX_LIFETIME", default_value = "90d", value_parser = parse_positive_duration)]
    pub session_max_lifetime: Duration,

    /// How often expired sessions and refresh tokens are deleted (by one replica at a time).
    #[arg(long, env = "AUTH_PRUNE_INTERVAL", default_value = "1h", value_parser = parse_positive_duration)]
    pub prune_interval: Duration,

    /// Clock-skew tolerance on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Lifetime of service tokens.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_TTL", default_value = "10m", value_parser = parse_duration)]
    pub service_token_ttl: Duration,

    /// Service clients: `client_id:secret:scope+scope,…`. Secrets must be at least 16
    /// characters.
    #[arg(long, env = "AUTH_SERVICE_CLIENTS", default_value = "", value_parser = ClientRegistry::parse, hide_default_value = true, hide_env_values = true)]
    pub service_clients: ClientRegistry,

    /// Key-encryption keys that seal the signing keys at rest (required): comma-separated
    /// base64, newest first, each at least 32 random bytes (`openssl rand -base64 32`). The
    /// newest seals, every one opens.
    #[arg(long, env = "AUTH_KEY_ENCRYPTION_KEYS", value_parser = KeyEncryptionKeys::parse, hide_env_values = true)]
    pub key_encryption_keys: Option<KeyEncryptionKeys>,

    /// Failed logins of one account from one client address before each further attempt from
    /// that address must wait (other addresses are unaffected).
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u64,

    /// How long failed logins are counted.
    #[arg(long, env = "AUTH_LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_failure_window: Duration,

    /// The first wait after those failures; it doubles with each further failure.
    #[arg(long, env = "AUTH_LOGIN_FAILURE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub login_failure_delay: Duration,

    /// The longest wait after failed logins.
    #[arg(long, env = "AUTH_LOGIN_MAX_DELAY", default_value = "15m", value_parser = parse_duration)]
    pub login_max_delay: Duration,

    /// Login and register attempts per client address per window, across accounts.
    #[arg(long, env = "AUTH_LOGIN_MAX_PER_ADDRESS", default_value_t = 100)]
    pub login_max_per_address: u64,

    /// Window of the per-address attempt count.
    #[arg(long, env = "AUTH_LOGIN_ADDRESS_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub login_address_window: Duration,

    /// Refresh requests, and client-credentials requests, per client address per window (each
    /// counted on its own).
    #[arg(long, env = "AUTH_TOKEN_MAX_PER_ADDRESS", default_value_t = 600)]
    pub token_max_per_address: u64,

    /// Window of the per-address refresh and client-credentials counts.
    #[arg(long, env = "AUTH_TOKEN_ADDRESS_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub token_address_window: Duration,

    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the client (comma-separated
    /// CIDRs or addresses). Unset: none, every client is its TCP peer.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse, hide_default_value = true)]
    pub trusted_proxies: TrustedProxies,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "AUTH_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// OTLP/gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// A duration that must not be zero (a zero lifetime or period would be a misconfiguration).
fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!("`{value}` must be longer than zero")),
        duration => Ok(duration),
    }
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum Command {
    /// Start the service (the default).
    Serve,
    /// Run the database migrations and exit.
    Migrate,
    /// Manage the signing keys stored in the database.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-seal every stored signing key under the newest key-encryption key and report the rows
    /// left on older ones (exit 1 if any). Safe to run while replicas serve, and to repeat.
    Rewrap,
}

impl Config {
    /// The defaults of the contract with every listener on port 0; it never reads the
    /// environment, so tests stay isolated.
    pub fn for_tests(database_url: &str) -> Self {
        let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            command: None,
            grpc_addr: any_port,
            http_addr: any_port,
            database_url: database_url.to_owned().into(),
            database_max_connections: 8,
            database_timeouts: db::Timeouts::default(),
            request_timeout: RequestTimeout::default(),
            redis_url: None,
            redis_prefix: "tollgate".into(),
            issuer: "tollgate-auth".into(),
            audience: "tollgate".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 86_400),
            refresh_reuse_grace: Duration::from_secs(10),
            session_max_lifetime: Duration::from_secs(90 * 86_400),
            prune_interval: Duration::from_secs(3600),
            jwt_leeway: Duration::from_secs(30),
            service_token_ttl: Duration::from_secs(600),
            service_clients: ClientRegistry::default(),
            key_encryption_keys: Some(
                KeyEncryptionKeys::parse(TEST_KEY_ENCRYPTION_KEY).expect("a valid test key"),
            ),
            login_max_failures: 5,
            login_failure_window: Duration::from_secs(15 * 60),
            login_failure_delay: Duration::from_secs(1),
            login_max_delay: Duration::from_secs(15 * 60),
            login_max_per_address: 1_000,
            login_address_window: Duration::from_secs(60),
            token_max_per_address: 100_000,
            token_address_window: Duration::from_secs(60),
            trusted_proxies: TrustedProxies::default(),
            shutdown_grace: Duration::from_secs(10),
            otlp_endpoint: None,
        }
    }
}
