//! [`DemoAgent`]: a deterministic agent that plans, asks the gateway for each requested tool,
//! runs the allowed ones and streams a summary of the results.
//!
//! Why deterministic: the same request and decisions always yield the same messages (no
//! randomness, no wall clock in any output), so end-to-end tests can assert whole transcripts
//! and benchmarks measure the gateway rather than an agent. The optional think delay only
//! spaces the messages out in time; it changes nothing in them.
//!
//! Every await of a run goes through an [`Emitter`], so a cancelled run stops within one poll
//! and sends nothing more, and a run whose gateway went away stops at its next await.

use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, Delta, Failed, GatewayMessage, Thinking, ToolDecision, ToolRequest,
    ToolResult, agent_message::Kind,
};
use tracing::Instrument;

use crate::{
    answer::{answer, fragments, plan},
    emitter::{Emitter, Interrupted},
    request::{RunRequest, ToolName},
    tools::{self, ToolOutput},
};

/// How long a run waits for the gateway's decision on one tool call. The gateway answers
/// within its own usage-service timeout; this only bounds a run whose gateway forgot it.
pub(crate) const DECISION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the one message sent outside a run's normal course (`failed` on a bad first
/// message or on shutdown) may wait for room in the channel.
const LAST_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The demo agent. Any agent name runs the same behaviour.
#[derive(Debug, Clone, Default)]
pub struct DemoAgent {
    think_delay: Duration,
}

/// How a run ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// `completed` was sent.
    Completed,
    /// `failed` was sent (or tried) with this reason.
    Failed(&'static str),
    /// Stopped without a last message (cancel, end of inbound, closed outbound).
    Interrupted(Interrupted),
}

impl DemoAgent {
    /// A demo agent with no think delay: a run takes as long as its gateway's decisions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits `delay` while each allowed tool "works", between its decision and its
    /// `tool_result` (cancellable), so clients can watch a run stream and cancel it.
    #[must_use]
    pub fn with_think_delay(mut self, delay: Duration) -> Self {
        self.think_delay = delay;
        self
    }

    pub fn think_delay(&self) -> Duration {
        self.think_delay
    }

    /// Serves one run over the protocol's messages: reads `GatewayMessage`s from `inbound`
    /// (first a `start`), writes `AgentMessage`s to `outbound`. Returns when the run ended,
    /// was cancelled, `inbound` ended or `outbound` was closed. Never panics on any input.
    pub async fn run<S>(&self, inbound: S, outbound: Sender<AgentMessage>)
    where
        S: Stream<Item = GatewayMessage> + Unpin + Send,
    {
        self.run_until(inbound, outbound, CancellationToken::new())
            .await;
    }

    /// [`DemoAgent::run`], also stopped by `stop` (the server shutting down): the run then
    /// sends `failed` and returns.
    pub(crate) async fn run_until<S>(
        &self,
        inbound: S,
        outbound: Sender<AgentMessage>,
        stop: CancellationToken,
    ) -> RunEnd
    where
        S: Stream<Item = GatewayMessage> + Unpin + Send,
    {
        let mut out = Emitter::new(inbound, outbound, stop);
        let start = match out.first().await {
            Ok(Some(start)) => start,
            Ok(None) => return self.fail(&out, "expected start").await,
            Err(interrupted) => return RunEnd::Interrupted(interrupted),
        };
        let request = RunRequest::from(start);
        let span = tracing::debug_span!(
            "agent_run",
            run_id = request.run_id.map(tracing::field::display),
            tools = request.tools.len()
        );
        async {
            let end = match self.drive(&request, &mut out).await {
                Ok(()) => RunEnd::Completed,
                Err(Interrupted::DecisionTimedOut) => {
                    self.fail(&out, "the gateway did not decide on a tool call in time")
                        .await
                }
                Err(Interrupted::Stopped) => self.fail(&out, "the agent is shutting down").await,
                Err(interrupted) => RunEnd::Interrupted(interrupted),
            };
            tracing::debug!(?end, "agent run ended");
            end
        }
        .instrument(span)
        .await
    }

    async fn drive<S>(&self, request: &RunRequest, out: &mut Emitter<S>) -> Result<(), Interrupted>
    where
        S: Stream<Item = GatewayMessage> + Unpin + Send,
    {
        let thought = plan(&request.tools);
        out.send(Kind::Thinking(Thinking { thought })).await?;

        let mut results = Vec::with_capacity(request.tools.len());
        for (index, name) in request.tools.iter().enumerate() {
            let call_id = (index + 1).to_string();
            let argument = argument(name, &request.input);
            let input_json = serde_json::Value::from(argument.as_str()).to_string();
            out.send(Kind::ToolRequest(ToolRequest {
                call_id: call_id.clone(),
                tool: name.to_string(),
                input_json,
            }))
            .await?;
            let ToolDecision {
                call_id: _,
                allowed,
                code,
                upgrade_to: _,
                message: _,
            } = out.decision(&call_id, DECISION_TIMEOUT).await?;
            if !allowed {
                tracing::debug!(tool = %name, code = denial_code(&code), "tool denied");
                results.push(format!("{name}: not run ({})", denial_code(&code)));
                continue;
            }
            out.pause(self.think_delay).await?;
            let output = execute(name, &argument);
            results.push(format!("{name}: {}", output.summary));
            let output_json = output.json.to_string();
            out.send(Kind::ToolResult(ToolResult {
                call_id,
                output_json,
            }))
            .await?;
        }

        let output = answer(&request.input, &results);
        for text in fragments(&output) {
            let text = text.to_owned();
            out.send(Kind::Delta(Delta { text })).await?;
        }
        out.send(Kind::Completed(Completed { output })).await
    }

    /// Sends `failed {reason}` whatever the inbound stream does (the run is over either way),
    /// waiting a bounded time for room.
    async fn fail<S>(&self, out: &Emitter<S>, reason: &'static str) -> RunEnd
    where
        S: Stream<Item = GatewayMessage> + Unpin + Send,
    {
        let failed = AgentMessage {
            kind: Some(Kind::Failed(Failed {
                reason: reason.to_owned(),
            })),
        };
        let sent = tokio::time::timeout(LAST_SEND_TIMEOUT, out.outbound().send(failed)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(reason, "the run's failure could not be sent");
        }
        RunEnd::Failed(reason)
    }
}

/// The argument a requested tool takes from the input: an implemented tool's own, or the
/// trimmed input for one the demo does not implement.
fn argument(name: &ToolName, input: &str) -> String {
    match name.implemented() {
        Some(tool) => tools::argument(tool, input),
        None => input.trim().to_owned(),
    }
}

/// Runs an allowed tool; one the demo does not implement answers with an error output.
fn execute(name: &ToolName, argument: &str) -> ToolOutput {
    match name.implemented() {
        Some(tool) => tools::execute(tool, argument),
        None => ToolOutput {
            json: serde_json::json!({
                "error": format!("the demo agent does not implement {name}"),
            }),
            summary: "not implemented by the demo agent".to_owned(),
        },
    }
}

/// The gateway's denial code as the answer quotes it: a short snake_case word, else "denied".
fn denial_code(code: &str) -> &str {
    let plausible =
        (1..=32).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plausible { code } else { "denied" }
}

#[cfg(test)]
#[path = "demo_tests.rs"]
mod tests;
