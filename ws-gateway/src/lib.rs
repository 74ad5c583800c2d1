//! ws-gateway: the WebSocket gateway of Tollgate (CONTRACT §1, §2, §5–§7). It authenticates
//! connections through auth-service (with local JWKS verification as the fast path and the
//! fallback), asks usage-service before every metered action, runs agents and streams their
//! events, and delivers events that backends publish to every connection of a user, on every
//! gateway node.
#![forbid(unsafe_code)]

pub mod agent;
pub mod batch;
pub mod breaker;
pub mod budgets;
pub mod client;
pub mod commands;
pub mod config;
pub mod connection;
pub mod consumes;
pub mod delivery;
pub mod end;
pub mod error;
pub mod event_gate;
pub mod handshake;
pub mod history;
pub mod hub;
pub mod journal;
pub mod keepalive;
pub mod leases;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod queue;
pub mod revocations;
pub mod runs;
pub mod session;
pub mod startup;
pub mod state;
pub mod usage;
pub mod validation;

pub use config::Config;
pub use startup::Application;
