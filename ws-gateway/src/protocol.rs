//! The JSON frames of CONTRACT §5: what clients send ([`ClientMessage`], parsed strictly so a
//! bad frame gets a precise `bad_request`), what the server sends ([`ServerMessage`]), and what
//! a connection's send queue carries ([`Outbound`]).

use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    agent::{AgentEvent, RunId},
    error::{CloseCode, ErrorReply},
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

/// A frame from the client, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    Auth {
        id: Option<RequestId>,
        token: String,
    },
    RefreshToken {
        id: Option<RequestId>,
        token: String,
    },
    Ping {
        id: Option<RequestId>,
    },
    RunAgent {
        id: Option<RequestId>,
        agent: String,
        input: String,
        tools: Vec<String>,
        /// Passed to the agent backend as `start.client_metadata`.
        metadata: BTreeMap<String, String>,
    },
    CancelRun {
        id: Option<RequestId>,
        run_id: String,
    },
}

/// A frame that is not a valid client message; `id` is the request id when one could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct BadFrame {
    pub id: Option<RequestId>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFields {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFields {
    agent: String,
    input: String,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelFields {
    run_id: String,
}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, BadFrame> {
        let bad = |id: Option<RequestId>, message: String| BadFrame { id, message };
        let mut fields: Map<String, Value> = serde_json::from_str(text)
            .map_err(|_| bad(None, "the frame is not a JSON object".into()))?;
        let id = match fields.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.len() <= MAX_REQUEST_ID_BYTES => {
                Some(RequestId::Text(id))
            }
            Some(Value::Number(id)) => Some(RequestId::Number(id)),
            Some(_) => {
                return Err(bad(
                    None,
                    format!(
                        "`id` must be a string of at most {MAX_REQUEST_ID_BYTES} bytes or a number"
                    ),
                ));
            }
        };
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(bad(id, "`type` must be a string".into())),
            None => return Err(bad(id, "missing field `type`".into())),
        };
        let rest = Value::Object(fields);
        let message = match kind.as_str() {
            "auth" => fields_of::<TokenFields>(rest).map(|f| Self::Auth {
                id: id.clone(),
                token: f.token,
            }),
            "refresh_token" => fields_of::<TokenFields>(rest).map(|f| Self::RefreshToken {
                id: id.clone(),
                token: f.token,
            }),
            "ping" => fields_of::<NoFields>(rest).map(|NoFields {}| Self::Ping { id: id.clone() }),
            "run_agent" => fields_of::<RunFields>(rest).map(|f| Self::RunAgent {
                id: id.clone(),
                agent: f.agent,
                input: f.input,
                tools: f.tools,
                metadata: f.metadata,
            }),
            "cancel_run" => fields_of::<CancelFields>(rest).map(|f| Self::CancelRun {
                id: id.clone(),
                run_id: f.run_id,
            }),
            other => Err(format!("unknown message type `{}`", printable(other))),
        };
        message.map_err(|message| bad(id, message))
    }

    /// The message's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::RefreshToken { .. } => "refresh_token",
            Self::Ping { .. } => "ping",
            Self::RunAgent { .. } => "run_agent",
            Self::CancelRun { .. } => "cancel_run",
        }
    }
}

fn fields_of<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    // serde names the field and the expectation; cap it, since it may quote input.
    serde_json::from_value(value).map_err(|err| clip(err.to_string(), 200))
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

/// At most a short, printable prefix of client input, for error messages.
fn printable(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(32).collect()
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
    Event {
        data: &'a Value,
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
        }
        .encode()
    }
}

/// An agent event, with the `id` of the `run_agent` request that started the run.
pub fn encode_agent_event(event: &AgentEvent, id: Option<&RequestId>) -> Utf8Bytes {
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
    value.to_string().into()
}

/// An `agent_delta` waiting in a send queue, kept apart from other frames so that a slow
/// reader's consecutive deltas of one run can be merged before they are encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaFrame {
    pub run_id: RunId,
    /// The `id` of the `run_agent` request.
    pub id: Option<RequestId>,
    pub text: String,
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
        }
        let wire = Wire {
            r#type: "agent_delta",
            id: self.id.as_ref(),
            run_id: self.run_id,
            text: &self.text,
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
    fn valid_messages_parse_with_their_ids() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ping","id":"a1"}"#),
            Ok(ClientMessage::Ping {
                id: Some(RequestId::Text("a1".into()))
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientMessage::Auth {
                id: None,
                token: "t".into()
            })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"run_agent","id":7,"agent":"demo","input":"2+2","tools":["calculator"]}"#
            ),
            Ok(ClientMessage::RunAgent {
                id: Some(RequestId::Number(7.into())),
                agent: "demo".into(),
                input: "2+2".into(),
                tools: vec!["calculator".into()],
                metadata: BTreeMap::new(),
            })
        );
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"cancel_run","run_id":"r"}"#),
            Ok(ClientMessage::CancelRun { .. })
        ));
    }

    #[test]
    fn bad_frames_are_explained_and_keep_the_id() {
        let cases = [
            ("not json", "not a JSON object"),
            ("[1,2]", "not a JSON object"),
            (r#"{"id":"x"}"#, "missing field `type`"),
            (r#"{"type":5}"#, "`type` must be a string"),
            (r#"{"type":"launch"}"#, "unknown message type `launch`"),
            (r#"{"type":"auth"}"#, "missing field `token`"),
            (r#"{"type":"ping","extra":1}"#, "unknown field `extra`"),
            (r#"{"type":"auth","token":5}"#, "invalid type"),
        ];
        for (frame, expected) in cases {
            let err = ClientMessage::parse(frame).unwrap_err();
            assert!(err.message.contains(expected), "{frame}: {}", err.message);
        }
        let err = ClientMessage::parse(r#"{"type":"nope","id":"r1"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Text("r1".into())));
        let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(200));
        assert!(ClientMessage::parse(&long_id).is_err());
    }

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
