//! The connection logic over in-memory channels instead of a socket: each close code and bad
//! frame gets a sharp test. auth-service and usage-service are unreachable here (a closed
//! port), which is itself a case: metered messages answer `dependency_unavailable`.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Message;
use futures::{SinkExt, StreamExt, channel::mpsc};
use serde_json::{Value, json};
use tollgate_shared::{shutdown::Shutdown, time::unix_now};
use uuid::Uuid;

use crate::{
    Application, Config, connection, error::CloseCode, session::Session, state::Shared,
    usage::Profile, validation::Identity,
};

struct Harness {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    session: Option<Session>,
    to_server: mpsc::Sender<Result<Message, axum::Error>>,
    from_server: mpsc::Receiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

fn session(expires_in: i64) -> Session {
    Session {
        identity: Identity {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            expires_at: unix_now() + expires_in,
        },
        profile: Profile {
            plan: "free".into(),
            roles: vec![],
        },
        lease_held: false,
    }
}

async fn start(session: Option<Session>, tweak: impl FnOnce(&mut Config)) -> Harness {
    // Port 9 (discard) on loopback: nothing listens, every call fails at once.
    let mut config = Config::for_tests("http://127.0.0.1:9", "http://127.0.0.1:9");
    config.service_client_secret = "unit-test-secret-0123456789".to_owned().into();
    tweak(&mut config);
    let shutdown = Shutdown::new();
    let app = Application::build(config, shutdown.clone()).await.unwrap();
    let shared = app.shared();
    let (to_server, incoming) = mpsc::channel(16);
    let (outgoing, from_server) = mpsc::channel(256);
    let sink = outgoing.sink_map_err(axum::Error::new);
    let slot = shared.reserve_slot().unwrap();
    let task = tokio::spawn(connection::run(
        Arc::clone(&shared),
        sink,
        incoming,
        "c1".into(),
        slot,
        session.clone(),
        None,
    ));
    Harness {
        shared,
        shutdown,
        session,
        to_server,
        from_server,
        task,
    }
}

impl Harness {
    async fn send(&mut self, message: Message) {
        self.to_server.send(Ok(message)).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(10), self.from_server.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
    }

    async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads up to the close frame; answers it as a client would, and waits for the task.
    async fn close_code(mut self) -> u16 {
        let code = loop {
            if let Message::Close(frame) = self.next().await {
                break frame.expect("a close frame with a code").code;
            }
        };
        let _ = self.to_server.send(Ok(Message::Close(None))).await;
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the connection task ends")
            .unwrap();
        code
    }
}

#[tokio::test]
async fn authenticated_connections_start_with_connected() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    let connected = harness.json().await;
    let identity = harness.session.as_ref().unwrap().identity;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["connection_id"], "c1");
    assert_eq!(connected["user_id"], identity.user_id.to_string());
    assert_eq!(connected["session_id"], identity.session_id.to_string());
    assert_eq!(connected["plan"], "free");
    assert_eq!(connected["expires_at"], identity.expires_at);
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    harness.send(Message::Binary(vec![1, 2].into())).await;
    assert_eq!(harness.close_code().await, 1003);
}

#[tokio::test]
async fn malformed_frames_are_answered_then_close_with_1008() {
    let mut harness = start(Some(session(600)), |config| config.max_bad_frames = 2).await;
    harness.json().await;
    harness.send(Message::Text("{".into())).await;
    let error = harness.json().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    harness.send_json(json!({"type": "nope", "id": 9})).await;
    assert_eq!(harness.json().await["id"], 9);
    assert_eq!(harness.close_code().await, 1008);
}

#[tokio::test]
async fn a_well_formed_request_ends_a_run_of_bad_frames() {
    let mut harness = start(Some(session(600)), |config| config.max_bad_frames = 2).await;
    harness.json().await;
    for round in 0..3 {
        harness.send(Message::Text("{".into())).await;
        assert_eq!(harness.json().await["code"], "bad_request", "round {round}");
        harness
            .send_json(json!({"type": "ping", "id": round}))
            .await;
        assert_eq!(harness.json().await, json!({"type": "pong", "id": round}));
    }
    harness.send(Message::Text("{".into())).await;
    harness.send(Message::Text("{".into())).await;
    assert_eq!(harness.close_code().await, 1008);
}

#[tokio::test]
async fn no_authentication_in_time_closes_with_4001() {
    let harness = start(None, |config| {
        config.auth_timeout = Duration::from_millis(100)
    })
    .await;
    assert_eq!(harness.close_code().await, 4001);
}

#[tokio::test]
async fn a_first_message_other_than_auth_closes_with_4001() {
    let mut harness = start(None, |_| {}).await;
    harness.send_json(json!({"type": "ping"})).await;
    assert_eq!(harness.close_code().await, 4001);
}

#[tokio::test]
async fn an_expiring_token_is_warned_about_then_closed_with_4003() {
    let mut harness = start(Some(session(1)), |config| {
        config.jwt_leeway = Duration::ZERO;
    })
    .await;
    assert_eq!(harness.json().await["type"], "connected");
    let warning = harness.json().await;
    assert_eq!(warning["type"], "token_expiring");
    assert!(warning["expires_in_ms"].as_u64().unwrap() <= 1_000);
    assert_eq!(harness.close_code().await, 4003);
}

#[tokio::test]
async fn a_revoked_session_closes_with_4004() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    let identity = harness.session.as_ref().unwrap().identity;
    let closed = harness.shared.hub.close_session(
        identity.user_id,
        identity.session_id,
        CloseCode::SessionRevoked,
    );
    assert_eq!(closed, 1);
    assert_eq!(harness.close_code().await, 4004);
}

#[tokio::test]
async fn metered_messages_without_usage_service_answer_dependency_unavailable() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    harness
        .send_json(json!({"type": "cancel_run", "id": "m", "run_id": "r"}))
        .await;
    let error = harness.json().await;
    assert_eq!(error["code"], "dependency_unavailable");
    assert_eq!(error["id"], "m");
}

#[tokio::test]
async fn pings_are_answered_without_usage_service() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    harness.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(harness.json().await, json!({"type": "pong", "id": "p"}));
}

#[tokio::test]
async fn a_flood_of_pings_is_refused_then_closed_with_4008() {
    let mut harness = start(Some(session(600)), |config| {
        config.max_rate_violations = 3;
    })
    .await;
    harness.json().await;
    let mut pongs = 0;
    loop {
        harness.send_json(json!({"type": "ping"})).await;
        let reply = harness.json().await;
        if reply["type"] == "rate_limited" {
            assert!(reply["retry_after_ms"].as_u64().unwrap() > 0, "{reply}");
            break;
        }
        assert_eq!(reply["type"], "pong");
        pongs += 1;
    }
    assert_eq!(pongs, 10, "the burst");
    for _ in 0..2 {
        harness.send_json(json!({"type": "ping"})).await;
    }
    assert_eq!(harness.close_code().await, 4008);
}

#[tokio::test]
async fn auth_on_an_authenticated_connection_counts_as_a_bad_frame() {
    let mut harness = start(Some(session(600)), |config| config.max_bad_frames = 2).await;
    harness.json().await;
    harness.send(Message::Text("{".into())).await;
    assert_eq!(harness.json().await["code"], "bad_request");
    harness
        .send_json(json!({"type": "auth", "id": "a", "token": "x.y.z"}))
        .await;
    assert_eq!(harness.json().await["code"], "already_authenticated");
    assert_eq!(harness.close_code().await, 1008);
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    harness.shutdown.trigger();
    assert_eq!(harness.close_code().await, 1001);
}

#[tokio::test]
async fn a_client_close_ends_the_connection_and_frees_its_slot() {
    let mut harness = start(Some(session(600)), |_| {}).await;
    harness.json().await;
    harness.send(Message::Close(None)).await;
    tokio::time::timeout(Duration::from_secs(10), &mut harness.task)
        .await
        .expect("the connection ends")
        .unwrap();
    assert_eq!(harness.shared.metrics.active_connections.get(), 0);
}

/// The state machine of a connection lives as long as the connection: one-off steps are
/// boxed so that it stays small (an idle connection should cost well under 10 KiB in all).
#[tokio::test]
async fn the_connection_state_machine_stays_small() {
    let mut config = Config::for_tests("http://127.0.0.1:9", "http://127.0.0.1:9");
    config.service_client_secret = "unit-test-secret-0123456789".to_owned().into();
    let app = Application::build(config, Shutdown::new()).await.unwrap();
    let shared = app.shared();
    let (_to_server, incoming) = mpsc::channel::<Result<Message, axum::Error>>(1);
    let (outgoing, _from_server) = mpsc::channel(1);
    let sink = outgoing.sink_map_err(axum::Error::new);
    let slot = shared.reserve_slot().unwrap();
    let future = connection::run(
        Arc::clone(&shared),
        sink,
        incoming,
        "c1".into(),
        slot,
        Some(session(600)),
        None,
    );
    let size = std::mem::size_of_val(&future);
    assert!(size < 4096, "the connection future takes {size} bytes");
}
