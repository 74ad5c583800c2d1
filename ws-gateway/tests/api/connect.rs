//! Presenting the token: the three positions, and everything that must be refused.

use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;
use tollgate_shared::tokens::SigningKey;

use crate::{both_backends, helpers::*};

async fn each_token_position_connects(backend: Backend) {
    let services = Services::spawn(backend).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    for present in [
        Present::Header(&pair.access_token),
        Present::Subprotocol(&pair.access_token),
        Present::InBand(&pair.access_token),
    ] {
        let mut client = gateway.connect(present).await.unwrap();
        let connected = client.expect("connected").await;
        assert_eq!(connected["user_id"], pair.user_id, "{present:?}");
        assert_eq!(connected["session_id"], pair.session_id);
        assert_eq!(connected["plan"], "free");
        assert!(
            connected["connection_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(connected["expires_at"].as_i64().unwrap() > tollgate_shared::time::unix_now());
        client.send_json(json!({"type": "ping", "id": "p1"})).await;
        assert_eq!(client.expect("pong").await["id"], "p1");
        // The subprotocol is selected, and the token never comes back.
        if matches!(present, Present::Subprotocol(_)) {
            assert_eq!(client.protocol.as_deref(), Some("tollgate.v1"));
        }
        // Free allows two connections: close this one and let its lease go.
        client.send(Message::Close(None)).await;
        assert!(matches!(
            client.recv().await,
            Received::Close(_) | Received::End
        ));
    }
}

/// Tokens that must never open a connection.
fn hostile_tokens(
    services: &Services,
    pair: &tollgate_proto::auth::v1::TokenPair,
) -> Vec<(&'static str, String)> {
    let valid = &pair.access_token;
    let (header, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sub"] = json!(uuid::Uuid::new_v4());
    let tampered_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let foreign = SigningKey::generate();
    let now = tollgate_shared::time::unix_now();
    let unknown_kid = foreign.sign(&tollgate_shared::tokens::AccessClaims {
        iss: services.auth_config.issuer.clone(),
        sub: uuid::Uuid::new_v4(),
        aud: services.auth_config.audience.clone(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "j".into(),
        sid: uuid::Uuid::new_v4(),
    });
    vec![
        ("garbage", "not-a-jwt".to_owned()),
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "tampered",
            format!("{header}.{tampered_payload}.{signature}"),
        ),
        ("unknown kid", unknown_kid),
        ("20 KB", "a".repeat(20 * 1024)),
        ("expired", services.mint(pair, -120)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_in_every_position() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    for (what, token) in hostile_tokens(&services, &pair) {
        for present in [Present::Header(&token), Present::Subprotocol(&token)] {
            let refused = gateway
                .connect(present)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} in {present:?} was accepted"));
            assert_eq!(refused.status, 401, "{what}: {refused:?}");
            assert!(!refused.code().is_empty(), "{what}: a reason");
            assert!(refused.retry_after.is_none());
            // The refusal never quotes the token.
            assert!(
                !refused
                    .body
                    .to_string()
                    .contains(&token[..token.len().min(40)])
            );
        }
        let mut client = gateway.connect(Present::InBand(&token)).await.unwrap();
        assert_eq!(client.closed().await, 4002, "{what} in-band");
    }
    // Nothing of it reached auth-service's ValidateToken: local verification refused it all.
    let metrics = gateway.metrics().await;
    assert!(!metrics.contains("method=\"ValidateToken\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_query_tokens_are_refused() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let (first, second) = (services.register().await, services.register().await);
    let both = [
        ("authorization", format!("Bearer {}", first.access_token)),
        (
            "sec-websocket-protocol",
            format!("tollgate.v1, bearer.{}", second.access_token),
        ),
    ];
    let refused = gateway
        .connect(Present::Headers(&both))
        .await
        .err()
        .unwrap();
    assert_eq!((refused.status, refused.code()), (401, "ambiguous_token"));

    let path = format!("/ws?access_token={}", first.access_token);
    let refused = gateway
        .connect_to(&path, Present::Nothing)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (refused.status, refused.code()),
        (401, "query_token_refused")
    );

    // An operator may allow them.
    let mut config = services.gateway_config();
    config.allow_query_token = true;
    let permissive = Gateway::start(config).await;
    let mut client = permissive
        .connect_to(&path, Present::Nothing)
        .await
        .unwrap();
    assert_eq!(client.expect("connected").await["user_id"], first.user_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_authentication_must_come_first_and_in_time() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.auth_timeout = Duration::from_millis(500);
    let gateway = Gateway::start(config).await;

    let mut silent = gateway.connect(Present::Nothing).await.unwrap();
    assert_eq!(silent.closed().await, 4001);

    let mut impatient = gateway.connect(Present::Nothing).await.unwrap();
    impatient.send_json(json!({"type": "ping"})).await;
    assert_eq!(impatient.closed().await, 4001);

    // Authenticating twice is refused politely.
    let pair = services.register().await;
    let mut client = gateway
        .connect(Present::InBand(&pair.access_token))
        .await
        .unwrap();
    client.expect("connected").await;
    client
        .send_json(json!({"type": "auth", "id": "a2", "token": pair.access_token}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("already_authenticated"), Some("a2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gets_json_answers() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let response = reqwest::get(gateway.url("/ws")).await.unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");
    let health = reqwest::get(gateway.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = gateway.metrics().await;
    for series in [
        "tollgate_gateway_connections_active",
        "tollgate_gateway_auth_breaker_state",
        "tollgate_gateway_revocation_watch_up",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}

/// `GATEWAY_ADMIN_ADDR` moves readiness and metrics to an internal listener: the public port
/// serves clients, backends and liveness only. The internal listener outlives the drain, so
/// the kubelet sees 503 and Prometheus sees the last connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_listener_takes_readiness_and_metrics_off_the_public_port() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.admin_addr = Some(([127, 0, 0, 1], 0).into());
    let mut gateway = Gateway::start(config).await;
    assert!(gateway.admin.is_some_and(|admin| admin != gateway.addr));
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    for (path, public, internal) in [
        ("/metrics", 404, 200),
        ("/readyz", 404, 200),
        ("/healthz", 200, 200),
        ("/v1/publish", 405, 404),
    ] {
        assert_eq!(status(gateway.url(path)).await, public, "public {path}");
        assert_eq!(
            status(gateway.admin_url(path)).await,
            internal,
            "internal {path}"
        );
    }
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    assert_eq!(
        gateway.metric("tollgate_gateway_connections_active").await,
        1.0
    );

    gateway.trigger_shutdown();
    let draining = eventually(PATIENCE, || async {
        status(gateway.admin_url("/readyz")).await == 503
    })
    .await;
    assert!(draining, "the internal listener did not report the drain");
    assert_eq!(client.closed().await, 1001);
    gateway.stopped().await.unwrap();
    assert!(
        reqwest::get(gateway.admin_url("/healthz")).await.is_err(),
        "the internal listener outlived the gateway"
    );
}

both_backends!(each_token_position_connects);
