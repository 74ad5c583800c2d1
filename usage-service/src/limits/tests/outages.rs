//! Redis cut off through a fault proxy: the fallback (or refusal), the recovery, where refunds
//! go, and where the fallback's quota counters start.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tollgate_shared::{engine::Engine, fault_proxy::FaultProxy};
use uuid::Uuid;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_goes_to_the_store_that_counted() {
    let prefix = fresh_prefix();
    let proxy = FaultProxy::start(redis_address().await).await.unwrap();
    let proxied = Engine::redis(&format!("redis://{}", proxy.address()), &prefix)
        .await
        .unwrap();
    let limiter = Limiter::new(proxied, RedisDownMode::Local, Clock::system());
    let direct = redis_limiter(&prefix, RedisDownMode::Closed).await;
    let user = Uuid::new_v4();
    let call = request(user, 3, "order-1", None, Some(today(10)));
    let counted = limiter.consume(&call).await.unwrap();
    assert_eq!(counted.counter, Counter::Redis);

    // Another call finds Redis cut off: the limiter now skips Redis for a while, though it is
    // back the moment after.
    proxy.cut();
    let other = request(Uuid::new_v4(), 1, "", None, Some(today(10)));
    assert_eq!(
        limiter.consume(&other).await.unwrap().counter,
        Counter::Local
    );
    assert!(limiter.redis_degraded());
    proxy.restore();
    // Redis answers the limiter's own connection again; the limiter itself still skips it.
    let mut conn = limiter.inner.engine.redis_multiplexed().unwrap();
    let reachable = tokio::time::timeout(Duration::from_secs(10), async {
        while redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reachable.is_ok(), "Redis never answered again");

    // The units were counted on Redis, so that is where they are given back.
    limiter.refund(&call, counted.counter).await;
    let again = direct.consume(&call).await.unwrap();
    assert!(
        again.allowed && !again.replayed && again.remaining == 7,
        "the refund reached Redis: {again:?}"
    );
}

/// A [`QuotaSeed`] that says what the test sets, and counts how often it was asked.
#[derive(Debug, Default)]
struct FixedSeed {
    used: std::sync::atomic::AtomicU64,
    asked: std::sync::atomic::AtomicU64,
}

impl QuotaSeed for FixedSeed {
    fn used<'a>(
        &'a self,
        _user: Uuid,
        _meter: &'a str,
        _window: Quota,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.asked.fetch_add(1, SeqCst);
        let used = self.used.load(SeqCst);
        Box::pin(async move { Ok(used) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_starts_each_outage_s_quotas_from_the_seed() {
    use std::sync::atomic::Ordering::SeqCst;
    let proxy = FaultProxy::start(redis_address().await).await.unwrap();
    let proxied = Engine::redis(&format!("redis://{}", proxy.address()), &fresh_prefix())
        .await
        .unwrap();
    let seed = Arc::new(FixedSeed::default());
    let limiter = Limiter::seeded(proxied, RedisDownMode::Local, Clock::system(), seed.clone());
    let user = Uuid::new_v4();
    let one = || request(user, 1, "", None, Some(today(10)));
    let allowed_of = async |tries: usize| {
        let mut allowed = 0;
        for _ in 0..tries {
            allowed += usize::from(limiter.consume(&one()).await.unwrap().allowed);
        }
        allowed
    };
    assert_eq!(allowed_of(2).await, 2, "on Redis");
    assert_eq!(seed.asked.load(SeqCst), 0, "Redis needs no seed");

    seed.used.store(7, SeqCst);
    proxy.cut();
    assert_eq!(allowed_of(5).await, 3, "the window resumes at the seed's 7");
    assert_eq!(
        seed.asked.load(SeqCst),
        1,
        "seeded once per window and outage"
    );

    proxy.restore();
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        while limiter
            .consume(&request(Uuid::new_v4(), 0, "", None, None))
            .await
            .is_err()
            || limiter.redis_degraded()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "the limiter never went back to Redis");

    // Redis counted while it was back; the next outage starts from the seed again, not from
    // what this process counted in the last one.
    seed.used.store(9, SeqCst);
    proxy.cut();
    assert_eq!(allowed_of(3).await, 1, "the window resumes at the seed's 9");
    assert_eq!(seed.asked.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_falls_back_or_refuses_and_then_recovers() {
    let prefix = fresh_prefix();
    let proxy = FaultProxy::start(redis_address().await).await.unwrap();
    let proxied = Engine::redis(&format!("redis://{}", proxy.address()), &prefix)
        .await
        .unwrap();
    let local_mode = Limiter::new(proxied.clone(), RedisDownMode::Local, Clock::system());
    let closed_mode = Limiter::new(proxied, RedisDownMode::Closed, Clock::system());
    let direct = redis_limiter(&prefix, RedisDownMode::Closed).await;
    assert_counted_on_shared_redis(&local_mode, &direct).await;

    proxy.cut();
    let started = Instant::now();
    let refused = closed_mode.consume(&one_per_minute(Uuid::new_v4())).await;
    assert!(
        matches!(refused, Err(LimitError::Unavailable)),
        "{refused:?}"
    );
    assert!(closed_mode.redis_degraded());
    let lease = closed_mode
        .acquire_lease(Uuid::new_v4(), "a", 1, Duration::from_secs(1))
        .await;
    assert!(matches!(lease, Err(LimitError::Unavailable)));

    let user = Uuid::new_v4();
    let five_per_minute = request(user, 1, "", Some(per_minute(5)), None);
    let mut allowed = 0;
    for _ in 0..20 {
        allowed += usize::from(local_mode.consume(&five_per_minute).await.unwrap().allowed);
    }
    assert_eq!(allowed, 5, "the local fallback keeps the same semantics");
    assert!(local_mode.redis_degraded());
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "an outage costs one timeout per second, not one per call: {:?}",
        started.elapsed()
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    for limiter in [&local_mode, &closed_mode] {
        loop {
            let probe = request(Uuid::new_v4(), 0, "", None, None);
            let probe = limiter.consume(&probe).await;
            if probe.is_ok() && !limiter.redis_degraded() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the limiter never went back to redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_counted_on_shared_redis(&local_mode, &direct).await;
}

fn one_per_minute(user: Uuid) -> ConsumeRequest {
    request(user, 1, "", Some(per_minute(1)), None)
}

/// A unit `through` spends is seen by `direct`: both reached the same Redis.
async fn assert_counted_on_shared_redis(through: &Limiter, direct: &Limiter) {
    let user = Uuid::new_v4();
    let spent = through.consume(&one_per_minute(user)).await.unwrap();
    assert!(spent.allowed, "{spent:?}");
    let seen = direct.consume(&one_per_minute(user)).await.unwrap();
    assert_eq!(
        seen.denial,
        Some(Denial::RateLimited),
        "counted on the shared redis"
    );
}
