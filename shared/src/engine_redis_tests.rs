//! The engine on real Redis, the same behaviour on one node (`TEST_REDIS_URL`) and on a
//! three-master Redis Cluster started for the test: counters, broadcasts, and dynamic
//! subscriptions, including channels on every shard and a shard's process restarting.

use std::time::Duration;

use tokio::sync::broadcast;

use super::*;
use crate::testing::{redis_prefix, redis_url};
use crate::testing_cluster::RedisCluster;

const WAIT: Duration = Duration::from_secs(10);

/// Two engines (two processes) on one deployment prefix.
async fn pair(url: &str) -> (Engine, Engine) {
    let prefix = redis_prefix();
    let first = Engine::redis(url, &prefix)
        .await
        .expect("the first engine connects");
    let second = Engine::redis(url, &prefix)
        .await
        .expect("the second engine connects");
    (first, second)
}

async fn next(bus: &mut broadcast::Receiver<BusMessage>) -> BusMessage {
    tokio::time::timeout(WAIT, bus.recv())
        .await
        .expect("a message arrives in time")
        .expect("the bus is open")
}

/// `count` channels `user:{tag}` whose (prefixed) slot each master of a three-way even split
/// owns, `count` per master; on one node the split means nothing and costs nothing.
fn channels_on_every_shard(count: usize) -> Vec<Vec<String>> {
    let third = SLOTS / 3;
    let mut shards = vec![Vec::new(), Vec::new(), Vec::new()];
    for tag in 0.. {
        let channel = format!("user:{{{tag}}}");
        let shard = usize::from(slot(channel.as_bytes()) / third).min(2);
        if shards[shard].len() < count {
            shards[shard].push(channel);
        }
        if shards.iter().all(|shard| shard.len() == count) {
            break;
        }
    }
    shards
}

/// Publishes (again and again, as a subscription may still be on its way) until `payload`
/// arrives on `bus`, or `deadline` passes.
async fn publish_until_heard<F, Fut>(
    bus: &mut broadcast::Receiver<BusMessage>,
    deadline: Duration,
    payload: &str,
    mut publish: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let until = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < until {
        publish().await;
        let heard = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match bus.recv().await {
                    Ok(message) if message.payload == payload => return true,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        if heard == Ok(true) {
            return true;
        }
    }
    false
}

async fn counters_and_broadcasts(url: &str) {
    let (one, other) = pair(url).await;
    let window = Duration::from_secs(60);
    for key in ["throttle:{a}", "throttle:{b}", "throttle:{c}"] {
        assert_eq!(one.hit(key, window).await.value, 1);
        assert_eq!(
            other.hit(key, window).await.value,
            2,
            "counted on Redis, shared"
        );
        let peeked = one.peek(key).await;
        assert_eq!(peeked.value, 2);
        assert!(peeked.resets_in > Duration::ZERO && peeked.resets_in <= window);
        other.reset(key).await;
        assert_eq!(one.peek(key).await.value, 0);
    }

    let shutdown = Shutdown::new();
    let relay = other
        .spawn_relay(&["auth:revocations"], shutdown.clone())
        .unwrap();
    let mut heard = other.subscribe();
    let delivered = publish_until_heard(&mut heard, WAIT, "session-1", || {
        one.publish("auth:revocations", "session-1".into())
    })
    .await;
    assert!(delivered, "a broadcast reaches the other process");
    shutdown.trigger();
    relay.await.unwrap();
}

async fn interest_delivers_only_what_was_asked(url: &str) {
    let (publisher, subscriber) = pair(url).await;
    let shutdown = Shutdown::new();
    let (interest, task) = subscriber.interest(RelayLimit::default(), shutdown.clone());
    let mut bus = subscriber.subscribe();
    let shards = channels_on_every_shard(3);
    for shard in &shards {
        // [kept, dropped later, never asked]
        interest.subscribe(&shard[0]).await.unwrap();
        interest.subscribe(&shard[1]).await.unwrap();
    }
    // Counted: a second interest in a channel keeps it after one unsubscribe.
    interest.subscribe(&shards[0][0]).await.unwrap();
    interest.unsubscribe(&shards[0][0]).await.unwrap();
    let status = interest.status().await.unwrap();
    assert_eq!(
        status,
        InterestStatus {
            wanted: 6,
            subscribed: 6
        }
    );

    // Per shard one connection delivers in order: had the unasked channel been delivered, it
    // would have come first.
    for shard in &shards {
        publisher.publish_to(&shard[2], "unasked".into()).await;
        publisher.publish_to(&shard[0], "asked".into()).await;
        let message = next(&mut bus).await;
        assert_eq!(
            (message.channel.as_str(), message.payload.as_str()),
            (shard[0].as_str(), "asked")
        );
    }

    for shard in &shards {
        interest.unsubscribe(&shard[1]).await.unwrap();
    }
    let status = interest.status().await.unwrap();
    assert_eq!(
        status,
        InterestStatus {
            wanted: 3,
            subscribed: 3
        }
    );
    for shard in &shards {
        publisher.publish_to(&shard[1], "dropped".into()).await;
        publisher.publish_to(&shard[0], "still asked".into()).await;
        let message = next(&mut bus).await;
        assert_eq!(
            message.channel, shard[0],
            "nothing arrives after unsubscribe"
        );
    }

    assert_eq!(interest.subscribe("").await, Err(InterestError::BadChannel));
    let long = "x".repeat(MAX_CHANNEL_BYTES + 1);
    assert_eq!(
        interest.subscribe(&long).await,
        Err(InterestError::BadChannel)
    );
    shutdown.trigger();
    task.unwrap().await.unwrap();
    assert_eq!(
        interest.subscribe("user:{1}").await,
        Err(InterestError::Stopped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_counters_and_broadcasts() {
    counters_and_broadcasts(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counters_and_broadcasts() {
    let cluster = RedisCluster::start().await;
    counters_and_broadcasts(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_interest_delivers_only_what_was_asked() {
    interest_delivers_only_what_was_asked(&redis_url()).await;
}

/// A connection task that panics while it holds its user's subscription must not leave the
/// node subscribed for good: unwinding drops the interest, and the node lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_interest_is_given_back_when_dropped_even_by_a_panic() {
    let (_, subscriber) = pair(&redis_url()).await;
    let shutdown = Shutdown::new();
    let (interest, task) = subscriber.interest(RelayLimit::default(), shutdown.clone());
    let channel = format!("user:{{{}}}", redis_prefix());
    let both = |wanted| InterestStatus {
        wanted,
        subscribed: wanted,
    };
    let held = interest.hold(&channel).await.unwrap();
    assert_eq!(interest.status().await.unwrap(), both(1));
    let panicked = tokio::spawn(async move {
        let _held = held;
        panic!("a connection task fails");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(interest.status().await.unwrap(), both(0));

    // Released, it goes the same way; released twice is impossible (release takes it).
    let held = interest.hold(&channel).await.unwrap();
    assert_eq!(interest.status().await.unwrap(), both(1));
    held.release().await.unwrap();
    assert_eq!(interest.status().await.unwrap(), both(0));
    shutdown.trigger();
    task.unwrap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_interest_delivers_only_what_was_asked_on_every_shard() {
    let cluster = RedisCluster::start().await;
    interest_delivers_only_what_was_asked(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subscriptions_come_back_after_a_shard_restarts() {
    let mut cluster = RedisCluster::start().await;
    let (publisher, subscriber) = pair(&cluster.url()).await;
    let shutdown = Shutdown::new();
    let (interest, task) = subscriber.interest(RelayLimit::default(), shutdown.clone());
    let mut bus = subscriber.subscribe();
    let shards = channels_on_every_shard(1);
    for shard in &shards {
        interest.subscribe(&shard[0]).await.unwrap();
    }
    assert_eq!(interest.status().await.unwrap().subscribed, 3);

    cluster.restart(1).await;
    for (index, shard) in shards.iter().enumerate() {
        let payload = format!("after restart {index}");
        let delivered = publish_until_heard(&mut bus, Duration::from_secs(20), &payload, || {
            publisher.publish_to(&shard[0], payload.clone())
        })
        .await;
        assert!(
            delivered,
            "channel {} delivers again after the restart",
            shard[0]
        );
    }
    assert_eq!(interest.status().await.unwrap().subscribed, 3);
    shutdown.trigger();
    task.unwrap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subscriptions_follow_a_slot_to_its_new_master() {
    let cluster = RedisCluster::start().await;
    let (publisher, subscriber) = pair(&cluster.url()).await;
    let shutdown = Shutdown::new();
    let (interest, task) = subscriber.interest(RelayLimit::default(), shutdown.clone());
    let mut bus = subscriber.subscribe();
    let channel = &channels_on_every_shard(1)[0][0];
    interest.subscribe(channel).await.unwrap();
    assert_eq!(interest.status().await.unwrap().subscribed, 1);
    let slot = slot(channel.as_bytes());
    assert_eq!(cluster.owner_index(slot).await, 0);

    cluster.move_slot(slot, 2).await;
    let delivered = publish_until_heard(&mut bus, Duration::from_secs(20), "moved", || {
        publisher.publish_to(channel, "moved".into())
    })
    .await;
    assert!(
        delivered,
        "the subscription followed its slot to the new master"
    );
    assert_eq!(interest.status().await.unwrap().subscribed, 1);
    shutdown.trigger();
    task.unwrap().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subscriptions_are_batched_into_few_commands() {
    let cluster = RedisCluster::start().await;
    let (_, subscriber) = pair(&cluster.url()).await;
    let shutdown = Shutdown::new();
    let (interest, task) = subscriber.interest(RelayLimit::default(), shutdown.clone());
    // A hundred channels on each shard, each shard's sharing one hash tag (one slot).
    let tags: Vec<String> = channels_on_every_shard(1)
        .into_iter()
        .map(|shard| shard[0].clone())
        .collect();
    let channels: Vec<String> = tags
        .iter()
        .flat_map(|tag| (0..100).map(move |n| format!("{tag}:room-{n}")))
        .collect();
    let requests = channels.iter().map(|channel| interest.subscribe(channel));
    for answer in futures::future::join_all(requests).await {
        answer.unwrap();
    }
    let status = interest.status().await.unwrap();
    assert_eq!(
        status,
        InterestStatus {
            wanted: 300,
            subscribed: 300
        }
    );

    let mut commands = 0;
    for &port in cluster.ports() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        commands += stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_ssubscribe:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse::<u64>().unwrap());
    }
    assert!(
        (3..=30).contains(&commands),
        "300 channels in {commands} SSUBSCRIBE commands"
    );
    shutdown.trigger();
    task.unwrap().await.unwrap();
}

#[tokio::test]
async fn without_redis_an_interest_checks_names_and_needs_no_task() {
    let (interest, task) = Engine::local().interest(RelayLimit::default(), Shutdown::new());
    assert!(task.is_none());
    assert_eq!(interest.subscribe("user:{1}").await, Ok(()));
    assert_eq!(interest.subscribe("").await, Err(InterestError::BadChannel));
    assert_eq!(interest.status().await, Ok(InterestStatus::default()));
}

#[tokio::test]
async fn a_bad_prefix_or_cluster_url_is_refused_before_connecting() {
    let err = Engine::from_url(Some(&redis_url()), "bad{prefix}")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("REDIS_PREFIX:"), "{err}");
    let err = Engine::from_url(Some("redis+cluster://"), "tollgate")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("REDIS_URL:"), "{err}");
}

#[tokio::test]
async fn a_cluster_url_naming_a_single_node_fails_fast() {
    let single = redis_url().replace("redis://", "redis+cluster://");
    let err = Engine::from_url(Some(&single), "tollgate")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("REDIS_URL:"), "{err}");
}
