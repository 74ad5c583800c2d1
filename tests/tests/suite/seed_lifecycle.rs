//! Seed batch 2, the token lifecycle across the services: what registration issues and who
//! accepts it, rotation of refresh tokens and what a stolen one costs, tokens expiring under
//! open connections, and key rotation and restarts underneath live sessions.

use serde_json::json;
use tollgate_integration::{forge, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_issues_a_token_pair_that_every_service_accepts() {
    let cluster = Cluster::start().await;
    let email = unique_email();
    let credentials = json!({"email": email, "password": PASSWORD});
    let (status, pair) = cluster.auth_post("/v1/register", &credentials, None).await;
    assert_eq!(status, 201, "{pair}");
    assert_eq!(
        (pair["token_type"].as_str(), pair["expires_in"].as_u64()),
        (Some("Bearer"), Some(900))
    );
    let user_id = pair["user_id"].as_str().unwrap();
    let access = pair["access_token"].as_str().unwrap();
    assert!(
        pair["refresh_token"]
            .as_str()
            .is_some_and(|token| token.len() >= 43)
    );

    // An EdDSA access token whose key auth-service publishes, naming the new user and session.
    let header = forge::header(access);
    assert_eq!(
        (header["alg"].as_str(), header["typ"].as_str()),
        (Some("EdDSA"), Some("at+jwt"))
    );
    let jwks = cluster.jwks().await;
    let published = jwks["keys"].as_array().unwrap();
    assert!(
        published.iter().any(|key| key["kid"] == header["kid"]),
        "{jwks}"
    );
    let claims = forge::claims(access);
    assert_eq!(claims["sub"], user_id);
    assert_eq!(claims["sid"], pair["session_id"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    // auth-service validates it for other services, usage-service knows the user, and the
    // gateway admits it.
    let validated = cluster.validate(access).await.unwrap();
    assert_eq!(
        (validated.user_id.as_str(), validated.session_id.as_str()),
        (user_id, pair["session_id"].as_str().unwrap())
    );
    assert_eq!(cluster.subscription(user_id).await.plan_id, "free");
    let (_client, connected) = WsClient::connected(cluster.gateway(), access).await;
    assert_eq!(connected["user_id"], user_id);

    // Refusals, each with its status and reason, and nothing half-created.
    let taken = json!({"email": email.to_uppercase(), "password": PASSWORD});
    for (body, status, code) in [
        (taken, 409, "email_taken"),
        (
            json!({"email": unique_email(), "password": "short"}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            400,
            "invalid_request",
        ),
        (json!({"email": unique_email()}), 400, "invalid_request"),
    ] {
        let (answered, error) = cluster.auth_post("/v1/register", &body, None).await;
        assert_eq!(
            (answered, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (answered, _) = cluster.auth_post_raw("/v1/register", "{\"email\":").await;
    assert_eq!(answered, 400);
    // The original account is intact, and registration goes on working.
    cluster.login(&email).await;
    cluster.register().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_replayed_refresh_token_revokes_the_session_everywhere() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let first = cluster.register().await;
    let (mut old_connection, _) = WsClient::connected(gateway, &first.access_token).await;

    let second = cluster.refresh(&first).await;
    assert_eq!(
        (second.user_id.as_str(), second.session_id.as_str()),
        (first.user_id.as_str(), first.session_id.as_str())
    );
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let (mut new_connection, connected) = WsClient::connected(gateway, &second.access_token).await;
    assert_eq!(connected["session_id"], first.session_id);
    let third = cluster.refresh(&second).await;
    cluster.validate(&third.access_token).await.unwrap();

    // The first refresh token, two rotations old, comes back: theft. The whole session goes.
    let (status, error) = cluster
        .auth_post(
            "/v1/refresh",
            &json!({"refresh_token": first.refresh_token}),
            None,
        )
        .await;
    assert_eq!(status, 401, "{error}");
    for client in [&mut old_connection, &mut new_connection] {
        assert_eq!(client.closed().await, 4004);
    }
    for pair in [&first, &second, &third] {
        assert_session_revoked(&cluster, pair).await;
    }
    let (status, _) = cluster
        .auth_post(
            "/v1/refresh",
            &json!({"refresh_token": third.refresh_token}),
            None,
        )
        .await;
    assert_eq!(status, 401, "the newest refresh token outlived the theft");
    // Logging in again opens a fresh session.
    let again = cluster.login(&first.email).await;
    WsClient::connected(gateway, &again.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_in_band_or_the_connection_closes_with_4003() {
    let cluster = Cluster::builder()
        .auth_env("AUTH_ACCESS_TOKEN_TTL", "6s")
        .gateway_env("JWT_LEEWAY", "1s")
        .gateway_env("GATEWAY_TOKEN_EXPIRY_WARNING", "2s")
        .start()
        .await;
    let gateway = cluster.gateway();
    let (user, other) = (cluster.register().await, cluster.register().await);
    let (mut kept, connected) = WsClient::connected(gateway, &user.access_token).await;
    let (mut lapsed, _) = WsClient::connected(gateway, &user.access_token).await;
    let first_expiry = connected["expires_at"].as_i64().unwrap();

    // Another user's token, or a bad one, is not a refresh of this session.
    let (mut borrower, _) = WsClient::connected(gateway, &other.access_token).await;
    borrower
        .send_json(json!({"type": "refresh_token", "token": user.access_token}))
        .await;
    assert_eq!(borrower.closed().await, 4005);
    let (mut garbler, _) = WsClient::connected(gateway, &other.access_token).await;
    garbler
        .send_json(json!({"type": "refresh_token", "token": "not-a-jwt"}))
        .await;
    assert_eq!(garbler.closed().await, 4002);

    // Warned ahead of `exp`, the kept connection refreshes in band; the other does nothing.
    let warning = kept.expect("token_expiring").await;
    assert!(
        warning["expires_in_ms"].as_u64().unwrap() <= 2_000,
        "{warning}"
    );
    assert_eq!(
        lapsed.expect("token_expiring").await["type"],
        "token_expiring"
    );
    let renewed = cluster.refresh(&user).await;
    kept.send_json(json!({"type": "refresh_token", "id": "r", "token": renewed.access_token}))
        .await;
    let refreshed = kept.expect("token_refreshed").await;
    assert_eq!(refreshed["id"], "r");
    assert!(
        refreshed["expires_at"].as_i64().unwrap() > first_expiry,
        "{refreshed}"
    );

    // The lazy one is closed at `exp` + leeway; the refreshed one outlives it.
    assert_eq!(lapsed.closed().await, 4003);
    assert_eq!(kept.ping("after-exp").await["type"], "pong");
    // The expired token opens nothing any more (once past the leeway, to the second).
    let refused = eventually(PATIENCE, || async {
        match WsClient::connect(gateway, Present::Header(&user.access_token)).await {
            Ok(client) => {
                client.close().await;
                false
            }
            Err(refused) => (refused.status, refused.code()) == (401, "token_expired"),
        }
    })
    .await;
    assert!(refused, "the expired token kept opening connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_an_auth_service_restart_leave_live_sessions_alone() {
    let mut cluster = Cluster::start().await;
    let user = cluster.register().await;
    let (mut before, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    let old_kid = forge::header(&user.access_token)["kid"].clone();

    let new_kid = cluster.rotate_signing_key().await;
    assert_ne!(old_kid, new_kid.as_str());
    let jwks = cluster.jwks().await;
    for kid in [&old_kid, &json!(new_kid)] {
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|key| &key["kid"] == kid),
            "{jwks}"
        );
    }
    // Old tokens and connections live on; a token signed with the new key is accepted by a
    // gateway that has never seen that key (it refreshes its JWKS on an unknown kid).
    assert_eq!(before.ping("rotated").await["type"], "pong");
    cluster.validate(&user.access_token).await.unwrap();
    let rotated = cluster.login(&user.email).await;
    assert_eq!(
        forge::header(&rotated.access_token)["kid"],
        new_kid.as_str()
    );
    let (_after, connected) = WsClient::connected(cluster.gateway(), &rotated.access_token).await;
    assert_eq!(connected["session_id"], rotated.session_id);

    // auth-service dies and comes back: keys, sessions and refresh tokens are durable.
    cluster.auth.kill_9();
    cluster.auth.restart().await;
    cluster.auth.ready().await;
    cluster.validate(&user.access_token).await.unwrap();
    cluster.validate(&rotated.access_token).await.unwrap();
    let refreshed = cluster.refresh(&rotated).await;
    assert_eq!(
        forge::header(&refreshed.access_token)["kid"],
        new_kid.as_str()
    );
    assert_eq!(before.ping("restarted").await["type"], "pong");

    // Logging out everywhere ends every session and its connections.
    assert_eq!(cluster.logout_all(&refreshed).await, 2);
    assert_eq!(before.closed().await, 4004);
    assert_session_revoked(&cluster, &user).await;
    assert_session_revoked(&cluster, &refreshed).await;
}
