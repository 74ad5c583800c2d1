//! `kill -9` of auth-service and of usage-service while users are connected, then a restart on
//! the same ports: what the contract promises for the outage (CONTRACT §6) and that everything
//! comes back by itself, with no acknowledged usage lost and no revoked session revived.

use tollgate_integration::*;

/// A gateway that gives up on auth-service quickly and asks it about every new token.
fn impatient_gateway(mode: &str) -> ClusterBuilder {
    Cluster::builder()
        .gateway_env("GATEWAY_AUTH_MODE", mode)
        .gateway_env("GATEWAY_BREAKER_FAILURES", "2")
        .gateway_env("GATEWAY_BREAKER_COOL_DOWN", "500ms")
        .gateway_env("GATEWAY_VALIDATION_CACHE_TTL", "0s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_killed_connections_go_on_new_ones_use_the_cached_jwks_and_it_recovers() {
    let mut cluster = impatient_gateway("degraded").start().await;
    let acknowledgements = Acknowledgements::default();
    let (open_user, waiting_user, revoked) = (
        cluster.register().await,
        cluster.register().await,
        cluster.register().await,
    );
    let gateway = cluster.gateway();
    let (mut open, _) = WsClient::connected(gateway, &open_user.access_token).await;
    // A session revoked before the outage; the gateway hears of it (and would refuse it anyway
    // by asking auth-service).
    cluster.logout(&revoked).await;
    let heard = eventually(PATIENCE, || async {
        WsClient::connect(gateway, Present::Header(&revoked.access_token))
            .await
            .is_err_and(|refused| refused.code() == "session_revoked")
    })
    .await;
    assert!(heard, "the gateway never refused the revoked session");

    cluster.auth.kill_9();
    let gateway = cluster.gateway();
    // The open connection does not notice.
    let reply = open.metered("during").await;
    acknowledgements.observe(&open_user.user_id, &reply);
    assert!(is_counted(&reply), "{reply}");
    // New connections are accepted on the cached JWKS; the failures open the breaker.
    for _ in 0..3 {
        let (client, connected) = WsClient::connected(gateway, &waiting_user.access_token).await;
        assert_eq!(connected["user_id"], waiting_user.user_id);
        client.close().await;
    }
    assert_eq!(gateway.metric(BREAKER).await, 1.0, "the breaker is open");
    let accepted_degraded = gateway
        .metric("tollgate_gateway_auth_outcomes_total{outcome=\"accepted\",reason=\"degraded\"}")
        .await;
    assert!(accepted_degraded >= 1.0, "{accepted_degraded}");
    // The revoked session stays refused from the gateway's own list.
    let refused = WsClient::connect(gateway, Present::Header(&revoked.access_token))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "session_revoked"));

    cluster.auth.restart().await;
    cluster.auth.ready().await;
    // Login works again, and the breaker closes by itself once a probe gets through.
    let again = cluster.login(&open_user.email).await;
    let gateway = cluster.gateway();
    let closed = eventually(PATIENCE, || async {
        if let Ok(client) = WsClient::connect(gateway, Present::Header(&again.access_token)).await {
            client.close().await;
        }
        gateway.metric(BREAKER).await == 0.0
    })
    .await;
    assert!(closed, "the breaker never closed again");
    let reply = open.metered("after").await;
    acknowledgements.observe(&open_user.user_id, &reply);
    assert_session_revoked(&cluster, &revoked).await;
    assert_ledger_matches(&cluster, &acknowledgements).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_killed_in_strict_mode_new_connections_get_503_until_it_is_back() {
    let mut cluster = impatient_gateway("strict").start().await;
    let (user, newcomer) = (cluster.register().await, cluster.register().await);
    let (mut open, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;

    cluster.auth.kill_9();
    let gateway = cluster.gateway();
    let refused = WsClient::connect(gateway, Present::Header(&newcomer.access_token))
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code()), (503, "auth_unavailable"));
    assert!(refused.retry_after.is_some(), "503 without Retry-After");
    // In band, the same answer is a close code: try again later.
    let mut in_band = WsClient::connect(gateway, Present::InBand(&newcomer.access_token))
        .await
        .unwrap();
    assert_eq!(in_band.closed().await, 1013);
    assert_eq!(open.ping("open").await["type"], "pong");

    cluster.auth.restart().await;
    let gateway = cluster.gateway();
    let back = eventually(PATIENCE, || async {
        match WsClient::connect(gateway, Present::Header(&newcomer.access_token)).await {
            Ok(mut client) => client.expect("connected").await["user_id"] == newcomer.user_id,
            Err(_) => false,
        }
    })
    .await;
    assert!(back, "strict mode never admitted new connections again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_service_killed_metered_actions_are_unavailable_then_work_and_nothing_is_lost() {
    let mut cluster = Cluster::start().await;
    let acknowledgements = Acknowledgements::default();
    let user = cluster.register().await;
    acknowledgements.track(&user.user_id);
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    for n in 0..3 {
        acknowledgements.observe(&user.user_id, &client.metered(&format!("before-{n}")).await);
    }
    client.run_agent("run-before", "2+2", &["calculator"]).await;
    for frame in client.transcript("run-before").await {
        acknowledgements.observe(&user.user_id, &frame);
    }

    cluster.usage.kill_9();
    let gateway = cluster.gateway();
    // Keepalive never depends on billing.
    assert_eq!(client.ping("keepalive").await["type"], "pong");
    let reply = client.metered("down").await;
    acknowledgements.observe(&user.user_id, &reply);
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("dependency_unavailable")),
        "{reply}"
    );
    client.run_agent("run-down", "3+3", &["calculator"]).await;
    let frames = client.transcript("run-down").await;
    for frame in &frames {
        acknowledgements.observe(&user.user_id, frame);
    }
    assert_eq!(kinds(&frames), ["error"], "{frames:?}");
    assert_eq!(frames[0]["code"], "dependency_unavailable");
    // Nothing crashed: the gateway is healthy and still admits a connection (without a lease,
    // under its emergency limit, plan unknown).
    let newcomer = cluster.register().await;
    let (_second, connected) = WsClient::connected(gateway, &newcomer.access_token).await;
    assert_eq!(connected["plan"], "unknown");
    let direct = cluster
        .consume(&user.user_id, "agent_runs", 1, &key())
        .await;
    assert!(direct.is_err(), "a dead usage-service answered: {direct:?}");

    cluster.usage.restart().await;
    cluster.usage.ready().await;
    let recovered = client
        .metered_until_counted(|reply| acknowledgements.observe(&user.user_id, reply))
        .await;
    assert!(recovered, "metered actions never recovered");
    client.run_agent("run-after", "4+4", &["calculator"]).await;
    let frames = client.transcript("run-after").await;
    for frame in &frames {
        acknowledgements.observe(&user.user_id, frame);
    }
    assert_eq!(frames.last().unwrap()["type"], "agent_completed");
    let result = cluster
        .consume(&user.user_id, "agent_runs", 2, &key())
        .await;
    acknowledgements.consumed(&user.user_id, "agent_runs", 2, &result);
    assert!(result.unwrap().allowed);
    assert_ledger_matches(&cluster, &acknowledgements).await;
    let runs = acknowledgements.tally(&user.user_id, "agent_runs");
    assert_eq!(runs.acknowledged, 4, "{runs:?}");
}
