//! What a journal holds: each record is one frame of the run for the client, numbered, and
//! the running summary a resume gets when the records it asks for are gone.

use serde::{Deserialize, Serialize};

use crate::{
    agent::{AgentEvent, RunId},
    error::ErrorReply,
    protocol::{DeltaFrame, Outbound, RequestId, ServerMessage, encode_agent_event},
};

/// One thing a run told its client.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Event(AgentEvent),
    /// A tool call the gate refused; the run goes on.
    Denied(ErrorReply),
    /// `run_cancelled`: by `cancel_run` (no reason), or for the reason given.
    Cancelled {
        reason: Option<&'static str>,
    },
    /// `error {agent_unavailable}`: the backend could not be reached.
    Unavailable,
    /// A frame read back from another node's journal that none of the above describes (a tool
    /// refusal's `error`), as the client gets it but for `id`.
    Wire(serde_json::Map<String, serde_json::Value>),
    /// A copy of another node's journal could not get every record (they were trimmed before
    /// it read them): `run_resumed {recovered: false, snapshot}` ends what it delivers.
    Lost(Snapshot),
}

/// Bytes a record is charged for besides its text.
const RECORD_OVERHEAD: usize = 96;

impl Entry {
    /// What the record costs the log, roughly: its text and a fixed overhead.
    pub fn size(&self) -> usize {
        let text = match self {
            Entry::Event(event) => match event {
                AgentEvent::AgentStarted { agent, .. } => agent.len(),
                AgentEvent::AgentThinking { thought, .. } => thought.len(),
                AgentEvent::AgentDelta { text, .. } => text.len(),
                AgentEvent::ToolExecuting { input, .. } => input.to_string().len(),
                AgentEvent::ToolCompleted { output, .. } => output.to_string().len(),
                AgentEvent::AgentCompleted { output, .. } => output.len(),
                AgentEvent::AgentFailed { reason, .. } => reason.len(),
            },
            Entry::Denied(reply) => reply.message.len(),
            Entry::Cancelled { .. } | Entry::Unavailable | Entry::Lost(_) => 0,
            Entry::Wire(frame) => frame.values().map(|value| value.to_string().len()).sum(),
        };
        text + RECORD_OVERHEAD
    }

    /// The entry a client frame of a run stands for (a record of another node's journal), and
    /// its `seq`; `None` for what is not a run's frame.
    pub fn from_wire(frame: &str) -> Option<(u64, Entry)> {
        let serde_json::Value::Object(mut fields) = serde_json::from_str(frame).ok()? else {
            return None;
        };
        let seq = fields.remove("seq")?.as_u64()?;
        let kind = fields.get("type")?.as_str()?.to_owned();
        let entry = match kind.as_str() {
            "run_cancelled" => Entry::Cancelled {
                reason: match fields.get("reason").and_then(|reason| reason.as_str()) {
                    Some("detached_timeout") => Some("detached_timeout"),
                    _ => None,
                },
            },
            "error"
                if fields.get("code").and_then(|code| code.as_str())
                    == Some("agent_unavailable") =>
            {
                Entry::Unavailable
            }
            "error" => Entry::Wire(fields),
            _ => Entry::Event(serde_json::from_value(serde_json::Value::Object(fields)).ok()?),
        };
        Some((seq, entry))
    }

    /// Whether this is the run's last record.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Entry::Event(AgentEvent::AgentCompleted { .. } | AgentEvent::AgentFailed { .. })
                | Entry::Cancelled { .. }
                | Entry::Unavailable
                | Entry::Lost(_)
        )
    }
}

/// A numbered entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub entry: Entry,
}

impl Record {
    /// The record as a frame for a client, echoing `id` (the request the client follows by).
    pub fn outbound(&self, run_id: RunId, id: Option<&RequestId>) -> Outbound {
        let seq = Some(self.seq);
        match &self.entry {
            Entry::Event(AgentEvent::AgentDelta { text, .. }) => Outbound::Delta(DeltaFrame {
                run_id,
                id: id.cloned(),
                text: text.clone(),
                seq: self.seq,
            }),
            Entry::Event(event) => Outbound::Text(encode_agent_event(event, id, seq)),
            Entry::Denied(reply) => {
                Outbound::Text(ServerMessage::run_error(id, run_id, reply, seq))
            }
            Entry::Cancelled { reason } => Outbound::Text(
                ServerMessage::RunCancelled {
                    id,
                    run_id: &run_id.to_string(),
                    seq,
                    reason: *reason,
                }
                .encode(),
            ),
            Entry::Unavailable => Outbound::Text(ServerMessage::run_error(
                id,
                run_id,
                &ErrorReply::agent_unavailable(),
                seq,
            )),
            Entry::Lost(snapshot) => Outbound::Text(
                ServerMessage::RunResumed {
                    id,
                    run_id: &run_id.to_string(),
                    recovered: false,
                    snapshot: Some(snapshot),
                }
                .encode(),
            ),
            Entry::Wire(frame) => {
                let mut frame = frame.clone();
                if let Some(id) = id.and_then(|id| serde_json::to_value(id).ok()) {
                    frame.insert("id".into(), id);
                }
                frame.insert("seq".into(), self.seq.into());
                Outbound::Text(serde_json::Value::Object(frame).to_string().into())
            }
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    Unavailable,
}

/// What the run has used so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tool calls admitted (and counted) for the run.
    pub tool_calls: u64,
}

/// A run as it stands, for a resume that cannot be served from the log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The seq of the run's latest record.
    pub last_seq: u64,
    pub ended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The final answer of a completed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why a failed run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub usage: Usage,
}

impl Snapshot {
    pub fn record(&mut self, entry: &Entry, seq: u64) {
        self.last_seq = seq;
        let outcome = match entry {
            Entry::Event(AgentEvent::ToolExecuting { .. }) => {
                self.usage.tool_calls += 1;
                return;
            }
            Entry::Event(AgentEvent::AgentCompleted { output, .. }) => {
                self.output = Some(output.clone());
                Outcome::Completed
            }
            Entry::Event(AgentEvent::AgentFailed { reason, .. }) => {
                self.reason = Some(reason.clone());
                Outcome::Failed
            }
            Entry::Cancelled { .. } => Outcome::Cancelled,
            Entry::Unavailable => Outcome::Unavailable,
            Entry::Event(_) | Entry::Denied(_) | Entry::Wire(_) | Entry::Lost(_) => return,
        };
        self.ended = true;
        self.outcome = Some(outcome);
    }
}
