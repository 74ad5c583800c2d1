//! Interest-based fan-out: a gateway node hears a user's events only while that user is
//! connected to it, on one Redis and on a Redis Cluster (sharded pub/sub).

use std::time::Duration;

use serde_json::json;
use tollgate_shared::{engine::Engine, testing_cluster::RedisCluster};
use ws_gateway::history::{EventHistory, HistorySettings};

use crate::{
    events::{finish, publish_to, resumed},
    helpers::*,
};

const RECEIVED: &str = "tollgate_gateway_bus_events_received_total";

/// How many processes are subscribed to `user`'s channel on a single Redis.
async fn subscribers(engine: &Engine, user: &str) -> i64 {
    let mut conn = engine.redis_multiplexed().unwrap();
    let channel = engine.key(&format!("gateway:events:{{{user}}}"));
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_only_the_node_its_user_is_connected_to() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(Gateway::start(services.gateway_config()).await);
    }
    let engine = Engine::redis(&redis_url(), &services.redis_prefix)
        .await
        .unwrap();
    let publisher = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;
    let alice = services.register().await;
    assert_eq!(subscribers(&engine, &alice.user_id).await, 0);

    // Connected to node 0 only; events published through every node.
    let (mut client, _) = nodes[0].connected(&alice.access_token).await;
    assert_eq!(subscribers(&engine, &alice.user_id).await, 1);
    const EVENTS: u64 = 20;
    for n in 1..=EVENTS {
        let through = &nodes[n as usize % 4];
        publish_to(through, &publisher, &alice.user_id, json!({"n": n})).await;
    }
    for n in 1..=EVENTS {
        assert_eq!(client.expect("event").await["seq"], n);
    }
    let mut received = Vec::new();
    for node in &nodes {
        received.push(node.metric(RECEIVED).await);
    }
    assert_eq!(
        received,
        [EVENTS as f64, 0.0, 0.0, 0.0],
        "one Redis delivery per event, to the user's node only"
    );

    // After the user's last connection the node lets go of the channel.
    finish(client).await;
    assert!(
        eventually(PATIENCE, || async {
            subscribers(&engine, &alice.user_id).await == 0
        })
        .await,
        "node 0 unsubscribed"
    );
    publish_to(&nodes[1], &publisher, &alice.user_id, json!("unheard")).await;
    assert_eq!(nodes[0].metric(RECEIVED).await, EVENTS as f64);
}

/// The gateway's link to Redis is slow, so subscribing to a user's channel takes a while; an
/// event published the moment the client reads `connected` must still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_right_after_connected_is_not_missed() {
    let services = Services::spawn(Backend::PostgresRedis).await;
    let (proxy, proxied_url) = FaultProxy::in_front_of(&redis_url()).await.unwrap();
    let mut config = services.gateway_config();
    config.redis_url = Some(proxied_url.into());
    let gateway = Gateway::start(config).await;
    proxy.delay(Duration::from_millis(250));
    // Published straight to Redis, as another node would, without the proxy's delay.
    let engine = Engine::redis(&redis_url(), &services.redis_prefix)
        .await
        .unwrap();
    let history = EventHistory::new(
        engine,
        HistorySettings {
            ttl: Duration::from_secs(60),
            size: 10,
        },
    );
    let alice = services.register().await;
    let (mut client, _) = gateway.connected(&alice.access_token).await;
    let user = alice.user_id.parse().unwrap();
    assert_eq!(history.append_and_publish(user, "\"now\"").await, Ok(1));
    match client.recv_within(Duration::from_secs(5)).await {
        Some(Received::Json(event)) => {
            assert_eq!(
                (&event["type"], &event["seq"]),
                (&json!("event"), &json!(1))
            );
        }
        other => panic!("the event was missed: {other:?}"),
    }
    proxy.restore();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_events_are_sharded_kept_and_resumed() {
    let redis = RedisCluster::start().await;
    let services = Services::spawn(Backend::PostgresRedis).await;
    let config = || {
        let mut config = services.gateway_config();
        config.redis_url = Some(redis.url().into());
        config
    };
    let home = Gateway::start(config()).await;
    let elsewhere = Gateway::start(config()).await;
    let publisher = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;
    let alice = services.register().await;

    let (mut client, _) = home.connected(&alice.access_token).await;
    for n in 1..=3 {
        publish_to(&elsewhere, &publisher, &alice.user_id, json!({"n": n})).await;
    }
    for n in 1..=3 {
        assert_eq!(client.expect("event").await["seq"], n);
    }
    finish(client).await;
    publish_to(&elsewhere, &publisher, &alice.user_id, json!({"n": 4})).await;
    let (mut client, answer) = resumed(&home, &alice.access_token, 2).await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(answer["replayed"], 2);
    assert_eq!(client.expect("event").await["seq"], 3);
    assert_eq!(client.expect("event").await["seq"], 4);
    assert_eq!(
        elsewhere.metric(RECEIVED).await,
        0.0,
        "sharded: not broadcast"
    );
    // Each event reached the home node at most once. The fourth was published just after the
    // last connection closed, while the node's unsubscribe (applied in batches) may still have
    // been on its way: heard or not, it is never heard twice.
    let heard = home.metric(RECEIVED).await;
    assert!((3.0..=4.0).contains(&heard), "home heard {heard} events");

    // The history and the counter live on the user's shard, under the user's hash tag.
    let engine = Engine::redis(&redis.url(), &services.redis_prefix)
        .await
        .unwrap();
    let mut conn = engine.redis_multiplexed().unwrap();
    let stream = engine.key(&format!("gateway:events:{{{}}}:log", alice.user_id));
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(length, 4);
}
