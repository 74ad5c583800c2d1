//! auth-service configuration: every variable of CONTRACT §1 that concerns this service,
//! parsed once into real types. `auth-service --help` lists them all.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use tollgate_shared::{
    config::{SecretString, parse_duration, parse_socket_addr},
    db,
    serve::RequestTimeout,
};

use crate::clients::ClientRegistry;

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

    /// Failed logins per account before it is throttled for the window.
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u64,

    /// Window of the per-account failure count.
    #[arg(long, env = "AUTH_LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_failure_window: Duration,

    /// Login and register attempts per client address per window.
    #[arg(long, env = "AUTH_LOGIN_MAX_PER_ADDRESS", default_value_t = 100)]
    pub login_max_per_address: u64,

    /// Window of the per-address attempt count.
    #[arg(long, env = "AUTH_LOGIN_ADDRESS_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub login_address_window: Duration,

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
            login_max_failures: 10,
            login_failure_window: Duration::from_secs(15 * 60),
            login_max_per_address: 1_000,
            login_address_window: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            otlp_endpoint: None,
        }
    }
}
