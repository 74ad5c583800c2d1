//! Connection leases on both stores: capped, renewed, released, expired, and ordered, so a
//! lowered limit refuses the newest.

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::every_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_capped_renewed_released_and_expire() {
    let long = Duration::from_secs(60);
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        // A third id is refused, renewing never counts twice, a release frees a slot.
        for (id, answer) in [
            ("a", (true, 1)),
            ("b", (true, 2)),
            ("c", (false, 2)),
            ("a", (true, 2)),
        ] {
            let got = limiter.acquire_lease(user, id, 2, long).await.unwrap();
            assert_eq!(got, answer, "{store}: {id}");
        }
        limiter.release_leases(&[(user, "b")]).await.unwrap();
        let freed = limiter.acquire_lease(user, "c", 2, long).await.unwrap();
        assert_eq!(freed, (true, 2), "{store}");

        let other = Uuid::new_v4();
        let short = Duration::from_millis(200);
        assert!(limiter.acquire_lease(other, "x", 2, short).await.unwrap().0);
        assert!(limiter.acquire_lease(other, "y", 2, short).await.unwrap().0);
        assert!(!limiter.acquire_lease(other, "z", 2, long).await.unwrap().0);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (granted, active) = limiter.acquire_lease(other, "z", 2, long).await.unwrap();
            if granted {
                assert!((1..=2).contains(&active), "{store}: {active}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{store}: expired leases never freed a slot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_refuses_renewals_of_the_newest_leases() {
    let long = Duration::from_secs(60);
    for (store, limiter) in every_store().await {
        let user = Uuid::new_v4();
        for id in ["first", "second", "third", "fourth"] {
            assert!(limiter.acquire_lease(user, id, 4, long).await.unwrap().0);
        }
        // The plan now allows two. Renewals come in any order: the two oldest leases keep their
        // slots, the two newest lose them, and nothing new fits.
        for (id, answer) in [
            ("fourth", (false, 3)),
            ("first", (true, 3)),
            ("third", (false, 2)),
            ("second", (true, 2)),
            ("fifth", (false, 2)),
            ("fourth", (false, 2)),
        ] {
            let got = limiter.acquire_lease(user, id, 2, long).await.unwrap();
            assert_eq!(got, answer, "{store}: {id}");
        }
        // Freeing the oldest slot makes room for a new lease, which is then the newest.
        limiter.release_leases(&[(user, "first")]).await.unwrap();
        assert_eq!(
            limiter.acquire_lease(user, "fifth", 2, long).await.unwrap(),
            (true, 2),
            "{store}"
        );
        assert_eq!(
            limiter.acquire_lease(user, "fifth", 1, long).await.unwrap(),
            (false, 1),
            "{store}: at a limit of one, the older `second` keeps its slot"
        );
        assert!(
            limiter
                .acquire_lease(user, "second", 1, long)
                .await
                .unwrap()
                .0
        );
    }
}
