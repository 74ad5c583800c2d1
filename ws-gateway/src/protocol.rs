//! The JSON frames of CONTRACT §5 that the server sends ([`ServerMessage`]), the request ids
//! that tie them to a client's request, and what a connection's send queue carries
//! ([`Outbound`]). What clients send is parsed by [`crate::commands`].

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    agent::{AgentEvent, RunId},
    error::{CloseCode, ErrorReply},
    journal::Snapshot,
};

/// Longest accepted client request id.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A client's request id, echoed in the replies: a short string or a number.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Text(String),
    Number(serde_json::Number),
}

/// `message` cut to at most `max` bytes (on a character boundary), marked when cut.
pub fn clip(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A frame from the server.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Connected {
        connection_id: &'a str,
        session_id: Uuid,
        user_id: Uuid,
        plan: &'a str,
        roles: &'a [String],
        /// Unix seconds.
        expires_at: i64,
    },
    TokenRefreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        expires_at: i64,
    },
    TokenExpiring {
        expires_in_ms: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    /// A published event and its place among the user's events (from 1).
    Event {
        data: &'a Value,
        seq: u64,
    },
    /// The answer to `since`: whether every event after it follows (`recovered`), and how
    /// many are replayed before live events resume.
    EventsResumed {
        since: u64,
        recovered: bool,
        replayed: usize,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        run_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        upgrade_to: Option<&'a str>,
        /// The record's place in its run (for a run's errors).
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    RateLimited {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        retry_after_ms: u64,
    },
    /// A run ended by `cancel_run` (an extension of the contract's list).
    RunCancelled {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        run_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Why the gateway stopped the run; absent for `cancel_run`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// The answer to `resume_run`. With `recovered: true` the run's records after `after_seq`
    /// follow; with `false`, `snapshot` says where the run stands and nothing is replayed.
    RunResumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        run_id: &'a str,
        recovered: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<&'a Snapshot>,
    },
}

impl ServerMessage<'_> {
    /// The frame's text.
    pub fn encode(&self) -> Utf8Bytes {
        match serde_json::to_string(self) {
            Ok(text) => text.into(),
            Err(err) => {
                tracing::error!(error = %err, "encoding a server message failed");
                Utf8Bytes::from_static(
                    r#"{"type":"error","code":"internal","message":"internal error"}"#,
                )
            }
        }
    }

    /// An `error` reply with no run attached.
    pub fn error(id: Option<&'_ RequestId>, reply: &ErrorReply) -> Utf8Bytes {
        ServerMessage::Error {
            id,
            code: reply.code.as_str(),
            message: &reply.message,
            run_id: None,
            upgrade_to: reply.upgrade_to.as_deref(),
            seq: None,
        }
        .encode()
    }
}

impl ServerMessage<'_> {
    /// An `error` reply about run `run_id` (with its `seq` when it is one of the run's records).
    pub fn run_error(
        id: Option<&RequestId>,
        run_id: RunId,
        reply: &ErrorReply,
        seq: Option<u64>,
    ) -> Utf8Bytes {
        ServerMessage::Error {
            id,
            code: reply.code.as_str(),
            message: &reply.message,
            run_id: Some(&run_id.to_string()),
            upgrade_to: reply.upgrade_to.as_deref(),
            seq,
        }
        .encode()
    }
}

/// An agent event, with the `id` of the request the client follows the run by, and its `seq`.
pub fn encode_agent_event(
    event: &AgentEvent,
    id: Option<&RequestId>,
    seq: Option<u64>,
) -> Utf8Bytes {
    let mut value = match serde_json::to_value(event) {
        Ok(value) => value,
        Err(err) => {
            tracing::error!(error = %err, "encoding an agent event failed");
            return ServerMessage::error(id, &ErrorReply::bad_run_output());
        }
    };
    if let (Some(id), Value::Object(map)) = (id, &mut value)
        && let Ok(id) = serde_json::to_value(id)
    {
        map.insert("id".into(), id);
    }
    if let (Some(seq), Value::Object(map)) = (seq, &mut value) {
        map.insert("seq".into(), seq.into());
    }
    value.to_string().into()
}

/// An `agent_delta` waiting in a send queue, kept apart from other frames so that a slow
/// reader's consecutive deltas of one run can be merged before they are encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaFrame {
    pub run_id: RunId,
    /// The `id` of the request the client follows the run by.
    pub id: Option<RequestId>,
    pub text: String,
    /// The seq of the last delta in the frame.
    pub seq: u64,
}

impl DeltaFrame {
    pub fn encode(&self) -> Utf8Bytes {
        #[derive(Serialize)]
        struct Wire<'a> {
            r#type: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a RequestId>,
            run_id: RunId,
            text: &'a str,
            seq: u64,
        }
        let wire = Wire {
            r#type: "agent_delta",
            id: self.id.as_ref(),
            run_id: self.run_id,
            text: &self.text,
            seq: self.seq,
        };
        match serde_json::to_string(&wire) {
            Ok(text) => text.into(),
            Err(_) => ServerMessage::error(None, &ErrorReply::bad_run_output()),
        }
    }
}

/// What a connection's send queue carries to its writer.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// A JSON text frame.
    Text(Utf8Bytes),
    /// A run's answer fragment (merged with the next ones while it waits).
    Delta(DeltaFrame),
    /// A keepalive ping.
    Ping,
    /// The closing frame; nothing is sent after it.
    Close(CloseCode),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_have_the_contract_shape() {
        let id = RequestId::Text("r1".into());
        let text = ServerMessage::RateLimited {
            id: Some(&id),
            retry_after_ms: 1500,
        }
        .encode();
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"rate_limited","id":"r1","retry_after_ms":1500})
        );
        let text = ServerMessage::error(None, &ErrorReply::bad_request("bad"));
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"error","code":"bad_request","message":"bad"})
        );
        let reply = ErrorReply::run_quota_exceeded(Some("pro".into()));
        let text = ServerMessage::error(Some(&id), &reply);
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"error","id":"r1","code":"quota_exceeded",
                "message":"the agent run quota is used up","upgrade_to":"pro"})
        );
    }
}
