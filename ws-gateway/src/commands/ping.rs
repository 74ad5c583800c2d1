//! `ping`: answered at once and never metered, within the connection's ping budget (see
//! [`crate::keepalive`] for why keepalive must not depend on usage-service).

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of};
use crate::{
    client::Client,
    protocol::{RequestId, ServerMessage},
};

#[derive(Debug, PartialEq)]
pub struct Ping {
    pub(super) id: Option<RequestId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl Ping {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let NoFields {} = fields_of(fields)?;
        Ok(Self { id })
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        match client.take_ping() {
            Ok(()) => {
                client.send(
                    ServerMessage::Pong {
                        id: self.id.as_ref(),
                    }
                    .encode(),
                );
                Next::Read
            }
            Err(retry_after) => client.rate_limited(self.id.as_ref(), retry_after).into(),
        }
    }
}
