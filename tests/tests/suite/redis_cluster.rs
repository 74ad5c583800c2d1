//! The whole deployment on a Redis Cluster (`REDIS_URL=redis+cluster://…`): three real
//! `redis-server` masters, every service on them. Two gateways still behave as one (events
//! and revocations cross nodes, connection leases are counted across them), and a user's
//! rate limit holds, with its keys hashed to whichever shard owns the user's slot.

use tollgate_integration::*;
use tollgate_shared::{engine::Engine, testing_cluster::RedisCluster};

use crate::nodes::deliver_everywhere_and_close_both_at_logout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_a_redis_cluster_behave_as_one() {
    let redis = RedisCluster::start().await;
    let cluster = Cluster::builder()
        .gateways(2)
        .redis_url(&redis.url())
        .start()
        .await;
    deliver_everywhere_and_close_both_at_logout(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    // Closed: were the cluster unusable, nothing would be allowed (not a local count).
    let cluster = Cluster::builder()
        .redis_url(&redis.url())
        .usage_env("USAGE_REDIS_DOWN_MODE", "closed")
        .start()
        .await;
    let user = cluster.register().await;
    let mut allowed = 0;
    for n in 0..40 {
        let answer = cluster
            .consume(&user.user_id, "messages", 1, &format!("message-{n}"))
            .await
            .expect("usage-service answers");
        allowed += usize::from(answer.allowed);
    }
    assert_eq!(
        allowed, 30,
        "the free plan's 30 messages a minute, counted on the cluster"
    );

    // The bucket lives on the cluster, under the user's hash tag.
    let engine = Engine::redis(&redis.url(), &cluster.prefix).await.unwrap();
    let mut conn = engine.redis_multiplexed().unwrap();
    let bucket = engine.key(&format!("usage:gcra:{{{}}}:messages", user.user_id));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "{bucket} is on the cluster");
}
