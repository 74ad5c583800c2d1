//! Agent runs: the `run_agent` half of the WebSocket protocol (CONTRACT §5).
//!
//! Why a module of its own: the connection code owns sockets, framing and usage-service
//! calls; this module owns what a run *is*. The seam between them is three small types:
//!
//! - an [`Executor`] turns a validated [`RunRequest`] into a stream of [`Step`]s on an mpsc
//!   channel, which the connection forwards to the client as frames in the contract's order
//!   (`agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`,
//!   `agent_completed`);
//! - a [`ToolGate`] authorizes and counts each tool call before it runs (the gateway
//!   implements it with usage-service's `Authorize` and `Consume`), so an executor can never
//!   run an unpaid tool;
//! - a [`CancellationToken`] stops the run promptly on `cancel_run`, disconnect or shutdown.
//!
//! The executor never sees a socket, so its tests need no network, and the gateway's tests
//! can plug in any executor. [`DemoAgent`] is the one shipped: a deterministic agent whose
//! tools really compute (see `tools.rs` for what each takes and returns).
//!
//! A [`Step::Denied`] is not an event: the gateway answers it with
//! `error {code: denial.code(), message}` and the run goes on without that tool.

mod arithmetic;
mod calculator;
mod corpus;
mod demo;
mod emitter;
mod request;
mod search;
mod simulated;
#[cfg(test)]
pub(crate) mod test_support;
mod tools;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

pub use demo::DemoAgent;
pub use request::{InvalidRunId, RunId, RunRequest, RunRequestError, Tool, UnknownTool};

/// What a run reports, in the contract's wire form: `{"type":"agent_started","run_id":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    AgentStarted {
        run_id: RunId,
        agent: String,
    },
    AgentThinking {
        run_id: RunId,
        thought: String,
    },
    ToolExecuting {
        run_id: RunId,
        tool: Tool,
        input: String,
    },
    ToolCompleted {
        run_id: RunId,
        tool: Tool,
        output: serde_json::Value,
    },
    AgentCompleted {
        run_id: RunId,
        output: String,
    },
}

impl AgentEvent {
    pub fn run_id(&self) -> RunId {
        match self {
            AgentEvent::AgentStarted { run_id, .. }
            | AgentEvent::AgentThinking { run_id, .. }
            | AgentEvent::ToolExecuting { run_id, .. }
            | AgentEvent::ToolCompleted { run_id, .. }
            | AgentEvent::AgentCompleted { run_id, .. } => *run_id,
        }
    }
}

/// Why a tool call was not admitted. `Display` is a client-safe message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolDenial {
    /// Neither the plan nor the user's roles or delegations allow the tool.
    #[error("this tool is not allowed for your account")]
    Forbidden,
    /// A higher plan allows the tool; `upgrade_to` names the cheapest such plan.
    #[error("this tool needs a higher plan{}", upgrade_hint(.upgrade_to.as_deref()))]
    PlanRequired { upgrade_to: Option<String> },
    /// The tool-call quota or rate limit is used up.
    #[error("your tool call quota is used up")]
    QuotaExceeded,
    /// usage-service could not be asked (and the gateway is not failing open).
    #[error("tool authorization is unavailable, try again later")]
    Unavailable,
}

fn upgrade_hint(upgrade_to: Option<&str>) -> String {
    match upgrade_to {
        Some(plan) => format!(" (upgrade to {plan})"),
        None => String::new(),
    }
}

impl ToolDenial {
    /// The contract's `error.code` for this denial.
    pub fn code(&self) -> &'static str {
        match self {
            ToolDenial::Forbidden => "forbidden_tool",
            ToolDenial::PlanRequired { .. } => "plan_required",
            ToolDenial::QuotaExceeded => "quota_exceeded",
            ToolDenial::Unavailable => "dependency_unavailable",
        }
    }

    /// The `error.message` for a denial of `tool`, e.g.
    /// "web_browse: this tool needs a higher plan (upgrade to pro)".
    pub fn message(&self, tool: Tool) -> String {
        format!("{tool}: {self}")
    }
}

/// Authorizes and counts tool calls for one connection's user.
#[async_trait]
pub trait ToolGate: Send + Sync {
    /// Authorize and count one call of `tool` (the gateway asks usage-service). Called before
    /// every tool call; a call it admits is billed even if the run is cancelled before the
    /// tool finishes.
    async fn admit(&self, run_id: &RunId, tool: Tool) -> Result<(), ToolDenial>;
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// `agent_completed` was sent.
    Completed,
    /// The token was cancelled; nothing was sent after that was noticed.
    Cancelled,
    /// The executor gave up; the message is safe to show the client. [`DemoAgent`] never
    /// fails: its tool errors are part of the tool output.
    Failed(String),
    /// The steps receiver was dropped (the connection went away).
    Disconnected,
}

/// What an executor emits, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Forward to the client as is.
    Event(AgentEvent),
    /// The gate refused `tool`; it was not run and the run goes on.
    Denied { tool: Tool, denial: ToolDenial },
}

/// Runs agents. Implementations must send events in the contract's order, call
/// `gate.admit` before every tool call and skip denied tools, stop sending and return
/// [`RunEnd::Cancelled`] promptly once `cancel` fires (even while blocked on a full channel
/// or a slow gate), return [`RunEnd::Disconnected`] when a send fails, and never panic.
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug + 'static {
    async fn run(
        &self,
        request: RunRequest,
        gate: &dyn ToolGate,
        steps: &Sender<Step>,
        cancel: CancellationToken,
    ) -> RunEnd;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn events_have_the_contract_wire_form() {
        let run_id = RunId::from(Uuid::nil());
        let id = "00000000-0000-0000-0000-000000000000";
        let cases = [
            (
                AgentEvent::AgentStarted {
                    run_id,
                    agent: "demo".into(),
                },
                json!({"type": "agent_started", "run_id": id, "agent": "demo"}),
            ),
            (
                AgentEvent::AgentThinking {
                    run_id,
                    thought: "hm".into(),
                },
                json!({"type": "agent_thinking", "run_id": id, "thought": "hm"}),
            ),
            (
                AgentEvent::ToolExecuting {
                    run_id,
                    tool: Tool::WebBrowse,
                    input: "x".into(),
                },
                json!({"type": "tool_executing", "run_id": id, "tool": "web_browse", "input": "x"}),
            ),
            (
                AgentEvent::ToolCompleted {
                    run_id,
                    tool: Tool::Calculator,
                    output: json!({"value": 4}),
                },
                json!({"type": "tool_completed", "run_id": id, "tool": "calculator", "output": {"value": 4}}),
            ),
            (
                AgentEvent::AgentCompleted {
                    run_id,
                    output: "done".into(),
                },
                json!({"type": "agent_completed", "run_id": id, "output": "done"}),
            ),
        ];
        for (event, wire) in cases {
            assert_eq!(event.run_id(), run_id);
            assert_eq!(serde_json::to_value(&event).unwrap(), wire);
            assert_eq!(serde_json::from_value::<AgentEvent>(wire).unwrap(), event);
        }
    }

    #[test]
    fn denials_map_to_contract_codes_and_messages() {
        let plan = ToolDenial::PlanRequired {
            upgrade_to: Some("pro".into()),
        };
        assert_eq!(plan.code(), "plan_required");
        assert_eq!(
            plan.message(Tool::WebBrowse),
            "web_browse: this tool needs a higher plan (upgrade to pro)"
        );
        let no_plan = ToolDenial::PlanRequired { upgrade_to: None };
        assert_eq!(no_plan.to_string(), "this tool needs a higher plan");
        assert_eq!(ToolDenial::Forbidden.code(), "forbidden_tool");
        assert_eq!(ToolDenial::QuotaExceeded.code(), "quota_exceeded");
        assert_eq!(ToolDenial::Unavailable.code(), "dependency_unavailable");
    }
}
