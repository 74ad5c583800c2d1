//! Each refusal's answer on each channel, as CONTRACT §5 documents it.

use super::*;

#[test]
fn close_codes_match_the_contract() {
    let table = [
        (CloseCode::Normal, 1000),
        (CloseCode::GoingAway, 1001),
        (CloseCode::ProtocolError, 1002),
        (CloseCode::Unsupported, 1003),
        (CloseCode::PolicyViolation, 1008),
        (CloseCode::TooBig, 1009),
        (CloseCode::Internal, 1011),
        (CloseCode::TryAgainLater, 1013),
        (CloseCode::AuthTimeout, 4001),
        (CloseCode::InvalidToken, 4002),
        (CloseCode::TokenExpired, 4003),
        (CloseCode::SessionRevoked, 4004),
        (CloseCode::SessionMismatch, 4005),
        (CloseCode::RateLimited, 4008),
        (CloseCode::TooManyConnections, 4009),
        (CloseCode::SlowConsumer, 4010),
    ];
    for (close, code) in table {
        assert_eq!(close.code(), code);
        assert_eq!(close.label(), code.to_string());
        assert!(close.reason().len() <= 123);
    }
}

/// One row per failure: the upgrade request's HTTP answer, the close code of an in-band
/// `auth`, and the answer to a `refresh_token`.
#[test]
fn each_auth_failure_has_one_answer_per_channel() {
    let unavailable = Rejection::Reply(ErrorReply {
        code: ErrorCode::DependencyUnavailable,
        message: "authentication is unavailable, try again later".into(),
        upgrade_to: None,
    });
    let table = [
        (
            AuthFailure::Invalid(TokenError::Expired),
            (StatusCode::UNAUTHORIZED, "token_expired"),
            4002,
            Rejection::Close(CloseCode::InvalidToken),
        ),
        (
            AuthFailure::Invalid(TokenError::Revoked),
            (StatusCode::UNAUTHORIZED, "session_revoked"),
            4002,
            Rejection::Close(CloseCode::InvalidToken),
        ),
        (
            AuthFailure::Invalid(TokenError::Malformed),
            (StatusCode::UNAUTHORIZED, TokenError::Malformed.reason()),
            4002,
            Rejection::Close(CloseCode::InvalidToken),
        ),
        (
            AuthFailure::Unavailable,
            (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
            1013,
            unavailable,
        ),
    ];
    for (failure, (status, code), close, in_band) in table {
        let http = GatewayError::from(failure);
        assert_eq!((http.status(), http.code()), (status, code), "{failure:?}");
        assert_eq!(failure.close_code().code(), close, "{failure:?}");
        assert_eq!(failure.on_refresh(), in_band, "{failure:?}");
    }
}

#[test]
fn each_refusal_has_one_answer_per_channel() {
    let table = [
        (
            Refusal::TooManyConnections,
            StatusCode::TOO_MANY_REQUESTS,
            "5",
            4009,
        ),
        (
            Refusal::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "1",
            1013,
        ),
    ];
    for (refusal, status, retry_after, close) in table {
        let response = GatewayError::from(refusal).into_response();
        assert_eq!(response.status(), status, "{refusal:?}");
        assert_eq!(response.headers()[header::RETRY_AFTER], retry_after);
        assert_eq!(refusal.close_code().code(), close, "{refusal:?}");
    }
}

#[test]
fn error_replies_keep_their_codes() {
    let table = [
        (ErrorReply::bad_request("x"), "bad_request"),
        (ErrorReply::already_authenticated(), "already_authenticated"),
        (ErrorReply::usage_unavailable(), "dependency_unavailable"),
        (ErrorReply::auth_unavailable(), "dependency_unavailable"),
        (ErrorReply::run_quota_exceeded(None), "quota_exceeded"),
        (ErrorReply::too_many_runs(), "too_many_runs"),
        (ErrorReply::unknown_agent("a"), "unknown_agent"),
        (ErrorReply::duplicate_run(), "duplicate_run"),
        (ErrorReply::unknown_run(), "unknown_run"),
        (ErrorReply::bad_run_output(), "run_failed"),
    ];
    for (reply, code) in table {
        assert_eq!(reply.code.as_str(), code);
        assert!(!reply.message.is_empty(), "{code} has a message");
    }
    let quota = ErrorReply::run_quota_exceeded(Some("pro".into()));
    assert_eq!(quota.upgrade_to.as_deref(), Some("pro"));
    let agent = ErrorReply::unknown_agent("de\u{7}mo\n");
    assert_eq!(agent.message, "no agent is named `demo`");
}

#[test]
fn throttling_and_unavailability_carry_retry_after() {
    let response = GatewayError::ConnectRateLimited {
        retry_after: Duration::from_millis(1500),
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    let response = GatewayError::AuthUnavailable.into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let response = GatewayError::InvalidToken(TokenError::Malformed).into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!response.headers().contains_key(header::RETRY_AFTER));
}
