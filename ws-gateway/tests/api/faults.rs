//! auth-service and usage-service cut off through a fault proxy: the documented fallbacks hold
//! and the gateway recovers by itself.

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use serde_json::json;
use ws_gateway::config::AuthMode;

use crate::helpers::*;

const BREAKER: &str = "tollgate_gateway_auth_breaker_state";

async fn behind_proxy(mode: AuthMode) -> (std::sync::Arc<Services>, FaultProxy, Gateway) {
    let services = Services::spawn(Backend::Embedded).await;
    let proxy = FaultProxy::start(services.auth_grpc).await.unwrap();
    let mut config = services.gateway_config();
    config.auth_service_url = format!("http://{}", proxy.address());
    config.auth_mode = mode;
    config.breaker_failures = 2;
    config.breaker_cool_down = Duration::from_millis(200);
    config.validation_cache_ttl = Duration::ZERO;
    let gateway = Gateway::start(config).await;
    (services, proxy, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_down_in_degraded_mode_accepts_verified_tokens_and_recovers() {
    let (services, proxy, gateway) = behind_proxy(AuthMode::Degraded).await;
    let pair = services.register().await;
    let (mut open, _) = gateway.connected(&pair.access_token).await;
    // A session revoked before the outage is on the gateway's revocation list.
    gateway.watching_revocations().await;
    let revoked = services.register().await;
    services.logout(&revoked.refresh_token).await;
    assert!(
        eventually(PATIENCE, || async {
            gateway
                .metric("tollgate_gateway_revocations_total{source=\"watch\"}")
                .await
                >= 1.0
        })
        .await
    );

    proxy.cut();
    // New tokens still verify against the cached JWKS; failures open the breaker.
    for _ in 0..3 {
        let user = services.register().await;
        let (mut client, connected) = gateway.connected(&user.access_token).await;
        assert_eq!(connected["user_id"], user.user_id);
        client.send(Message::Close(None)).await;
    }
    assert_eq!(gateway.metric(BREAKER).await, 1.0, "the breaker is open");
    assert!(
        gateway
            .metric(
                "tollgate_gateway_auth_outcomes_total{outcome=\"accepted\",reason=\"degraded\"}"
            )
            .await
            >= 1.0
    );
    let refused = gateway
        .connect(Present::Header(&revoked.access_token))
        .await
        .expect_err("a revoked session stays refused");
    assert_eq!((refused.status, refused.code()), (401, "session_revoked"));
    // Open connections are unaffected.
    open.send_json(json!({"type": "ping", "id": 1})).await;
    open.expect("pong").await;

    proxy.restore();
    let reclosed = eventually(PATIENCE, || async {
        let user = services.register().await;
        if let Ok(mut client) = gateway.connect(Present::Header(&user.access_token)).await {
            client.send(Message::Close(None)).await;
        }
        gateway.metric(BREAKER).await == 0.0
    })
    .await;
    assert!(reclosed, "the breaker never closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_down_in_strict_mode_refuses_new_connections_with_503() {
    let (services, proxy, gateway) = behind_proxy(AuthMode::Strict).await;
    let pair = services.register().await;
    let (mut open, _) = gateway.connected(&pair.access_token).await;
    proxy.cut();
    let user = services.register().await;
    let refused = gateway
        .connect(Present::Header(&user.access_token))
        .await
        .expect_err("strict mode refuses while auth-service is unreachable");
    assert_eq!((refused.status, refused.code()), (503, "auth_unavailable"));
    assert!(refused.retry_after.is_some());
    let mut in_band = gateway
        .connect(Present::InBand(&user.access_token))
        .await
        .unwrap();
    assert_eq!(in_band.closed().await, 1013);
    open.send_json(json!({"type": "ping"})).await;
    open.expect("pong").await;

    proxy.restore();
    let recovered = eventually(PATIENCE, || async {
        match gateway.connect(Present::Header(&user.access_token)).await {
            Ok(mut client) => {
                client.expect("connected").await;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(recovered, "connections never recovered");
}

/// A client that gives up on its upgrade while `ValidateToken` is in flight tells nothing about
/// auth-service. However many do, the breaker stays closed, and in strict mode the next
/// client is still validated instead of being refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upgrades_never_open_the_breaker() {
    let services = Services::spawn(Backend::Embedded).await;
    let proxy = FaultProxy::start(services.auth_grpc).await.unwrap();
    let mut config = services.gateway_config();
    config.auth_service_url = format!("http://{}", proxy.address());
    config.auth_mode = AuthMode::Strict;
    config.breaker_failures = 2;
    config.breaker_cool_down = Duration::from_secs(600);
    config.validation_cache_ttl = Duration::ZERO;
    config.upstream_timeout = Duration::from_secs(10);
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let admitted =
        "tollgate_gateway_rate_limit_decisions_total{kind=\"connect\",outcome=\"allowed\"}";

    // auth-service answers, but slowly: each call is in flight long enough to give up on.
    proxy.delay(Duration::from_millis(400));
    for n in 1..=10 {
        let mut upgrade = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {}\r\n\r\n",
            gateway.addr, pair.access_token
        );
        upgrade.write_all(request.as_bytes()).await.unwrap();
        // Past the address check, the token is being validated: give up.
        assert!(
            eventually(PATIENCE, || async {
                gateway.metric(admitted).await >= f64::from(n)
            })
            .await
        );
        drop(upgrade);
    }
    // Every abandoned request is over (each held a connection slot while it ran).
    assert!(
        eventually(PATIENCE, || async {
            gateway.metric("tollgate_gateway_connections_active").await == 0.0
        })
        .await
    );
    assert_eq!(
        gateway.metric(BREAKER).await,
        0.0,
        "abandoned requests opened the breaker"
    );

    proxy.restore();
    let (_client, connected) = gateway.connected(&pair.access_token).await;
    assert_eq!(connected["user_id"], pair.user_id);
    assert_eq!(gateway.metric(BREAKER).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_down_answers_dependency_unavailable_and_recovers() {
    let services = Services::spawn(Backend::Embedded).await;
    let proxy = FaultProxy::start(services.usage_grpc).await.unwrap();
    let mut config = services.gateway_config();
    config.usage_service_url = format!("http://{}", proxy.address());
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;

    proxy.cut();
    // Keepalive never depends on billing: a client that pings is told its connection is alive.
    for n in 0..3 {
        client.send_json(json!({"type": "ping", "id": n})).await;
        assert_eq!(client.expect("pong").await["id"], n);
    }
    // Real messages cannot be counted, so they are refused.
    let error = client.metered("m").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("dependency_unavailable"), Some("m"))
    );
    client
        .send_json(
            json!({"type": "run_agent", "agent": "demo", "input": "1+1", "tools": ["calculator"]}),
        )
        .await;
    assert_eq!(
        client.expect("error").await["code"],
        "dependency_unavailable"
    );
    // A new connection is still admitted (under the emergency limit), plan unknown.
    let other = services.register().await;
    let (_second, connected) = gateway.connected(&other.access_token).await;
    assert_eq!(connected["plan"], "unknown");

    proxy.restore();
    let recovered = client
        .metered_until_counted(|reply| {
            assert!(
                reply["code"] == "dependency_unavailable" || reply["code"] == "unknown_run",
                "unexpected {reply}"
            );
        })
        .await;
    assert!(recovered, "metering never recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_down_with_fail_open_allows_under_the_emergency_limit() {
    let services = Services::spawn(Backend::Embedded).await;
    let proxy = FaultProxy::start(services.usage_grpc).await.unwrap();
    let mut config = services.gateway_config();
    config.usage_service_url = format!("http://{}", proxy.address());
    config.usage_fail_open = true;
    config.emergency_limit = 3;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    proxy.cut();
    for n in 0..3 {
        let reply = client.metered(&format!("m{n}")).await;
        assert_eq!(reply["code"], "unknown_run", "{reply}");
    }
    assert_eq!(client.metered("m3").await["type"], "rate_limited");
    // Pings are not metered, so the emergency limit does not apply to them.
    client
        .send_json(json!({"type": "ping", "id": "alive"}))
        .await;
    assert_eq!(client.expect("pong").await["id"], "alive");
}
