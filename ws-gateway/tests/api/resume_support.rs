//! What the resume tests share: an agent that streams numbered deltas, a client's record of
//! one run that checks every frame follows the last, and the drop-and-resume walk the one-node
//! and two-node tests both take.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, Delta, GatewayMessage, agent_message::Kind, gateway_message,
};
use ws_gateway::{Config, agent::LocalAgent};

use crate::helpers::*;

/// An agent that streams `deltas` numbered fragments, `pause` apart, then completes with
/// their concatenation; a cancel ends it at once.
#[derive(Debug)]
pub struct Streamer {
    pub deltas: usize,
    pub size: usize,
    pub pause: Duration,
}

impl Streamer {
    fn fragment(&self, i: usize) -> String {
        format!("{i:04}{}|", "x".repeat(self.size.saturating_sub(5)))
    }

    pub fn answer(&self) -> String {
        (0..self.deltas).map(|i| self.fragment(i)).collect()
    }
}

#[async_trait::async_trait]
impl LocalAgent for Streamer {
    async fn run(
        &self,
        mut inbound: ReceiverStream<GatewayMessage>,
        outbound: mpsc::Sender<AgentMessage>,
    ) {
        let send = |kind| outbound.send(AgentMessage { kind: Some(kind) });
        let _start = inbound.next().await;
        for i in 0..self.deltas {
            tokio::select! {
                message = inbound.next() => match message {
                    Some(GatewayMessage { kind: Some(gateway_message::Kind::Cancel(_)) }) | None => return,
                    Some(_) => {}
                },
                () = tokio::time::sleep(self.pause) => {}
            }
            let text = self.fragment(i);
            if send(Kind::Delta(Delta { text })).await.is_err() {
                return;
            }
        }
        let output = self.answer();
        let _ = send(Kind::Completed(Completed { output })).await;
    }
}

pub fn is_terminal(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("agent_completed" | "agent_failed" | "run_cancelled")
    ) || (frame["type"] == "error" && frame["code"] == "agent_unavailable")
}

/// What a client has of one run: the last seq, the streamed text, the terminal events.
#[derive(Debug, Default)]
pub struct Seen {
    pub last_seq: u64,
    pub text: String,
    pub terminals: Vec<Value>,
    pub frames: usize,
}

impl Seen {
    /// Takes one frame of the run, checking that it follows what came before: a delta frame
    /// may stand for several deltas merged (its seq is the last of them); any other frame is
    /// exactly the next record.
    pub fn take(&mut self, frame: Value) {
        let seq = frame["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq: {frame}"));
        if frame["type"] == "agent_delta" {
            assert!(
                seq > self.last_seq,
                "a repeat or a step back: {frame} after {}",
                self.last_seq
            );
            self.text.push_str(frame["text"].as_str().unwrap());
        } else {
            assert_eq!(seq, self.last_seq + 1, "a gap or a repeat: {frame}");
        }
        if is_terminal(&frame) {
            self.terminals.push(frame);
        }
        self.last_seq = seq;
        self.frames += 1;
    }

    /// Reads frames of the run until its terminal event, or until `limit` frames.
    pub async fn read(&mut self, client: &mut WsClient, limit: usize) {
        let mut read = 0;
        while self.terminals.is_empty() && read < limit {
            let Received::Json(frame) = client.recv().await else {
                panic!("the connection ended mid-run after seq {}", self.last_seq);
            };
            self.take(frame);
            read += 1;
        }
    }
}

pub async fn gateway_with(
    agent: Streamer,
    tweak: impl FnOnce(&mut Config),
) -> (Arc<Services>, Gateway) {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    tweak(&mut config);
    let gateway = Gateway::start_with_agent(config, Arc::new(agent)).await;
    (services, gateway)
}

pub async fn start_run(client: &mut WsClient) -> (String, Value) {
    client
        .send_json(json!({"type": "run_agent", "id": "r1", "agent": "demo", "input": "go"}))
        .await;
    let started = client.expect("agent_started").await;
    (started["run_id"].as_str().unwrap().to_owned(), started)
}

/// Whether `gateway` comes to answer a resume of `run_id` (on a new connection each try)
/// with `unknown_run` within the tests' patience.
pub async fn forgotten(gateway: &Gateway, token: &str, run_id: &str) -> bool {
    eventually(PATIENCE, || async {
        let (mut probe, _) = gateway.connected(token).await;
        probe
            .send_json(json!({"type": "resume_run", "run_id": run_id, "after_seq": 0}))
            .await;
        let Received::Json(answer) = probe.recv().await else {
            return false;
        };
        answer["type"] == "error" && answer["code"] == "unknown_run"
    })
    .await
}

pub async fn resume(client: &mut WsClient, run_id: &str, after_seq: u64) -> Value {
    client
        .send_json(
            json!({"type": "resume_run", "id": "again", "run_id": run_id, "after_seq": after_seq}),
        )
        .await;
    client.expect("run_resumed").await
}

/// A run over at once: agent_started, two deltas, agent_completed.
pub fn two_quick_deltas() -> Streamer {
    Streamer {
        deltas: 2,
        size: 16,
        pause: Duration::ZERO,
    }
}

/// The streamer every drop test runs: agent_started, six deltas, agent_completed.
pub fn six_deltas() -> Streamer {
    Streamer {
        deltas: 6,
        size: 16,
        pause: Duration::from_millis(40),
    }
}

pub async fn next_frame(client: &mut WsClient) -> Value {
    match client.recv().await {
        Received::Json(frame) => frame,
        other => panic!("the connection ended: {other:?}"),
    }
}

/// What a client does after it dropped before it saw `agent_started` of the run it asked for
/// under `run_id`: it resumes the run, asks for it again under the same id if no node has it,
/// and resumes again if that finds it was started meanwhile. Returns what it saw of the run.
pub async fn recover_unseen_start(client: &mut WsClient, run_id: &str) -> Seen {
    let mut seen = Seen::default();
    for _ in 0..100 {
        client
            .send_json(
                json!({"type": "resume_run", "id": "again", "run_id": run_id, "after_seq": 0}),
            )
            .await;
        let answer = next_frame(client).await;
        if answer["type"] == "run_resumed" {
            assert_eq!(answer["recovered"], true, "{answer}");
            seen.read(client, usize::MAX).await;
            return seen;
        }
        assert_eq!(answer["code"], "unknown_run", "{answer}");
        client
            .send_json(json!({"type": "run_agent", "id": "anew", "agent": "demo", "input": "go", "run_id": run_id}))
            .await;
        let answer = next_frame(client).await;
        if answer["type"] == "agent_started" {
            assert_eq!(answer["run_id"], run_id);
            seen.take(answer);
            seen.read(client, usize::MAX).await;
            return seen;
        }
        // Started meanwhile by the request the client dropped (whose node may not have
        // written its first event yet): resume it, after a pause as a client would.
        assert_eq!(answer["code"], "duplicate_run", "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} was neither resumed nor started");
}

/// For a drop before the first frame of a run started on `first` and after each of its seven
/// frames: a new connection to `then` gets the rest of the run exactly once, and nothing
/// after it, and the run is counted once.
pub async fn drop_after_every_event_and_resume_on(first: &Gateway, then: &Gateway, token: &str) {
    let answer = six_deltas().answer();
    for _ in 0..3 {
        let run_id = uuid::Uuid::new_v4().to_string();
        let (mut dropped, _) = first.connected(token).await;
        dropped
            .send_json(json!({"type": "run_agent", "id": "r1", "agent": "demo", "input": "go", "run_id": run_id}))
            .await;
        drop(dropped);
        let (mut client, _) = then.connected(token).await;
        let seen = recover_unseen_start(&mut client, &run_id).await;
        assert_eq!(seen.text, answer, "dropped before agent_started");
        assert_eq!(seen.terminals.len(), 1, "{:?}", seen.terminals);
        assert_eq!(seen.terminals[0]["type"], "agent_completed");
    }
    for frames_before_drop in 1..=7 {
        let (mut dropped, _) = first.connected(token).await;
        let (run_id, started) = start_run(&mut dropped).await;
        let mut seen = Seen::default();
        seen.take(started);
        seen.read(&mut dropped, frames_before_drop - 1).await;
        drop(dropped);

        let (mut client, _) = then.connected(token).await;
        let resumed = resume(&mut client, &run_id, seen.last_seq).await;
        assert_eq!(resumed["recovered"], true, "{resumed}");
        assert_eq!(
            (resumed["run_id"].as_str(), resumed["id"].as_str()),
            (Some(&*run_id), Some("again"))
        );
        seen.read(&mut client, usize::MAX).await;
        assert_eq!(
            seen.text, answer,
            "dropped after {frames_before_drop} frames"
        );
        assert_eq!(seen.terminals.len(), 1);
        assert_eq!(seen.terminals[0]["type"], "agent_completed");
        assert_eq!(
            seen.terminals[0]["id"], "again",
            "a resumed run answers the resume"
        );
        // The same resume again repeats nothing, and nothing else of the run follows.
        assert_eq!(
            resume(&mut client, &run_id, seen.last_seq).await["recovered"],
            true
        );
        client.send_json(json!({"type": "ping", "id": "p"})).await;
        assert_eq!(client.expect("pong").await["id"], "p");
    }
}
