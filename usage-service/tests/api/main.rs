#![allow(clippy::unwrap_used)]

//! usage-service's behavioural suite: the real application (with a real auth-service issuing
//! and publishing the keys of its service tokens) on real listeners, over real gRPC, on the
//! embedded default and on PostgreSQL + Redis.

mod helpers;

use tollgate_shared::both_backends;

mod access;
mod bad_input;
mod catalogue;
mod clock_skew;
mod consume;
mod faults;
mod leases;
mod ledger;
mod replicas;
mod subscriptions;
mod upgrade;
