//! The Node baseline of the message phase (`bench/node-baseline/server.mjs`): a WebSocket
//! echo server built the usual way in Node (`ws`, with `jose` verifying each upgrade's EdDSA
//! access token against auth-service's keys), metering nothing. It is the kind of server an
//! outside review compared the gateway with; the load generator's own echo server
//! ([`super::echo`]) is the stricter baseline. Needs `node` and `npm ci` run in the script's
//! directory.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use tokio::process::Command;
use tollgate_proto::auth::v1::GetJwksRequest;

use super::stack::{ChildServer, Stack, spawn_server};

/// Starts `script` with `node`, given auth-service's current keys and the tokens' audience.
pub async fn start(stack: &Stack, script: &Path, audience: &str) -> anyhow::Result<ChildServer> {
    let jwks = stack
        .auth_client()?
        .get_jwks(GetJwksRequest {})
        .await
        .context("reading auth-service's keys")?
        .into_inner();
    let keys: Vec<_> = jwks
        .keys
        .iter()
        .map(|key| {
            json!({
                "kty": key.kty, "crv": key.crv, "x": key.x,
                "kid": key.kid, "alg": key.alg, "use": key.r#use,
            })
        })
        .collect();
    let mut command = Command::new("node");
    command
        .arg(script)
        .env_clear()
        .env("JWKS_JSON", json!({ "keys": keys }).to_string())
        .env("AUDIENCE", audience);
    spawn_server(command, "the Node baseline").await
}
