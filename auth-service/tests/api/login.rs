use std::time::{Duration, Instant};

use tonic::Code;

use crate::{both_backends, helpers::*};

async fn login_opens_a_new_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = unique_email();
    let first = app.register(&email, PASSWORD).await.unwrap();
    let second = app.login(&email, PASSWORD).await.unwrap();
    assert_eq!(first.user_id, second.user_id);
    assert_ne!(first.session_id, second.session_id);
    app.validate(&second.access_token).await.unwrap();
}

async fn unknown_email_and_wrong_password_are_indistinguishable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();

    let started = Instant::now();
    let wrong = assert_refused(
        app.login(&email, "wrong horse battery").await,
        Code::Unauthenticated,
        "invalid_credentials",
    );
    let wrong_took = started.elapsed();
    let started = Instant::now();
    let unknown = assert_refused(
        app.login(&unique_email(), PASSWORD).await,
        Code::Unauthenticated,
        "invalid_credentials",
    );
    let unknown_took = started.elapsed();

    assert_eq!(wrong.message(), unknown.message());
    // Both paths run one argon2id verification; an unknown email must not answer in a
    // fraction of the time (which would reveal that it does not exist).
    assert!(
        unknown_took * 4 > wrong_took,
        "unknown email answered in {unknown_took:?}, wrong password in {wrong_took:?}"
    );
}

async fn repeated_failures_throttle_the_account(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.login_max_failures = 3;
        config.login_failure_delay = Duration::from_secs(600);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();
    for _ in 0..3 {
        assert_refused(
            app.login(&email, "wrong horse battery").await,
            Code::Unauthenticated,
            "invalid_credentials",
        );
    }
    // From this address, even the right password is refused now, with a retry-after.
    let status = assert_refused(
        app.login(&email, PASSWORD).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry_after));
    // Unknown accounts are throttled the same way, so throttling reveals nothing either.
    let stranger = unique_email();
    for _ in 0..3 {
        assert_refused(
            app.login(&stranger, PASSWORD).await,
            Code::Unauthenticated,
            "invalid_credentials",
        );
    }
    assert_refused(
        app.login(&stranger, PASSWORD).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    // Other accounts are unaffected.
    let other = app.new_user().await;
    assert!(!other.access_token.is_empty());
}

async fn login_over_http(
    client: &reqwest::Client,
    app: &TestApp,
    email: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(app.url("/v1/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn a_stranger_failing_on_purpose_never_locks_the_owner_out(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.login_max_failures = 3;
        config.login_failure_delay = Duration::from_secs(600);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();
    let (attacker, owner) = (http_from("127.0.0.2"), http_from("127.0.0.3"));
    for _ in 0..3 {
        let response = login_over_http(&attacker, &app, &email, "wrong horse battery").await;
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    // The attacker's address now waits, whatever it sends, and keeps waiting.
    for password in ["wrong horse battery", PASSWORD, "another wrong guess"] {
        let response = login_over_http(&attacker, &app, &email, password).await;
        assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
        assert!((590..=600).contains(&retry_after(&response)));
    }
    // The owner, from elsewhere, is not affected at all, mistakes included.
    for _ in 0..2 {
        let response = login_over_http(&owner, &app, &email, "a typo in the password").await;
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    let response = login_over_http(&owner, &app, &email, PASSWORD).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // And a success clears the owner's own count: three more typos are allowed again.
    for _ in 0..3 {
        let response = login_over_http(&owner, &app, &email, "a typo in the password").await;
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
}

async fn each_further_failure_doubles_the_wait(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.login_max_failures = 2;
        config.login_failure_delay = Duration::from_secs(1);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();
    let client = http_from("127.0.0.2");
    for _ in 0..2 {
        let response = login_over_http(&client, &app, &email, "wrong horse battery").await;
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    let response = login_over_http(&client, &app, &email, "wrong horse battery").await;
    assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 1);
    // Once the wait is over, the next failure is counted and the wait doubles.
    let counted = eventually(Duration::from_secs(10), || async {
        login_over_http(&client, &app, &email, "wrong horse battery")
            .await
            .status()
            == reqwest::StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(counted, "the first wait never ended");
    let response = login_over_http(&client, &app, &email, PASSWORD).await;
    assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 2);
}

async fn one_address_is_throttled_across_accounts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.login_max_per_address = 5;
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await.unwrap();
    for _ in 0..4 {
        app.login(&email, PASSWORD).await.unwrap();
    }
    assert_refused(
        app.login(&email, PASSWORD).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    assert_refused(
        app.register(&unique_email(), PASSWORD).await,
        Code::ResourceExhausted,
        "too_many_attempts",
    );
    // Over HTTP the same limit answers 429 with Retry-After.
    let response = app
        .http
        .post(app.url("/v1/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");
}

both_backends!(
    login_opens_a_new_session,
    unknown_email_and_wrong_password_are_indistinguishable,
    repeated_failures_throttle_the_account,
    a_stranger_failing_on_purpose_never_locks_the_owner_out,
    each_further_failure_doubles_the_wait,
    one_address_is_throttled_across_accounts,
);
