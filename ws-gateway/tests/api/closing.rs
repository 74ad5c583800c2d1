//! The two close codes no misbehaving client provokes: a client's own normal closure (1000),
//! and an internal error (1011) when an agent executor breaks.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};
use tokio_util::sync::CancellationToken;
use ws_gateway::agent::{Executor, RunEnd, RunRequest, Step, ToolGate};

use crate::helpers::*;

/// An executor with a bug: it panics mid-run.
#[derive(Debug)]
struct Broken;

#[async_trait::async_trait]
impl Executor for Broken {
    async fn run(
        &self,
        _request: RunRequest,
        _gate: &dyn ToolGate,
        _steps: &mpsc::Sender<Step>,
        _cancel: CancellationToken,
    ) -> RunEnd {
        panic!("an executor bug");
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
async fn a_crashed_run_closes_the_connection_with_1011_and_the_gateway_serves_on() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start_with_executor(services.gateway_config(), Arc::new(Broken)).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "r1", "agent": "demo", "input": "1+1", "tools": [],
        }))
        .await;
    assert_eq!(client.closed().await, 1011);

    // Only that connection paid for the bug.
    let (mut again, _) = gateway.connected(&pair.access_token).await;
    again.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(again.expect("pong").await["id"], "p");
}
