//! usage-service: plans, subscriptions, roles and permissions, rate limits, quotas and billing
//! counters (CONTRACT §4).
#![forbid(unsafe_code)]

pub mod access;
pub mod catalogue;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod ledger;
pub mod limits;
pub mod metering;
pub mod metrics;
pub mod periods;
pub mod startup;
pub mod store;
pub mod subscriptions;
pub mod usage;

pub use config::Config;
pub use startup::Application;
