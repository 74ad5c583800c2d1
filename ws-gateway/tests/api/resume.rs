//! Runs that outlive their connection: a client that drops mid-run resumes it with the last
//! `seq` it saw and gets the rest of the run exactly once (no gap, no repeat, one terminal
//! event), or a snapshot when the run's log no longer holds what it asks for.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::{
    helpers::*,
    resume_support::{
        Seen, Streamer, drop_after_every_event_and_resume_on, forgotten, gateway_with, next_frame,
        resume, six_deltas, start_run, two_quick_deltas,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_at_any_event_resumes_the_rest_exactly_once() {
    let (services, gateway) = gateway_with(six_deltas(), |_| {}).await;
    let pair = services.register().await;
    // Every request, resumes included, is a message: more than the free plan's minute holds.
    services.change_plan(&pair.user_id, "pro").await;
    drop_after_every_event_and_resume_on(&gateway, &gateway, &pair.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_resume_twice_repeats_nothing() {
    let agent = Streamer {
        deltas: 5,
        size: 16,
        pause: Duration::from_millis(30),
    };
    let answer = agent.answer();
    let (services, gateway) = gateway_with(agent, |_| {}).await;
    let pair = services.register().await;
    let (mut first, _) = gateway.connected(&pair.access_token).await;
    let (run_id, _) = start_run(&mut first).await;
    drop(first);

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    for _ in 0..2 {
        client
            .send_json(json!({"type": "resume_run", "run_id": run_id, "after_seq": 1}))
            .await;
    }
    let mut seen = Seen {
        last_seq: 1,
        ..Seen::default()
    };
    let mut resumed = 0;
    while seen.terminals.is_empty() || resumed < 2 {
        let Received::Json(frame) = client.recv().await else {
            panic!("the connection ended")
        };
        if frame["type"] == "run_resumed" {
            assert_eq!(frame["recovered"], true);
            resumed += 1;
        } else {
            seen.take(frame);
        }
    }
    assert_eq!(seen.text, answer);
    assert_eq!(seen.terminals.len(), 1);
    client.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(
        client.expect("pong").await["id"],
        "p",
        "and nothing of the run after its end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_behind_the_kept_history_gets_a_snapshot_and_never_a_part() {
    let agent = Streamer {
        deltas: 40,
        size: 100,
        pause: Duration::ZERO,
    };
    let answer = agent.answer();
    let (services, gateway) =
        gateway_with(agent, |config| config.run_history_max_bytes = 1024).await;
    let pair = services.register().await;
    let (mut first, _) = gateway.connected(&pair.access_token).await;
    let (run_id, _) = start_run(&mut first).await;
    drop(first);

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let ended = eventually(PATIENCE, || async {
        let (mut probe, _) = gateway.connected(&pair.access_token).await;
        let resumed = resume(&mut probe, &run_id, 1).await;
        resumed["snapshot"]["ended"] == true
    })
    .await;
    assert!(ended, "the run never ended");
    let resumed = resume(&mut client, &run_id, 1).await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    let snapshot = &resumed["snapshot"];
    assert_eq!(snapshot["outcome"], "completed");
    assert_eq!(snapshot["output"], answer.as_str());
    assert_eq!(snapshot["last_seq"], 42, "started, 40 deltas, completed");
    assert_eq!(snapshot["usage"]["tool_calls"], 0);
    client.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(
        client.expect("pong").await["id"],
        "p",
        "nothing was replayed"
    );

    // From the end it asks for nothing missing: recovered, and nothing follows.
    let resumed = resume(&mut client, &run_id, 42).await;
    assert_eq!(resumed["recovered"], true);
    client.send_json(json!({"type": "ping", "id": "p2"})).await;
    assert_eq!(client.expect("pong").await["id"], "p2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_of_runs_that_are_not_the_user_s_or_of_bad_seqs_are_refused() {
    let agent = Streamer {
        deltas: 3,
        size: 16,
        pause: Duration::from_millis(10),
    };
    let (services, gateway) = gateway_with(agent, |_| {}).await;
    let (owner, stranger) = (services.register().await, services.register().await);
    let (mut client, _) = gateway.connected(&owner.access_token).await;
    let (run_id, _) = start_run(&mut client).await;

    let (mut other, _) = gateway.connected(&stranger.access_token).await;
    let never = uuid::Uuid::new_v4().to_string();
    for (run, after_seq) in [
        (json!(run_id), json!(0)),
        (json!(never), json!(0)),
        (json!("nope"), json!(0)),
    ] {
        other
            .send_json(
                json!({"type": "resume_run", "id": "x", "run_id": run, "after_seq": after_seq}),
            )
            .await;
        let refused = other.expect("error").await;
        assert_eq!(
            (refused["code"].as_str(), refused["id"].as_str()),
            (Some("unknown_run"), Some("x"))
        );
    }
    other
        .send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;
    assert_eq!(
        other.expect("error").await["code"],
        "unknown_run",
        "nor can it be cancelled"
    );

    // A well-formed resume (far ahead of the run) between the malformed ones: three bad frames
    // in a row would close the connection.
    let ahead = json!(1_000_000);
    for after_seq in [
        json!(-1),
        ahead.clone(),
        json!("3"),
        ahead.clone(),
        json!(1.5),
        ahead,
        json!(null),
    ] {
        client
            .send_json(
                json!({"type": "resume_run", "id": "s", "run_id": run_id, "after_seq": after_seq}),
            )
            .await;
        let refused = loop {
            let Received::Json(frame) = client.recv().await else {
                panic!("closed")
            };
            if frame["type"] == "error" {
                break frame;
            }
        };
        assert_eq!(
            refused["code"], "bad_request",
            "after_seq {after_seq}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_nobody_follows_is_stopped_after_the_detached_timeout() {
    let agent = Streamer {
        deltas: 1000,
        size: 16,
        pause: Duration::from_millis(50),
    };
    let (services, gateway) = gateway_with(agent, |config| {
        config.detached_run_timeout = Duration::from_millis(300);
    })
    .await;
    let pair = services.register().await;
    let (mut first, _) = gateway.connected(&pair.access_token).await;
    let (run_id, _) = start_run(&mut first).await;
    drop(first);

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(resume(&mut client, &run_id, 1).await["recovered"], true);
    let mut seen = Seen {
        last_seq: 1,
        ..Seen::default()
    };
    seen.read(&mut client, usize::MAX).await;
    let end = &seen.terminals[0];
    assert_eq!(
        (end["type"].as_str(), end["reason"].as_str()),
        (Some("run_cancelled"), Some("detached_timeout"))
    );
    assert!(
        seen.text.len() < 1000 * 16,
        "the run did not go on to its end"
    );
}

/// A gateway whose agent streams for long, a user, and a run of theirs started on a
/// connection: (services, gateway, user, connection, run id, `agent_started`).
async fn long_run() -> (
    Arc<Services>,
    Gateway,
    tollgate_proto::auth::v1::TokenPair,
    WsClient,
    String,
    Value,
) {
    let agent = Streamer {
        deltas: 1000,
        size: 16,
        pause: Duration::from_millis(20),
    };
    let (services, gateway) = gateway_with(agent, |_| {}).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let (run_id, started) = start_run(&mut client).await;
    (services, gateway, pair, client, run_id, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_connection_of_the_user_cancels_the_run_and_the_follower_hears_it() {
    let (_services, gateway, pair, mut follower, run_id, started) = long_run().await;
    let (mut remote, _) = gateway.connected(&pair.access_token).await;
    remote
        .send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;

    let mut seen = Seen::default();
    seen.take(started);
    seen.read(&mut follower, usize::MAX).await;
    let end = &seen.terminals[0];
    assert_eq!(end["type"], "run_cancelled");
    assert!(
        end.get("reason").is_none(),
        "a user's cancel carries no reason: {end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_run_is_forgotten_after_the_history_ttl() {
    let agent = two_quick_deltas();
    let (services, gateway) = gateway_with(agent, |config| {
        config.run_history_ttl = Duration::from_millis(200);
        config.detached_run_timeout = Duration::from_millis(400);
    })
    .await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let (run_id, started) = start_run(&mut client).await;
    let mut seen = Seen::default();
    seen.take(started);
    seen.read(&mut client, usize::MAX).await;
    assert_eq!(
        resume(&mut client, &run_id, 0).await["recovered"],
        true,
        "kept for now"
    );
    drop(client);
    assert!(
        forgotten(&gateway, &pair.access_token, &run_id).await,
        "the run's history outlived its TTL"
    );
}

/// A flood of resumes is metered like any other message: the plan's rate refuses the excess
/// with `rate_limited`, and a client that keeps going is closed with 4008. The run it floods
/// about is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_flood_is_rate_limited_and_then_closed() {
    let (_services, gateway, pair, mut owner, run_id, _) = long_run().await;

    let (mut flood, _) = gateway.connected(&pair.access_token).await;
    for _ in 0..200 {
        flood
            .send_json(json!({"type": "resume_run", "run_id": run_id, "after_seq": 1}))
            .await;
    }
    let mut limited = 0;
    let code = loop {
        match flood.recv().await {
            Received::Json(frame) if frame["type"] == "rate_limited" => limited += 1,
            Received::Json(_) => {}
            Received::Close(code) => break code,
            other => panic!("the flood ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4008));
    assert!(limited >= 1, "nothing was rate limited");

    // The run goes on for its follower.
    let mut seen = Seen {
        last_seq: 1,
        ..Seen::default()
    };
    seen.read(&mut owner, 5).await;
    assert!(seen.terminals.is_empty() && seen.last_seq >= 6);
}

/// Sends `run_agent` under `run_id` and answers the reply: `agent_started` or an `error`.
async fn run_as(client: &mut WsClient, run_id: &str) -> Value {
    client
        .send_json(json!({"type": "run_agent", "id": "chosen", "agent": "demo", "input": "go", "run_id": run_id}))
        .await;
    next_frame(client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_the_client_chose_starts_one_run_and_is_never_reused() {
    let agent = two_quick_deltas();
    let (services, gateway) = gateway_with(agent, |config| {
        config.run_history_ttl = Duration::from_millis(200);
    })
    .await;
    let (alice, mallory) = (services.register().await, services.register().await);
    services.change_plan(&alice.user_id, "pro").await;
    let (mut client, _) = gateway.connected(&alice.access_token).await;
    let run_id = uuid::Uuid::new_v4().to_string();

    let started = run_as(&mut client, &run_id).await;
    assert_eq!(
        (started["type"].as_str(), started["run_id"].as_str()),
        (Some("agent_started"), Some(&*run_id)),
        "{started}"
    );
    let mut seen = Seen::default();
    seen.take(started);
    seen.read(&mut client, usize::MAX).await;
    assert_eq!(seen.terminals[0]["type"], "agent_completed");

    // While the run is kept, by its owner or anyone else: refused, not counted.
    assert_eq!(run_as(&mut client, &run_id).await["code"], "duplicate_run");
    let (mut other, _) = gateway.connected(&mallory.access_token).await;
    assert_eq!(run_as(&mut other, &run_id).await["code"], "duplicate_run");

    // Once the gateway has forgotten it, usage-service still knows the id was paid for: a
    // reuse would be a second run for one unit.
    assert!(forgotten(&gateway, &alice.access_token, &run_id).await);
    let (mut client, _) = gateway.connected(&alice.access_token).await;
    let reused = run_as(&mut client, &run_id).await;
    assert_eq!(reused["code"], "duplicate_run", "{reused}");
    assert_eq!(services.used(&alice.user_id, "agent_runs").await, 1);
    assert_eq!(services.used(&mallory.user_id, "agent_runs").await, 0);

    // Ids that are not UUIDs (or the nil one) are refused before anything is counted.
    for bad in ["run-1", "00000000-0000-0000-0000-000000000000", ""] {
        let reply = run_as(&mut client, bad).await;
        assert_eq!(reply["code"], "bad_request", "{bad:?}: {reply}");
    }
    client
        .send_json(
            json!({"type": "run_agent", "id": "n", "agent": "demo", "input": "go", "run_id": 7}),
        )
        .await;
    assert_eq!(next_frame(&mut client).await["code"], "bad_request");
    assert_eq!(services.used(&alice.user_id, "agent_runs").await, 1);
}
