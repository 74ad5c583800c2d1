#![allow(clippy::unwrap_used)]

//! ws-gateway's behavioural suite: real auth-service and usage-service applications, one or
//! two real gateways on real listeners, and a real WebSocket client, on the embedded default
//! (SQLite, in-process engine) and on PostgreSQL + Redis.

mod helpers;

use tollgate_shared::both_backends;

mod backends;
mod closing;
mod connect;
mod events;
mod events_nodes;
mod faults;
mod flood;
mod frames;
mod lifecycle;
mod limits;
mod nodes;
mod proxies;
mod publish;
mod resume;
mod resume_nodes;
mod resume_support;
mod runs;
mod shutdown;
