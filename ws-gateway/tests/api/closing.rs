//! A client's own normal closure (1000), and an agent that crashes: only its run pays for it.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};
use tollgate_proto::agent::v1::{AgentMessage, GatewayMessage};
use ws_gateway::agent::LocalAgent;

use crate::helpers::*;

/// An agent with a bug: it panics mid-run.
#[derive(Debug)]
struct Broken;

#[async_trait::async_trait]
impl LocalAgent for Broken {
    async fn run(
        &self,
        _inbound: ReceiverStream<GatewayMessage>,
        _outbound: mpsc::Sender<AgentMessage>,
    ) {
        panic!("an agent bug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_closure_by_the_client_is_answered_with_1000() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(client.closed().await, 1000);
    // The connection is gone from the gateway's books.
    assert!(
        eventually(PATIENCE, || async {
            gateway.metric("tollgate_gateway_connections_active").await == 0.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_fails_its_run_and_the_connection_serves_on() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start_with_agent(services.gateway_config(), Arc::new(Broken)).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "r1", "agent": "demo", "input": "1+1", "tools": [],
        }))
        .await;
    assert_eq!(client.expect("agent_started").await["id"], "r1");
    let failed = client.expect("agent_failed").await;
    assert_eq!(failed["reason"], "backend_lost");
    assert_eq!(failed["id"], "r1");

    // Only that run paid for the bug.
    client.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(client.expect("pong").await["id"], "p");
}
