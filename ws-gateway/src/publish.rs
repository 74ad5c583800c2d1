//! `POST /v1/publish`: backends send an event to a user (CONTRACT §5).
//!
//! The caller presents a service token for audience `ws-gateway` with scope `publish` (401
//! without a valid one, 403 without the scope); the body is `{"user_id", "data"}` (400 for
//! anything else, 413 over `GATEWAY_PUBLISH_MAX_BYTES`). The credentials are checked before
//! the body is read. 202 (`{"status": "accepted", "seq": n}`) means the event was numbered,
//! kept in the user's history for `GATEWAY_EVENT_HISTORY_TTL` and sent to every node where the
//! user is connected; a user with no connection receives it on reconnecting with `since`, or
//! not at all. While Redis cannot be reached the event still reaches the user's connections on
//! this node, unnumbered and not kept, and the answer has no `seq`.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_shared::tokens::{TokenError, bearer};
use uuid::Uuid;

use crate::{delivery::PublishError, error::GatewayError, protocol::clip, state::Shared};

/// The scope a publisher's service token must hold.
pub const SCOPE_PUBLISH: &str = "publish";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    user_id: Uuid,
    data: Value,
}

pub async fn publish(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(GatewayError::Unauthenticated(TokenError::Missing))?;
    shared
        .services
        .verify_service(token, SCOPE_PUBLISH)
        .await
        .map_err(|err| match err {
            TokenError::InsufficientScope => GatewayError::Forbidden,
            other => GatewayError::Unauthenticated(other),
        })?;
    let bytes = axum::body::to_bytes(body, shared.config.publish_max_bytes)
        .await
        .map_err(|_| GatewayError::PayloadTooLarge)?;
    let request: PublishRequest = serde_json::from_slice(&bytes)
        .map_err(|err| GatewayError::BadRequest(clip(err.to_string(), 200)))?;
    if request.data.is_null() {
        return Err(GatewayError::BadRequest("`data` must not be null".into()));
    }
    let seq = shared
        .delivery
        .publish(request.user_id, &request.data)
        .await
        .map_err(|PublishError::TooLarge| GatewayError::PayloadTooLarge)?;
    let body = match seq {
        Some(seq) => json!({"status": "accepted", "seq": seq}),
        None => json!({"status": "accepted"}),
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}
