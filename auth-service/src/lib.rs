//! auth-service: registers users, logs them in, issues EdDSA access tokens and rotating refresh
//! tokens, revokes sessions, publishes its keys, validates tokens for other services and
//! issues service tokens (CONTRACT §2–§3).
#![forbid(unsafe_code)]

pub mod accounts;
pub mod auth;
pub mod clients;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod passwords;
pub mod pruning;
pub mod revocation_feed;
pub mod rewrap;
pub mod sealing;
pub mod service_tokens;
pub mod sessions;
pub mod startup;
pub mod store;
pub mod throttle;
pub mod validation;

pub use config::Config;
pub use startup::Application;
