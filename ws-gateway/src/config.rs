//! ws-gateway configuration: every variable of CONTRACT §1 that concerns the gateway, and the
//! gateway's own tunables, parsed once into real types. `ws-gateway --help` lists them all.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

use crate::{
    agent::{AgentRoutes, BackendSettings, RunSettings},
    history::HistorySettings,
    runs::RetentionSettings,
};
use tollgate_shared::{
    client_addr::TrustedProxies,
    config::{SecretString, parse_duration, parse_socket_addr},
    serve::RequestTimeout,
};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "ws-gateway",
    version,
    about = "Tollgate's WebSocket gateway: authenticated, plan-metered connections, agent runs and event delivery"
)]
pub struct Config {
    /// HTTP listen address (`/ws`, `/v1/publish`, `/healthz`; `/readyz` and `/metrics` too
    /// unless `GATEWAY_ADMIN_ADDR` is set). Port 0 picks a free port.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_socket_addr)]
    pub addr: SocketAddr,

    /// Internal listener for `/readyz`, `/metrics` and `/healthz` (Prometheus, the kubelet),
    /// kept off the public port. Unset: they are served on `GATEWAY_ADDR` with everything
    /// else. Port 0 picks a free port.
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", value_parser = parse_socket_addr)]
    pub admin_addr: Option<SocketAddr>,

    /// auth-service's gRPC endpoint (token validation, JWKS, revocations, service tokens).
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// usage-service's gRPC endpoint (plans, permissions, limits, leases).
    #[arg(
        long,
        env = "USAGE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub usage_service_url: String,

    /// `redis://…`. Unset: the in-process engine (a single gateway node).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,

    /// Prefix of every Redis key and channel; must match auth-service's to hear its
    /// revocations.
    #[arg(long, env = "REDIS_PREFIX", default_value = "tollgate")]
    pub redis_prefix: String,

    /// This gateway's client id at auth-service (`AUTH_SERVICE_CLIENTS` there).
    #[arg(long, env = "SERVICE_CLIENT_ID", default_value = "ws-gateway")]
    pub service_client_id: String,

    /// This gateway's client secret at auth-service (required).
    #[arg(
        long,
        env = "SERVICE_CLIENT_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub service_client_secret: SecretString,

    /// Expected `iss` of tokens.
    #[arg(long, env = "AUTH_ISSUER", default_value = "tollgate-auth")]
    pub issuer: String,

    /// Expected `aud` of user access tokens.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "tollgate")]
    pub audience: String,

    /// Clock-skew tolerance on `exp` and `nbf`; a connection whose token is not refreshed is
    /// closed at `exp` plus this.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// How long a connection opened without a token may take to send `{"type":"auth"}`.
    #[arg(long, env = "GATEWAY_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// What happens to new connections while auth-service is unreachable: `degraded` accepts
    /// tokens that verify against the cached JWKS and are not on the cached revocation list,
    /// `strict` refuses them with 503.
    #[arg(
        long,
        env = "GATEWAY_AUTH_MODE",
        value_enum,
        default_value = "degraded"
    )]
    pub auth_mode: AuthMode,

    /// Largest accepted WebSocket frame and message, in bytes; larger ones close with 1009.
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Accept `?access_token=` on the upgrade request (tokens in URLs end up in logs).
    #[arg(long, env = "GATEWAY_ALLOW_QUERY_TOKEN", default_value_t = false)]
    pub allow_query_token: bool,

    /// Connection attempts per client address per minute (429 beyond).
    #[arg(long, env = "GATEWAY_CONNECT_RATE", default_value_t = 120)]
    pub connect_rate: u64,

    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the client, for the
    /// per-address limit and logs (comma-separated CIDRs or addresses). Unset: none, every
    /// client is its TCP peer.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse, hide_default_value = true)]
    pub trusted_proxies: TrustedProxies,

    /// Open connections on this node before new ones get 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Messages queued for one connection before it is closed as a slow consumer (4010).
    #[arg(long, env = "GATEWAY_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// How often the server pings each connection.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long a connection may stay silent after a ping before it is dropped as dead.
    #[arg(long, env = "GATEWAY_PONG_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// How long before `exp` the client gets `token_expiring`.
    #[arg(long, env = "GATEWAY_TOKEN_EXPIRY_WARNING", default_value = "30s", value_parser = parse_duration)]
    pub token_expiry_warning: Duration,

    /// Consecutive malformed frames before the connection closes with 1008.
    #[arg(long, env = "GATEWAY_MAX_BAD_FRAMES", default_value_t = 3)]
    pub max_bad_frames: u32,

    /// Consecutive rate-limited messages before the connection closes with 4008.
    #[arg(long, env = "GATEWAY_MAX_RATE_VIOLATIONS", default_value_t = 5)]
    pub max_rate_violations: u32,

    /// Agent runs one connection may have in flight.
    #[arg(long, env = "GATEWAY_MAX_RUNS_PER_CONNECTION", default_value_t = 4)]
    pub max_runs_per_connection: usize,

    /// How long the built-in demo agent's tools "work" between `tool_executing` and
    /// `tool_completed`.
    #[arg(long, env = "GATEWAY_AGENT_THINK_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub agent_think_delay: Duration,

    /// Agent names and their backends: `name=builtin` (the demo agent, in process) or
    /// `name=http://host:port` (a `tollgate.agent.v1.AgentBackend` server), comma-separated.
    #[arg(long, env = "GATEWAY_AGENTS", default_value = "demo=builtin")]
    pub agents: AgentRoutes,

    /// The longest silence from an agent backend, when starting a run or during one; then the
    /// run ends with `agent_failed {reason: "idle_timeout"}`.
    #[arg(long, env = "GATEWAY_AGENT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub agent_idle_timeout: Duration,

    /// How long a cancelled agent backend gets to end its stream before the run ends with
    /// `run_cancelled` anyway.
    #[arg(long, env = "GATEWAY_AGENT_CANCEL_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub agent_cancel_grace: Duration,

    /// The longest wait for a connection to a remote agent backend.
    #[arg(long, env = "GATEWAY_AGENT_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub agent_connect_timeout: Duration,

    /// How long a run goes on with nobody following it (its connection gone and no resume)
    /// before it is stopped.
    #[arg(long, env = "GATEWAY_DETACHED_RUN_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub detached_run_timeout: Duration,

    /// How long an ended run's events stay available to `resume_run`.
    #[arg(long, env = "GATEWAY_RUN_HISTORY_TTL", default_value = "15m", value_parser = parse_duration)]
    pub run_history_ttl: Duration,

    /// How long this node's lease lives in Redis without a renewal (renewed every third of
    /// it); another node finding a run's node without a lease ends the run with `node_lost`.
    #[arg(long, env = "GATEWAY_NODE_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub node_lease_ttl: Duration,

    /// The most bytes of events one run keeps for `resume_run`; older events that every
    /// follower has read are dropped first.
    #[arg(
        long,
        env = "GATEWAY_RUN_HISTORY_MAX_BYTES",
        default_value_t = 1_048_576
    )]
    pub run_history_max_bytes: usize,

    /// The largest message an agent backend may send, in bytes.
    #[arg(
        long,
        env = "GATEWAY_AGENT_MAX_MESSAGE_BYTES",
        default_value_t = 262_144
    )]
    pub agent_max_message_bytes: usize,

    /// Messages per second an agent backend may send in one run, after a burst of as many;
    /// faster is a flood, and ends the run with `agent_failed {reason: "protocol_error"}`.
    #[arg(
        long,
        env = "GATEWAY_AGENT_MAX_MESSAGES_PER_SECOND",
        default_value_t = 1000
    )]
    pub agent_max_messages_per_second: u32,

    /// Lifetime of a connection's lease at usage-service; renewed at a third of it.
    #[arg(long, env = "GATEWAY_LEASE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// While usage-service is unreachable, allow metered actions under the local emergency
    /// limit instead of answering `dependency_unavailable`.
    #[arg(long, env = "GATEWAY_USAGE_FAIL_OPEN", default_value_t = false)]
    pub usage_fail_open: bool,

    /// The local emergency limit: metered actions per user, per meter, per minute on this node
    /// while usage-service is unreachable (fail-open only); also the connections per user
    /// this node admits without a lease.
    #[arg(long, env = "GATEWAY_EMERGENCY_LIMIT", default_value_t = 30)]
    pub emergency_limit: u64,

    /// Most messages of a user this node reserves at once from a rate-only message meter and
    /// spends without asking usage-service (at most the plan's rate / 16; 1 counts every
    /// message on its own). Over N nodes a user may get N times this beyond the plan's rate.
    #[arg(long, env = "GATEWAY_MESSAGE_BUDGET", default_value_t = 64)]
    pub message_budget: u64,

    /// Consecutive failed calls to auth-service before the circuit breaker opens.
    #[arg(long, env = "GATEWAY_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long the breaker stays open before it lets one probe call through.
    #[arg(long, env = "GATEWAY_BREAKER_COOL_DOWN", default_value = "5s", value_parser = parse_duration)]
    pub breaker_cool_down: Duration,

    /// How long a token confirmed by `ValidateToken` is trusted without asking again (never
    /// past its `exp`).
    #[arg(long, env = "GATEWAY_VALIDATION_CACHE_TTL", default_value = "3s", value_parser = parse_duration)]
    pub validation_cache_ttl: Duration,

    /// Timeout of every call to auth-service and usage-service.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    #[command(flatten)]
    pub request_timeout: RequestTimeout,

    /// Largest accepted `/v1/publish` body, in bytes.
    #[arg(long, env = "GATEWAY_PUBLISH_MAX_BYTES", default_value_t = 65_536)]
    pub publish_max_bytes: usize,

    /// How long a user's published events stay available to a client reconnecting with
    /// `since`, after the user's last event; `0s` keeps none (events are still numbered).
    #[arg(long, env = "GATEWAY_EVENT_HISTORY_TTL", default_value = "2m", value_parser = parse_duration)]
    pub event_history_ttl: Duration,

    /// The most published events kept per user for `since` (older ones are trimmed first).
    #[arg(long, env = "GATEWAY_EVENT_HISTORY_SIZE", default_value_t = 1000)]
    pub event_history_size: usize,

    /// How long connections get to close (1001) after SIGTERM before the process exits.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// OTLP/gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// How new connections are authenticated while auth-service cannot be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Trust local JWKS verification plus the cached revocation list.
    Degraded,
    /// Refuse new connections (503) until auth-service answers again.
    Strict,
}

impl Config {
    /// How runs treat their agent backends.
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            idle_timeout: self.agent_idle_timeout,
            cancel_grace: self.agent_cancel_grace,
            max_messages_per_second: self.agent_max_messages_per_second,
        }
    }

    /// How long runs and their journals are kept.
    pub fn retention(&self) -> RetentionSettings {
        RetentionSettings {
            detached_timeout: self.detached_run_timeout,
            history_ttl: self.run_history_ttl,
            history_max_bytes: self.run_history_max_bytes,
            node_lease_ttl: self.node_lease_ttl,
        }
    }

    /// How each user's published events are kept.
    pub fn event_history(&self) -> HistorySettings {
        HistorySettings {
            ttl: self.event_history_ttl,
            size: self.event_history_size,
        }
    }

    /// How agent backends are reached.
    pub fn backend_settings(&self) -> BackendSettings {
        BackendSettings {
            connect_timeout: self.agent_connect_timeout,
            max_message_bytes: self.agent_max_message_bytes,
        }
    }

    /// The contract's defaults, listening on port 0 and talking to the given services; it never
    /// reads the environment. Tests lower the timers they exercise.
    pub fn for_tests(auth_service_url: &str, usage_service_url: &str) -> Self {
        Self {
            addr: ([127, 0, 0, 1], 0).into(),
            admin_addr: None,
            auth_service_url: auth_service_url.to_owned(),
            usage_service_url: usage_service_url.to_owned(),
            redis_url: None,
            redis_prefix: "tollgate".into(),
            service_client_id: "ws-gateway".into(),
            service_client_secret: SecretString::from(String::new()),
            issuer: "tollgate-auth".into(),
            audience: "tollgate".into(),
            jwt_leeway: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            auth_mode: AuthMode::Degraded,
            max_frame_bytes: 65_536,
            allow_query_token: false,
            connect_rate: 100_000,
            trusted_proxies: TrustedProxies::default(),
            max_connections: 100_000,
            send_queue: 256,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            token_expiry_warning: Duration::from_secs(30),
            max_bad_frames: 3,
            max_rate_violations: 5,
            max_runs_per_connection: 4,
            agent_think_delay: Duration::ZERO,
            agents: AgentRoutes::default(),
            agent_idle_timeout: Duration::from_secs(60),
            agent_cancel_grace: Duration::from_secs(2),
            agent_connect_timeout: Duration::from_secs(2),
            detached_run_timeout: Duration::from_secs(600),
            run_history_ttl: Duration::from_secs(900),
            run_history_max_bytes: 1_048_576,
            node_lease_ttl: Duration::from_secs(15),
            agent_max_message_bytes: 262_144,
            agent_max_messages_per_second: 1000,
            lease_ttl: Duration::from_secs(60),
            usage_fail_open: false,
            emergency_limit: 30,
            message_budget: 64,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(5),
            validation_cache_ttl: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(2),
            request_timeout: RequestTimeout::default(),
            publish_max_bytes: 65_536,
            event_history_ttl: Duration::from_secs(120),
            event_history_size: 1000,
            shutdown_grace: Duration::from_secs(10),
            otlp_endpoint: None,
        }
    }
}
