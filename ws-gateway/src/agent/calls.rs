//! The protocol's rules for what a backend may send in one run: which tool calls it may make
//! and answer, and how fast it may talk.
//!
//! Why a module of its own: these are the checks that stand between a misbehaving backend and
//! a user's bill (a tool the user did not ask for, a result for a call that was denied and so
//! never counted, the same call counted twice). Keeping them apart from the stream plumbing
//! makes each rule one small function with its own test.

use std::{collections::HashMap, fmt};

use tokio::time::Instant;

use super::ToolName;

/// Longest call id a backend may choose, in bytes.
pub(super) const MAX_CALL_ID_BYTES: usize = 64;
/// Most tool calls one run may make.
pub(super) const MAX_CALLS: usize = 256;

/// A broken rule; logged, never shown to the client (which sees `protocol_error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Violation {
    BadCallId,
    DuplicateCallId,
    TooManyCalls,
    UndeclaredTool,
    ToolNotRequested,
    UnknownCall,
    ResultForDeniedCall,
    DuplicateResult,
    InvalidJson,
    TooLarge,
    Flood,
    AfterTheEnd,
    NoStart,
    EndedWithoutAnswer,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadCallId => "a call id must be 1 to 64 bytes",
            Self::DuplicateCallId => "a call id was used twice",
            Self::TooManyCalls => "more tool calls than a run may make",
            Self::UndeclaredTool => "a tool request named no valid tool",
            Self::ToolNotRequested => "a tool request named a tool this run did not request",
            Self::UnknownCall => "a tool result for an unknown call",
            Self::ResultForDeniedCall => "a tool result for a denied call",
            Self::DuplicateResult => "a second tool result for one call",
            Self::InvalidJson => "a tool input or output that is not JSON",
            Self::TooLarge => "a message over the size limit",
            Self::Flood => "messages faster than the rate limit",
            Self::AfterTheEnd => "a message after the run ended",
            Self::NoStart => "an empty message",
            Self::EndedWithoutAnswer => "the stream ended without completed or failed",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Allowed { tool: ToolName, answered: bool },
    Denied,
}

/// The tool calls of one run, by call id.
#[derive(Debug, Default)]
pub(super) struct Calls {
    calls: HashMap<String, Call>,
}

impl Calls {
    /// Checks a `tool_request` and returns the tool to ask the gate about. The call is not
    /// recorded until it is [`Calls::decided`].
    pub(super) fn request(
        &self,
        call_id: &str,
        tool: &str,
        requested: &[ToolName],
    ) -> Result<ToolName, Violation> {
        if call_id.is_empty() || call_id.len() > MAX_CALL_ID_BYTES {
            return Err(Violation::BadCallId);
        }
        if self.calls.contains_key(call_id) {
            return Err(Violation::DuplicateCallId);
        }
        if self.calls.len() >= MAX_CALLS {
            return Err(Violation::TooManyCalls);
        }
        let tool: ToolName = tool.parse().map_err(|_| Violation::UndeclaredTool)?;
        if !requested.contains(&tool) {
            return Err(Violation::ToolNotRequested);
        }
        Ok(tool)
    }

    /// Records the gate's decision on a call that passed [`Calls::request`].
    pub(super) fn decided(&mut self, call_id: &str, tool: ToolName, allowed: bool) {
        let call = if allowed {
            Call::Allowed {
                tool,
                answered: false,
            }
        } else {
            Call::Denied
        };
        self.calls.insert(call_id.to_owned(), call);
    }

    /// Checks a `tool_result` and returns the tool it answers.
    pub(super) fn result(&mut self, call_id: &str) -> Result<ToolName, Violation> {
        match self.calls.get_mut(call_id) {
            None => Err(Violation::UnknownCall),
            Some(Call::Denied) => Err(Violation::ResultForDeniedCall),
            Some(Call::Allowed { answered: true, .. }) => Err(Violation::DuplicateResult),
            Some(Call::Allowed { tool, answered }) => {
                *answered = true;
                Ok(tool.clone())
            }
        }
    }
}

/// A token bucket over a backend's messages: `burst` at once, then `rate` a second.
#[derive(Debug)]
pub(super) struct Flood {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Flood {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one message's token; `Err` once the backend talks faster than allowed.
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Violation> {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Violation::Flood)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tools(names: &[&str]) -> Vec<ToolName> {
        names.iter().map(|name| name.parse().unwrap()).collect()
    }

    #[test]
    fn a_call_is_answered_once_and_only_when_allowed() {
        let requested = tools(&["word_count", "search"]);
        let mut calls = Calls::default();
        let tool = calls.request("1", "word_count", &requested).unwrap();
        assert_eq!(
            calls.result("1"),
            Err(Violation::UnknownCall),
            "not decided yet"
        );
        calls.decided("1", tool, true);
        assert_eq!(calls.result("1").unwrap().as_str(), "word_count");
        assert_eq!(calls.result("1"), Err(Violation::DuplicateResult));

        let tool = calls.request("2", "search", &requested).unwrap();
        calls.decided("2", tool, false);
        assert_eq!(calls.result("2"), Err(Violation::ResultForDeniedCall));
        assert_eq!(calls.result("3"), Err(Violation::UnknownCall));
    }

    #[test]
    fn requests_outside_the_rules_are_violations() {
        let requested = tools(&["word_count"]);
        let mut calls = Calls::default();
        let tool = calls.request("a", "word_count", &requested).unwrap();
        calls.decided("a", tool, false);
        let cases = [
            ("a", "word_count", Violation::DuplicateCallId),
            ("", "word_count", Violation::BadCallId),
            (&"x".repeat(65), "word_count", Violation::BadCallId),
            ("b", "search", Violation::ToolNotRequested),
            ("b", "Word Count", Violation::UndeclaredTool),
            ("b", "", Violation::UndeclaredTool),
        ];
        for (call_id, tool, violation) in cases {
            assert_eq!(calls.request(call_id, tool, &requested), Err(violation));
        }
    }

    #[test]
    fn a_run_makes_a_bounded_number_of_calls() {
        let requested = tools(&["t"]);
        let mut calls = Calls::default();
        for i in 0..MAX_CALLS {
            let id = i.to_string();
            let tool = calls.request(&id, "t", &requested).unwrap();
            calls.decided(&id, tool, true);
        }
        assert_eq!(
            calls.request("one-more", "t", &requested),
            Err(Violation::TooManyCalls)
        );
    }

    #[test]
    fn the_flood_limit_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut flood = Flood::new(10, 5);
        for _ in 0..5 {
            assert_eq!(flood.take(start), Ok(()));
        }
        assert_eq!(flood.take(start), Err(Violation::Flood));
        assert_eq!(flood.take(start + Duration::from_millis(100)), Ok(()));
        assert_eq!(
            flood.take(start + Duration::from_millis(100)),
            Err(Violation::Flood)
        );
        assert_eq!(
            flood.take(start + Duration::from_secs(60)),
            Ok(()),
            "refilled"
        );
    }
}
