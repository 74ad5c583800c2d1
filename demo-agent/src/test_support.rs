//! A fake gateway for unit tests: drives one run over channels, as the real gateway drives it
//! over a gRPC stream.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tollgate_proto::agent::v1::{
    Cancel, GatewayMessage, Start, ToolDecision, agent_message::Kind, gateway_message,
};

use crate::demo::{DemoAgent, RunEnd};

/// Longest a test waits for the agent's next message; longer than any timeout of a run, so
/// a test on paused time sees the run's own timeouts first.
const PATIENCE: Duration = Duration::from_secs(120);

/// The gateway's side of one run.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) to_agent: Option<mpsc::Sender<GatewayMessage>>,
    pub(crate) from_agent: mpsc::Receiver<tollgate_proto::agent::v1::AgentMessage>,
    pub(crate) run: JoinHandle<RunEnd>,
}

impl Gateway {
    /// Starts `agent` on a task of its own, with an outbound channel of `capacity`.
    pub(crate) fn start(agent: &DemoAgent, capacity: usize, stop: CancellationToken) -> Self {
        let (to_agent, inbound) = mpsc::channel(64);
        let (outbound, from_agent) = mpsc::channel(capacity);
        let agent = agent.clone();
        let run = tokio::spawn(async move {
            agent
                .run_until(ReceiverStream::new(inbound), outbound, stop)
                .await
        });
        Self {
            to_agent: Some(to_agent),
            from_agent,
            run,
        }
    }

    /// Sends one message to the agent (ignored once the agent stopped reading).
    pub(crate) async fn send(&self, message: GatewayMessage) {
        if let Some(to_agent) = &self.to_agent {
            let _ = to_agent.send(message).await;
        }
    }

    /// Ends the gateway's stream.
    pub(crate) fn close(&mut self) {
        self.to_agent = None;
    }

    /// The agent's next message, or `None` once its stream ended.
    pub(crate) async fn recv(&mut self) -> Option<Kind> {
        let next = tokio::time::timeout(PATIENCE, self.from_agent.recv())
            .await
            .expect("the agent sends or ends its stream");
        next.map(|message| message.kind.expect("every message has a kind"))
    }

    /// Reads the whole run, answering each tool request with `decide(tool)`.
    pub(crate) async fn play(
        &mut self,
        decide: impl Fn(&str) -> Option<&'static str>,
    ) -> Vec<Kind> {
        let mut transcript = Vec::new();
        while let Some(kind) = self.recv().await {
            if let Kind::ToolRequest(request) = &kind {
                let decision = match decide(&request.tool) {
                    None => allow(&request.call_id),
                    Some(code) => deny(&request.call_id, code),
                };
                self.send(decision).await;
            }
            transcript.push(kind);
        }
        transcript
    }

    /// How the run ended.
    pub(crate) async fn end(self) -> RunEnd {
        tokio::time::timeout(PATIENCE, self.run)
            .await
            .expect("the run returns")
            .expect("the run does not panic")
    }
}

/// Plays a whole run of `tools` on `input`, every tool allowed.
pub(crate) async fn play_allowing_all(input: &str, tools: &[&str]) -> (Vec<Kind>, RunEnd) {
    let mut gateway = Gateway::start(&DemoAgent::new(), 16, CancellationToken::new());
    gateway.send(start(input, tools)).await;
    let transcript = gateway.play(|_| None).await;
    (transcript, gateway.end().await)
}

pub(crate) fn start(input: &str, tools: &[&str]) -> GatewayMessage {
    message(gateway_message::Kind::Start(Start {
        run_id: "0b8e9a1c-3f3a-4c1e-9a53-1f0a8c1e2b3d".into(),
        agent: "demo".into(),
        input: input.into(),
        tools: tools.iter().map(|&tool| tool.to_owned()).collect(),
        plan: "free".into(),
        ..Start::default()
    }))
}

pub(crate) fn allow(call_id: &str) -> GatewayMessage {
    message(gateway_message::Kind::ToolDecision(ToolDecision {
        call_id: call_id.into(),
        allowed: true,
        ..ToolDecision::default()
    }))
}

pub(crate) fn deny(call_id: &str, code: &str) -> GatewayMessage {
    message(gateway_message::Kind::ToolDecision(ToolDecision {
        call_id: call_id.into(),
        allowed: false,
        code: code.into(),
        upgrade_to: Some("pro".into()),
        message: "this tool needs a higher plan".into(),
    }))
}

pub(crate) fn cancel() -> GatewayMessage {
    message(gateway_message::Kind::Cancel(Cancel {
        reason: "client".into(),
    }))
}

pub(crate) fn message(kind: gateway_message::Kind) -> GatewayMessage {
    GatewayMessage { kind: Some(kind) }
}

/// A compact transcript: "thinking", "tool_request:1:search", "tool_result:1", "delta",
/// "completed", "failed".
pub(crate) fn kinds(transcript: &[Kind]) -> Vec<String> {
    transcript
        .iter()
        .map(|kind| match kind {
            Kind::Thinking(_) => "thinking".to_owned(),
            Kind::Delta(_) => "delta".to_owned(),
            Kind::ToolRequest(request) => {
                format!("tool_request:{}:{}", request.call_id, request.tool)
            }
            Kind::ToolResult(result) => format!("tool_result:{}", result.call_id),
            Kind::Completed(_) => "completed".to_owned(),
            Kind::Failed(_) => "failed".to_owned(),
        })
        .collect()
}

/// The transcript's kinds with consecutive deltas folded into one "delta*".
pub(crate) fn shape(transcript: &[Kind]) -> Vec<String> {
    let mut shape: Vec<String> = Vec::new();
    for kind in kinds(transcript) {
        match (kind.as_str(), shape.last().map(String::as_str)) {
            ("delta", Some("delta*")) => {}
            ("delta", _) => shape.push("delta*".to_owned()),
            _ => shape.push(kind),
        }
    }
    shape
}

/// The concatenated deltas and the completed output of a transcript.
pub(crate) fn deltas_and_output(transcript: &[Kind]) -> (String, String) {
    let deltas = transcript
        .iter()
        .filter_map(|kind| match kind {
            Kind::Delta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect();
    let output = transcript
        .iter()
        .find_map(|kind| match kind {
            Kind::Completed(completed) => Some(completed.output.clone()),
            _ => None,
        })
        .expect("the run completed");
    (deltas, output)
}

/// The output JSON of the result for `call_id`.
pub(crate) fn result_json(transcript: &[Kind], call_id: &str) -> serde_json::Value {
    transcript
        .iter()
        .find_map(|kind| match kind {
            Kind::ToolResult(result) if result.call_id == call_id => {
                Some(serde_json::from_str(&result.output_json).expect("output_json is JSON"))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result for call {call_id}"))
}

/// The input JSON of the request for `call_id`.
pub(crate) fn input_json(transcript: &[Kind], call_id: &str) -> serde_json::Value {
    transcript
        .iter()
        .find_map(|kind| match kind {
            Kind::ToolRequest(request) if request.call_id == call_id => {
                Some(serde_json::from_str(&request.input_json).expect("input_json is JSON"))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_request for call {call_id}"))
}
