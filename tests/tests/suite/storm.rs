//! `kill -9` of a gateway with 200 clients on it, and the reconnect storm that follows its
//! restart: every client notices (no close frame from a dead process), comes back with jitter
//! to the restarted gateway on the same address and gets `connected`, and usage-service never
//! grants a user more connection leases than the plan allows, although the dead gateway never
//! released its own: those lapse by their TTL.

use std::time::Duration;

use futures::future::join_all;
use tollgate_integration::*;

const USERS: usize = 100;
/// The free plan's connection limit: every user holds exactly that many.
const PER_USER: usize = 2;
const JITTER: Duration = Duration::from_millis(500);
/// Lease TTL of the gateway (its minimum): how long the dead gateway's leases outlive it.
const LEASE_TTL: &str = "15s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_reconnected_to_by_a_storm_within_plan_limits() {
    let mut cluster = Cluster::builder()
        .gateway_env("GATEWAY_CONNECT_RATE", "100000")
        .gateway_env("GATEWAY_LEASE_TTL", LEASE_TTL)
        .start()
        .await;
    let users = cluster.register_many(USERS).await;
    let gateway = cluster.gateway();
    let addr = gateway.http_addr();
    let tokens: Vec<&User> = users
        .iter()
        .flat_map(|user| std::iter::repeat_n(user, PER_USER))
        .collect();
    let mut clients = Vec::new();
    for batch in tokens.chunks(50) {
        clients.extend(
            join_all(
                batch
                    .iter()
                    .map(|user| WsClient::connected(gateway, &user.access_token)),
            )
            .await
            .into_iter()
            .map(|(client, _)| client),
        );
    }
    let total = (USERS * PER_USER) as f64;
    assert_eq!(
        gateway.metric("tollgate_gateway_connections_active").await,
        total
    );

    cluster.gateways[0].kill_9();
    // Every client sees its socket end, without a close frame: the process is gone.
    let endings = join_all(clients.iter_mut().map(WsClient::ended)).await;
    assert!(
        endings.iter().all(Option::is_none),
        "a killed gateway sent a close frame: {endings:?}"
    );
    drop(clients);

    cluster.gateways[0].restart().await;
    let reconnects = join_all(tokens.iter().map(|user| {
        WsClient::reconnect(addr, &user.access_token, JITTER, Duration::from_secs(60))
    }))
    .await;
    let mut reconnected = Vec::new();
    let mut refusals = 0;
    for (result, user) in reconnects.into_iter().zip(&tokens) {
        let (client, connected, refused) =
            result.unwrap_or_else(|err| panic!("user {}: {err}", user.user_id));
        assert_eq!(connected["user_id"], user.user_id);
        refusals += refused;
        reconnected.push(client);
    }
    // While the dead gateway's leases were alive, usage-service refused the extra ones.
    assert!(
        refusals > 0,
        "no reconnect was ever held back by the plan limit"
    );
    let gateway = cluster.gateway();
    assert_eq!(
        gateway.metric("tollgate_gateway_connections_active").await,
        total
    );
    // Each user now holds exactly the plan's connections at usage-service: a further lease is
    // refused, and so is a further connection.
    for user in &users {
        let (granted, active, limit) = cluster
            .acquire_connection(&user.user_id, "storm-probe")
            .await;
        assert_eq!(
            (granted, active, limit),
            (false, 2, 2),
            "user {}",
            user.user_id
        );
    }
    let refused = WsClient::connect(gateway, Present::Header(&users[0].access_token))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status, refused.code()),
        (429, "too_many_connections")
    );
    for client in reconnected.iter_mut().take(10) {
        assert_eq!(client.ping("alive").await["type"], "pong");
    }
}
