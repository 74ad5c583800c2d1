//! The demo agent: a deterministic agent backend that speaks `tollgate.agent.v1.AgentBackend`.
//!
//! Why a crate of its own: the gateway routes runs to agent backends over one protocol, and
//! the demo is just one of them. As a library, [`DemoAgent::run`] serves one run over any pair
//! of message streams (the gateway can run it in-process, tests over channels) and [`service`]
//! wraps it as a tonic service; the `demo-agent` binary serves that service on its own port,
//! as any external backend would be served.
//!
//! A run: `thinking` with its plan, then for each requested tool a `tool_request`, the
//! gateway's decision, and for an allowed call the tool's `tool_result`; then the answer as
//! word-sized `delta`s and `completed`. The tools really compute (the `tools` module says
//! what each takes and returns) and are pure functions, so the same run always yields the
//! same messages.
#![forbid(unsafe_code)]

mod answer;
pub mod auth;
pub mod config;
mod demo;
mod emitter;
mod request;
mod service;
pub mod startup;
#[cfg(test)]
mod test_support;
mod tools;

pub use auth::{AuthSettings, ServiceAuth};
pub use config::Config;
pub use demo::DemoAgent;
pub use service::service;
pub use startup::Application;
