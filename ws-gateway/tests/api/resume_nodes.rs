//! Resuming and cancelling a run on another gateway node than the one that runs it, through
//! the run's journal on Redis: the rest of the run arrives exactly once, and the run's end
//! (its own, a cancel sent from the other node, or its node shutting down) reaches the client.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    helpers::*,
    resume_support::{
        Seen, Streamer, drop_after_every_event_and_resume_on, forgotten, resume, six_deltas,
        start_run,
    },
};

async fn two_nodes(agent: Streamer) -> (Arc<Services>, Gateway, Gateway) {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let agent = Arc::new(agent);
    let node_a = Gateway::start_with_agent(services.gateway_config(), agent.clone()).await;
    let node_b = Gateway::start_with_agent(services.gateway_config(), agent).await;
    (services, node_a, node_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_resumed_on_another_node_after_a_drop_at_any_event_exactly_once() {
    let (services, node_a, node_b) = two_nodes(six_deltas()).await;
    let pair = services.register().await;
    // Every request, resumes included, is a message: more than the free plan's minute holds.
    services.change_plan(&pair.user_id, "pro").await;
    drop_after_every_event_and_resume_on(&node_a, &node_b, &pair.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_from_another_node_and_another_user_cannot() {
    let agent = Streamer {
        deltas: 1000,
        size: 16,
        pause: Duration::from_millis(20),
    };
    let (services, node_a, node_b) = two_nodes(agent).await;
    let (pair, stranger) = (services.register().await, services.register().await);
    let (mut on_a, _) = node_a.connected(&pair.access_token).await;
    let (run_id, started) = start_run(&mut on_a).await;

    let (mut intruder, _) = node_b.connected(&stranger.access_token).await;
    intruder
        .send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;
    assert_eq!(intruder.expect("error").await["code"], "unknown_run");
    intruder
        .send_json(json!({"type": "resume_run", "id": "r", "run_id": run_id, "after_seq": 0}))
        .await;
    assert_eq!(intruder.expect("error").await["code"], "unknown_run");

    let (mut on_b, _) = node_b.connected(&pair.access_token).await;
    on_b.send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;
    let mut seen = Seen::default();
    seen.take(started);
    seen.read(&mut on_a, usize::MAX).await;
    assert_eq!(seen.terminals[0]["type"], "run_cancelled");

    // From the other node too, the run ends with that one terminal event.
    let resumed = resume(&mut on_b, &run_id, seen.last_seq - 1).await;
    assert_eq!(resumed["recovered"], true);
    let mut tail = Seen {
        last_seq: seen.last_seq - 1,
        ..Seen::default()
    };
    tail.read(&mut on_b, usize::MAX).await;
    assert_eq!(tail.terminals[0]["type"], "run_cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_another_node_hears_the_run_end_when_its_node_shuts_down() {
    let agent = Streamer {
        deltas: 1000,
        size: 16,
        pause: Duration::from_millis(20),
    };
    let (services, mut node_a, node_b) = two_nodes(agent).await;
    let pair = services.register().await;
    let (mut on_a, _) = node_a.connected(&pair.access_token).await;
    let (run_id, _) = start_run(&mut on_a).await;
    drop(on_a);

    let (mut on_b, _) = node_b.connected(&pair.access_token).await;
    assert_eq!(resume(&mut on_b, &run_id, 1).await["recovered"], true);
    let mut seen = Seen {
        last_seq: 1,
        ..Seen::default()
    };
    seen.read(&mut on_b, 3).await;
    node_a.trigger_shutdown();
    node_a.stopped().await.unwrap();
    seen.read(&mut on_b, usize::MAX).await;
    let end = &seen.terminals[0];
    assert_eq!(
        (end["type"].as_str(), end["reason"].as_str()),
        (Some("agent_failed"), Some("gateway_shutdown"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_run_s_history_on_redis_expires_after_its_ttl() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let agent = Arc::new(Streamer {
        deltas: 2,
        size: 16,
        pause: Duration::ZERO,
    });
    let mut config = services.gateway_config();
    config.run_history_ttl = Duration::from_millis(500);
    let node_a = Gateway::start_with_agent(config.clone(), agent.clone()).await;
    let node_b = Gateway::start_with_agent(config, agent).await;
    let pair = services.register().await;
    let (mut on_a, _) = node_a.connected(&pair.access_token).await;
    let (run_id, started) = start_run(&mut on_a).await;
    let mut seen = Seen::default();
    seen.take(started);
    seen.read(&mut on_a, usize::MAX).await;

    let (mut on_b, _) = node_b.connected(&pair.access_token).await;
    assert_eq!(
        resume(&mut on_b, &run_id, 0).await["recovered"],
        true,
        "kept for now"
    );
    // Two connections at most on this plan: the probes come alone.
    drop((on_a, on_b));
    assert!(
        forgotten(&node_b, &pair.access_token, &run_id).await,
        "the run's stream outlived its TTL"
    );
}

/// Two requests for one run id at once, on two nodes: one run starts, the other request is
/// told the id is taken, and the run is counted once (two counts racing for one key would
/// leave both callers thinking it was the other's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_id_asked_for_on_two_nodes_at_once_starts_one_run_counted_once() {
    let (services, node_a, node_b) = two_nodes(six_deltas()).await;
    let pair = services.register().await;
    services.change_plan(&pair.user_id, "pro").await;
    for _ in 0..5 {
        let run_id = uuid::Uuid::new_v4().to_string();
        let request = json!({"type": "run_agent", "id": "r", "agent": "demo", "input": "go", "run_id": run_id});
        let (mut on_a, _) = node_a.connected(&pair.access_token).await;
        let (mut on_b, _) = node_b.connected(&pair.access_token).await;
        let (a, b) = tokio::join!(
            async {
                on_a.send_json(request.clone()).await;
                on_a.recv().await
            },
            async {
                on_b.send_json(request.clone()).await;
                on_b.recv().await
            }
        );
        let (Received::Json(a), Received::Json(b)) = (a, b) else {
            panic!("a connection ended");
        };
        let mut answers = [a["type"].as_str(), b["type"].as_str()];
        answers.sort_unstable();
        assert_eq!(answers, [Some("agent_started"), Some("error")], "{a} {b}");
        let refused = if a["type"] == "error" { &a } else { &b };
        assert_eq!(refused["code"], "duplicate_run", "{refused}");
    }
    assert_eq!(services.used(&pair.user_id, "agent_runs").await, 5);
}
