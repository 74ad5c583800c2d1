//! Agent runs: the `run_agent` half of the WebSocket protocol (CONTRACT §5), as a router.
//!
//! The gateway does not run agents. It authenticates and meters a run, then streams it to
//! and from an agent backend over `tollgate.agent.v1.AgentBackend` (one bidirectional stream
//! per run): the built-in demo agent in process, or any backend a team runs, in any language,
//! named in `GATEWAY_AGENTS`. The seam:
//!
//! - [`Backends`] knows where each agent runs and opens a [`Conversation`] with it;
//! - [`drive`] plays the gateway's side of one conversation: it checks every message against
//!   the protocol's rules, asks the [`ToolGate`] before any tool runs, and turns the run into
//!   the client's events, exactly one terminal event per run;
//! - a [`RunSink`] delivers those events to the client in order (the connection's send queue,
//!   which merges consecutive deltas for a slow reader);
//! - a [`CancellationToken`](tokio_util::sync::CancellationToken) stops the run on
//!   `cancel_run`, disconnect or shutdown.

mod backend;
mod builtin;
mod calls;
mod driver;
mod request;
mod routes;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ErrorReply};
use serde_json::Value;

pub use backend::{BackendSettings, Backends, Conversation, LocalAgent, OpenError, Received};
pub use driver::{Caller, RunSettings, drive};
pub use request::{InvalidRunId, InvalidToolName, RunId, RunRequest, RunRequestError, ToolName};
pub use routes::{AgentRoutes, InvalidRoutes, Route};

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
    /// A fragment of the answer; consecutive ones may reach a slow client merged.
    AgentDelta {
        run_id: RunId,
        text: String,
    },
    ToolExecuting {
        run_id: RunId,
        tool: ToolName,
        input: Value,
    },
    ToolCompleted {
        run_id: RunId,
        tool: ToolName,
        output: Value,
    },
    AgentCompleted {
        run_id: RunId,
        output: String,
    },
    /// The backend failed, went silent or broke the protocol: the run's terminal event.
    AgentFailed {
        run_id: RunId,
        reason: String,
    },
}

impl AgentEvent {
    pub fn run_id(&self) -> RunId {
        match self {
            AgentEvent::AgentStarted { run_id, .. }
            | AgentEvent::AgentThinking { run_id, .. }
            | AgentEvent::AgentDelta { run_id, .. }
            | AgentEvent::ToolExecuting { run_id, .. }
            | AgentEvent::ToolCompleted { run_id, .. }
            | AgentEvent::AgentCompleted { run_id, .. }
            | AgentEvent::AgentFailed { run_id, .. } => *run_id,
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
    /// The plan catalogue declares no tool of that name.
    #[error("no such tool is declared")]
    UnknownTool,
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
    pub fn code(&self) -> ErrorCode {
        match self {
            ToolDenial::Forbidden => ErrorCode::ForbiddenTool,
            ToolDenial::PlanRequired { .. } => ErrorCode::PlanRequired,
            ToolDenial::QuotaExceeded => ErrorCode::QuotaExceeded,
            ToolDenial::UnknownTool => ErrorCode::UnknownTool,
            ToolDenial::Unavailable => ErrorCode::DependencyUnavailable,
        }
    }

    /// The client's `error` reply for a denied call of `tool`.
    pub fn reply(&self, tool: &ToolName) -> ErrorReply {
        let upgrade_to = match self {
            ToolDenial::PlanRequired { upgrade_to } => upgrade_to.clone(),
            _ => None,
        };
        ErrorReply::tool_denied(self.code(), self.message(tool), upgrade_to)
    }

    /// The `error.message` for a denial of `tool`, e.g.
    /// "web_browse: this tool needs a higher plan (upgrade to pro)".
    pub fn message(&self, tool: &ToolName) -> String {
        format!("{tool}: {self}")
    }
}

/// Authorizes and counts tool calls for one connection's user.
#[async_trait]
pub trait ToolGate: Send + Sync {
    /// Authorize and count call `call_id` of `tool` in `run_id` (the gateway asks
    /// usage-service, counting under the key `<run_id>:<call_id>`, so a call is counted once
    /// however often it is asked about). A call it admits stays billed whatever happens next.
    async fn admit(&self, run_id: &RunId, call_id: &str, tool: &ToolName)
    -> Result<(), ToolDenial>;
}

/// How a run ended, as far as the client is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// `agent_completed` was sent.
    Completed,
    /// The run was cancelled; `run_cancelled` is the caller's to send.
    Cancelled,
    /// `agent_failed` was sent with this reason.
    Failed(String),
    /// The backend could not be reached, nothing was sent; `error {agent_unavailable}` is the
    /// caller's to send.
    Unavailable,
    /// The client went away.
    Disconnected,
}

impl RunEnd {
    /// The metrics label of this end.
    pub fn outcome(&self) -> &'static str {
        match self {
            RunEnd::Completed => "completed",
            RunEnd::Cancelled => "cancelled",
            RunEnd::Failed(_) => "failed",
            RunEnd::Unavailable => "unavailable",
            RunEnd::Disconnected => "disconnected",
        }
    }
}

/// What a run emits, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Forward to the client as is.
    Event(AgentEvent),
    /// The gate refused a call of `tool`; it was not run and the run goes on.
    Denied { tool: ToolName, denial: ToolDenial },
}

/// The client is gone: nothing more can be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// Delivers a run's steps to its client, in order.
#[async_trait]
pub trait RunSink: Send + Sync {
    /// Waits while the client is slow (consecutive deltas may be merged meanwhile); `Err` once
    /// the client is gone.
    async fn deliver(&self, step: Step) -> Result<(), Gone>;
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
                    tool: "web_browse".parse().unwrap(),
                    input: json!("x"),
                },
                json!({"type": "tool_executing", "run_id": id, "tool": "web_browse", "input": "x"}),
            ),
            (
                AgentEvent::AgentDelta {
                    run_id,
                    text: "Hel".into(),
                },
                json!({"type": "agent_delta", "run_id": id, "text": "Hel"}),
            ),
            (
                AgentEvent::AgentFailed {
                    run_id,
                    reason: "protocol_error".into(),
                },
                json!({"type": "agent_failed", "run_id": id, "reason": "protocol_error"}),
            ),
            (
                AgentEvent::ToolCompleted {
                    run_id,
                    tool: "calculator".parse().unwrap(),
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
        assert_eq!(plan.code().as_str(), "plan_required");
        let reply = plan.reply(&"web_browse".parse().unwrap());
        assert_eq!(reply.upgrade_to.as_deref(), Some("pro"));
        assert_eq!(reply.code, ErrorCode::PlanRequired);
        assert_eq!(
            plan.message(&"web_browse".parse().unwrap()),
            "web_browse: this tool needs a higher plan (upgrade to pro)"
        );
        let no_plan = ToolDenial::PlanRequired { upgrade_to: None };
        assert_eq!(no_plan.to_string(), "this tool needs a higher plan");
        assert_eq!(ToolDenial::Forbidden.code().as_str(), "forbidden_tool");
        assert_eq!(ToolDenial::QuotaExceeded.code().as_str(), "quota_exceeded");
        assert_eq!(ToolDenial::UnknownTool.code().as_str(), "unknown_tool");
        assert_eq!(
            ToolDenial::Unavailable.code().as_str(),
            "dependency_unavailable"
        );
    }
}
