//! The validated input of a run: [`RunId`], [`ToolName`] and [`RunRequest`].
//!
//! Why newtypes that validate on construction: the connection code parses `run_agent` and
//! `cancel_run` frames into these once, at the boundary, and everything after that works
//! with values known to be sane. Error messages are written for the client, and never echo
//! client input back (it can be of any size).

use std::collections::BTreeMap;
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

/// A tool name, as the plan catalogue declares it: `[a-z][a-z0-9_.-]{0,63}`. Which names
/// exist, and who may call them, is usage-service's to say; the gateway only checks the shape
/// at its boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ToolName(String);

impl ToolName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a tool name. The name is not echoed: it is client input of any length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tool name is 1 to 64 of a-z, 0-9, `_`, `.` and `-`, starting with a letter")]
pub struct InvalidToolName;

impl FromStr for ToolName {
    type Err = InvalidToolName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if tollgate_shared::names::is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidToolName)
        }
    }
}

impl TryFrom<String> for ToolName {
    type Error = InvalidToolName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ToolName> for String {
    fn from(name: ToolName) -> Self {
        name.0
    }
}

/// A validated `run_agent` request. Build it with [`RunRequest::new`]; the fields are public
/// for reading, and executors stay safe on any values (they bound their own work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub run_id: RunId,
    pub agent: String,
    pub input: String,
    pub tools: Vec<ToolName>,
    /// What the client passed in `run_agent.metadata`, handed to the backend as is.
    pub metadata: BTreeMap<String, String>,
}

impl RunRequest {
    /// Longest agent name, in characters.
    pub const MAX_AGENT_CHARS: usize = 64;
    /// Largest input, in bytes (16 KiB).
    pub const MAX_INPUT_BYTES: usize = 16 * 1024;
    /// Most tools one run may request.
    pub const MAX_TOOLS: usize = 8;
    /// Most `metadata` entries, and the longest key and value, in bytes.
    pub const MAX_METADATA_ENTRIES: usize = 16;
    pub const MAX_METADATA_KEY_BYTES: usize = 64;
    pub const MAX_METADATA_VALUE_BYTES: usize = 512;

    /// Validates a request and gives it a fresh [`RunId`].
    pub fn new(
        agent: impl Into<String>,
        input: impl Into<String>,
        tools: Vec<ToolName>,
        metadata: BTreeMap<String, String>,
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
        for (i, tool) in tools.iter().enumerate() {
            if tools[..i].contains(tool) {
                return Err(RunRequestError::DuplicateTool(tool.clone()));
            }
        }
        if metadata.len() > Self::MAX_METADATA_ENTRIES
            || metadata.iter().any(|(key, value)| {
                key.is_empty()
                    || key.len() > Self::MAX_METADATA_KEY_BYTES
                    || value.len() > Self::MAX_METADATA_VALUE_BYTES
            })
        {
            return Err(RunRequestError::MetadataTooLarge {
                entries: Self::MAX_METADATA_ENTRIES,
                key: Self::MAX_METADATA_KEY_BYTES,
                value: Self::MAX_METADATA_VALUE_BYTES,
            });
        }
        Ok(Self {
            run_id: RunId::new(),
            agent,
            input,
            tools,
            metadata,
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
    DuplicateTool(ToolName),
    #[error(
        "metadata holds at most {entries} entries, keys of 1 to {key} bytes and values of at most {value} bytes"
    )]
    MetadataTooLarge {
        entries: usize,
        key: usize,
        value: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(names: &[&str]) -> Vec<ToolName> {
        names.iter().map(|name| name.parse().unwrap()).collect()
    }

    #[test]
    fn run_id_round_trips_as_a_string() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>(), Ok(id));
        assert_eq!(serde_json::to_value(id).unwrap(), json!(id.to_string()));
        assert_eq!("nope".parse::<RunId>(), Err(InvalidRunId));
        assert_ne!(RunId::new(), RunId::new());
    }

    #[test]
    fn any_well_formed_tool_name_is_a_tool_name() {
        let longest = format!("a{}", "z".repeat(63));
        for name in ["search", "word_count", "crm.lookup-v2", "a", &longest] {
            let tool: ToolName = name.parse().unwrap();
            assert_eq!(tool.as_str(), name);
            assert_eq!(serde_json::to_value(&tool).unwrap(), json!(name));
            assert_eq!(
                serde_json::from_value::<ToolName>(json!(name)).unwrap(),
                tool
            );
        }
        let too_long = format!("a{}", "z".repeat(64));
        for bad in [
            "",
            "Search",
            "9lives",
            "_x",
            "word count",
            "tool:x",
            "é",
            &too_long,
        ] {
            assert_eq!(bad.parse::<ToolName>(), Err(InvalidToolName), "{bad:?}");
        }
        let error = serde_json::from_value::<ToolName>(json!("Shell")).unwrap_err();
        assert!(error.to_string().starts_with("a tool name is"), "{error}");
    }

    #[test]
    fn valid_requests_are_accepted() {
        let request = RunRequest::new(
            "demo",
            "what is 2+2?",
            tools(&["calculator"]),
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(request.agent, "demo");
        assert_eq!(request.tools, tools(&["calculator"]));
        let eight: Vec<String> = (0..RunRequest::MAX_TOOLS)
            .map(|i| format!("t{i}"))
            .collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        let metadata: BTreeMap<String, String> = (0..RunRequest::MAX_METADATA_ENTRIES)
            .map(|i| {
                (
                    format!("k{i}"),
                    "v".repeat(RunRequest::MAX_METADATA_VALUE_BYTES),
                )
            })
            .collect();
        let longest = RunRequest::new(
            "é".repeat(RunRequest::MAX_AGENT_CHARS),
            "x".repeat(RunRequest::MAX_INPUT_BYTES),
            tools(&eight),
            metadata,
        );
        assert!(
            longest.is_ok(),
            "the limits are inclusive, and count characters"
        );
        assert!(RunRequest::new("demo", "hi", vec![], BTreeMap::new()).is_ok());
    }

    #[test]
    fn invalid_requests_are_refused_with_safe_messages() {
        use RunRequestError::*;
        let new = |agent: &str, input: &str, names: &[&str]| {
            RunRequest::new(agent, input, tools(names), BTreeMap::new()).unwrap_err()
        };
        let long_agent = "a".repeat(RunRequest::MAX_AGENT_CHARS + 1);
        let big_input = "x".repeat(RunRequest::MAX_INPUT_BYTES + 1);
        let nine = ["search"; 9];
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
                new("demo", "hi", &["search", "calculator", "search"]),
                DuplicateTool("search".parse().unwrap()),
                "tool search is listed more than once",
            ),
        ];
        for (error, expected, message) in cases {
            assert_eq!(error, expected);
            assert_eq!(error.to_string(), message);
        }
        let too_many: BTreeMap<String, String> = (0..=RunRequest::MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let long_value = BTreeMap::from([("k".to_owned(), "v".repeat(513))]);
        let empty_key = BTreeMap::from([(String::new(), "v".to_owned())]);
        for metadata in [too_many, long_value, empty_key] {
            let error = RunRequest::new("demo", "hi", vec![], metadata).unwrap_err();
            assert!(matches!(error, MetadataTooLarge { .. }), "{error}");
        }
    }
}
