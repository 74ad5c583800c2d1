//! A client whose network fails at every event boundary of a run, before `agent_started`
//! included: a fault proxy between the client and one gateway process cuts the connection,
//! and the client resumes on the other gateway process. Each time it gets the rest of the run
//! exactly once (no gap, no repeat, one terminal event), the same run a client that never
//! dropped gets, and each run is counted once.

use serde_json::{Value, json};
use tollgate_integration::*;
use tollgate_shared::fault_proxy::FaultProxy;
use uuid::Uuid;

const INPUT: &str = "What is 6 * 7?";
const TOOLS: [&str; 2] = ["calculator", "search"];

fn is_terminal(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("agent_completed" | "agent_failed" | "run_cancelled")
    )
}

/// The next frame of the run, which must follow `last_seq` (a merged delta frame carries its
/// last delta's seq).
async fn next_of_run(client: &mut WsClient, last_seq: &mut u64) -> Value {
    let frame = match client.recv_within(std::time::Duration::from_secs(30)).await {
        Some(Received::Json(frame)) => frame,
        None => panic!("no frame of the run after seq {last_seq} within 30 s"),
        Some(other) => panic!("the connection ended mid-run after seq {last_seq}: {other:?}"),
    };
    let seq = frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a run frame: {frame}"));
    if frame["type"] == "agent_delta" {
        assert!(seq > *last_seq, "a repeat: {frame} after {last_seq}");
    } else {
        assert_eq!(seq, *last_seq + 1, "a gap or a repeat: {frame}");
    }
    *last_seq = seq;
    frame
}

/// The run's frames after `last_seq`, up to its terminal event.
async fn rest(client: &mut WsClient, mut last_seq: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_of_run(client, &mut last_seq).await;
        let done = is_terminal(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn run_agent(run_id: &str) -> Value {
    json!({"type": "run_agent", "id": "run-x", "agent": "demo", "input": INPUT, "tools": TOOLS, "run_id": run_id})
}

/// On a new connection: resume the run from `last_seq`; a run no node has was never started,
/// so ask for it again under the same id (and resume it if that finds it started meanwhile).
async fn recover(client: &mut WsClient, run_id: &str, last_seq: u64) -> Vec<Value> {
    for _ in 0..100 {
        client
            .send_json(json!({"type": "resume_run", "id": "again", "run_id": run_id, "after_seq": last_seq}))
            .await;
        let Received::Json(answer) = client.recv().await else {
            panic!("the connection ended")
        };
        if answer["type"] == "run_resumed" {
            assert_eq!(answer["recovered"], true, "{answer}");
            return rest(client, last_seq).await;
        }
        assert_eq!(answer["code"], "unknown_run", "{answer}");
        assert_eq!(last_seq, 0, "a run seen started was lost");
        client.send_json(run_agent(run_id)).await;
        let Received::Json(answer) = client.recv().await else {
            panic!("the connection ended")
        };
        if answer["type"] == "agent_started" {
            let mut frames = vec![answer];
            frames.extend(rest(client, 1).await);
            return frames;
        }
        // Started meanwhile by the request that was cut off (whose node may not have written
        // its first event yet): resume it, after a pause as a client would.
        assert_eq!(answer["code"], "duplicate_run", "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {run_id} was neither resumed nor started");
}

/// What a run looks like to its client, whatever ids and merged deltas: the events in order
/// and the streamed answer.
fn shape(frames: &[Value]) -> (Vec<&str>, String) {
    (kinds(frames), streamed(frames))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_at_every_event_boundary_resumes_on_the_other_gateway_exactly_once() {
    let cluster = Cluster::builder()
        .gateways(2)
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "30ms")
        .start()
        .await;
    let user = cluster.register().await;
    cluster.change_plan(&user.user_id, "pro").await;
    let (home, elsewhere) = (&cluster.gateways[0], &cluster.gateways[1]);

    // A run nobody drops: what every cut run must add up to.
    let (mut steady, _) = WsClient::connected(elsewhere, &user.access_token).await;
    steady
        .send_json(run_agent(&Uuid::new_v4().to_string()))
        .await;
    let Received::Json(started) = steady.recv().await else {
        panic!("no agent_started")
    };
    let mut whole = vec![started];
    whole.extend(rest(&mut steady, 1).await);
    let expected = shape(&whole);
    assert_eq!(expected.0.first(), Some(&"agent_started"));

    let last = whole
        .last()
        .and_then(|frame| frame["seq"].as_u64())
        .expect("a seq");
    for cut_after in 0..last {
        let proxy = FaultProxy::start(home.http_addr()).await.unwrap();
        let mut client =
            WsClient::attempt(proxy.address(), None, Present::Header(&user.access_token))
                .await
                .unwrap_or_else(|_| panic!("no connection through the proxy"));
        client.expect("connected").await;
        let run_id = Uuid::new_v4().to_string();
        client.send_json(run_agent(&run_id)).await;
        // Up to the boundary after seq `cut_after`. A client that reads slowly gets a run's
        // consecutive deltas merged into one frame, which may step over the boundary, or reach
        // the end of the run: then there is nothing to resume.
        let (mut seen, mut last_seq) = (Vec::new(), 0);
        while last_seq < cut_after && !seen.last().is_some_and(is_terminal) {
            seen.push(next_of_run(&mut client, &mut last_seq).await);
        }
        proxy.cut();
        drop(client);

        if !seen.last().is_some_and(is_terminal) {
            let (mut again, _) = WsClient::connected(elsewhere, &user.access_token).await;
            seen.extend(recover(&mut again, &run_id, last_seq).await);
        }
        assert_eq!(shape(&seen), expected, "cut after seq {cut_after}");
        let terminals = seen.iter().filter(|frame| is_terminal(frame)).count();
        assert_eq!(terminals, 1, "cut after seq {cut_after}: {seen:?}");
    }
    // The steady run and one per cut: each counted once, however it was asked for again.
    let usage = cluster.usage_of(&user.user_id).await;
    assert_eq!(usage["agent_runs"], last + 1);
}
