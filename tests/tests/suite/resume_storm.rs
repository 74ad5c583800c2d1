//! A storm: 1 000 clients, each following an agent run on one gateway, lose that gateway to
//! `kill -9`, reconnect to the other with jitter and resume their runs there. Every run ends
//! for its client with exactly one terminal event (`agent_failed {reason: "node_lost"}`), with
//! no gap and no repeat in any client's events.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use tollgate_integration::*;

const USERS: usize = 500;
/// The free plan's connection limit: each user follows two runs, one per connection.
const PER_USER: usize = 2;
const JITTER: Duration = Duration::from_millis(500);

/// Starts a run on a new connection and reads it up to its first tool call: (run id, the
/// last seq seen).
async fn start(gateway: &Service, token: &str) -> (String, u64) {
    let (mut client, _) = WsClient::connected(gateway, token).await;
    client
        .run_agent("run-storm", "What is 6 * 7?", &["calculator"])
        .await;
    let started = client.expect("agent_started").await;
    client.expect("agent_thinking").await;
    let executing = client.expect("tool_executing").await;
    // The client is dropped here; its gateway is about to die anyway.
    (
        started["run_id"].as_str().unwrap().to_owned(),
        executing["seq"].as_u64().unwrap(),
    )
}

/// Resumes `run_id` on a reconnect to `gateway` and reads it to its end.
async fn resume(gateway: &Service, token: &str, run_id: &str, after_seq: u64) -> Vec<Value> {
    let (mut client, _, _) =
        WsClient::reconnect(gateway.http_addr(), token, JITTER, Duration::from_secs(90))
            .await
            .unwrap_or_else(|err| panic!("no reconnect: {err}"));
    client
        .send_json(json!({"type": "resume_run", "run_id": run_id, "after_seq": after_seq}))
        .await;
    let resumed = client.expect("run_resumed").await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let mut frames = Vec::new();
    let mut last = after_seq;
    loop {
        let Received::Json(frame) = client.recv().await else {
            panic!("the connection ended mid-run after seq {last}")
        };
        let seq = frame["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq: {frame}"));
        assert_eq!(seq, last + 1, "a gap or a repeat: {frame}");
        last = seq;
        let terminal = matches!(
            frame["type"].as_str(),
            Some("agent_completed" | "agent_failed" | "run_cancelled")
        );
        frames.push(frame);
        if terminal {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_move_their_runs_from_a_killed_gateway_to_the_other() {
    let mut cluster = Cluster::builder()
        .gateways(2)
        .auth_env("AUTH_LOGIN_MAX_PER_ADDRESS", "100000")
        .gateway_env("GATEWAY_CONNECT_RATE", "100000")
        .gateway_env("GATEWAY_LEASE_TTL", "15s")
        .gateway_env("GATEWAY_NODE_LEASE_TTL", "1s")
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "120s")
        .start()
        .await;
    let mut users = Vec::new();
    for _ in 0..USERS / 50 {
        users.extend(cluster.register_many(50).await);
    }
    let tokens: Vec<&str> = users
        .iter()
        .flat_map(|user| std::iter::repeat_n(user.access_token.as_str(), PER_USER))
        .collect();
    let mut runs = Vec::new();
    for batch in tokens.chunks(100) {
        runs.extend(join_all(batch.iter().map(|token| start(&cluster.gateways[0], token))).await);
    }

    cluster.gateways[0].kill_9();
    let survivor = &cluster.gateways[1];
    let ends = join_all(
        tokens
            .iter()
            .zip(&runs)
            .map(|(token, (run_id, seen))| resume(survivor, token, run_id, *seen)),
    )
    .await;
    for (frames, (run_id, _)) in ends.iter().zip(&runs) {
        let terminals: Vec<_> = frames
            .iter()
            .filter(|frame| {
                matches!(
                    frame["type"].as_str(),
                    Some("agent_completed" | "agent_failed" | "run_cancelled")
                )
            })
            .collect();
        assert_eq!(terminals.len(), 1, "run {run_id}: {frames:?}");
        assert_eq!(terminals[0]["reason"], "node_lost", "run {run_id}");
    }
    assert_eq!(ends.len(), USERS * PER_USER);
}
