//! A run whose gateway process dies: the other nodes notice that its lease has lapsed, and the
//! run ends with one `agent_failed {reason: "node_lost"}`, the same record for every follower
//! on every node, written once however many of them noticed. On one Redis node and on a Redis
//! Cluster (where the run's journal, its channel and the sharded publish share a slot).

use serde_json::{Value, json};
use tollgate_integration::*;
use tollgate_shared::testing_cluster::RedisCluster;

/// Reads a run's frames up to its terminal event, checking that each comes in order.
async fn rest_of_run(client: &mut WsClient, mut last_seq: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = match client.recv().await {
            Received::Json(frame) => frame,
            other => panic!("the connection ended mid-run: {other:?}"),
        };
        let Some(seq) = frame["seq"].as_u64() else {
            continue;
        };
        assert_eq!(seq, last_seq + 1, "a gap or a repeat: {frame}");
        last_seq = seq;
        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
        frames.push(frame);
        if matches!(
            kind.as_str(),
            "agent_completed" | "agent_failed" | "run_cancelled"
        ) {
            return frames;
        }
    }
}

async fn a_killed_gateway_s_run_ends_once_with_node_lost(mut cluster: Cluster) {
    let user = cluster.register().await;
    // Room for the owner's connection, two followers and a late reader at once.
    cluster.change_plan(&user.user_id, "pro").await;
    let (mut owner, _) = WsClient::connected(&cluster.gateways[0], &user.access_token).await;
    owner
        .run_agent("run-lost", "What is 6 * 7?", &["calculator"])
        .await;
    let started = owner.expect("agent_started").await;
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    owner.expect("agent_thinking").await;
    let executing = owner.expect("tool_executing").await;
    let seen = executing["seq"].as_u64().unwrap();
    drop(owner);

    // Two followers, on the two other nodes.
    let mut followers = Vec::new();
    for node in &cluster.gateways[1..] {
        let (mut client, _) = WsClient::connected(node, &user.access_token).await;
        client
            .send_json(
                json!({"type": "resume_run", "id": "r", "run_id": run_id, "after_seq": seen}),
            )
            .await;
        assert_eq!(client.expect("run_resumed").await["recovered"], true);
        followers.push(client);
    }
    cluster.gateways[0].kill_9();

    let mut ends = Vec::new();
    for client in &mut followers {
        let rest = rest_of_run(client, seen).await;
        let end = rest.last().unwrap().clone();
        assert_eq!(
            (end["type"].as_str(), end["reason"].as_str()),
            (Some("agent_failed"), Some("node_lost")),
            "{rest:?}"
        );
        ends.push(end["seq"].clone());
    }
    assert_eq!(ends[0], ends[1], "one record, the same for everyone");

    // The whole run, replayed from its journal on a new connection: one terminal event.
    drop(followers);
    let (mut fresh, _) = WsClient::connected(&cluster.gateways[1], &user.access_token).await;
    fresh
        .send_json(json!({"type": "resume_run", "id": "all", "run_id": run_id, "after_seq": 0}))
        .await;
    assert_eq!(fresh.expect("run_resumed").await["recovered"], true);
    let whole = rest_of_run(&mut fresh, 0).await;
    let terminals = whole
        .iter()
        .filter(|frame| {
            matches!(
                frame["type"].as_str(),
                Some("agent_failed" | "agent_completed")
            )
        })
        .count();
    assert_eq!(terminals, 1, "{whole:?}");
    assert_eq!(whole.last().unwrap()["seq"], ends[0]);
}

fn three_gateways() -> ClusterBuilder {
    Cluster::builder()
        .gateways(3)
        .gateway_env("GATEWAY_NODE_LEASE_TTL", "1s")
        // The demo's tool "works" long enough for the run to outlive its gateway.
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "60s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_gateway_is_killed_ends_once_with_node_lost() {
    a_killed_gateway_s_run_ends_once_with_node_lost(three_gateways().start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_too() {
    let redis = RedisCluster::start().await;
    let cluster = three_gateways().redis_url(&redis.url()).start().await;
    a_killed_gateway_s_run_ends_once_with_node_lost(cluster).await;
}
