//! The harness of Tollgate's cross-service integration suite.
//!
//! The per-service suites run each service as a library inside the test process. This suite
//! runs what operators run: the three service binaries as child processes, configured by their
//! environment, on the real PostgreSQL and Redis, talked to by a real WebSocket client, real
//! gRPC and real HTTP. That is the only way to test what happens between processes: a
//! `kill -9`, a restart on the same port, SIGTERM, a partition between a service and its
//! database, a reconnect storm. Nothing is mocked.
//!
//! - [`binaries`]: where the service executables are.
//! - [`process`]: one service as a child process (logs captured, signals, restart, killed on
//!   drop).
//! - [`stack`]: a whole deployment ([`Cluster`]); PostgreSQL, Redis and the gateways' link to
//!   auth-service optionally behind a [`FaultProxy`](tollgate_shared::fault_proxy::FaultProxy).
//! - [`api`]: the calls users and services make to auth-service and usage-service.
//! - [`client`]: the WebSocket client and the gateway's HTTP side.
//! - [`forge`]: hostile tokens.
//! - [`python`]: the Python agent backend (`examples/python-agent`) as a child process.
//! - [`invariants`]: what must hold after every fault.
//! - [`otlp`]: a trace receiver the services export their spans to.
//! - [`scrape`]: the `/metrics` page, parsed.
//!
//! Isolation is by construction: each cluster has its own databases, Redis key prefix, client
//! secret and ports, so tests run in parallel. Waiting is always on a condition with a
//! deadline ([`eventually`]), never a sleep.
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod api;
pub mod binaries;
pub mod client;
pub mod forge;
pub mod invariants;
pub mod otlp;
pub mod process;
pub mod python;
pub mod scrape;
pub mod stack;

pub use api::{PASSWORD, User, key, unique_email};
pub use binaries::Binary;
pub use client::{
    NotConnected, Present, Received, Refused, WsClient, is_counted, kinds, publish, streamed,
    try_publish,
};
pub use invariants::{Acknowledgements, assert_ledger_matches, assert_session_revoked};
pub use otlp::{ExportedSpan, TraceReceiver};
pub use process::Service;
pub use python::PythonAgent;
pub use stack::{Cluster, ClusterBuilder};
pub use tollgate_shared::testing::{eventually, reason};

/// How long a test waits for any one thing before failing. Generous: the machine running the
/// suite may have two loaded cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `attempt` (every 50 ms) until it yields something or `deadline` passes; the bounded
/// wait of [`eventually`] for a condition that produces a value.
pub async fn eventually_some<T, F, Fut>(deadline: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's circuit breaker towards auth-service: 0 closed, 1 open, 2 half-open.
pub const BREAKER: &str = "tollgate_gateway_auth_breaker_state";
