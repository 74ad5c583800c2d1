//! Two gateway processes on one Redis behave as one gateway: an event published on either
//! node reaches every connection of its user on both, nobody else's; a logout at
//! auth-service closes the session's connections on both nodes within the contract's second;
//! a downgrade below the connections a user holds closes the newest beyond the new limit,
//! whichever node they are on, within a lease renewal period. With four gateway processes,
//! an event costs one Redis delivery, to the node its user is connected to.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use tollgate_integration::*;

const WATCH_UP: &str = "tollgate_gateway_revocation_watch_up";
const LEASES_GRANTED: &str =
    "tollgate_gateway_rate_limit_decisions_total{kind=\"connections\",outcome=\"allowed\"}";
/// The gateways' lease TTL in the downgrade test, their shortest: each connection renews its
/// lease every third of it, [`RENEWAL`].
const LEASE_TTL: &str = "15s";
const RENEWAL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_everywhere_and_logout_closes_both_within_a_second() {
    let cluster = Cluster::builder().gateways(2).start().await;
    deliver_everywhere_and_close_both_at_logout(&cluster).await;
}

/// Events published on either of two gateways reach every connection of their user, nobody
/// else's; connections are counted across nodes; a logout closes the session everywhere.
pub(crate) async fn deliver_everywhere_and_close_both_at_logout(cluster: &Cluster) {
    let (node_a, node_b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let (alice, bob) = (cluster.register().await, cluster.register().await);
    let (mut alice_a, _) = WsClient::connected(node_a, &alice.access_token).await;
    let (mut alice_b, _) = WsClient::connected(node_b, &alice.access_token).await;
    let (mut bob_b, _) = WsClient::connected(node_b, &bob.access_token).await;
    let token = cluster.publish_token().await;

    for (n, node) in [node_a, node_b].into_iter().enumerate() {
        let event = json!({"user_id": alice.user_id, "data": {"from": n}});
        assert_eq!(publish(node, Some(&token), &event).await.0, 202);
        for client in [&mut alice_a, &mut alice_b] {
            assert_eq!(client.expect("event").await["data"]["from"], n);
        }
    }
    // Bob's next frame is the answer to his own ping: no event of Alice's came before it.
    let first = bob_b.ping_first("bob").await;
    assert_eq!(first["type"], "pong", "Bob got {first}");
    // The plan's two connections are counted across nodes.
    let refused = WsClient::connect(node_a, Present::Header(&alice.access_token))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 429);

    for node in [node_a, node_b] {
        let watching = eventually(PATIENCE, || async { node.metric(WATCH_UP).await == 1.0 }).await;
        assert!(watching, "a gateway never watched revocations");
    }
    let started = Instant::now();
    cluster.logout(&alice).await;
    let (a, b) = tokio::join!(alice_a.closed(), alice_b.closed());
    let elapsed = started.elapsed();
    assert_eq!((a, b), (4004, 4004));
    // The contract's bound is one second; measured loosely on a loaded machine.
    assert!(
        elapsed <= Duration::from_secs(2),
        "closed after {elapsed:?}"
    );
    assert_session_revoked(cluster, &alice).await;
    assert_eq!(bob_b.ping("bob-after").await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_closes_the_newest_connections_beyond_the_new_limit_on_every_node_with_4009() {
    let cluster = Cluster::builder()
        .gateways(2)
        .gateway_env("GATEWAY_LEASE_TTL", LEASE_TTL)
        .start()
        .await;
    let (node_a, node_b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let user = cluster.register().await;
    cluster.change_plan(&user.user_id, "pro").await;
    // The pro plan's ten connections, taken one after the other, alternately on each node.
    let mut clients = Vec::new();
    for n in 0..10 {
        let node = if n % 2 == 0 { node_a } else { node_b };
        let (client, connected) = WsClient::connected(node, &user.access_token).await;
        assert_eq!(connected["plan"], "pro");
        clients.push(client);
    }
    let refused = WsClient::connect(node_b, Present::Header(&user.access_token)).await;
    assert_eq!(refused.unwrap_err().status, 429);

    // Down to free's two: the eight newest close with 4009 at their next renewal.
    let started = Instant::now();
    cluster.change_plan(&user.user_id, "free").await;
    let (oldest, newest) = clients.split_at_mut(2);
    let codes = join_all(newest.iter_mut().map(WsClient::closed)).await;
    let elapsed = started.elapsed();
    assert_eq!(codes, [4009; 8]);
    // Within a renewal period, measured loosely on a loaded machine.
    assert!(elapsed <= RENEWAL * 2, "closed after {elapsed:?}");

    // The two oldest, one on each node, keep their leases: each node grants a renewal after
    // the last close, and they go on answering.
    for node in [node_a, node_b] {
        let granted = node.metric(LEASES_GRANTED).await;
        let renewed = eventually(PATIENCE, || async {
            node.metric(LEASES_GRANTED).await > granted
        })
        .await;
        assert!(
            renewed,
            "a node never renewed its remaining connection's lease"
        );
    }
    for (n, client) in oldest.iter_mut().enumerate() {
        assert_eq!(client.ping(&format!("still-{n}")).await["type"], "pong");
    }
    let refused = WsClient::connect(node_a, Present::Header(&user.access_token)).await;
    assert_eq!(
        refused.unwrap_err().status,
        429,
        "free's two connections are held"
    );
}

/// Interest-based fan-out across processes: each gateway hears only the events of the users
/// connected to it, so an event published anywhere is taken from Redis once, by its user's
/// node, however many nodes there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gateways_take_each_event_from_redis_once() {
    const RECEIVED: &str = "tollgate_gateway_bus_events_received_total";
    let cluster = Cluster::builder().gateways(4).start().await;
    let alice = cluster.register().await;
    let home = &cluster.gateways[2];
    let (mut client, _) = WsClient::connected(home, &alice.access_token).await;
    let token = cluster.publish_token().await;
    const EVENTS: usize = 12;
    for n in 0..EVENTS {
        let event = json!({"user_id": alice.user_id, "data": {"n": n}});
        let (status, answer) = publish(&cluster.gateways[n % 4], Some(&token), &event).await;
        assert_eq!((status, answer["seq"].as_u64()), (202, Some(n as u64 + 1)));
    }
    for n in 0..EVENTS {
        let event = client.expect("event").await;
        assert_eq!(
            (&event["data"]["n"], event["seq"].as_u64()),
            (&json!(n), Some(n as u64 + 1))
        );
    }
    let received = join_all(cluster.gateways.iter().map(|node| node.metric(RECEIVED))).await;
    assert_eq!(
        received,
        [0.0, 0.0, EVENTS as f64, 0.0],
        "one Redis delivery per event, to the user's node"
    );
}
