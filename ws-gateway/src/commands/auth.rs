//! `auth`: the token of a connection that presented none with the upgrade request. It is
//! accepted only as the first frame ([`crate::connection`]); on an authenticated connection
//! it is refused like a malformed frame. Its optional `since` asks, like the upgrade
//! request's, for the user's published events after that seq; it is checked by the
//! connection, which answers a bad one with an error frame and 1008.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of};
use crate::{
    client::Client,
    error::ErrorReply,
    history::{Since, SinceError},
    protocol::RequestId,
};

#[derive(PartialEq)]
pub struct Auth {
    pub(super) id: Option<RequestId>,
    pub(super) token: String,
    pub(super) since: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFields {
    token: String,
    #[serde(default)]
    since: Option<Value>,
}

impl Auth {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let AuthFields { token, since } = fields_of(fields)?;
        Ok(Self { id, token, since })
    }

    /// The token, for the connection's in-band authentication.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The `since` asked for, if any.
    pub fn since(&self) -> Result<Option<Since>, SinceError> {
        self.since.as_ref().map(Since::from_json).transpose()
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        client
            .bad_frame(self.id.as_ref(), ErrorReply::already_authenticated())
            .into()
    }
}

/// Never shows the token.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("id", &self.id)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}
