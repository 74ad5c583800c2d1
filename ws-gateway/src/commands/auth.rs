//! `auth`: the token of a connection that presented none with the upgrade request. It is
//! accepted only as the first frame ([`crate::connection`]); on an authenticated connection
//! it is refused like a malformed frame.

use std::fmt;

use serde_json::Value;

use super::{Next, TokenFields, fields_of};
use crate::{client::Client, error::ErrorReply, protocol::RequestId};

#[derive(PartialEq)]
pub struct Auth {
    pub(super) id: Option<RequestId>,
    pub(super) token: String,
}

impl Auth {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let TokenFields { token } = fields_of(fields)?;
        Ok(Self { id, token })
    }

    /// The token, for the connection's in-band authentication.
    pub fn into_token(self) -> String {
        self.token
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
            .finish_non_exhaustive()
    }
}
