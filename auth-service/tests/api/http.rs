//! The JSON HTTP API: it mirrors the gRPC calls, answers errors in its documented shapes,
//! and refuses malformed and oversized bodies.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

async fn http_api_mirrors_grpc_and_answers_errors_in_its_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = unique_email();
    let response = app
        .http
        .post(app.url("/v1/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    app.validate(body["access_token"].as_str().unwrap())
        .await
        .unwrap();

    let response = app
        .http
        .post(app.url("/v1/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "email_taken");

    let login = app
        .http
        .post(app.url("/v1/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let pair: Value = login.json().await.unwrap();
    let refresh = app
        .http
        .post(app.url("/v1/refresh"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), StatusCode::OK);
    let refreshed: Value = refresh.json().await.unwrap();
    let logout = app
        .http
        .post(app.url("/v1/logout"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let wrong = app
        .http
        .post(app.url("/v1/login"))
        .json(&json!({"email": email, "password": "wrong horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    for (body, content_type, expected_status, expected_code) in [
        (
            "{\"email\":",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "[]",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "{\"email\":\"a@example.com\"}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "{\"email\":\"a@example.com\",\"password\":\"correct horse battery\"}",
            "text/plain",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "\u{feff}\u{0}garbage",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let response = app
            .http
            .post(app.url("/v1/register"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected_status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], expected_code, "{body}");
    }
    let invalid_utf8 = app
        .http
        .post(app.url("/v1/login"))
        .header("content-type", "application/json")
        .body(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_utf8.status(), StatusCode::BAD_REQUEST);

    // A 2 MB body is refused from its declared length, before it is read.
    let status_line = tokio::time::timeout(
        Duration::from_secs(30),
        raw_post_status(&app.http_base, "/v1/register", 2 << 20),
    )
    .await
    .expect("an answer without the body");
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
}

/// Sends only the head of a POST declaring `length` bytes and returns the response's status
/// line. (Sending the body too would race the server's early answer against a connection reset.)
async fn raw_post_status(base: &str, path: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while !response.windows(2).any(|window| window == b"\r\n") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the connection closed without an answer");
        response.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn oauth_token_endpoint_follows_rfc_6749(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", "usage-service"),
        ("scope", "usage.check"),
    ];
    let response = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("gateway", Some(CLIENT_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "usage.check");

    let in_body = [
        ("grant_type", "client_credentials"),
        ("client_id", "gateway"),
        ("client_secret", CLIENT_SECRET),
        ("audience", "auth-service"),
    ];
    let response = app
        .http
        .post(app.url("/oauth/token"))
        .form(&in_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    for (form, status, error) in [
        (
            vec![("grant_type", "password"), ("audience", "auth-service")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "gateway"),
                ("client_secret", "wrong-secret-000000"),
                ("audience", "auth-service"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "gateway"),
                ("client_secret", CLIENT_SECRET),
                ("audience", "auth-service"),
                ("scope", "auth.admin"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "gateway"),
                ("client_secret", CLIENT_SECRET),
                ("audience", "nowhere"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let response = app
            .http
            .post(app.url("/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{form:?}");
        assert!(!body.to_string().contains(CLIENT_SECRET));
    }
}

both_backends!(
    http_api_mirrors_grpc_and_answers_errors_in_its_shape,
    oauth_token_endpoint_follows_rfc_6749,
);
