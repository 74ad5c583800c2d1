//! What every Tollgate service shares, split by concern: configuration parsing, telemetry,
//! shutdown, token types and verification, service-to-service credentials, metrics and gRPC
//! plumbing. Nothing here knows about a particular service's domain.
#![forbid(unsafe_code)]

/// Every Tollgate binary links this crate, so this is the allocator of all of them. Services
/// make many small allocations that live briefly and are freed on other threads (a request, a
/// frame, a span); jemalloc serves those with less work than glibc's malloc, and, unlike
/// mimalloc (measured too), without growing what an idle WebSocket connection holds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod backoff;
pub mod balance;
pub mod client_addr;
pub mod config;
pub mod db;
pub mod engine;
pub mod events;
#[cfg(any(test, feature = "test-util"))]
pub mod fault_proxy;
pub mod grpc;
pub mod grpc_methods;
pub mod health;
pub mod jwks;
pub mod metrics;
pub mod names;
pub mod probe_gate;
pub mod process;
pub mod serve;
pub mod service_auth;
pub mod shutdown;
pub mod span_fields;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(any(test, feature = "test-util"))]
pub mod testing_cluster;
pub mod time;
pub mod tokens;
