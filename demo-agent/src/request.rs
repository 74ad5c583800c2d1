//! The run a `start` message asks for, converted once at the boundary.
//!
//! Why bounded here too: the gateway validates what its clients send, but a backend is its own
//! process, reachable by anyone who can reach its port and by a gateway with bugs. So the
//! conversion never fails and never trusts sizes: the input is cut to [`MAX_INPUT_BYTES`],
//! at most [`MAX_TOOLS`] tools are kept, and tool names that are empty, longer than
//! [`MAX_TOOL_NAME_BYTES`] or hold control characters are dropped (asking for such a tool
//! could only be a protocol error at the gateway).

use std::fmt;

use tollgate_proto::agent::v1::Start;
use uuid::Uuid;

use crate::tools::Tool;

/// Largest input used, in bytes (the gateway's own limit on `run_agent.input`).
pub(crate) const MAX_INPUT_BYTES: usize = 16 * 1024;
/// Most tools used by one run.
pub(crate) const MAX_TOOLS: usize = 8;
/// Longest tool name accepted.
pub(crate) const MAX_TOOL_NAME_BYTES: usize = 64;

/// A run's request, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunRequest {
    /// The gateway's run id, when it is a UUID as promised (only logged).
    pub(crate) run_id: Option<Uuid>,
    pub(crate) input: String,
    pub(crate) tools: Vec<ToolName>,
}

impl From<Start> for RunRequest {
    fn from(start: Start) -> Self {
        // Named in full so that a new field of `Start` fails the build until it is considered.
        let Start {
            run_id,
            agent: _,
            input,
            tools,
            user_id: _,
            session_id: _,
            plan: _,
            roles: _,
            client_metadata: _,
        } = start;
        let tools = tools
            .into_iter()
            .filter_map(|name| ToolName::parse(name).ok())
            .take(MAX_TOOLS)
            .collect();
        Self {
            run_id: Uuid::parse_str(&run_id).ok(),
            input: truncate(input, MAX_INPUT_BYTES),
            tools,
        }
    }
}

/// A tool name as the run listed it: 1 to [`MAX_TOOL_NAME_BYTES`] bytes, no control
/// characters. It may or may not name a tool the demo implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolName(String);

/// Why a tool name was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a tool name must be 1 to {MAX_TOOL_NAME_BYTES} bytes without control characters")]
pub(crate) struct InvalidToolName;

impl ToolName {
    pub(crate) fn parse(name: String) -> Result<Self, InvalidToolName> {
        let valid =
            (1..=MAX_TOOL_NAME_BYTES).contains(&name.len()) && !name.chars().any(char::is_control);
        valid.then_some(Self(name)).ok_or(InvalidToolName)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The tool this name stands for, when the demo implements it.
    pub(crate) fn implemented(&self) -> Option<Tool> {
        Tool::from_name(&self.0)
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(input: &str, tools: &[&str]) -> Start {
        Start {
            run_id: "0b8e9a1c-3f3a-4c1e-9a53-1f0a8c1e2b3d".into(),
            agent: "demo".into(),
            input: input.into(),
            tools: tools.iter().map(|&tool| tool.to_owned()).collect(),
            ..Start::default()
        }
    }

    fn names(request: &RunRequest) -> Vec<&str> {
        request.tools.iter().map(ToolName::as_str).collect()
    }

    #[test]
    fn a_start_keeps_its_input_and_tools_in_order() {
        let request = RunRequest::from(start("what is 2+2?", &["calculator", "word_count"]));
        assert_eq!(request.input, "what is 2+2?");
        assert_eq!(names(&request), ["calculator", "word_count"]);
        assert_eq!(request.tools[0].implemented(), Some(Tool::Calculator));
        assert_eq!(request.tools[1].implemented(), None);
        assert!(request.run_id.is_some());
    }

    #[test]
    fn an_oversized_input_is_cut_on_a_character_boundary() {
        let input = "é".repeat(MAX_INPUT_BYTES);
        let request = RunRequest::from(start(&input, &[]));
        assert_eq!(request.input.len(), MAX_INPUT_BYTES);
        let odd = format!("x{}", "é".repeat(MAX_INPUT_BYTES));
        let request = RunRequest::from(start(&odd, &[]));
        assert_eq!(
            request.input.len(),
            MAX_INPUT_BYTES - 1,
            "never half a character"
        );
    }

    #[test]
    fn at_most_eight_tools_are_kept() {
        let many: Vec<String> = (0..100).map(|i| format!("tool_{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let request = RunRequest::from(start("hi", &many));
        assert_eq!(names(&request), &many[..MAX_TOOLS]);
    }

    #[test]
    fn malformed_tool_names_are_dropped() {
        let long = "t".repeat(MAX_TOOL_NAME_BYTES + 1);
        let longest = "t".repeat(MAX_TOOL_NAME_BYTES);
        let request = RunRequest::from(start(
            "hi",
            &["", &long, "bad\nname", "\u{0}", "search", &longest],
        ));
        assert_eq!(names(&request), ["search", longest.as_str()]);
        assert_eq!(ToolName::parse(String::new()), Err(InvalidToolName));
    }

    #[test]
    fn a_run_id_that_is_not_a_uuid_is_not_kept() {
        let mut message = start("hi", &[]);
        message.run_id = "x".repeat(10_000);
        assert_eq!(RunRequest::from(message).run_id, None);
    }
}
