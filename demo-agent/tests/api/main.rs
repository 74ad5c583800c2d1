//! The demo-agent binary's library, served on a real port and driven by a real tonic client.

mod auth;
mod helpers;
mod run;
