//! Seed batch 1, core authentication and user context, against the real binaries: the token
//! in each position, forged tokens, in-band authentication and its deadline, what a connection
//! knows about its user, and how sessions stay apart.

use serde_json::json;
use tollgate_integration::{forge, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_opens_a_connection_from_the_header_the_subprotocol_or_the_first_message() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    let claims = forge::claims(&user.access_token);

    for present in [
        Present::Header(&user.access_token),
        Present::Subprotocol(&user.access_token),
        Present::InBand(&user.access_token),
    ] {
        let mut client = WsClient::connect(gateway, present).await.unwrap();
        let connected = client.expect("connected").await;
        // The connection knows who it serves, from the token and from usage-service.
        assert_eq!(connected["user_id"], user.user_id, "{present:?}");
        assert_eq!(connected["session_id"], user.session_id);
        assert_eq!(connected["user_id"], claims["sub"]);
        assert_eq!(connected["expires_at"], claims["exp"]);
        assert_eq!(connected["plan"], "free");
        assert!(
            connected["connection_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        if matches!(present, Present::Subprotocol(_)) {
            // The server selects the protocol and never echoes the token.
            assert_eq!(client.protocol.as_deref(), Some("tollgate.v1"));
        }
        assert_eq!(client.ping("p").await["type"], "pong");
        // The free plan holds two connections: give this one's lease back.
        client.close().await;
    }

    // Two different tokens at once are ambiguous; a token in the query string is refused.
    let other = cluster.register().await;
    let both = [
        ("authorization", format!("Bearer {}", user.access_token)),
        (
            "sec-websocket-protocol",
            format!("tollgate.v1, bearer.{}", other.access_token),
        ),
    ];
    let refused = WsClient::connect(gateway, Present::Headers(&both))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "ambiguous_token"));

    // What the connection knows follows usage-service: a new connection after an upgrade
    // carries the new plan.
    cluster.change_plan(&user.user_id, "pro").await;
    let (_client, connected) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(connected["plan"], "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_everywhere_and_the_client_recovers_with_a_real_one() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;

    let hostile = forge::hostile_tokens(&user.access_token);
    for (name, token) in &hostile {
        let (name, token) = (*name, token.as_str());
        for present in [Present::Header(token), Present::Subprotocol(token)] {
            let refused = WsClient::connect(gateway, present)
                .await
                .map(|_| ())
                .expect_err(name);
            assert_eq!(refused.status, 401, "{name} {present:?}: {refused:?}");
            assert!(!refused.code().is_empty(), "{name}: no reason given");
            assert!(
                !refused.body.to_string().contains(token),
                "{name}: the token was echoed"
            );
        }
        let mut in_band = WsClient::connect(gateway, Present::InBand(token))
            .await
            .unwrap();
        assert_eq!(in_band.closed().await, 4002, "{name} in band");
        // auth-service, asked directly, agrees.
        let status = cluster.validate(token).await.expect_err(name);
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{name}");
    }
    // Nothing forged got near the user's session: the real token still works, from the same
    // client address, at once.
    let (mut client, connected) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(connected["user_id"], user.user_id);
    assert_eq!(client.ping("after").await["type"], "pong");
    // No service logged a token, forged or real, the password or a client secret (a JWT's
    // signature alone is enough to recognise it).
    let logs = [&cluster.auth, &cluster.usage, gateway]
        .map(Service::log)
        .join("\n");
    let mut secrets = vec![
        user.refresh_token.clone(),
        PASSWORD.to_owned(),
        cluster.client_secret().to_owned(),
    ];
    let jwts = hostile
        .iter()
        .map(|(_, token)| token)
        .chain([&user.access_token]);
    secrets.extend(
        jwts.filter(|token| token.len() > 100)
            .map(|token| token[token.len() - 24..].to_owned()),
    );
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret reached the logs");
    }
    assert!(
        gateway
            .metric("tollgate_gateway_auth_outcomes_total{outcome=\"rejected\",reason=\"bad_signature\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_authentication_comes_first_within_the_deadline_and_only_once() {
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_AUTH_TIMEOUT", "1s")
        .start()
        .await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;

    // Not a WebSocket at all, or credentials that are not a bearer token: a JSON refusal.
    let plain = reqwest::get(gateway.http_url("/ws")).await.unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");
    let basic = [("authorization", "Basic dXNlcjpwYXNzd29yZA==".to_owned())];
    let refused = WsClient::connect(gateway, Present::Headers(&basic))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "token_malformed"));
    // No token at all, neither on the upgrade nor in band: closed with 4001 at the deadline.
    let mut silent = WsClient::connect(gateway, Present::Nothing).await.unwrap();
    assert_eq!(silent.closed().await, 4001);
    // Anything but `auth` first is not authentication.
    let mut impatient = WsClient::connect(gateway, Present::Nothing).await.unwrap();
    impatient.send_json(json!({"type": "ping"})).await;
    assert_eq!(impatient.closed().await, 4001);
    // After a timeout the client simply reconnects with its token.
    let mut client = WsClient::connect(gateway, Present::InBand(&user.access_token))
        .await
        .unwrap();
    let connected = client.expect("connected").await;
    assert_eq!(connected["session_id"], user.session_id);
    // Authenticated once is authenticated: a second `auth` is refused and changes nothing.
    let other = cluster.register().await;
    client
        .send_json(json!({"type": "auth", "id": "again", "token": other.access_token}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("already_authenticated"), Some("again"))
    );
    assert_eq!(client.ping("still-me").await["type"], "pong");
    // Nothing was counted against the other user: its whole minute of messages is left.
    let (mut others, _) = WsClient::connected(gateway, &other.access_token).await;
    for n in 0..30 {
        let reply = others.metered(&format!("o{n}")).await;
        assert_eq!(
            reply["code"], "unknown_run",
            "the other user's message {n}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated_and_logging_one_out_closes_only_its_connections() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let first = cluster.register().await;
    let second = cluster.login(&first.email).await;
    let stranger = cluster.register().await;
    assert_eq!(first.user_id, second.user_id);
    assert_ne!(first.session_id, second.session_id);

    let (mut on_first, _) = WsClient::connected(gateway, &first.access_token).await;
    let (mut on_second, connected) = WsClient::connected(gateway, &second.access_token).await;
    assert_eq!(connected["session_id"], second.session_id);
    let (mut strangers, _) = WsClient::connected(gateway, &stranger.access_token).await;

    // Events go to the user (both sessions), not to anyone else.
    let token = cluster.publish_token().await;
    let event = json!({"user_id": first.user_id, "data": {"n": 1}});
    assert_eq!(publish(gateway, Some(&token), &event).await.0, 202);
    for client in [&mut on_first, &mut on_second] {
        assert_eq!(client.expect("event").await["data"]["n"], 1);
    }
    let reply = strangers.ping_first("s").await;
    assert_eq!(reply["type"], "pong", "the stranger got {reply}");

    cluster.logout(&first).await;
    assert_eq!(on_first.closed().await, 4004);
    assert_session_revoked(&cluster, &first).await;
    // The user's other session and the stranger are untouched.
    assert_eq!(on_second.ping("2").await["type"], "pong");
    assert_eq!(strangers.ping("s2").await["type"], "pong");
    cluster.validate(&second.access_token).await.unwrap();
}
