//! Metering across gateway nodes and through a gateway's crash.
//!
//! - **Limits within a stated bound.** Each message is counted by usage-service's one limiter
//!   (GCRA on Redis), whichever gateway it arrives on: on free (30 a minute) one by one, so
//!   over N = 2 gateways a user gets no more than the rate allows (k = 0); on pro, from budgets
//!   each node reserves 18 at a time, so k = N × 18.
//! - **Nothing acknowledged is lost, nothing unacknowledged is billed beyond doubt**, when a
//!   gateway is killed with `kill -9` while its clients run agents (billable runs and tool
//!   calls): the ledger holds every unit a client was told about, and beyond that only units
//!   whose fate the client could not know.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tollgate_integration::{
    invariants::{AGENT_RUNS, TOOL_CALLS},
    *,
};

/// Sends metered messages one at a time until three in a row are refused (two short of the
/// close for repeated violations); answers how many were counted. One connection may count
/// nearly all of a burst (pro's 300) when the other is slower.
async fn until_limited(client: &mut WsClient, prefix: &str) -> u64 {
    let (mut counted, mut refused) = (0, 0);
    for n in 0..1000 {
        let reply = client.metered(&format!("{prefix}-{n}")).await;
        if is_counted(&reply) {
            counted += 1;
            refused = 0;
        } else {
            assert_eq!(reply["type"], "rate_limited", "{reply}");
            refused += 1;
            if refused == 3 {
                return counted;
            }
        }
    }
    panic!("{prefix}: never rate limited after {counted} messages");
}

/// `user` sends metered messages on both gateways of `cluster` at once until each is limited:
/// how many each counted, and how long that took.
async fn limited_on_both(cluster: &Cluster, user: &User) -> (u64, u64, Duration) {
    let (mut on_a, _) = WsClient::connected(&cluster.gateways[0], &user.access_token).await;
    let (mut on_b, _) = WsClient::connected(&cluster.gateways[1], &user.access_token).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(until_limited(&mut on_a, "a"), until_limited(&mut on_b, "b"));
    (a, b, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_never_let_a_user_past_the_plan_s_rate() {
    let cluster = Cluster::builder().gateways(2).start().await;
    let user = cluster.register().await;
    let (a, b, elapsed) = limited_on_both(&cluster, &user).await;
    // The free plan: 30 a minute, as GCRA: a burst of 30, then one more every 2 s.
    let refilled = (elapsed.as_secs_f64() / 2.0).floor() as u64;
    assert!(a > 0 && b > 0, "both nodes counted: {a} + {b}");
    assert!(
        (30..=30 + refilled).contains(&(a + b)),
        "{a} + {b} messages counted over two gateways in {elapsed:?}"
    );
}

/// On pro (300 a minute) each gateway reserves the user's messages 18 at a time (300 / 16) and
/// spends them without asking usage-service: the stated bound is k = N × B = 36 beyond what
/// the limiter grants over N = 2 nodes. A burst counts no more than that, every message of it
/// was counted by the limiter, and Redis does not keep a key per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_keep_a_pro_user_within_k_of_the_rate_over_two_gateways() {
    let cluster = Cluster::builder().gateways(2).start().await;
    let user = cluster.register().await;
    cluster.change_plan(&user.user_id, "pro").await;
    let (a, b, elapsed) = limited_on_both(&cluster, &user).await;
    // GCRA: a burst of 300, then one more every 200 ms.
    let refilled = (elapsed.as_secs_f64() / 0.2).floor() as u64;
    let (limit, k) = (300, 2 * 18);
    assert!(a > 0 && b > 0, "both nodes counted: {a} + {b}");
    assert!(
        (limit..=limit + refilled + k).contains(&(a + b)),
        "{a} + {b} messages counted over two gateways in {elapsed:?}"
    );

    let mut redis = redis::Client::open(tollgate_shared::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*idem*{}*", cluster.prefix, user.user_id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (keys.len() as u64) < (a + b) / 4,
        "{} idempotency keys for {} messages",
        keys.len(),
        a + b
    );
}

/// What one client saw of its runs until its gateway died: it runs agents with two tools in
/// a loop and counts every frame; the run in flight at the end is counted as uncertain.
async fn run_until_cut(mut client: WsClient, user: String, acknowledgements: Acknowledgements) {
    for n in 0.. {
        let id = format!("run-{n}");
        client
            .run_agent(&id, "What is 6 * 7?", &["calculator", "search"])
            .await;
        let (mut started, mut tools) = (false, 0);
        loop {
            let Received::Json(frame) = client.recv().await else {
                // Each tool is counted before its `tool_executing` is sent, and a run counted
                // for a request whose answer never came may have started and run its tools.
                acknowledgements.uncertain(&user, TOOL_CALLS, 2 - tools);
                if !started {
                    acknowledgements.unanswered(&user, &id);
                }
                return;
            };
            acknowledgements.observe(&user, &frame);
            match frame["type"].as_str().unwrap_or_default() {
                "agent_started" => started = true,
                "tool_executing" => tools += 1,
                "agent_completed" | "agent_failed" | "run_cancelled" => break,
                "error" if frame["run_id"].is_null() => panic!("run {id} refused: {frame}"),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_it_meters_bills_what_it_acknowledged() {
    let mut cluster = Cluster::start().await;
    let acknowledgements = Acknowledgements::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let user = cluster.register().await;
        cluster.change_plan(&user.user_id, "pro").await;
        acknowledgements.track(&user.user_id);
        let (client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
        clients.push(tokio::spawn(run_until_cut(
            client,
            user.user_id.clone(),
            acknowledgements.clone(),
        )));
    }
    // Let every client get some runs done, then kill the gateway in the middle of others.
    let some_done = eventually(PATIENCE, || async {
        acknowledgements.total_acknowledged(AGENT_RUNS) >= 8
    })
    .await;
    assert!(some_done, "the clients' runs did not get going");
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.gateways[0].kill_9();
    for client in join_all(clients).await {
        client.unwrap();
    }
    assert_ledger_matches(&cluster, &acknowledgements).await;
}
