//! [`drive`]: the gateway's side of one run's conversation with its backend.
//!
//! It turns the backend's messages into the client's events and answers each tool request
//! after asking the [`ToolGate`]. The client gets exactly one terminal event per run, whatever
//! the backend does: `agent_completed`, `agent_failed {reason}` (the backend failed, died,
//! went silent past the idle timeout, or broke a rule of [`super::calls`], which is
//! `protocol_error`), or, for the caller to send, `run_cancelled` or
//! `error {agent_unavailable}`.
//!
//! Every wait races the run's cancellation, and waits on the backend are bounded by the idle
//! timeout; waits on a slow client are not (the client's own keepalive bounds those).

use std::time::Duration;

use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_proto::agent::v1::{
    AgentMessage, Cancel, Start, ToolDecision, agent_message::Kind as FromBackend,
    gateway_message::Kind as ToBackend,
};
use uuid::Uuid;

use super::{
    AgentEvent, Gone, RunEnd, RunRequest, RunSink, Step, ToolDenial, ToolGate,
    backend::{Backends, Conversation, OpenError, Received},
    calls::{Calls, Flood, Violation},
};

/// The reason given to the client when a backend broke the protocol.
pub const PROTOCOL_ERROR: &str = "protocol_error";
/// The reason given when the backend said nothing for the idle timeout.
pub const IDLE_TIMEOUT: &str = "idle_timeout";
/// The reason given when the backend's stream broke.
pub const BACKEND_LOST: &str = "backend_lost";
/// Longest failure reason passed on from a backend, in characters.
const MAX_REASON_CHARS: usize = 200;

/// How runs treat their backends.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The longest silence from a backend, at start or mid-run.
    pub idle_timeout: Duration,
    /// How long a cancelled backend gets to end its stream before the run ends anyway.
    pub cancel_grace: Duration,
    /// A backend's messages per second, after a burst of as many.
    pub max_messages_per_second: u32,
}

/// Who the run is for, as the backend's `start` tells it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub plan: String,
    pub roles: Vec<String>,
}

/// Runs `request` on its backend to its end. `Err(OpenError::UnknownAgent)` is impossible
/// here when the caller checked [`Backends::knows`]; it is reported as unavailable anyway.
#[tracing::instrument(
    name = "agent.drive",
    skip_all,
    fields(run_id = %request.run_id, agent = %request.agent, tools = request.tools.len())
)]
pub async fn drive(
    backends: &Backends,
    request: &RunRequest,
    caller: &Caller,
    gate: &dyn ToolGate,
    sink: &dyn RunSink,
    settings: &RunSettings,
    cancel: &CancellationToken,
) -> RunEnd {
    let opening = backends.open(start(request, caller), settings.idle_timeout);
    let mut conversation = tokio::select! {
        biased;
        () = cancel.cancelled() => return RunEnd::Cancelled,
        opened = opening => match opened {
            Ok(conversation) => conversation,
            Err(OpenError::UnknownAgent) => return RunEnd::Unavailable,
            Err(OpenError::Unavailable(detail)) => {
                tracing::warn!(%detail, "the agent backend could not start the run");
                return RunEnd::Unavailable;
            }
        },
    };
    let mut run = Run {
        request,
        gate,
        sink,
        settings,
        cancel,
        calls: Calls::default(),
        flood: Flood::new(
            settings.max_messages_per_second,
            settings.max_messages_per_second,
        ),
        max_message_bytes: backends.max_message_bytes(),
    };
    let end = match run.converse(&mut conversation).await {
        Ok(end) => end,
        Err(Stop::Gone) => RunEnd::Disconnected,
        Err(Stop::Cancelled) => {
            run.wind_down(&mut conversation).await;
            RunEnd::Cancelled
        }
        Err(Stop::Failed(reason)) => {
            drop(conversation);
            run.fail(reason).await
        }
    };
    tracing::debug!(?end, "run ended");
    end
}

/// The backend's `start` message.
fn start(request: &RunRequest, caller: &Caller) -> Start {
    Start {
        run_id: request.run_id.to_string(),
        agent: request.agent.clone(),
        input: request.input.clone(),
        tools: request.tools.iter().map(|tool| tool.to_string()).collect(),
        user_id: caller.user_id.to_string(),
        session_id: caller.session_id.to_string(),
        plan: caller.plan.clone(),
        roles: caller.roles.clone(),
        client_metadata: request.metadata.clone().into_iter().collect(),
    }
}

/// Why a conversation stopped before its backend ended it.
enum Stop {
    Gone,
    Cancelled,
    /// `agent_failed` with this reason.
    Failed(String),
}

impl From<Gone> for Stop {
    fn from(Gone: Gone) -> Self {
        Stop::Gone
    }
}

impl From<Violation> for Stop {
    fn from(violation: Violation) -> Self {
        tracing::warn!(%violation, "the agent backend broke the protocol");
        Stop::Failed(PROTOCOL_ERROR.into())
    }
}

struct Run<'a> {
    request: &'a RunRequest,
    gate: &'a dyn ToolGate,
    sink: &'a dyn RunSink,
    settings: &'a RunSettings,
    cancel: &'a CancellationToken,
    calls: Calls,
    flood: Flood,
    max_message_bytes: usize,
}

impl Run<'_> {
    async fn converse(&mut self, conversation: &mut Conversation) -> Result<RunEnd, Stop> {
        let run_id = self.request.run_id;
        let agent = self.request.agent.clone();
        self.emit(AgentEvent::AgentStarted { run_id, agent })
            .await?;
        loop {
            let message = self.receive(conversation).await?;
            let Some(kind) = message.kind else {
                return Err(Violation::NoStart.into());
            };
            match kind {
                FromBackend::Thinking(thinking) => {
                    let thought = thinking.thought;
                    self.emit(AgentEvent::AgentThinking { run_id, thought })
                        .await?;
                }
                FromBackend::Delta(delta) => {
                    let text = delta.text;
                    self.emit(AgentEvent::AgentDelta { run_id, text }).await?;
                }
                FromBackend::ToolRequest(call) => {
                    let decision = self
                        .decide(&call.call_id, &call.tool, &call.input_json)
                        .await?;
                    self.tell(conversation, ToBackend::ToolDecision(decision))
                        .await?;
                }
                FromBackend::ToolResult(result) => {
                    let tool = self.calls.result(&result.call_id)?;
                    let output = json(&result.output_json)?;
                    self.emit(AgentEvent::ToolCompleted {
                        run_id,
                        tool,
                        output,
                    })
                    .await?;
                }
                FromBackend::Completed(completed) => {
                    self.await_close(conversation).await?;
                    let output = completed.output;
                    self.emit(AgentEvent::AgentCompleted { run_id, output })
                        .await?;
                    return Ok(RunEnd::Completed);
                }
                FromBackend::Failed(failed) => {
                    return Err(Stop::Failed(reason(&failed.reason)));
                }
            }
        }
    }

    /// Asks the gate about a tool request and tells the client; the decision is the
    /// backend's answer.
    async fn decide(
        &mut self,
        call_id: &str,
        tool: &str,
        input_json: &str,
    ) -> Result<ToolDecision, Stop> {
        let tool = self.calls.request(call_id, tool, &self.request.tools)?;
        let input = json(input_json)?;
        let run_id = self.request.run_id;
        let admitted = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            admitted = self.gate.admit(&run_id, call_id, &tool) => admitted,
        };
        self.calls.decided(call_id, tool.clone(), admitted.is_ok());
        let decision = match admitted {
            Ok(()) => {
                self.emit(AgentEvent::ToolExecuting {
                    run_id,
                    tool,
                    input,
                })
                .await?;
                ToolDecision {
                    call_id: call_id.to_owned(),
                    allowed: true,
                    ..ToolDecision::default()
                }
            }
            Err(denial) => {
                tracing::debug!(%tool, code = denial.code().as_str(), "tool denied");
                let decision = ToolDecision {
                    call_id: call_id.to_owned(),
                    allowed: false,
                    code: denial.code().as_str().to_owned(),
                    upgrade_to: match &denial {
                        ToolDenial::PlanRequired { upgrade_to } => upgrade_to.clone(),
                        _ => None,
                    },
                    message: denial.message(&tool),
                };
                self.deliver(Step::Denied { tool, denial }).await?;
                decision
            }
        };
        Ok(decision)
    }

    /// Sends the backend a message. A backend that stops reading its stream holds the send up
    /// no longer than the idle timeout, and a cancel no longer than at once.
    async fn tell(&self, conversation: &mut Conversation, kind: ToBackend) -> Result<(), Stop> {
        let sent = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            sent = tokio::time::timeout(self.settings.idle_timeout, conversation.send(kind)) => sent,
        };
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => Err(Stop::Failed(BACKEND_LOST.into())),
            Err(_) => Err(Stop::Failed(IDLE_TIMEOUT.into())),
        }
    }

    /// The backend's next message, within the idle timeout and the protocol's limits.
    async fn receive(&mut self, conversation: &mut Conversation) -> Result<AgentMessage, Stop> {
        let received = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            received = tokio::time::timeout(self.settings.idle_timeout, conversation.next()) => {
                received.map_err(|_| Stop::Failed(IDLE_TIMEOUT.into()))?
            }
        };
        match received {
            Received::Message(message) => {
                if message.encoded_len() > self.max_message_bytes {
                    return Err(Violation::TooLarge.into());
                }
                self.flood.take(Instant::now())?;
                Ok(message)
            }
            Received::Ended => Err(Violation::EndedWithoutAnswer.into()),
            Received::Broken {
                protocol: true,
                detail,
            } => {
                tracing::warn!(%detail, "the agent backend sent an invalid message");
                Err(Stop::Failed(PROTOCOL_ERROR.into()))
            }
            Received::Broken {
                protocol: false,
                detail,
            } => {
                tracing::warn!(%detail, "the agent backend's stream broke");
                Err(Stop::Failed(BACKEND_LOST.into()))
            }
        }
    }

    /// After `completed`: the backend must end its stream and say nothing more. Waits for the
    /// end at most the cancel grace (a backend that keeps an idle stream open is not punished
    /// for it), and counts anything it still sends as a violation.
    async fn await_close(&mut self, conversation: &mut Conversation) -> Result<(), Stop> {
        let closing = tokio::time::timeout(self.settings.cancel_grace, conversation.next());
        match closing.await {
            Err(_) | Ok(Received::Ended) => Ok(()),
            Ok(Received::Message(_)) => Err(Violation::AfterTheEnd.into()),
            Ok(Received::Broken { detail, .. }) => {
                tracing::debug!(%detail, "the agent backend's stream broke after completing");
                Ok(())
            }
        }
    }

    /// Tells the backend the run is cancelled and gives it the grace to end its stream;
    /// whatever it sends meanwhile is dropped.
    async fn wind_down(&self, conversation: &mut Conversation) {
        let cancel = ToBackend::Cancel(Cancel {
            reason: "cancelled".into(),
        });
        let ended = tokio::time::timeout(self.settings.cancel_grace, async {
            if conversation.send(cancel).await {
                while let Received::Message(_) = conversation.next().await {}
            }
        });
        if ended.await.is_err() {
            tracing::debug!("the agent backend did not end its stream after a cancel");
        }
    }

    /// Sends `agent_failed` (the stream is closed when the conversation is dropped).
    async fn fail(&self, reason: String) -> RunEnd {
        let run_id = self.request.run_id;
        let failed = AgentEvent::AgentFailed {
            run_id,
            reason: reason.clone(),
        };
        match self.sink.deliver(Step::Event(failed)).await {
            Ok(()) => RunEnd::Failed(reason),
            Err(Gone) => RunEnd::Disconnected,
        }
    }

    async fn emit(&self, event: AgentEvent) -> Result<(), Stop> {
        self.deliver(Step::Event(event)).await
    }

    async fn deliver(&self, step: Step) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            delivered = self.sink.deliver(step) => Ok(delivered?),
        }
    }
}

fn json(text: &str) -> Result<serde_json::Value, Violation> {
    serde_json::from_str(text).map_err(|_| Violation::InvalidJson)
}

/// A backend's failure reason, made safe to show: printable, at most 200 characters, never
/// empty.
fn reason(raw: &str) -> String {
    let reason: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let reason = reason.trim();
    if reason.is_empty() {
        "failed".to_owned()
    } else {
        reason.to_owned()
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
