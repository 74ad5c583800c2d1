//! What only a Redis Cluster asks of the limiter: replicas agree through it as through one
//! node, and a batch that spans users (so slots, so nodes) is split and answered in order.

use uuid::Uuid;

use super::*;
use tollgate_shared::engine::slot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_a_cluster_allow_the_limit_in_total() {
    let cluster = RedisCluster::start().await;
    let prefix = fresh_prefix();
    let first = cluster_limiter(&cluster, &prefix).await;
    let second = cluster_limiter(&cluster, &prefix).await;
    let allowed = allowed_of_64(&[first, second.clone()], Uuid::new_v4(), per_minute(30)).await;
    assert_eq!(allowed, 30);
    assert!(!second.redis_degraded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_batch_across_slots_is_answered_in_order() {
    let cluster = RedisCluster::start().await;
    let limiter = cluster_limiter(&cluster, &fresh_prefix()).await;
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let slots: Vec<u16> = users
        .iter()
        .map(|user| slot(user.to_string().as_bytes()))
        .collect();
    assert!(
        slots[0] != slots[1] || slots[1] != slots[2],
        "the batch spans slots"
    );

    let long = Duration::from_secs(60);
    let batch = [
        (users[0], "a", 1, long),
        (users[1], "a", 1, long),
        (users[0], "b", 1, long),
        (users[2], "a", 1, long),
        (users[1], "b", 1, long),
    ];
    let answers = limiter.acquire_leases(&batch).await.unwrap();
    assert_eq!(
        answers,
        [(true, 1), (true, 1), (false, 1), (true, 1), (false, 1)]
    );

    limiter
        .release_leases(&[(users[0], "a"), (users[1], "a")])
        .await
        .unwrap();
    let again = limiter
        .acquire_leases(&[(users[1], "b", 1, long), (users[0], "b", 1, long)])
        .await
        .unwrap();
    assert_eq!(again, [(true, 1), (true, 1)], "released slots are free");
    assert!(!limiter.redis_degraded());
}
