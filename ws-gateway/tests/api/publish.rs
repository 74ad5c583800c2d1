//! The publish API and delivery to a user's connections.

use serde_json::json;

use crate::{both_backends, helpers::*};

async fn events_reach_every_connection_of_the_user_and_no_other(backend: Backend) {
    let services = Services::spawn(backend).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let (email, alice) = services.register_email().await;
    let alice_again = services.login(&email).await;
    let bob = services.register().await;
    let (mut first, _) = gateway.connected(&alice.access_token).await;
    let (mut second, _) = gateway.connected(&alice_again.access_token).await;
    let (mut other, _) = gateway.connected(&bob.access_token).await;
    let token = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;

    let body = json!({"user_id": alice.user_id, "data": {"n": 1, "text": "héllo"}});
    let response = gateway.publish(Some(&token), &body.to_string()).await;
    assert_eq!(response.status(), 202);
    for client in [&mut first, &mut second] {
        let event = client.expect("event").await;
        assert_eq!(event["data"], json!({"n": 1, "text": "héllo"}));
    }
    // Bob got nothing: his next frame is the answer to his own ping.
    other.send_json(json!({"type": "ping", "id": "b"})).await;
    assert_eq!(other.expect("pong").await["id"], "b");

    // A user with no connection is not an error.
    let nobody = json!({"user_id": uuid::Uuid::new_v4(), "data": {}});
    assert_eq!(
        gateway
            .publish(Some(&token), &nobody.to_string())
            .await
            .status(),
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_publish_token_and_a_valid_body() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let user = uuid::Uuid::new_v4();
    let good = json!({"user_id": user, "data": {"x": 1}}).to_string();
    let publisher = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;

    async fn refused(response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    }

    let (status, code) = refused(gateway.publish(None, &good).await).await;
    assert_eq!((status, code.as_str()), (401, "token_missing"));
    let (status, _) = refused(gateway.publish(Some("garbage"), &good).await).await;
    assert_eq!(status, 401);
    // A user's access token is not a service token.
    let pair = services.register().await;
    let (status, _) = refused(gateway.publish(Some(&pair.access_token), &good).await).await;
    assert_eq!(status, 401);
    // A service token for another audience.
    let for_usage = services
        .service_token("backend", "usage-service", &["publish"])
        .await;
    let (status, code) = refused(gateway.publish(Some(&for_usage), &good).await).await;
    assert_eq!((status, code.as_str()), (401, "wrong_audience"));
    // A service token without the publish scope.
    let outsider = services
        .service_token("outsider", "ws-gateway", &["usage.check"])
        .await;
    let (status, code) = refused(gateway.publish(Some(&outsider), &good).await).await;
    assert_eq!((status, code.as_str()), (403, "insufficient_scope"));

    for bad in [
        "not json".to_owned(),
        json!({"data": {}}).to_string(),
        json!({"user_id": "alice", "data": {}}).to_string(),
        json!({"user_id": user}).to_string(),
        json!({"user_id": user, "data": null}).to_string(),
        json!({"user_id": user, "data": {}, "extra": true}).to_string(),
    ] {
        let (status, code) = refused(gateway.publish(Some(&publisher), &bad).await).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{bad}");
    }
    let huge = json!({"user_id": user, "data": "x".repeat(100 * 1024)}).to_string();
    let (status, code) = refused(gateway.publish(Some(&publisher), &huge).await).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    assert_eq!(gateway.publish(Some(&publisher), &good).await.status(), 202);
}

both_backends!(events_reach_every_connection_of_the_user_and_no_other);

/// Redis is shared: anything that can PUBLISH on it (a misbehaving or compromised service) can
/// put a message on a user's event channel. One larger than the publish limit is dropped
/// and counted on arrival: no client receives it and the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_bus_message_is_dropped_and_counted() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let mut config = services.gateway_config();
    config.publish_max_bytes = 4096;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    let dropped = "tollgate_gateway_bus_messages_dropped_total{reason=\"oversized\"}";
    assert_eq!(gateway.metric(dropped).await, 0.0);

    let intruder = tollgate_shared::engine::Engine::redis(&redis_url(), &services.redis_prefix)
        .await
        .unwrap();
    let data = json!("x".repeat(64 * 1024));
    intruder
        .publish(
            &format!("gateway:events:{{{}}}", pair.user_id),
            format!("1 {data}"),
        )
        .await;
    assert!(
        eventually(PATIENCE, || async { gateway.metric(dropped).await == 1.0 }).await,
        "the oversized message was not counted"
    );

    // The next frame the client gets is a real event: the oversized one never arrived.
    let publisher = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;
    let body = json!({"user_id": pair.user_id, "data": {"n": 1}}).to_string();
    assert_eq!(gateway.publish(Some(&publisher), &body).await.status(), 202);
    assert_eq!(client.expect("event").await["data"], json!({"n": 1}));
    assert_eq!(gateway.metric(dropped).await, 1.0);
}
