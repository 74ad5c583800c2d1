//! With `AUTH_JWKS_URL` set, only calls carrying a service token for this agent with scope
//! `agent.run` start a run.

use std::time::Duration;

use demo_agent::Config;
use tollgate_proto::agent::v1::{agent_backend_server::SERVICE_NAME, agent_message::Kind};
use tollgate_shared::{
    testing::{eventually, reason},
    tokens::SigningKey,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Call, Jwks, TestApp, deltas_and_output, service_token, start};

async fn checked_app(jwks: &Jwks) -> TestApp {
    let mut config = Config::for_tests();
    config.name = "demo".into();
    config.jwks_url = Some(jwks.url.clone());
    TestApp::spawn(config).await
}

#[tokio::test]
async fn a_valid_service_token_starts_a_run() {
    let jwks = Jwks::serve().await;
    let app = checked_app(&jwks).await;
    let mut client = app.client().await;
    let token = jwks.token("demo", "usage.check agent.run");
    let mut call = Call::open(&mut client, Some(&token), start("2+2", &["calculator"]))
        .await
        .expect("a valid token is accepted");
    let transcript = call.play(&[]).await;
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(output, "Tool results:\n- calculator: 2+2 = 4");
    assert!(matches!(transcript.first(), Some(Kind::Thinking(_))));
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() {
    let jwks = Jwks::serve().await;
    let app = checked_app(&jwks).await;
    let mut client = app.client().await;
    let foreign = SigningKey::generate();
    let cases = [
        (None, Code::Unauthenticated, "token_missing"),
        (
            Some("not-a-jwt".to_owned()),
            Code::Unauthenticated,
            "token_malformed",
        ),
        (
            Some(jwks.token("research", "agent.run")),
            Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            Some(jwks.token("usage-service", "agent.run")),
            Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            Some(service_token(&foreign, "demo", "agent.run")),
            Code::Unauthenticated,
            "unknown_key",
        ),
        (
            Some(jwks.token("demo", "usage.check publish")),
            Code::PermissionDenied,
            "insufficient_scope",
        ),
    ];
    for (token, code, expected_reason) in cases {
        let refused = Call::open(&mut client, token.as_deref(), start("2+2", &[])).await;
        let Err(status) = refused else {
            panic!("{expected_reason}: the call was accepted");
        };
        assert_eq!(status.code(), code, "{expected_reason}: {status:?}");
        assert_eq!(reason(&status), expected_reason);
        if let Some(token) = &token {
            assert!(
                !status.message().contains(token.as_str()),
                "no token in errors"
            );
        }
    }
}

#[tokio::test]
async fn an_unreachable_jwks_makes_calls_unavailable_not_accepted() {
    let jwks = Jwks::serve().await;
    let token = jwks.token("demo", "agent.run");
    let mut config = Config::for_tests();
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    config.jwks_url = Some(
        format!("http://127.0.0.1:{port}/.well-known/jwks.json")
            .parse()
            .unwrap(),
    );
    let app = TestApp::spawn(config).await;
    let mut client = app.client().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(15),
        Call::open(&mut client, Some(&token), start("hi", &[])),
    )
    .await
    .expect("answered within the fetch timeout");
    let Err(status) = refused else {
        panic!("a token that cannot be checked was accepted");
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        health(&app).await,
        ServingStatus::NotServing,
        "not serving while callers cannot be checked"
    );
}

#[tokio::test]
async fn health_turns_serving_once_the_keys_are_loaded() {
    let jwks = Jwks::serve().await;
    let app = checked_app(&jwks).await;
    let serving = eventually(Duration::from_secs(5), || async {
        health(&app).await == ServingStatus::Serving
    })
    .await;
    assert!(serving);
}

async fn health(app: &TestApp) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("a URL")
        .connect()
        .await
        .expect("the agent accepts connections");
    let request = HealthCheckRequest {
        service: SERVICE_NAME.into(),
    };
    let status = HealthClient::new(channel)
        .check(request)
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known status")
}
