//! Two gateway nodes on one Redis behave as one: events and revocations reach every node.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_revocations_cross_nodes() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let node_a = Gateway::start(services.gateway_config()).await;
    let node_b = Gateway::start(services.gateway_config()).await;
    let (email, alice) = services.register_email().await;
    let alice_again = services.login(&email).await;
    let bob = services.register().await;
    let (mut on_a, _) = node_a.connected(&alice.access_token).await;
    let (mut on_b, _) = node_b.connected(&alice_again.access_token).await;
    let (mut bob_on_b, _) = node_b.connected(&bob.access_token).await;
    let token = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;

    for (n, node) in [&node_a, &node_b].into_iter().enumerate() {
        let body = json!({"user_id": alice.user_id, "data": {"n": n}});
        assert_eq!(
            node.publish(Some(&token), &body.to_string()).await.status(),
            202
        );
        for client in [&mut on_a, &mut on_b] {
            assert_eq!(client.expect("event").await["data"]["n"], n);
        }
    }
    bob_on_b
        .send_json(json!({"type": "ping", "id": "bob"}))
        .await;
    assert_eq!(bob_on_b.expect("pong").await["id"], "bob");

    // The plan's two connections are counted across nodes.
    let refused = node_a
        .connect(Present::Header(&alice.access_token))
        .await
        .expect_err("a third connection on any node is refused");
    assert_eq!(refused.status, 429);

    // Logging out closes the session's connection on whichever node holds it.
    node_a.watching_revocations().await;
    node_b.watching_revocations().await;
    let started = Instant::now();
    services.logout(&alice_again.refresh_token).await;
    assert_eq!(on_b.closed().await, 4004);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    on_a.send_json(json!({"type": "ping"})).await;
    on_a.expect("pong").await;
}
