//! What every Tollgate service shares, split by concern: configuration parsing, telemetry,
//! shutdown, token types and verification, service-to-service credentials, metrics and gRPC
//! plumbing. Nothing here knows about a particular service's domain.
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod db;
pub mod engine;
pub mod events;
#[cfg(any(test, feature = "test-util"))]
pub mod fault_proxy;
pub mod grpc;
pub mod health;
pub mod jwks;
pub mod metrics;
pub mod process;
pub mod serve;
pub mod service_auth;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod time;
pub mod tokens;
