//! The client messages of CONTRACT §5, one type each, as mini-redis's `Command`:
//! [`Command::parse`] reads a text frame strictly (so a bad frame gets a precise
//! `bad_request`), and [`Command::apply`] hands it to its own type, which validates it and
//! answers at once, or returns the asynchronous part of the request as [`Next::Wait`].
//!
//! Every request but `ping` and `auth` is metered as a message first (`metered`); the
//! controller loop of [`crate::live`] polls what it returns, so timers, closes from elsewhere
//! and shutdown are still noticed while it waits, and reads no further frame until the
//! [`Answer`] is applied to the [`Client`].

mod auth;
mod cancel;
mod ping;
mod refresh;
mod resume;
mod run;

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};

pub use self::{
    auth::Auth, cancel::CancelRun, ping::Ping, refresh::RefreshToken, resume::ResumeRun,
    run::RunAgent,
};
use crate::{
    client::Client,
    end::End,
    error::ErrorReply,
    limits::{Meter, Metered},
    protocol::{MAX_REQUEST_ID_BYTES, RequestId, clip},
};

/// A frame from the client, parsed.
#[derive(Debug, PartialEq)]
pub enum Command {
    Auth(Auth),
    RefreshToken(RefreshToken),
    Ping(Ping),
    RunAgent(RunAgent),
    CancelRun(CancelRun),
    ResumeRun(ResumeRun),
}

/// A frame that is not a valid client message; `id` is the request id when one could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct BadFrame {
    pub id: Option<RequestId>,
    pub message: String,
}

/// What applying a command leaves to the controller loop.
pub enum Next {
    /// Answered (or nothing to answer): read the next frame.
    Read,
    /// The connection ends.
    End(End),
    /// The request waits on a dependency; no frame is read until its answer.
    Wait(BoxFuture<'static, Answer>),
}

impl From<Option<End>> for Next {
    fn from(end: Option<End>) -> Self {
        end.map_or(Self::Read, Self::End)
    }
}

/// What a metered request's asynchronous part hands back to the connection.
pub enum Answer {
    RateLimited {
        id: Option<RequestId>,
        retry_after: Duration,
    },
    Refused {
        id: Option<RequestId>,
        reply: ErrorReply,
    },
    /// The request's own answer, applied by its command.
    Done(Finish),
}

/// A request's answer, applied to the client it came from.
pub type Finish = Box<dyn FnOnce(&mut Client) -> Option<End> + Send>;

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read => f.write_str("Read"),
            Self::End(end) => f.debug_tuple("End").field(end).finish(),
            Self::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateLimited { id, retry_after } => f
                .debug_struct("RateLimited")
                .field("id", id)
                .field("retry_after", retry_after)
                .finish(),
            Self::Refused { id, reply } => f
                .debug_struct("Refused")
                .field("id", id)
                .field("reply", reply)
                .finish(),
            Self::Done(_) => f.write_str("Done(..)"),
        }
    }
}

impl Answer {
    pub fn apply(self, client: &mut Client) -> Option<End> {
        match self {
            Self::RateLimited { id, retry_after } => client.rate_limited(id.as_ref(), retry_after),
            Self::Refused { id, reply } => {
                client.answered();
                client.reply(id.as_ref(), &reply);
                None
            }
            Self::Done(finish) => {
                client.answered();
                finish(client)
            }
        }
    }
}

impl Command {
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
        let command = match kind.as_str() {
            "auth" => Auth::parse(id.clone(), rest).map(Self::Auth),
            "refresh_token" => RefreshToken::parse(id.clone(), rest).map(Self::RefreshToken),
            "ping" => Ping::parse(id.clone(), rest).map(Self::Ping),
            "run_agent" => RunAgent::parse(id.clone(), rest).map(Self::RunAgent),
            "cancel_run" => CancelRun::parse(id.clone(), rest).map(Self::CancelRun),
            "resume_run" => ResumeRun::parse(id.clone(), rest).map(Self::ResumeRun),
            other => Err(format!("unknown message type `{}`", printable(other))),
        };
        command.map_err(|message| bad(id, message))
    }

    /// Answers the command on an authenticated connection.
    pub fn apply(self, client: &mut Client) -> Next {
        // `auth` is not a request this connection serves: it continues a run of bad frames.
        if !matches!(self, Self::Auth(_)) {
            client.well_formed();
        }
        match self {
            Self::Auth(auth) => auth.apply(client),
            Self::RefreshToken(refresh) => refresh.apply(client),
            Self::Ping(ping) => ping.apply(client),
            Self::RunAgent(run) => run.apply(client),
            Self::CancelRun(cancel) => cancel.apply(client),
            Self::ResumeRun(resume) => resume.apply(client),
        }
    }
}

/// The asynchronous part of a request: the message meter, then `action`, whose result is
/// applied to the client once the loop has it.
fn metered<A, F>(client: &mut Client, id: Option<RequestId>, action: A) -> Next
where
    A: Future<Output = F> + Send + 'static,
    F: FnOnce(&mut Client) -> Option<End> + Send + 'static,
{
    let shared = Arc::clone(client.shared());
    let user = client.identity().user_id;
    let key = client.next_request_key();
    Next::Wait(Box::pin(async move {
        match shared.limits.meter(user, Meter::Messages, key).await {
            Metered::Allowed | Metered::Replayed => Answer::Done(Box::new(action.await)),
            Metered::Denied { retry_after, .. } => Answer::RateLimited { id, retry_after },
            Metered::Unavailable => Answer::Refused {
                id,
                reply: ErrorReply::usage_unavailable(),
            },
        }
    }))
}

/// The fields of `refresh_token`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFields {
    token: String,
}

fn fields_of<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    // serde names the field and the expectation; cap it, since it may quote input.
    serde_json::from_value(value).map_err(|err| clip(err.to_string(), 200))
}

/// At most a short, printable prefix of client input, for error messages.
fn printable(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(32).collect()
}

#[cfg(test)]
mod tests;
