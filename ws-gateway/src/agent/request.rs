//! The validated input of a run: [`RunId`], [`Tool`] and [`RunRequest`].
//!
//! Why newtypes that validate on construction: the connection code parses `run_agent` and
//! `cancel_run` frames into these once, at the boundary, and everything after that works
//! with values known to be sane. Error messages are written for the client, and never echo
//! client input back (it can be of any size).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one agent run; chosen by the gateway and echoed in every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(Uuid);

impl RunId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for RunId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A `run_id` that is not a UUID (from `cancel_run`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run_id must be a UUID")]
pub struct InvalidRunId;

impl FromStr for RunId {
    type Err = InvalidRunId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|_| InvalidRunId)
    }
}

/// The tools a run may ask for; on the wire, their snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Tool {
    Search,
    Calculator,
    CodeInterpreter,
    WebBrowse,
}

impl Tool {
    /// Every tool, in declaration order.
    pub const ALL: [Tool; 4] = [
        Tool::Search,
        Tool::Calculator,
        Tool::CodeInterpreter,
        Tool::WebBrowse,
    ];

    /// The wire name, which is also the usage-service action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Search => "search",
            Tool::Calculator => "calculator",
            Tool::CodeInterpreter => "code_interpreter",
            Tool::WebBrowse => "web_browse",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool name that is not one of [`Tool::ALL`]. The name is not echoed: it is client input
/// of any length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool (expected search, calculator, code_interpreter or web_browse)")]
pub struct UnknownTool;

impl FromStr for Tool {
    type Err = UnknownTool;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tool::ALL
            .into_iter()
            .find(|tool| tool.as_str() == s)
            .ok_or(UnknownTool)
    }
}

impl TryFrom<String> for Tool {
    type Error = UnknownTool;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A validated `run_agent` request. Build it with [`RunRequest::new`]; the fields are public
/// for reading, and executors stay safe on any values (they bound their own work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub run_id: RunId,
    pub agent: String,
    pub input: String,
    pub tools: Vec<Tool>,
}

impl RunRequest {
    /// Longest agent name, in characters.
    pub const MAX_AGENT_CHARS: usize = 64;
    /// Largest input, in bytes (16 KiB).
    pub const MAX_INPUT_BYTES: usize = 16 * 1024;
    /// Most tools one run may request.
    pub const MAX_TOOLS: usize = 8;

    /// Validates a request and gives it a fresh [`RunId`].
    pub fn new(
        agent: impl Into<String>,
        input: impl Into<String>,
        tools: Vec<Tool>,
    ) -> Result<Self, RunRequestError> {
        let (agent, input) = (agent.into(), input.into());
        if agent.trim().is_empty() {
            return Err(RunRequestError::EmptyAgent);
        }
        if agent.chars().count() > Self::MAX_AGENT_CHARS {
            return Err(RunRequestError::AgentTooLong {
                max: Self::MAX_AGENT_CHARS,
            });
        }
        if input.trim().is_empty() {
            return Err(RunRequestError::EmptyInput);
        }
        if input.len() > Self::MAX_INPUT_BYTES {
            return Err(RunRequestError::InputTooLarge {
                max: Self::MAX_INPUT_BYTES,
            });
        }
        if tools.len() > Self::MAX_TOOLS {
            return Err(RunRequestError::TooManyTools {
                max: Self::MAX_TOOLS,
            });
        }
        for (i, &tool) in tools.iter().enumerate() {
            if tools[..i].contains(&tool) {
                return Err(RunRequestError::DuplicateTool(tool));
            }
        }
        Ok(Self {
            run_id: RunId::new(),
            agent,
            input,
            tools,
        })
    }
}

/// Why a `run_agent` request was refused. Messages are safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRequestError {
    #[error("agent must not be empty")]
    EmptyAgent,
    #[error("agent must be at most {max} characters")]
    AgentTooLong { max: usize },
    #[error("input must not be empty")]
    EmptyInput,
    #[error("input must be at most {max} bytes")]
    InputTooLarge { max: usize },
    #[error("at most {max} tools may be requested")]
    TooManyTools { max: usize },
    #[error("tool {0} is listed more than once")]
    DuplicateTool(Tool),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_id_round_trips_as_a_string() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>(), Ok(id));
        assert_eq!(serde_json::to_value(id).unwrap(), json!(id.to_string()));
        assert_eq!("nope".parse::<RunId>(), Err(InvalidRunId));
        assert_ne!(RunId::new(), RunId::new());
    }

    #[test]
    fn tool_names_round_trip() {
        for tool in Tool::ALL {
            assert_eq!(tool.as_str().parse::<Tool>(), Ok(tool));
            assert_eq!(serde_json::to_value(tool).unwrap(), json!(tool.as_str()));
            assert_eq!(
                serde_json::from_value::<Tool>(json!(tool.as_str())).unwrap(),
                tool
            );
        }
        assert_eq!("Search".parse::<Tool>(), Err(UnknownTool));
        assert_eq!("admin_audit".parse::<Tool>(), Err(UnknownTool));
        let error = serde_json::from_value::<Tool>(json!("shell")).unwrap_err();
        assert!(error.to_string().starts_with("unknown tool"), "{error}");
    }

    #[test]
    fn valid_requests_are_accepted() {
        let request = RunRequest::new("demo", "what is 2+2?", vec![Tool::Calculator]).unwrap();
        assert_eq!(request.agent, "demo");
        assert_eq!(request.tools, [Tool::Calculator]);
        let longest = RunRequest::new(
            "é".repeat(RunRequest::MAX_AGENT_CHARS),
            "x".repeat(RunRequest::MAX_INPUT_BYTES),
            Tool::ALL.to_vec(),
        );
        assert!(
            longest.is_ok(),
            "the limits are inclusive, and count characters"
        );
        assert!(RunRequest::new("demo", "hi", vec![]).is_ok());
    }

    #[test]
    fn invalid_requests_are_refused_with_safe_messages() {
        use RunRequestError::*;
        let new = |agent: &str, input: &str, tools: &[Tool]| {
            RunRequest::new(agent, input, tools.to_vec()).unwrap_err()
        };
        let long_agent = "a".repeat(RunRequest::MAX_AGENT_CHARS + 1);
        let big_input = "x".repeat(RunRequest::MAX_INPUT_BYTES + 1);
        let nine = [Tool::Search; 9];
        let cases = [
            (new("", "hi", &[]), EmptyAgent, "agent must not be empty"),
            (new(" \t", "hi", &[]), EmptyAgent, "agent must not be empty"),
            (
                new(&long_agent, "hi", &[]),
                AgentTooLong { max: 64 },
                "agent must be at most 64 characters",
            ),
            (new("demo", "", &[]), EmptyInput, "input must not be empty"),
            (
                new("demo", "\n ", &[]),
                EmptyInput,
                "input must not be empty",
            ),
            (
                new("demo", &big_input, &[]),
                InputTooLarge { max: 16384 },
                "input must be at most 16384 bytes",
            ),
            (
                new("demo", "hi", &nine),
                TooManyTools { max: 8 },
                "at most 8 tools may be requested",
            ),
            (
                new(
                    "demo",
                    "hi",
                    &[Tool::Search, Tool::Calculator, Tool::Search],
                ),
                DuplicateTool(Tool::Search),
                "tool search is listed more than once",
            ),
        ];
        for (error, expected, message) in cases {
            assert_eq!(error, expected);
            assert_eq!(error.to_string(), message);
        }
    }
}
