//! `resume_run`: follows one of the user's runs again, typically after a reconnect, from the
//! record after `after_seq`, on any gateway node. Metered as a message, like any request that
//! makes the gateway work.
//!
//! The answer is `run_resumed`. With `recovered: true` the run's records after `after_seq`
//! follow in order, then its live ones, each once. When the run's log no longer holds the
//! record after `after_seq`, the answer is `recovered: false` with a snapshot of the run, and
//! nothing is replayed: a client never gets a part of a run it cannot tell from the whole.
//! A run this node does not run is read from Redis (see [`crate::journal`]).

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of, metered};
use crate::{
    agent::RunId,
    client::Client,
    error::ErrorReply,
    journal::{Attach, Snapshot},
    protocol::{RequestId, ServerMessage},
    runs::{Resumed, serves},
};

#[derive(Debug, PartialEq)]
pub struct ResumeRun {
    pub(super) id: Option<RequestId>,
    pub(super) run_id: String,
    pub(super) after_seq: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeFields {
    run_id: String,
    /// The last `seq` of the run the client has; 0 for none.
    after_seq: u64,
}

impl ResumeRun {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let ResumeFields { run_id, after_seq } = fields_of(fields)?;
        Ok(Self {
            id,
            run_id,
            after_seq,
        })
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        let Self {
            id,
            run_id,
            after_seq,
        } = self;
        let reply_to = id.clone();
        let user = client.identity().user_id;
        let runs = std::sync::Arc::clone(&client.shared().runs);
        let run_id = run_id.parse::<RunId>().ok();
        let here = run_id.and_then(|run_id| client.find_run(run_id));
        let from_here = run_id.is_some_and(|run_id| client.follows(run_id))
            || here
                .as_ref()
                .is_some_and(|journal| serves(journal, after_seq));
        metered(client, id, async move {
            let remote = match run_id {
                Some(run_id) if !from_here => {
                    Some(runs.resume_remote(run_id, user, after_seq).await)
                }
                _ => None,
            };
            move |client: &mut Client| {
                let reply_to = reply_to.as_ref();
                match (run_id, remote) {
                    (Some(run_id), None) => resume_here(client, reply_to, run_id, after_seq),
                    (Some(run_id), Some(Ok(resumed))) => {
                        answer(client, reply_to, run_id, resumed);
                    }
                    (Some(_), Some(Err(err))) => {
                        tracing::warn!(error = %err, "resuming a run from redis failed");
                        client.reply(reply_to, &ErrorReply::history_unavailable());
                    }
                    (None, _) => client.reply(reply_to, &ErrorReply::unknown_run()),
                }
                None
            }
        })
    }
}

/// A resume this node serves from its own journal of the run.
fn resume_here(client: &mut Client, id: Option<&RequestId>, run_id: RunId, after_seq: u64) {
    let Some(journal) = client.find_run(run_id) else {
        client.reply(id, &ErrorReply::unknown_run());
        return;
    };
    // This connection already follows the run: everything after what it was sent is on its
    // way, so a second resume adds nothing (and repeats nothing).
    let attach = if client.follows(run_id) {
        journal.check(after_seq)
    } else {
        journal.attach(after_seq)
    };
    let resumed = match attach {
        Attach::Follow(follower) => Resumed::Follow(follower),
        Attach::Following => {
            client.send(resumed_frame(id, run_id, None));
            return;
        }
        Attach::Snapshot(snapshot) => Resumed::Snapshot(snapshot),
        Attach::Ahead { last_seq } => Resumed::Ahead { last_seq },
    };
    answer(client, id, run_id, resumed);
}

fn answer(client: &mut Client, id: Option<&RequestId>, run_id: RunId, resumed: Resumed) {
    match resumed {
        Resumed::Follow(follower) => {
            client.send(resumed_frame(id, run_id, None));
            client.follow(follower, id.cloned());
        }
        Resumed::Snapshot(snapshot) => client.send(resumed_frame(id, run_id, Some(&snapshot))),
        Resumed::Unknown => client.reply(id, &ErrorReply::unknown_run()),
        Resumed::Ahead { last_seq } => client.reply(
            id,
            &ErrorReply::bad_request(format!(
                "after_seq is past the run's last event ({last_seq})"
            )),
        ),
    }
}

fn resumed_frame(
    id: Option<&RequestId>,
    run_id: RunId,
    snapshot: Option<&Snapshot>,
) -> axum::extract::ws::Utf8Bytes {
    ServerMessage::RunResumed {
        id,
        run_id: &run_id.to_string(),
        recovered: snapshot.is_none(),
        snapshot,
    }
    .encode()
}
