//! Two gateway processes on one Redis behave as one gateway: an event published on either
//! node reaches every connection of its user on both, nobody else's; a logout at
//! auth-service closes the session's connections on both nodes within the contract's second.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_integration::*;

const WATCH_UP: &str = "tollgate_gateway_revocation_watch_up";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_everywhere_and_logout_closes_both_within_a_second() {
    let cluster = Cluster::builder().gateways(2).start().await;
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
    assert_session_revoked(&cluster, &alice).await;
    assert_eq!(bob_b.ping("bob-after").await["type"], "pong");
}
