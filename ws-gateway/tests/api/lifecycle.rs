//! The token's life on an open connection: expiry warnings, refresh, expiry, revocation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{both_backends, helpers::*};

/// A gateway with a one-second leeway, so expiry is quick to observe.
async fn quick_expiry() -> (std::sync::Arc<Services>, Gateway) {
    let services = Services::spawn_with(Backend::Embedded, |auth| {
        auth.jwt_leeway = Duration::from_secs(1);
    })
    .await;
    let mut config = services.gateway_config();
    config.jwt_leeway = Duration::from_secs(1);
    let gateway = Gateway::start(config).await;
    (services, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_warned_about_then_closed_with_4003() {
    let (services, gateway) = quick_expiry().await;
    let pair = services.register().await;
    let token = services.mint(&pair, 3);
    let (mut client, connected) = gateway.connected(&token).await;
    let opened = Instant::now();
    // Less than 30 s left: the warning comes at once.
    let warning = client.expect("token_expiring").await;
    let left = warning["expires_in_ms"].as_u64().unwrap();
    assert!(left <= 3_000, "{warning}");
    assert_eq!(client.closed().await, 4003);
    // Not before `exp` (whole seconds, so allow one second of rounding).
    let exp = connected["expires_at"].as_i64().unwrap();
    assert!(opened.elapsed() + Duration::from_secs(1) >= Duration::from_millis(left));
    assert!(tollgate_shared::time::unix_now() >= exp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshing_moves_the_timers() {
    let (services, gateway) = quick_expiry().await;
    let pair = services.register().await;
    let short = services.mint(&pair, 3);
    let (mut client, _) = gateway.connected(&short).await;
    client.expect("token_expiring").await;

    let fresh = services.refresh(&pair.refresh_token).await;
    assert_eq!(fresh.session_id, pair.session_id);
    client
        .send_json(json!({"type": "refresh_token", "id": "r1", "token": fresh.access_token}))
        .await;
    let refreshed = client.expect("token_refreshed").await;
    assert_eq!(refreshed["id"], "r1");
    assert!(refreshed["expires_at"].as_i64().unwrap() > tollgate_shared::time::unix_now() + 60);

    // Past the old token's expiry and leeway, the connection still answers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    client
        .send_json(json!({"type": "ping", "id": "still"}))
        .await;
    assert_eq!(client.expect("pong").await["id"], "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_session_or_user_closes_with_4005() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let (email, pair) = services.register_email().await;
    let other_session = services.login(&email).await;
    assert_ne!(other_session.session_id, pair.session_id);
    let stranger = services.register().await;
    for other in [other_session.access_token, stranger.access_token] {
        let (mut client, _) = gateway.connected(&pair.access_token).await;
        client
            .send_json(json!({"type": "refresh_token", "token": other}))
            .await;
        assert_eq!(client.closed().await, 4005);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_refresh_token_closes_with_4002() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let service_token = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;
    for invalid in ["garbage".to_owned(), service_token] {
        let (mut client, _) = gateway.connected(&pair.access_token).await;
        client
            .send_json(json!({"type": "refresh_token", "token": invalid}))
            .await;
        assert_eq!(client.closed().await, 4002);
    }
}

async fn logout_closes_the_sessions_connections_within_a_second(backend: Backend) {
    let services = Services::spawn(backend).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let (email, pair) = services.register_email().await;
    let other_session = services.login(&email).await;
    let (mut revoked, _) = gateway.connected(&pair.access_token).await;
    let (mut kept, _) = gateway.connected(&other_session.access_token).await;
    gateway.watching_revocations().await;

    let started = Instant::now();
    services.logout(&pair.refresh_token).await;
    assert_eq!(revoked.closed().await, 4004);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_500), "closed after {took:?}");

    // The revoked token opens nothing any more; the other session is untouched.
    let refused = gateway
        .connect(Present::Header(&pair.access_token))
        .await
        .err()
        .unwrap();
    assert_eq!((refused.status, refused.code()), (401, "session_revoked"));
    kept.send_json(json!({"type": "ping"})).await;
    kept.expect("pong").await;
}

both_backends!(logout_closes_the_sessions_connections_within_a_second);

/// Two kinds of news say a session is revoked: auth-service refusing one of its tokens in
/// `ValidateToken`, and the revocation event. Whichever reaches the gateway first, the
/// session's open connections close with 4004. Here the refusal comes first: the session is
/// revoked in auth-service's store without an event, a new token of it is refused at the
/// gateway, and only then does the event arrive (on Redis, as from another auth-service
/// replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_the_connections_even_when_validate_token_said_so_first() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut open, _) = gateway.connected(&pair.access_token).await;
    let (user_id, session_id) = (
        pair.user_id.parse().unwrap(),
        pair.session_id.parse().unwrap(),
    );

    let revoked_at_ms = tollgate_shared::time::unix_now_ms();
    assert!(
        services
            .auth
            .store()
            .revoke_session(session_id, revoked_at_ms, "logout")
            .await
            .unwrap()
    );
    // auth-service trusts a live session for a few seconds; wait until it answers "revoked".
    let validator = services
        .service_token("ws-gateway", "auth-service", &["auth.validate"])
        .await;
    let refused = eventually(PATIENCE, || async {
        services
            .validate(&validator, &pair.access_token)
            .await
            .is_err_and(|status| status.code() == tonic::Code::Unauthenticated)
    })
    .await;
    assert!(refused, "auth-service never saw the revocation");
    // Another token of the session (not cached at the gateway) is refused by auth-service.
    let another = services.mint(&pair, 600);
    let refusal = gateway
        .connect(Present::Header(&another))
        .await
        .expect_err("a token of a revoked session");
    assert_eq!((refusal.status, refusal.code()), (401, "session_revoked"));

    // Then the event arrives.
    let bus = tollgate_shared::engine::Engine::redis(&redis_url(), &services.redis_prefix)
        .await
        .unwrap();
    let event = tollgate_shared::events::Revocation {
        session_id,
        user_id,
        revoked_at_ms,
        reason: "logout".into(),
    };
    bus.publish(
        tollgate_shared::events::REVOCATIONS_CHANNEL,
        serde_json::to_string(&event).unwrap(),
    )
    .await;
    let published = Instant::now();
    assert_eq!(open.closed().await, 4004);
    assert!(published.elapsed() < Duration::from_millis(1_500));
}
