//! Per-address throttles behind a load balancer (`TRUSTED_PROXIES`), and on the token
//! endpoints. Test clients come from different loopback addresses (127.0.0.2, …) to be
//! different clients; 127.0.0.1 plays the trusted proxy.

use tollgate_proto::auth::v1 as pb;
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn login_as(
    client: &reqwest::Client,
    app: &TestApp,
    forwarded_for: Option<&str>,
    email: &str,
) -> reqwest::StatusCode {
    let mut request = client
        .post(app.url("/v1/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.unwrap().status()
}

fn grpc_login(email: &str, forwarded_for: &str) -> tonic::Request<pb::LoginRequest> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
    });
    request
        .metadata_mut()
        .insert("forwarded", format!("for={forwarded_for}").parse().unwrap());
    request
}

async fn behind_a_trusted_proxy_each_forwarded_client_is_counted_on_its_own(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.trusted_proxies =
            tollgate_shared::client_addr::TrustedProxies::parse("127.0.0.1/32").unwrap();
        config.login_max_per_address = 3;
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();
    let (proxy, untrusted) = (reqwest::Client::new(), http_from("127.0.0.2"));

    // Through the proxy: one client uses up its budget, the next one is served.
    for _ in 0..3 {
        let status = login_as(&proxy, &app, Some("198.51.100.1"), &email).await;
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    let status = login_as(&proxy, &app, Some("198.51.100.1"), &email).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);
    let status = login_as(&proxy, &app, Some("198.51.100.2"), &email).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    // A client that prepends its own X-Forwarded-For does not get a fresh budget.
    let status = login_as(&proxy, &app, Some("203.0.113.77, 198.51.100.1"), &email).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);

    // Not through the proxy: a forged header changes nothing.
    for index in 0..3 {
        let forged = format!("203.0.113.{index}");
        let status = login_as(&untrusted, &app, Some(&forged), &email).await;
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    let status = login_as(&untrusted, &app, Some("203.0.113.99"), &email).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);

    // gRPC through the proxy, with RFC 7239 `Forwarded`: the same rules.
    for _ in 0..3 {
        app.client()
            .login(grpc_login(&email, "198.51.100.3"))
            .await
            .unwrap();
    }
    assert_refused(
        app.client().login(grpc_login(&email, "198.51.100.3")).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    app.client()
        .login(grpc_login(&email, "198.51.100.4"))
        .await
        .unwrap();
}

async fn refresh_and_client_credentials_are_throttled_per_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.token_max_per_address = 3;
    })
    .await;
    let (first, second) = (http_from("127.0.0.2"), http_from("127.0.0.3"));
    let refresh = |client: &reqwest::Client, token: &str| {
        client
            .post(app.url("/v1/refresh"))
            .json(&serde_json::json!({"refresh_token": token}))
            .send()
    };
    let mut token = app.new_user().await.refresh_token;
    for _ in 0..3 {
        let response = refresh(&first, &token).await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: serde_json::Value = response.json().await.unwrap();
        token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let response = refresh(&first, &token).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after(&response)));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // The refused request spent nothing: the token still works from another address.
    let response = refresh(&second, &token).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    // Client credentials are counted on their own.
    let oauth = || {
        first
            .post(app.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "backend"),
                ("client_secret", CLIENT_SECRET),
                ("audience", "ws-gateway"),
            ])
            .send()
    };
    for _ in 0..3 {
        assert_eq!(oauth().await.unwrap().status(), reqwest::StatusCode::OK);
    }
    let response = oauth().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after(&response)));

    // And over gRPC (from 127.0.0.1): IssueServiceToken and Refresh.
    for _ in 0..3 {
        app.service_token("backend", "ws-gateway", &[])
            .await
            .unwrap();
    }
    let status = assert_refused(
        app.service_token("backend", "ws-gateway", &[]).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    assert!(status.metadata().get("retry-after").is_some());
    let mut token = app.new_user().await.refresh_token;
    for _ in 0..3 {
        token = app.refresh(&token).await.unwrap().refresh_token;
    }
    assert_refused(
        app.refresh(&token).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
}

both_backends!(
    behind_a_trusted_proxy_each_forwarded_client_is_counted_on_its_own,
    refresh_and_client_credentials_are_throttled_per_address,
);
