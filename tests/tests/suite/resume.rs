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
        assert_ne!(
            frame["type"], "run_resumed",
            "the run was cut short: {frame}"
        );
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

/// A resume that comes while Redis is unreachable is refused with an error the client can
/// retry, never answered with a part of the run; retried once Redis is back, it gets the rest
/// of the run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_during_a_redis_outage_is_retried_and_then_complete() {
    let cluster = Cluster::builder()
        .gateways(2)
        .redis_behind_proxy()
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "4s")
        .start()
        .await;
    let user = cluster.register().await;
    let (mut owner, _) = WsClient::connected(&cluster.gateways[0], &user.access_token).await;
    owner
        .run_agent("run-outage", "What is 6 * 7?", &["calculator"])
        .await;
    let run_id = owner.expect("agent_started").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    owner.expect("agent_thinking").await;
    let seen = owner.expect("tool_executing").await["seq"]
        .as_u64()
        .unwrap();
    drop(owner);
    let (mut client, _) = WsClient::connected(&cluster.gateways[1], &user.access_token).await;

    // While the tool works (4 s), Redis goes away for a moment.
    cluster.redis_proxy().cut();
    let resume = json!({"type": "resume_run", "id": "r", "run_id": run_id, "after_seq": seen});
    client.send_json(resume.clone()).await;
    let refused = client.recv().await;
    let Received::Json(refused) = refused else {
        panic!("the connection ended: {refused:?}")
    };
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("dependency_unavailable")),
        "{refused}"
    );
    cluster.redis_proxy().restore();

    let resumed = loop {
        client.send_json(resume.clone()).await;
        let Received::Json(answer) = client.recv().await else {
            panic!("the connection ended")
        };
        if answer["type"] == "run_resumed" {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let rest = rest_of_run(&mut client, seen).await;
    assert_eq!(rest.last().unwrap()["type"], "agent_completed", "{rest:?}");
}
