//! `resume_run`: follows one of the user's runs again, typically after a reconnect, from the
//! record after `after_seq`. Metered as a message, like any request that makes the gateway work.
//!
//! The answer is `run_resumed`. With `recovered: true` the run's records after `after_seq`
//! follow in order, then its live ones, each once. When the run's log no longer holds the
//! record after `after_seq`, the answer is `recovered: false` with a snapshot of the run, and
//! nothing is replayed: a client never gets a part of a run it cannot tell from the whole.

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of, metered};
use crate::{
    client::Client,
    error::ErrorReply,
    journal::{Attach, Snapshot},
    protocol::{RequestId, ServerMessage},
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
        metered(client, id, async move {
            move |client: &mut Client| {
                resume(client, reply_to, &run_id, after_seq);
                None
            }
        })
    }
}

fn resume(client: &mut Client, id: Option<RequestId>, run_id: &str, after_seq: u64) {
    let Some(journal) = client.find_run(run_id) else {
        client.reply(id.as_ref(), &ErrorReply::unknown_run());
        return;
    };
    let run_id = journal.run_id();
    let resumed = |snapshot: Option<&Snapshot>| {
        ServerMessage::RunResumed {
            id: id.as_ref(),
            run_id: &run_id.to_string(),
            recovered: snapshot.is_none(),
            snapshot,
        }
        .encode()
    };
    // This connection already follows the run: everything after what it was sent is on its
    // way, so a second resume adds nothing (and repeats nothing).
    let attach = if client.follows(run_id) {
        journal.check(after_seq)
    } else {
        journal.attach(after_seq)
    };
    match attach {
        Attach::Follow(follower) => {
            client.send(resumed(None));
            client.follow(follower, id);
        }
        Attach::Following => client.send(resumed(None)),
        Attach::Snapshot(snapshot) => client.send(resumed(Some(&snapshot))),
        Attach::Ahead { last_seq } => client.reply(
            id.as_ref(),
            &ErrorReply::bad_request(format!(
                "after_seq is past the run's last event ({last_seq})"
            )),
        ),
    }
}
