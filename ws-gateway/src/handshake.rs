//! The upgrade request of `/ws` (CONTRACT §5): everything decided before a WebSocket exists.
//!
//! In order, each refusal answered over HTTP with no upgrade: draining (503), node full (503),
//! too many attempts from the address (429), then the token. A token may come in the
//! `Authorization: Bearer` header or as the `bearer.<token>` subprotocol next to
//! `tollgate.v1` (the server selects `tollgate.v1` and never echoes the token); two different
//! tokens are ambiguous (401), and a query-string token is refused (401) unless the operator
//! allows it. A presented token is validated (401, or 503 in strict mode while auth-service is
//! unreachable) and the user's connection lease taken (429 at the plan's limit). Without a
//! token the upgrade goes ahead and the connection expects `{"type":"auth"}` first.
//!
//! A `since=<seq>` query parameter asks for the user's published events after that seq once
//! connected. One that is not a whole number, negative, or (with a token) ahead of the user's
//! last event is refused with 400 before anything else is spent on the request.
//!
//! The route itself ([`crate::connection::upgrade`]) asks [`admit`], then serves the socket.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::ws::WebSocketUpgrade,
    http::{HeaderMap, Uri, header},
};
use tollgate_shared::tokens::{TokenError, bearer};

use crate::{
    error::GatewayError,
    history::{RecoverError, Since},
    session::{Session, open_session},
    state::{Shared, Slot},
};

/// The subprotocol the gateway speaks.
pub const SUBPROTOCOL: &str = "tollgate.v1";
/// The prefix of the subprotocol that carries a token.
const BEARER_PREFIX: &str = "bearer.";
/// Read buffer of each connection: small, so idle connections stay cheap; it grows for a
/// large frame.
const READ_BUFFER: usize = 1024;

/// What the upgrade request admits: the node's slot, the session when a token was presented,
/// and the `since` asked for.
pub type Admitted = (Slot, Option<Session>, Option<Since>);

/// Everything decided before the upgrade, in the order of the module documentation.
pub async fn admit(
    shared: &Arc<Shared>,
    client: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
    connection_id: &Arc<str>,
) -> Result<Admitted, GatewayError> {
    if shared.shutdown.is_triggered() {
        return Err(GatewayError::ShuttingDown);
    }
    let since = requested_since(uri)?;
    let slot = shared.reserve_slot().ok_or(GatewayError::Overloaded)?;
    shared
        .limits
        .admit_address(client)
        .await
        .map_err(|retry_after| GatewayError::ConnectRateLimited { retry_after })?;
    let Some(token) = presented_token(headers, uri, shared.config.allow_query_token)? else {
        return Ok((slot, None, since));
    };
    let identity = shared.validator.validate(&token).await?;
    if let Some(since) = since {
        match shared.delivery.check_since(identity.user_id, since).await {
            Err(RecoverError::Since(err)) => return Err(GatewayError::BadRequest(err.to_string())),
            // Answered after `connected` instead, when the history is back or not.
            Err(RecoverError::Unavailable(_)) | Ok(()) => {}
        }
    }
    let session = open_session(shared, identity, connection_id).await?;
    Ok((slot, Some(session), since))
}

/// The `since` query parameter, if any (at most once).
pub fn requested_since(uri: &Uri) -> Result<Option<Since>, GatewayError> {
    let mut values = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == "since").then_some(value)
        });
    let since = values.next();
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(
            "`since` given more than once".into(),
        ));
    }
    since
        .map(|value| Since::parse(value).map_err(|err| GatewayError::BadRequest(err.to_string())))
        .transpose()
}

/// The upgrade's subprotocol and frame limits.
pub fn configure(ws: WebSocketUpgrade, shared: &Shared) -> WebSocketUpgrade {
    let max = shared.config.max_frame_bytes;
    // Outgoing frames are bounded by what the gateway writes (events up to the publish
    // limit); the write buffer holds about one of them while the peer is slow.
    let largest_outgoing = max.max(shared.config.publish_max_bytes) + 1024;
    ws.protocols([SUBPROTOCOL])
        .max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * largest_outgoing)
}

/// The one token presented on the upgrade request, if any.
pub fn presented_token(
    headers: &HeaderMap,
    uri: &Uri,
    allow_query: bool,
) -> Result<Option<String>, GatewayError> {
    let mut tokens: Vec<&str> = Vec::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or(GatewayError::InvalidToken(TokenError::Malformed))?;
        tokens.push(token);
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        tokens.extend(
            value
                .split(',')
                .map(str::trim)
                .filter_map(|protocol| protocol.strip_prefix(BEARER_PREFIX)),
        );
    }
    let query = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            matches!(key, "access_token" | "token").then_some(value)
        });
    for token in query {
        if !allow_query {
            return Err(GatewayError::QueryTokenRefused);
        }
        tokens.push(token);
    }
    tokens.dedup();
    match tokens.as_slice() {
        [] => Ok(None),
        [""] => Err(GatewayError::InvalidToken(TokenError::Missing)),
        [token] => Ok(Some((*token).to_owned())),
        [first, rest @ ..] if rest.iter().all(|token| token == first) => {
            Ok(Some((*first).to_owned()))
        }
        _ => Err(GatewayError::AmbiguousToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn uri(query: &str) -> Uri {
        format!("/ws{query}").parse().unwrap()
    }

    #[test]
    fn each_position_yields_the_token() {
        let auth = headers(&[(header::AUTHORIZATION, "Bearer abc.def.ghi")]);
        assert_eq!(
            presented_token(&auth, &uri(""), false).unwrap().as_deref(),
            Some("abc.def.ghi")
        );
        let protocol = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "tollgate.v1, bearer.abc.def.ghi",
        )]);
        assert_eq!(
            presented_token(&protocol, &uri(""), false)
                .unwrap()
                .as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            presented_token(&HeaderMap::new(), &uri("?access_token=abc"), true)
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&HeaderMap::new(), &uri(""), false).unwrap(),
            None
        );
    }

    #[test]
    fn since_is_read_from_the_query_once() {
        let since = |query: &str| requested_since(&uri(query)).map(|since| since.map(Since::get));
        assert_eq!(since("").unwrap(), None);
        assert_eq!(since("?since=12&x=1").unwrap(), Some(12));
        for bad in [
            "?since=-1",
            "?since=abc",
            "?since=",
            "?since",
            "?since=1&since=2",
        ] {
            assert!(
                matches!(since(bad), Err(GatewayError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ambiguity_and_query_tokens_are_refused() {
        let both = headers(&[
            (header::AUTHORIZATION, "Bearer one"),
            (header::SEC_WEBSOCKET_PROTOCOL, "tollgate.v1, bearer.two"),
        ]);
        assert!(matches!(
            presented_token(&both, &uri(""), false),
            Err(GatewayError::AmbiguousToken)
        ));
        let same = headers(&[
            (header::AUTHORIZATION, "Bearer one"),
            (header::SEC_WEBSOCKET_PROTOCOL, "tollgate.v1, bearer.one"),
        ]);
        assert_eq!(
            presented_token(&same, &uri(""), false).unwrap().as_deref(),
            Some("one")
        );
        assert!(matches!(
            presented_token(&HeaderMap::new(), &uri("?token=abc"), false),
            Err(GatewayError::QueryTokenRefused)
        ));
        let basic = headers(&[(header::AUTHORIZATION, "Basic dXNlcjpwdw==")]);
        assert!(matches!(
            presented_token(&basic, &uri(""), false),
            Err(GatewayError::InvalidToken(TokenError::Malformed))
        ));
    }
}
