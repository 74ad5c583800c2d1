//! Whole runs over gRPC, health, reflection and shutdown.

use std::time::Duration;

use demo_agent::Config;
use tollgate_proto::agent::v1::{
    Cancel, Failed, agent_backend_server::SERVICE_NAME, agent_message::Kind, gateway_message,
};
use tollgate_shared::testing::{eventually, reflect};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Call, TestApp, decision, deltas_and_output, start};

const INPUT: &str = "what is (2+3)*4? see https://docs.rs/tokio about websocket close codes";

fn label(kind: &Kind) -> String {
    match kind {
        Kind::Thinking(_) => "thinking".into(),
        Kind::Delta(_) => "delta".into(),
        Kind::ToolRequest(request) => format!("tool_request:{}:{}", request.call_id, request.tool),
        Kind::ToolResult(result) => format!("tool_result:{}", result.call_id),
        Kind::Completed(_) => "completed".into(),
        Kind::Failed(_) => "failed".into(),
    }
}

#[tokio::test]
async fn a_whole_run_streams_over_grpc_in_protocol_order() {
    let app = TestApp::spawn(Config::for_tests()).await;
    let mut client = app.client().await;
    let tools = ["calculator", "search", "word_count"];
    let mut call = Call::open(&mut client, None, start(INPUT, &tools))
        .await
        .expect("an unchecked agent accepts any call");
    let transcript = call.play(&["search"]).await;

    let mut labels: Vec<String> = transcript.iter().map(label).collect();
    labels.dedup();
    assert_eq!(
        labels,
        [
            "thinking",
            "tool_request:1:calculator",
            "tool_result:1",
            "tool_request:2:search",
            "tool_request:3:word_count",
            "tool_result:3",
            "delta",
            "completed",
        ],
        "the denied search has no result"
    );
    let results: Vec<serde_json::Value> = transcript
        .iter()
        .filter_map(|kind| match kind {
            Kind::ToolResult(result) => serde_json::from_str(&result.output_json).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        [
            serde_json::json!({"expression": "(2+3)*4", "value": 20}),
            serde_json::json!({"error": "the demo agent does not implement word_count"}),
        ]
    );
    let (deltas, output) = deltas_and_output(&transcript);
    assert_eq!(deltas, output);
    assert_eq!(
        output,
        "Tool results:\n- calculator: (2+3)*4 = 20\n- search: not run (plan_required)\n\
         - word_count: not implemented by the demo agent"
    );
    app.stop().await.expect("a clean shutdown");
}

#[tokio::test]
async fn a_cancel_ends_the_stream_promptly() {
    let mut config = Config::for_tests();
    config.think_delay = Duration::from_secs(3600);
    let app = TestApp::spawn(config).await;
    let mut client = app.client().await;
    let mut call = Call::open(&mut client, None, start(INPUT, &["search"]))
        .await
        .expect("accepted");
    assert!(matches!(call.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(call.recv().await, Some(Kind::ToolRequest(_))));
    call.send(decision("1", true)).await;
    call.send(gateway_message::Kind::Cancel(Cancel {
        reason: "client".into(),
    }))
    .await;
    assert_eq!(
        call.recv().await,
        None,
        "nothing after the cancel, not even the result"
    );
}

#[tokio::test]
async fn health_and_reflection_name_only_the_agent_backend() {
    let app = TestApp::spawn(Config::for_tests()).await;
    let reflected = reflect(app.addr, SERVICE_NAME).await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        SERVICE_NAME,
    ];
    assert_eq!(reflected.v1, expected);
    assert_eq!(reflected.v1alpha, expected);
    assert!(reflected.v1alpha_files_for_symbol > 0);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let serving = eventually(Duration::from_secs(5), || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: SERVICE_NAME.into(),
            };
            health
                .check(request)
                .await
                .is_ok_and(|response| response.into_inner().status == ServingStatus::Serving as i32)
        }
    })
    .await;
    assert!(serving, "an agent without a caller check serves at once");
}

#[tokio::test]
async fn shutdown_fails_the_runs_still_waiting_after_the_grace_period() {
    let mut config = Config::for_tests();
    config.shutdown_grace = Duration::from_millis(200);
    let app = TestApp::spawn(config).await;
    let mut client = app.client().await;
    let mut call = Call::open(&mut client, None, start(INPUT, &["search"]))
        .await
        .expect("accepted");
    assert!(matches!(call.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(call.recv().await, Some(Kind::ToolRequest(_))));
    let stopped = tokio::spawn(app.stop());
    let failed = Kind::Failed(Failed {
        reason: "the agent is shutting down".into(),
    });
    assert_eq!(call.recv().await, Some(failed));
    assert_eq!(call.recv().await, None);
    stopped
        .await
        .expect("no panic")
        .expect("the server stops cleanly");
}
