//! Bad frames and slow clients: every misbehaviour gets its close code, never a crash.

use serde_json::json;
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_oversized_and_invalid_utf8_frames_get_their_close_codes() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(client.closed().await, 1003);

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let big = json!({"type": "ping", "id": "x".repeat(70 * 1024)}).to_string();
    client.send(Message::text(big)).await;
    assert_eq!(client.closed().await, 1009);

    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(invalid)).await;
    assert_eq!(client.closed().await, 1007);

    // Before authentication too.
    let mut anonymous = gateway.connect(Present::Nothing).await.unwrap();
    anonymous.send(Message::binary(vec![0])).await;
    assert_eq!(anonymous.closed().await, 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_answered_then_repeated_abuse_closes_with_1008() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;

    // One bad frame is answered, and a good one resets the count.
    client.send(Message::text("{not json")).await;
    assert_eq!(client.expect("error").await["code"], "bad_request");
    client.send_json(json!({"type": "ping"})).await;
    client.expect("pong").await;

    let bad = [
        json!({"type": "teleport", "id": "t1"}).to_string(),
        json!({"type": "ping", "unexpected": true}).to_string(),
        "[]".to_owned(),
    ];
    for (n, frame) in bad.iter().enumerate() {
        client.send(Message::text(frame.clone())).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], "bad_request", "{frame}");
        if n == 0 {
            assert_eq!(error["id"], "t1");
            assert!(error["message"].as_str().unwrap().contains("teleport"));
        }
    }
    assert_eq!(client.closed().await, 1008);
}

/// `auth` on a connection that is already authenticated is not a request the gateway serves:
/// it is refused like a malformed frame (it is not metered, so it must not be free either),
/// and repeating it closes the connection with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_auth_on_an_authenticated_connection_closes_with_1008() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client.send(Message::text("{not json")).await;
    assert_eq!(client.expect("error").await["code"], "bad_request");
    for n in 0..2 {
        client
            .send_json(json!({"type": "auth", "id": n, "token": pair.access_token}))
            .await;
        let error = client.expect("error").await;
        assert_eq!(
            (error["code"].as_str(), error["id"].as_u64()),
            (Some("already_authenticated"), Some(n))
        );
    }
    assert_eq!(client.closed().await, 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_4010_and_memory_stays_bounded() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.send_queue = 8;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let (mut slow, _) = gateway.connected(&pair.access_token).await;
    let token = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;

    // 16 KiB events until the gateway gives up on the client, which reads nothing meanwhile:
    // the socket buffers fill, then the eight-message queue, then the connection is closed.
    let body =
        json!({"user_id": pair.user_id, "data": {"blob": "x".repeat(16 * 1024)}}).to_string();
    let mut published = 0;
    let closes = "tollgate_gateway_connections_closed_total{code=\"4010\"}";
    while gateway.metric(closes).await < 1.0 {
        assert!(published < 5_000, "no 4010 after {published} events");
        for _ in 0..20 {
            assert_eq!(gateway.publish(Some(&token), &body).await.status(), 202);
            published += 1;
        }
    }
    // What the client finally reads: what fitted in the buffers, then 4010.
    let mut received = 0;
    let code = loop {
        match slow.recv().await {
            Received::Json(event) => {
                assert_eq!(event["type"], "event");
                received += 1;
            }
            Received::Close(code) => break code,
            Received::End => panic!("no close frame after {received} events"),
        }
    };
    assert_eq!(code, Some(4010));
    assert!(
        received < published,
        "{received} of {published}: nothing was dropped?"
    );
    assert!(
        gateway
            .metric("tollgate_gateway_send_queue_drops_total")
            .await
            >= 1.0
    );
    assert!(
        eventually(PATIENCE, || async {
            gateway.metric("tollgate_gateway_connections_active").await == 0.0
        })
        .await,
        "the slow connection is gone"
    );
}
