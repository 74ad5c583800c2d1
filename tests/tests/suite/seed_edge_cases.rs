//! Seed batch 5, error handling and edge cases against the real processes: concurrent and
//! rapid connection attempts, clients vanishing halfway, a full node and a one-connection
//! database pool, a consumer too slow to keep up, a slow or partitioned auth-service, and
//! services started while a dependency is unreachable.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tollgate_integration::*;
use tollgate_shared::{
    fault_proxy::FaultProxy,
    testing::{Backend, TestDatabase, redis_prefix, redis_url},
};

const ACTIVE: &str = "tollgate_gateway_connections_active";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connection_attempts_never_exceed_the_plan() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    cluster.change_plan(&user.user_id, "pro").await;
    let attempts = join_all((0..25).map(|_| async {
        let mut client = WsClient::connect(gateway, Present::Header(&user.access_token)).await?;
        client.expect("connected").await;
        Ok::<_, Refused>(client)
    }))
    .await;
    let (connected, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(Result::is_ok);
    assert_eq!(connected.len(), 10, "the pro plan holds ten connections");
    for refusal in refused {
        let refusal = refusal.unwrap_err();
        assert_eq!(
            (refusal.status, refusal.code()),
            (429, "too_many_connections")
        );
    }
    // Many users authenticating at once are all admitted.
    let users = cluster.register_many(20).await;
    let clients = join_all(
        users
            .iter()
            .map(|u| WsClient::connected(gateway, &u.access_token)),
    )
    .await;
    for ((_, connected), user) in clients.iter().zip(&users) {
        assert_eq!(connected["user_id"], user.user_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_handshake_leave_no_connection_or_lease_behind() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    // Half an HTTP upgrade, then gone.
    let mut half = tokio::net::TcpStream::connect(gateway.http_addr())
        .await
        .unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    drop(half);
    // Upgraded but gone before authenticating.
    WsClient::connect(gateway, Present::Nothing)
        .await
        .unwrap()
        .abandon();
    // Gone right after sending the token in band, and right after being admitted: each
    // time the gateway has (or is about to take) a lease that it must give back.
    // The gateway learns of each disappearance only when it next reads the socket, so each
    // round waits for the connections to be gone (a connection leaves the count only after its
    // lease was given back) before taking the free plan's slots again.
    for _ in 0..4 {
        WsClient::connect(gateway, Present::InBand(&user.access_token))
            .await
            .unwrap()
            .abandon();
        let (admitted, _) = WsClient::connected(gateway, &user.access_token).await;
        admitted.abandon();
        let drained = eventually(PATIENCE, || async { gateway.metric(ACTIVE).await == 0.0 }).await;
        assert!(drained, "connections of vanished clients are still open");
    }
    // Had a lease leaked, the free plan's two slots would still be taken (for a minute).
    let (_first, _) = WsClient::connected(gateway, &user.access_token).await;
    let (mut second, _) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(second.ping("still-here").await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_attempts_from_one_address_are_throttled_while_other_addresses_are_served() {
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_CONNECT_RATE", "10")
        .start()
        .await;
    let gateway = cluster.gateway();
    let local = "127.0.0.1".parse().unwrap();
    let (mut admitted, mut limited) = (0, Vec::new());
    for _ in 0..15 {
        match WsClient::attempt(gateway.http_addr(), Some(local), Present::Nothing).await {
            Ok(client) => {
                admitted += 1;
                client.close().await;
            }
            Err(NotConnected::Refused(refused)) => limited.push(refused),
            Err(NotConnected::Transport(err)) => panic!("{err}"),
        }
    }
    assert_eq!(admitted, 10, "the per-address budget is ten a minute");
    for refused in &limited {
        assert_eq!((refused.status, refused.code()), (429, "rate_limited"));
        assert!(refused.retry_after.is_some());
    }
    // Another address is not held back by the first one's flood.
    let user = cluster.register().await;
    let other = "127.0.0.2".parse().unwrap();
    let mut client = WsClient::attempt(
        gateway.http_addr(),
        Some(other),
        Present::Header(&user.access_token),
    )
    .await
    .unwrap();
    assert_eq!(client.expect("connected").await["user_id"], user.user_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_answers_503_and_one_connection_database_pools_queue_instead_of_failing() {
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_MAX_CONNECTIONS", "3")
        .auth_env("AUTH_DATABASE_MAX_CONNECTIONS", "1")
        .usage_env("USAGE_DATABASE_MAX_CONNECTIONS", "1")
        .start()
        .await;
    // Twenty registrations at once through one database connection: all succeed.
    let users = cluster.register_many(20).await;
    let consumed = join_all(
        users
            .iter()
            .map(|u| cluster.consume(&u.user_id, "agent_runs", 1, "k")),
    )
    .await;
    assert!(
        consumed
            .iter()
            .all(|answer| answer.as_ref().is_ok_and(|a| a.allowed)),
        "{consumed:?}"
    );

    let gateway = cluster.gateway();
    let mut open = Vec::new();
    for user in &users[..3] {
        open.push(WsClient::connected(gateway, &user.access_token).await.0);
    }
    let refused = WsClient::connect(gateway, Present::Header(&users[3].access_token))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (503, "overloaded"));
    assert!(refused.retry_after.is_some());
    // A slot freed is a slot for the next client.
    open.pop().unwrap().close().await;
    let (token, gateway) = (users[3].access_token.as_str(), cluster.gateway());
    let admitted = eventually_some(PATIENCE, || async move {
        WsClient::connect(gateway, Present::Header(token))
            .await
            .ok()
    })
    .await;
    assert!(admitted.is_some(), "the freed slot was never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_while_its_user_s_other_connection_keeps_up() {
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_SEND_QUEUE", "8")
        .start()
        .await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    let (mut slow, _) = WsClient::connected(gateway, &user.access_token).await;
    let (mut healthy, _) = WsClient::connected(gateway, &user.access_token).await;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(Received::Json(frame)) = healthy.recv_within(PATIENCE).await {
                assert_eq!(frame["type"], "event");
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // 16 KiB events until the gateway gives up on the client that reads nothing.
    let token = cluster.publish_token().await;
    let event = json!({"user_id": user.user_id, "data": {"blob": "x".repeat(16 * 1024)}});
    let mut published = 0;
    while gateway
        .metric("tollgate_gateway_connections_closed_total{code=\"4010\"}")
        .await
        < 1.0
    {
        assert!(published < 5_000, "no 4010 after {published} events");
        for _ in 0..20 {
            assert_eq!(publish(gateway, Some(&token), &event).await.0, 202);
            published += 1;
        }
    }
    assert_eq!(slow.closed().await, 4010);
    // The other connection got every event, the slow one notwithstanding.
    let all = eventually(PATIENCE, || async {
        received.load(std::sync::atomic::Ordering::Relaxed) == published
    })
    .await;
    assert!(
        all,
        "{} of {published} events",
        received.load(std::sync::atomic::Ordering::Relaxed)
    );
    reader.abort();

    // Frames the gateway will not hold are refused with their close codes.
    for (frame, code) in [
        (
            tokio_tungstenite::tungstenite::Message::text("x".repeat(70 * 1024)),
            1009,
        ),
        (
            tokio_tungstenite::tungstenite::Message::binary(vec![0u8; 8]),
            1003,
        ),
    ] {
        let (mut client, _) = WsClient::connected(gateway, &user.access_token).await;
        client.send(frame).await;
        assert_eq!(client.closed().await, code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_partitioned_auth_service_times_out_into_degraded_mode_and_recovers() {
    let cluster = Cluster::builder()
        .auth_behind_proxy()
        .gateway_env("GATEWAY_UPSTREAM_TIMEOUT", "1s")
        .gateway_env("GATEWAY_VALIDATION_CACHE_TTL", "0s")
        .gateway_env("GATEWAY_BREAKER_FAILURES", "2")
        .gateway_env("GATEWAY_BREAKER_COOL_DOWN", "500ms")
        .start()
        .await;
    let gateway = cluster.gateway();
    let (user, leaver) = (cluster.register().await, cluster.register().await);
    let (mut leavers, _) = WsClient::connected(gateway, &leaver.access_token).await;
    let degraded = "tollgate_gateway_auth_outcomes_total{outcome=\"accepted\",reason=\"degraded\"}";

    for fault in ["slow", "black hole"] {
        match fault {
            "slow" => cluster.auth_proxy().delay(Duration::from_secs(3)),
            _ => cluster.auth_proxy().blackhole(),
        }
        // ValidateToken times out; the gateway falls back on its own verification.
        for _ in 0..3 {
            let (client, connected) = WsClient::connected(gateway, &user.access_token).await;
            assert_eq!(connected["user_id"], user.user_id, "{fault}");
            client.close().await;
        }
        assert!(gateway.metric(degraded).await >= 3.0, "{fault}");
        assert_eq!(
            gateway.metric(BREAKER).await,
            1.0,
            "{fault}: the breaker stayed closed"
        );
        cluster.auth_proxy().restore();
        let recovered = eventually(PATIENCE, || async {
            if let Ok(client) =
                WsClient::connect(gateway, Present::Header(&user.access_token)).await
            {
                client.close().await;
            }
            gateway.metric(BREAKER).await == 0.0
        })
        .await;
        assert!(recovered, "{fault}: the breaker never closed");
    }
    // Revocations kept flowing over Redis while the gateway's own stream was partitioned.
    cluster.auth_proxy().blackhole();
    cluster.logout(&leaver).await;
    assert_eq!(leavers.closed().await, 4004);
    let refused = WsClient::connect(gateway, Present::Header(&leaver.access_token))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "session_revoked"));
    cluster.auth_proxy().restore();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_fail_fast_with_one_line_when_a_dependency_is_unreachable_then_start() {
    let database = TestDatabase::create(Backend::PostgresRedis).await;
    let (postgres, database_url) = FaultProxy::in_front_of(&database.url).await.unwrap();
    let (redis, proxied_redis) = FaultProxy::in_front_of(&redis_url()).await.unwrap();
    let secret = "a-long-enough-client-secret-0123";
    let auth_env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", proxied_redis.as_str()),
        ("REDIS_PREFIX", &redis_prefix()),
        ("AUTH_GRPC_ADDR", "127.0.0.1:0"),
        ("AUTH_HTTP_ADDR", "127.0.0.1:0"),
        (
            "AUTH_SERVICE_CLIENTS",
            &format!("ws-gateway:{secret}:auth.validate+usage.check"),
        ),
        (
            "AUTH_KEY_ENCRYPTION_KEYS",
            "ZmFpbC1mYXN0IHRlc3Qga2V5LWVuY3J5cHRpb24ga2V5ISE=",
        ),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();

    postgres.cut();
    redis.cut();
    let (status, stderr) = Service::run_to_exit(Binary::Auth, auth_env.clone()).await;
    assert_one_line_naming(status, &stderr, "DATABASE_URL");
    assert!(
        !stderr.contains(&database_url),
        "the URL was printed: {stderr}"
    );
    postgres.restore();
    let (status, stderr) = Service::run_to_exit(Binary::Auth, auth_env.clone()).await;
    assert_one_line_naming(status, &stderr, "REDIS_URL");
    redis.restore();
    let auth = Service::start(Binary::Auth, auth_env).await;
    auth.ready().await;

    let gateway_env: Vec<(String, String)> = [
        ("REDIS_URL", proxied_redis.as_str()),
        ("GATEWAY_ADDR", "127.0.0.1:0"),
        ("AUTH_SERVICE_URL", &auth.grpc_url()),
        ("USAGE_SERVICE_URL", "http://127.0.0.1:9"),
        ("SERVICE_CLIENT_SECRET", secret),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    redis.cut();
    let (status, stderr) = Service::run_to_exit(Binary::Gateway, gateway_env.clone()).await;
    assert_one_line_naming(status, &stderr, "REDIS_URL");
    redis.restore();
    let gateway = Service::start(Binary::Gateway, gateway_env).await;
    gateway.ready().await;
}

#[track_caller]
fn assert_one_line_naming(status: std::process::ExitStatus, stderr: &str, variable: &str) {
    assert!(
        !status.success(),
        "started without its dependency: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(variable), "{stderr}");
}
