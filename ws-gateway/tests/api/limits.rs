//! Limits: connection attempts per address, connections per plan, messages per minute.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{both_backends, helpers::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_attempts_from_one_address_get_429() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.connect_rate = 3;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    for _ in 0..3 {
        let mut client = gateway.connect(Present::Nothing).await.unwrap();
        client.send(Message::Close(None)).await;
    }
    let refused = gateway
        .connect(Present::Header(&pair.access_token))
        .await
        .expect_err("the fourth attempt in a minute is refused");
    assert_eq!((refused.status, refused.code()), (429, "rate_limited"));
    let retry_after: u64 = refused.retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
}

async fn the_plan_caps_concurrent_connections(backend: Backend) {
    let services = Services::spawn(backend).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut first, _) = gateway.connected(&pair.access_token).await;
    let (_second, _) = gateway.connected(&pair.access_token).await;

    // Free allows two: a third on the upgrade request gets 429 ...
    let refused = gateway
        .connect(Present::Header(&pair.access_token))
        .await
        .expect_err("a third connection is refused");
    assert_eq!(
        (refused.status, refused.code()),
        (429, "too_many_connections")
    );
    assert!(refused.retry_after.is_some());
    // ... and in-band, 4009.
    let mut in_band = gateway
        .connect(Present::InBand(&pair.access_token))
        .await
        .unwrap();
    assert_eq!(in_band.closed().await, 4009);

    // Closing one frees its slot.
    first.send(Message::Close(None)).await;
    assert!(matches!(
        first.recv().await,
        Received::Close(_) | Received::End
    ));
    let (_third, _) = gateway.connected(&pair.access_token).await;

    // Pro allows ten.
    services.change_plan(&pair.user_id, "pro").await;
    let mut more = Vec::new();
    for _ in 0..3 {
        let (client, connected) = gateway.connected(&pair.access_token).await;
        assert_eq!(connected["plan"], "pro");
        more.push(client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_messages_is_rate_limited_then_closed_with_4008() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let mut counted = 0;
    let mut limited = 0;
    // Free allows 30 messages a minute (a burst of 30, then one every 2 s): well within 200
    // sends, five denials in a row close the connection.
    for n in 0..200 {
        client
            .send_json(json!({"type": "cancel_run", "id": n, "run_id": "none"}))
            .await;
        match client.recv().await {
            Received::Json(reply) if reply["code"] == "unknown_run" => counted += 1,
            Received::Json(reply) if reply["type"] == "rate_limited" => {
                assert_eq!(reply["id"], n);
                assert!(reply["retry_after_ms"].as_u64().unwrap() > 0, "{reply}");
                limited += 1;
            }
            Received::Close(code) => {
                assert_eq!(code, Some(4008));
                assert!(counted >= 30, "{counted} messages before the limit");
                assert!(limited >= 5);
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("never closed: {counted} messages counted, {limited} rate_limited");
}

/// Pings are keepalive, not usage: the gateway answers them itself, never counts them (the
/// plan's messages a minute stay for real messages), and limits them per connection, so a
/// flood of pings is refused and then closed like any other abuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_never_counted_and_a_flood_of_them_is_closed_with_4008() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    for n in 0..10 {
        client.send_json(json!({"type": "ping", "id": n})).await;
        assert_eq!(client.expect("pong").await["id"], n);
    }
    // The plan's whole message allowance is still there for real messages, and not one more.
    for n in 0..30 {
        let reply = client.metered(&format!("m{n}")).await;
        assert_eq!(reply["code"], "unknown_run", "message {n}: {reply}");
    }
    assert_eq!(client.metered("over").await["type"], "rate_limited");

    // A flood of pings: refused with a retry hint, then closed.
    let mut limited = 0;
    for n in 0..200 {
        let id = format!("flood-{n}");
        client.send_json(json!({"type": "ping", "id": id})).await;
        match client.recv().await {
            Received::Json(reply) if reply["type"] == "pong" => {}
            Received::Json(reply) if reply["type"] == "rate_limited" => {
                assert_eq!(reply["id"], id);
                assert!(reply["retry_after_ms"].as_u64().unwrap() > 0, "{reply}");
                limited += 1;
            }
            Received::Close(code) => {
                assert_eq!(code, Some(4008));
                // The message over the rate was the first of five refusals in a row.
                assert!(limited >= 4, "{limited}");
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("a flood of pings was never stopped");
}

both_backends!(the_plan_caps_concurrent_connections);
