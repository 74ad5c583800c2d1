//! `refresh_token`: a new access token for the same session, so a connection outlives the
//! token it opened with. Metered as a message; the token is validated like a new
//! connection's, must speak for the same user and session (4005 otherwise), and a refusal is
//! answered as [`crate::error::AuthFailure::on_refresh`] says.

use std::{fmt, sync::Arc};

use serde_json::Value;

use super::{Next, TokenFields, fields_of, metered};
use crate::{
    client::Client,
    end::End,
    error::{AuthFailure, CloseCode},
    protocol::{RequestId, ServerMessage},
    validation::Identity,
};

#[derive(PartialEq)]
pub struct RefreshToken {
    pub(super) id: Option<RequestId>,
    pub(super) token: String,
}

impl RefreshToken {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        let TokenFields { token } = fields_of(fields)?;
        Ok(Self { id, token })
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        let Self { id, token } = self;
        let shared = Arc::clone(client.shared());
        let reply_to = id.clone();
        metered(client, id, async move {
            let validated = shared.validator.validate(&token).await;
            move |client: &mut Client| finish(client, reply_to.as_ref(), validated)
        })
    }
}

fn finish(
    client: &mut Client,
    id: Option<&RequestId>,
    validated: Result<Identity, AuthFailure>,
) -> Option<End> {
    let current = client.identity();
    match validated {
        Ok(new) if new.user_id == current.user_id && new.session_id == current.session_id => {
            client.refreshed(new);
            client.send(
                ServerMessage::TokenRefreshed {
                    id,
                    expires_at: new.expires_at,
                }
                .encode(),
            );
            None
        }
        Ok(_) => Some(End::Close(CloseCode::SessionMismatch)),
        Err(failure) => client.reject(id, failure.on_refresh()),
    }
}

/// Never shows the token.
impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
