//! `cancel_run`: stops one of the user's runs, from any of its connections on any node (the
//! run answers `run_cancelled` itself, to whoever follows it).
//! Metered as a message, like any request that makes the gateway work.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of, metered};
use crate::{agent::RunId, client::Client, error::ErrorReply, protocol::RequestId};

#[derive(Debug, PartialEq)]
pub struct CancelRun {
    pub(super) id: Option<RequestId>,
    pub(super) run_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelFields {
    run_id: String,
}

impl CancelRun {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let CancelFields { run_id } = fields_of(fields)?;
        Ok(Self { id, run_id })
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        let Self { id, run_id } = self;
        let reply_to = id.clone();
        let runs = Arc::clone(&client.shared().runs);
        let user = client.identity().user_id;
        metered(client, id, async move {
            let cancelled = match run_id.parse::<RunId>() {
                Ok(run_id) => runs.cancel(run_id, user).await,
                Err(_) => false,
            };
            move |client: &mut Client| {
                if !cancelled {
                    client.reply(reply_to.as_ref(), &ErrorReply::unknown_run());
                }
                None
            }
        })
    }
}
