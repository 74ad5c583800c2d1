//! The limiter against real Redis (`TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), a
//! three-master Redis Cluster started per test, and in-process, with real concurrency, and
//! through a fault proxy for outages: consumes here, connection leases in `leases`, what only
//! a cluster needs in `cluster`, Redis outages in `outages`.

mod cluster;
mod leases;
mod outages;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::Barrier, task::JoinSet};
use tollgate_shared::{engine::Engine, testing_cluster::RedisCluster, time::unix_now_ms};
use uuid::Uuid;

use super::*;
use crate::clock::Clock;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_address() -> SocketAddr {
    let url = redis_url();
    let authority = url.trim_start_matches("redis://");
    let host = authority.split('/').next().unwrap();
    tokio::net::lookup_host(host).await.unwrap().next().unwrap()
}

fn fresh_prefix() -> String {
    format!("test-limits-{}", Uuid::new_v4().simple())
}

async fn redis_limiter(prefix: &str, mode: RedisDownMode) -> Limiter {
    Limiter::new(
        Engine::redis(&redis_url(), prefix).await.unwrap(),
        mode,
        Clock::system(),
    )
}

/// The same semantics must hold on every store: in-process, one Redis node, a Redis Cluster.
async fn every_store() -> Stores {
    let cluster = RedisCluster::start().await;
    let local = Limiter::new(Engine::local(), RedisDownMode::Closed, Clock::system());
    let redis = redis_limiter(&fresh_prefix(), RedisDownMode::Closed).await;
    let on_cluster = cluster_limiter(&cluster, &fresh_prefix()).await;
    Stores {
        limiters: vec![("local", local), ("redis", redis), ("cluster", on_cluster)].into_iter(),
        _cluster: cluster,
    }
}

/// The limiters of [`every_store`], and the cluster they need while the test runs.
struct Stores {
    limiters: std::vec::IntoIter<(&'static str, Limiter)>,
    _cluster: RedisCluster,
}

impl Iterator for Stores {
    type Item = (&'static str, Limiter);

    fn next(&mut self) -> Option<Self::Item> {
        self.limiters.next()
    }
}

async fn cluster_limiter(cluster: &RedisCluster, prefix: &str) -> Limiter {
    let engine = Engine::redis(&cluster.url(), prefix).await.unwrap();
    Limiter::new(engine, RedisDownMode::Closed, Clock::system())
}

fn per_minute(limit: u64) -> Rate {
    Rate {
        limit,
        period: Duration::from_secs(60),
    }
}

fn today(limit: u64) -> Quota {
    let now = unix_now_ms();
    Quota {
        limit,
        window_start_ms: now - now.rem_euclid(DAY_MS),
        window_end_ms: now - now.rem_euclid(DAY_MS) + DAY_MS,
    }
}

fn request(
    user: Uuid,
    amount: u64,
    key: &str,
    rate: Option<Rate>,
    quota: Option<Quota>,
) -> ConsumeRequest {
    ConsumeRequest {
        user_id: user,
        meter: "api_calls".into(),
        amount,
        idempotency_key: key.into(),
        rate,
        quota,
    }
}

/// Fires 64 one-unit consumes at once, spread over `limiters`; returns how many were allowed.
async fn allowed_of_64(limiters: &[Limiter], user: Uuid, rate: Rate) -> usize {
    let start = Arc::new(Barrier::new(64));
    let mut calls = JoinSet::new();
    for i in 0..64 {
        let limiter = limiters[i % limiters.len()].clone();
        let start = start.clone();
        let call = request(user, 1, &format!("call-{i}"), Some(rate), None);
        calls.spawn(async move {
            start.wait().await;
            limiter.consume(&call).await
        });
    }
    let mut allowed = 0;
    while let Some(joined) = calls.join_next().await {
        let decision = joined.unwrap().unwrap();
        if decision.allowed {
            allowed += 1;
        } else {
            assert_eq!(decision.denial, Some(Denial::RateLimited));
            assert!(decision.retry_after_ms > 0 && decision.retry_after_ms <= 2000);
        }
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_consumes_on_redis_allow_exactly_the_limit() {
    let limiter = redis_limiter(&fresh_prefix(), RedisDownMode::Closed).await;
    let allowed = allowed_of_64(
        std::slice::from_ref(&limiter),
        Uuid::new_v4(),
        per_minute(30),
    )
    .await;
    assert_eq!(allowed, 30);
    assert!(!limiter.redis_degraded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_consumes_in_process_allow_exactly_the_limit() {
    let limiter = Limiter::new(Engine::local(), RedisDownMode::Local, Clock::system());
    let allowed = allowed_of_64(&[limiter], Uuid::new_v4(), per_minute(30)).await;
    assert_eq!(allowed, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_redis_allow_the_limit_in_total() {
    let prefix = fresh_prefix();
    let first = redis_limiter(&prefix, RedisDownMode::Closed).await;
    let second = redis_limiter(&prefix, RedisDownMode::Closed).await;
    let allowed = allowed_of_64(&[first, second], Uuid::new_v4(), per_minute(30)).await;
    assert_eq!(allowed, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_reports_remaining_reset_and_retry() {
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        let call = |amount, key: &str| request(user, amount, key, Some(per_minute(30)), None);
        let before = unix_now_ms();
        let first = limiter.consume(&call(1, "a")).await.unwrap();
        assert!(
            first.allowed && first.denial.is_none() && !first.replayed,
            "{store}"
        );
        assert_eq!(
            (first.remaining, first.limit, first.retry_after_ms),
            (29, 30, 0),
            "{store}"
        );
        let refill = first.reset_at_ms - before;
        assert!(
            (1900..=2200).contains(&refill),
            "{store}: reset in {refill} ms"
        );

        let rest = limiter.consume(&call(29, "b")).await.unwrap();
        assert!(rest.allowed && rest.remaining == 0, "{store}: {rest:?}");
        let denied = limiter.consume(&call(1, "c")).await.unwrap();
        assert_eq!(denied.denial, Some(Denial::RateLimited), "{store}");
        assert!(!denied.allowed && denied.remaining == 0, "{store}");
        assert!(
            (1..=2000).contains(&denied.retry_after_ms),
            "{store}: {denied:?}"
        );
        let too_big = limiter.consume(&call(31, "d")).await.unwrap();
        assert_eq!(too_big.denial, Some(Denial::RateLimited), "{store}");

        let probe = limiter.consume(&call(0, "c")).await.unwrap();
        assert!(probe.allowed && probe.remaining == 0, "{store}: {probe:?}");
        let unlimited = limiter.consume(&request(user, 5, "e", None, None)).await;
        let unlimited = unlimited.unwrap();
        assert_eq!(
            (unlimited.remaining, unlimited.limit),
            (u64::MAX, 0),
            "{store}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_replayed_and_conflicts_refused() {
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        let call =
            |amount, key: &str| request(user, amount, key, Some(per_minute(30)), Some(today(10)));
        let first = limiter.consume(&call(3, "order-1")).await.unwrap();
        assert!(
            first.allowed && !first.replayed && first.remaining == 7,
            "{store}: {first:?}"
        );
        assert_eq!(first.limit, 10, "{store}: the quota binds");

        let retry = limiter.consume(&call(3, "order-1")).await.unwrap();
        assert!(retry.allowed && retry.replayed, "{store}: {retry:?}");
        assert_eq!(retry.remaining, 7, "{store}: a replay counts nothing");

        let other_amount = limiter.consume(&call(4, "order-1")).await;
        assert!(
            matches!(other_amount, Err(LimitError::IdempotencyConflict)),
            "{store}"
        );
        let other_meter = ConsumeRequest {
            meter: "tokens".into(),
            ..call(3, "order-1")
        };
        let other_meter = limiter.consume(&other_meter).await;
        assert!(
            matches!(other_meter, Err(LimitError::IdempotencyConflict)),
            "{store}"
        );

        let next = limiter.consume(&call(1, "order-2")).await.unwrap();
        assert!(next.allowed && next.remaining == 6, "{store}: {next:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_is_reported_and_counts_nothing() {
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        let quota = today(5);
        let call =
            |amount, key: &str| request(user, amount, key, Some(per_minute(100)), Some(quota));
        let all = limiter.consume(&call(5, "a")).await.unwrap();
        assert!(
            all.allowed && all.remaining == 0 && all.limit == 5,
            "{store}: {all:?}"
        );

        let over = limiter.consume(&call(1, "b")).await.unwrap();
        assert!(!over.allowed, "{store}");
        assert_eq!(over.denial, Some(Denial::QuotaExceeded), "{store}");
        assert_eq!((over.remaining, over.limit), (0, 5), "{store}");
        assert_eq!(over.reset_at_ms, quota.window_end_ms, "{store}");
        assert!(over.retry_after_ms > 0, "{store}");

        // The denied call recorded no key (another amount is no conflict) and spent no rate.
        let again = limiter.consume(&call(2, "b")).await.unwrap();
        assert_eq!(again.denial, Some(Denial::QuotaExceeded), "{store}");
        let probe = request(user, 0, "", Some(per_minute(100)), None);
        let probe = limiter.consume(&probe).await.unwrap();
        assert_eq!(
            (probe.remaining, probe.limit),
            (95, 100),
            "{store}: {probe:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_window_that_is_not_redis_s_current_one_is_refused_and_counts_nothing() {
    let limiter = redis_limiter(&fresh_prefix(), RedisDownMode::Closed).await;
    let user = Uuid::new_v4();
    let today = today(5);
    // What a replica whose clock runs a day fast would ask for.
    let tomorrow = Quota {
        limit: 5,
        window_start_ms: today.window_end_ms,
        window_end_ms: today.window_end_ms + DAY_MS,
    };
    let stale = limiter
        .consume(&request(user, 5, "k", None, Some(tomorrow)))
        .await;
    let Err(LimitError::StaleWindow { now_ms }) = stale else {
        panic!("expected a stale window, got {stale:?}");
    };
    assert!((now_ms - unix_now_ms()).abs() < 60_000);
    assert!((limiter.clock().now_ms() - unix_now_ms()).abs() < 60_000);

    // Nothing was counted, and the key was not recorded.
    let current = limiter
        .consume(&request(user, 5, "k", None, Some(today)))
        .await
        .unwrap();
    assert!(current.allowed && !current.replayed, "{current:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_learns_redis_s_clock_however_wrong_the_host_s_is() {
    let skew = 40 * DAY_MS;
    let engine = Engine::redis(&redis_url(), &fresh_prefix()).await.unwrap();
    let limiter = Limiter::new(engine, RedisDownMode::Closed, Clock::skewed(skew));
    assert!(limiter.clock().now_ms() - unix_now_ms() > skew - 60_000);
    let probe = request(Uuid::new_v4(), 0, "", Some(per_minute(10)), None);
    limiter.consume(&probe).await.unwrap();
    assert!((limiter.clock().now_ms() - unix_now_ms()).abs() < 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_give_units_back_once() {
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        let call = |key: &str| request(user, 1, key, Some(per_minute(2)), Some(today(2)));
        let mut counter = Counter::Local;
        for (key, allowed) in [("a", true), ("b", true), ("c", false)] {
            let decision = limiter.consume(&call(key)).await.unwrap();
            assert_eq!(decision.allowed, allowed, "{store}: {key}");
            counter = decision.counter;
        }

        limiter.refund(&call("b"), counter).await;
        let retried = limiter.consume(&call("b")).await.unwrap();
        assert!(
            retried.allowed && !retried.replayed,
            "{store}: the key was forgotten"
        );

        limiter.refund(&call("b"), counter).await;
        limiter.refund(&call("b"), counter).await;
        limiter.refund(&call("never-consumed"), counter).await;
        let after = limiter.consume(&call("c")).await.unwrap();
        assert!(after.allowed, "{store}: {after:?}");
        let full = limiter.consume(&call("d")).await.unwrap();
        assert!(
            !full.allowed,
            "{store}: a second refund gave nothing back: {full:?}"
        );
    }
}
