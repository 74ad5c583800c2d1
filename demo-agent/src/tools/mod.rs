//! The demo agent's tools: what each takes from the run's input, and running it.
//!
//! | tool | argument (the `tool_executing` input) | output (`tool_completed`) |
//! |---|---|---|
//! | `calculator` | the arithmetic expression in the input | `{"expression", "value"}` or `{"expression", "error"}` |
//! | `search` | the input, trimmed | up to 3 `{"id", "title", "snippet", "score"}` |
//! | `code_interpreter` | the input's first fenced block, or the input | line counts and evaluated lines, simulated |
//! | `web_browse` | the first http(s) URL in the input, or a search URL | `{"url", "status", "title", "summary"}`, simulated |
//!
//! Every tool is a pure, synchronous function of its argument with bounded work, so the
//! agent can run it inline on the runtime without `spawn_blocking`, and never fails: a bad
//! argument shows up as an `"error"` inside the output.
//!
//! A run may name tools that are not in this table (the gateway's catalogue can declare more
//! than the demo implements): [`Tool::from_name`] tells the two apart, and the agent answers
//! an unimplemented tool with an error output instead of running anything.

mod arithmetic;
mod calculator;
mod corpus;
mod search;
mod simulated;

use std::fmt;

use serde_json::Value;

/// The tools the demo agent implements; on the wire, their snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Tool {
    Search,
    Calculator,
    CodeInterpreter,
    WebBrowse,
}

impl Tool {
    /// Every tool, in declaration order.
    pub(crate) const ALL: [Tool; 4] = [
        Tool::Search,
        Tool::Calculator,
        Tool::CodeInterpreter,
        Tool::WebBrowse,
    ];

    /// The wire name, which is also the usage-service action name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tool::Search => "search",
            Tool::Calculator => "calculator",
            Tool::CodeInterpreter => "code_interpreter",
            Tool::WebBrowse => "web_browse",
        }
    }

    /// The implemented tool of that exact name, if any.
    pub(crate) fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|tool| tool.as_str() == name)
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tool produced: the JSON sent to the client, and one line for the final answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolOutput {
    pub(crate) json: Value,
    pub(crate) summary: String,
}

/// The argument `tool` takes from the run's input.
pub(crate) fn argument(tool: Tool, input: &str) -> String {
    match tool {
        Tool::Calculator => calculator::extract_expression(input).to_owned(),
        Tool::Search => input.trim().to_owned(),
        Tool::CodeInterpreter => simulated::program(input).to_owned(),
        Tool::WebBrowse => simulated::url(input),
    }
}

/// Runs `tool` on an argument made by [`argument`].
pub(crate) fn execute(tool: Tool, argument: &str) -> ToolOutput {
    match tool {
        Tool::Calculator => calculator::run(argument),
        Tool::Search => search::run(argument),
        Tool::CodeInterpreter => simulated::run_code(argument),
        Tool::WebBrowse => simulated::browse(argument),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_round_trip_and_are_exact() {
        for tool in Tool::ALL {
            assert_eq!(Tool::from_name(tool.as_str()), Some(tool));
            assert_eq!(tool.to_string(), tool.as_str());
        }
        for other in ["Search", "search ", "", "admin_audit", "web-browse"] {
            assert_eq!(Tool::from_name(other), None, "{other:?}");
        }
    }

    #[test]
    fn every_tool_handles_any_input() {
        let inputs = [
            "",
            " ",
            "what is (2+3)*4?",
            "```\n1+1\n```",
            "visit https://github.com/tokio-rs/axum",
            "\u{0}\u{7f}\u{feff}💥",
            &"(".repeat(100_000),
            &"9".repeat(1 << 20),
        ];
        for tool in Tool::ALL {
            for input in inputs {
                let arg = argument(tool, input);
                let output = execute(tool, &arg);
                let head: String = input.chars().take(20).collect();
                assert!(!output.summary.is_empty(), "{tool} on {head:?}");
            }
        }
    }

    #[test]
    fn calculator_argument_is_the_expression() {
        assert_eq!(argument(Tool::Calculator, "what is (2+3)*4?"), "(2+3)*4");
        assert_eq!(
            execute(Tool::Calculator, "(2+3)*4").json,
            serde_json::json!({"expression": "(2+3)*4", "value": 20})
        );
    }
}
