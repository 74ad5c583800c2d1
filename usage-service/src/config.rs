//! usage-service configuration: every variable of CONTRACT §1 that concerns this service,
//! parsed once into real types. `usage-service --help` lists them all.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use tollgate_shared::{
    config::{SecretString, parse_duration, parse_socket_addr},
    db,
    serve::RequestTimeout,
};

use crate::clock::Clock;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "usage-service",
    version,
    about = "Tollgate's plans, limits, quotas and billing counters"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// gRPC listen address (`tollgate.usage.v1.UsageService`, health, reflection). Port 0 picks
    /// a free port.
    #[arg(long, env = "USAGE_GRPC_ADDR", default_value = "127.0.0.1:50052", value_parser = parse_socket_addr)]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address (health, metrics). Port 0 picks a free port.
    #[arg(long, env = "USAGE_HTTP_ADDR", default_value = "127.0.0.1:8082", value_parser = parse_socket_addr)]
    pub http_addr: SocketAddr,

    /// `postgres://…` or `sqlite://…`. Unset: an embedded SQLite file, `tollgate-usage.db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://tollgate-usage.db"
    )]
    pub database_url: SecretString,

    /// Maximum database connections.
    #[arg(long, env = "USAGE_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    #[command(flatten)]
    pub database_timeouts: db::Timeouts,

    #[command(flatten)]
    pub request_timeout: RequestTimeout,

    /// `redis://…`. Unset: the in-process engine (one replica only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,

    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = "tollgate")]
    pub redis_prefix: String,

    /// What limits do while Redis is unreachable: `local` counts in this process (each replica
    /// allows up to the limit), `closed` refuses with UNAVAILABLE.
    #[arg(
        long,
        env = "USAGE_REDIS_DOWN_MODE",
        value_enum,
        default_value = "local"
    )]
    pub redis_down_mode: RedisDownMode,

    /// A TOML catalogue file (plans, meters, tools) replacing the default catalogue; a bad one
    /// stops the start with one line naming the problem.
    #[arg(long, env = "USAGE_PLANS_FILE")]
    pub plans_file: Option<PathBuf>,

    /// auth-service's gRPC endpoint, for the JWKS that verifies service tokens.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// Expected `iss` of tokens.
    #[arg(long, env = "AUTH_ISSUER", default_value = "tollgate-auth")]
    pub issuer: String,

    /// Expected `aud` of user access tokens (unused here, but part of the verifier settings).
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "tollgate")]
    pub audience: String,

    /// Clock-skew tolerance on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "USAGE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// OTLP/gRPC endpoint for traces. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The wall clock (corrected by Redis's once Redis answers); tests give a replica a skewed
    /// one.
    #[arg(skip)]
    pub clock: Clock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RedisDownMode {
    Local,
    Closed,
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum Command {
    /// Start the service (the default).
    Serve,
    /// Run the database migrations and exit.
    Migrate,
}

impl Config {
    /// The contract's defaults with every listener on port 0; it never reads the environment.
    pub fn for_tests(database_url: &str, auth_service_url: &str) -> Self {
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
            redis_down_mode: RedisDownMode::Local,
            plans_file: None,
            auth_service_url: auth_service_url.to_owned(),
            issuer: "tollgate-auth".into(),
            audience: "tollgate".into(),
            jwt_leeway: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            otlp_endpoint: None,
            clock: Clock::system(),
        }
    }
}
