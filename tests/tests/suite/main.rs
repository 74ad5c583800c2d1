//! Tollgate's cross-service integration suite: the real binaries, PostgreSQL and Redis. See
//! `tests/README.md` for how it runs and what each module covers. One test binary, to link the
//! harness once.
// Test helpers, like tests, panic on a failed expectation.
#![allow(clippy::unwrap_used)]

mod agents;
mod catalogue;
mod deployment;
mod drain;
mod faults;
mod help;
mod metering;
mod metrics;
mod nodes;
mod partitions;
mod python_agent;
mod redis_acl;
mod redis_cluster;
mod resume;
mod resume_boundaries;
mod resume_storm;
mod seed_auth;
mod seed_business;
mod seed_cross_service;
mod seed_edge_cases;
mod seed_lifecycle;
mod startup;
mod storm;
mod traces;
