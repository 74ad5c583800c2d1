//! The gateway's side of a `Run` stream, played by the test: it opens the stream, sends
//! `start`, answers tool requests and cancels, as ws-gateway does.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_integration::{PythonAgent, python};
use tollgate_proto::agent::v1::{
    AgentMessage, Cancel, GatewayMessage, Start, ToolDecision, ToolRequest, agent_message::Kind,
    gateway_message,
};
use tonic::{Request, Status, Streaming};
use uuid::Uuid;

/// How long the test waits for any one message from the agent.
pub(super) const STEP: Duration = Duration::from_secs(10);
/// A pause between deltas so long that a run cannot finish by itself while a test acts on it.
pub(super) const SLOW_DELTAS: (&str, &str) = ("AGENT_DELTA_DELAY_MS", "5000");

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

pub(super) fn start(run_id: &str, input: &str, tools: &[&str]) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Start(Start {
            run_id: run_id.to_owned(),
            agent: "python".into(),
            input: input.to_owned(),
            tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
            user_id: Uuid::new_v4().to_string(),
            session_id: Uuid::new_v4().to_string(),
            plan: "pro".into(),
            roles: vec!["member".into()],
            client_metadata: [("source".to_owned(), "test".to_owned())].into(),
        })),
    }
}

pub(super) fn allow(request: &ToolRequest) -> ToolDecision {
    ToolDecision {
        call_id: request.call_id.clone(),
        allowed: true,
        ..ToolDecision::default()
    }
}

pub(super) fn deny(request: &ToolRequest) -> ToolDecision {
    ToolDecision {
        call_id: request.call_id.clone(),
        allowed: false,
        code: "plan_required".into(),
        upgrade_to: Some("pro".into()),
        message: "word_count needs the pro plan".into(),
    }
}

pub(super) fn name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Thinking(_) => "thinking",
        Kind::Delta(_) => "delta",
        Kind::ToolRequest(_) => "tool_request",
        Kind::ToolResult(_) => "tool_result",
        Kind::Completed(_) => "completed",
        Kind::Failed(_) => "failed",
    }
}

pub(super) fn names(seen: &[Kind]) -> Vec<&'static str> {
    seen.iter().map(name).collect()
}

/// One `Run` stream, from the gateway's side.
pub(super) struct Run {
    pub(super) id: String,
    to_agent: Option<mpsc::Sender<GatewayMessage>>,
    from_agent: Streaming<AgentMessage>,
}

impl Run {
    /// Opens a stream, sends `start`, and expects the agent to take it.
    pub(super) async fn open(agent: &PythonAgent, input: &str, tools: &[&str]) -> Self {
        let id = Uuid::new_v4().to_string();
        Self::open_with(agent, start(&id, input, tools), None)
            .await
            .unwrap_or_else(|status| panic!("the agent refused the run: {status:?}"))
    }

    /// Opens a stream whose first message is `first`, with `authorization` metadata if any.
    /// Err when the agent refuses the call, whether at once or instead of a first message.
    pub(super) async fn open_with(
        agent: &PythonAgent,
        first: GatewayMessage,
        authorization: Option<&str>,
    ) -> Result<Self, Status> {
        Self::open_at(&agent.url(), first, authorization).await
    }

    /// [`Run::open_with`] on the agent at `url` (e.g. behind a proxy).
    pub(super) async fn open_at(
        url: &str,
        first: GatewayMessage,
        authorization: Option<&str>,
    ) -> Result<Self, Status> {
        let id = match &first.kind {
            Some(gateway_message::Kind::Start(start)) => start.run_id.clone(),
            _ => String::new(),
        };
        let (to_agent, outbox) = mpsc::channel(16);
        to_agent.send(first).await.expect("the outbox is open");
        let mut request = Request::new(ReceiverStream::new(outbox));
        if let Some(value) = authorization {
            let value = value.parse().expect("valid metadata");
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = python::connect(url).await;
        let response = tokio::time::timeout(STEP, client.run(request))
            .await
            .expect("the agent answers in time")?;
        Ok(Self {
            id,
            to_agent: Some(to_agent),
            from_agent: response.into_inner(),
        })
    }

    /// The next message, or None once the stream has ended cleanly; an error status as Err.
    pub(super) async fn try_next(&mut self) -> Result<Option<Kind>, Status> {
        let message = tokio::time::timeout(STEP, self.from_agent.message())
            .await
            .expect("the agent answers or ends the stream in time")?;
        Ok(message.map(|message| message.kind.expect("every AgentMessage has a kind")))
    }

    pub(super) async fn next(&mut self) -> Option<Kind> {
        self.try_next()
            .await
            .unwrap_or_else(|status| panic!("the run failed: {status:?}"))
    }

    pub(super) async fn send(&self, kind: Option<gateway_message::Kind>) {
        let to_agent = self.to_agent.as_ref().expect("the gateway side is open");
        to_agent
            .send(GatewayMessage { kind })
            .await
            .expect("the outbox is open");
    }

    pub(super) async fn cancel(&self) {
        let cancel = Cancel {
            reason: "client".into(),
        };
        self.send(Some(gateway_message::Kind::Cancel(cancel))).await;
    }

    pub(super) async fn decide(&self, decision: ToolDecision) {
        self.send(Some(gateway_message::Kind::ToolDecision(decision)))
            .await;
    }

    /// Ends the gateway's side of the stream (half-close).
    pub(super) fn close(&mut self) {
        self.to_agent = None;
    }

    /// Reads until the message named `wanted`, which it returns; panics on anything else
    /// (other than `thinking`) or on the end of the stream.
    pub(super) async fn until(&mut self, wanted: &str) -> Kind {
        loop {
            match self.next().await {
                Some(kind) if name(&kind) == wanted => return kind,
                Some(Kind::Thinking(_)) => {}
                other => panic!("expected {wanted}, got {other:?}"),
            }
        }
    }

    /// Reads the run to its end, answering each tool request with `decide`: every message.
    pub(super) async fn drive(&mut self, decide: fn(&ToolRequest) -> ToolDecision) -> Vec<Kind> {
        let mut seen = Vec::new();
        while let Some(kind) = self.next().await {
            if let Kind::ToolRequest(request) = &kind {
                self.decide(decide(request)).await;
            }
            seen.push(kind);
        }
        seen
    }
}

pub(super) fn deltas(seen: &[Kind]) -> String {
    seen.iter()
        .filter_map(|kind| match kind {
            Kind::Delta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The status of a call the agent refuses, at once or instead of a first message. Panics if
/// the agent takes the run.
pub(super) async fn refusal(
    agent: &PythonAgent,
    first: GatewayMessage,
    authorization: Option<&str>,
) -> Status {
    match Run::open_with(agent, first, authorization).await {
        Err(status) => status,
        Ok(mut run) => match run.try_next().await {
            Err(status) => status,
            Ok(message) => panic!("the agent took the call: {message:?}"),
        },
    }
}
