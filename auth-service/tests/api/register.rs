use tonic::Code;

use crate::{both_backends, helpers::*};

async fn registration_issues_a_pair_that_validates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pair = app
        .register("  Alice@Example.COM ", PASSWORD)
        .await
        .unwrap();
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 900);
    let claims = app.validate(&pair.access_token).await.unwrap();
    assert_eq!(claims.user_id, pair.user_id);
    assert_eq!(claims.session_id, pair.session_id);
    // The normalised address logs in.
    app.login("alice@example.com", PASSWORD).await.unwrap();
}

async fn a_taken_email_is_refused_whatever_its_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("bob@example.com", PASSWORD).await.unwrap();
    let status = assert_refused(
        app.register("BOB@example.com", PASSWORD).await,
        Code::AlreadyExists,
        "email_taken",
    );
    assert!(!status.message().contains(PASSWORD));
}

async fn weak_and_malformed_registrations_are_invalid_arguments(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long_password = "x".repeat(1025);
    for (email, password) in [
        ("", PASSWORD),
        ("not-an-email", PASSWORD),
        ("x'; DROP TABLE users;--@example.com", PASSWORD),
        ("\u{0430}dmin@example.com", PASSWORD),
        ("admin@exa\u{202e}mple.com", PASSWORD),
        ("ok@example.com", ""),
        ("ok@example.com", "short"),
        ("ok@example.com", "password123"),
        ("ok@example.com", long_password.as_str()),
    ] {
        let status = assert_refused(
            app.register(email, password).await,
            Code::InvalidArgument,
            "invalid_request",
        );
        if password.len() > 3 {
            assert!(
                !status.message().contains(password),
                "the message echoes the password"
            );
        }
    }
    // SQL metacharacters that are legal in an address are stored verbatim, not interpreted.
    let pair = app.register("o'brien+%_\\@example.com", PASSWORD).await;
    assert!(
        pair.is_err(),
        "a backslash is not a legal address character"
    );
    app.register("o'brien+%_@example.com", PASSWORD)
        .await
        .unwrap();
    app.login("o'brien+%_@example.com", PASSWORD).await.unwrap();
    assert_refused(
        app.login("o'brien+__@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "invalid_credentials",
    );
}

both_backends!(
    registration_issues_a_pair_that_validates,
    a_taken_email_is_refused_whatever_its_case,
    weak_and_malformed_registrations_are_invalid_arguments,
);
