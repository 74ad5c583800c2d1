//! Redis and PostgreSQL partitioned from every service through a fault proxy: cut (the peers
//! see their connections drop), delayed, and black-holed (nothing arrives, nothing closes).
//! The services keep serving on their local fallbacks where the contract says they do, refuse
//! with UNAVAILABLE where they cannot be right, recover by themselves when the link heals, and
//! the ledger ends up holding exactly what was acknowledged.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_integration::*;

/// Everything one connected user can do without Redis: metered messages and a run (usage-service
/// limits locally), and an event published on the node it is connected to (local delivery).
async fn serves_locally(
    cluster: &Cluster,
    client: &mut WsClient,
    user: &User,
    acknowledgements: &Acknowledgements,
    round: &str,
) {
    let reply = client.metered(&format!("message-{round}")).await;
    acknowledgements.observe(&user.user_id, &reply);
    assert!(is_counted(&reply), "{round}: {reply}");
    let run = format!("run-{round}");
    client
        .run_agent(&run, "what is 6*7?", &["calculator"])
        .await;
    let frames = client.transcript(&run).await;
    for frame in &frames {
        acknowledgements.observe(&user.user_id, frame);
    }
    assert_eq!(
        kinds(&frames).last(),
        Some(&"agent_completed"),
        "{round}: {frames:?}"
    );
    let token = cluster.publish_token().await;
    let event = json!({"user_id": user.user_id, "data": {"round": round}});
    assert_eq!(
        publish(cluster.gateway(), Some(&token), &event).await.0,
        202
    );
    client.event_where("round", &json!(round)).await;
    // auth-service counts login attempts in Redis; it counts them locally instead.
    cluster.login(&user.email).await;
}

/// Whether an event published on the second gateway reaches `client` on the first, which
/// only Redis can carry; polled, since the subscriptions take a moment to come back.
async fn crosses_nodes(cluster: &Cluster, client: &mut WsClient, user: &User) -> bool {
    let token = cluster.publish_token().await;
    for attempt in 0..(PATIENCE.as_secs() * 2) {
        let event = json!({"user_id": user.user_id, "data": {"attempt": attempt}});
        let _ = publish(&cluster.gateways[1], Some(&token), &event).await;
        if let Some(Received::Json(frame)) = client.recv_within(Duration::from_millis(500)).await {
            assert_eq!(frame["type"], "event", "{frame}");
            return true;
        }
    }
    false
}

/// How many times usage-service has logged that its limiter went back to Redis.
fn recoveries(cluster: &Cluster) -> usize {
    cluster
        .usage
        .log()
        .matches("redis limiter recovered")
        .count()
}

/// Waits until the limiter has gone back to Redis more than `before` times in all.
/// After Redis is back: events cross nodes again, the limiter is on Redis again, and the
/// gateway serves as before.
async fn heals(
    cluster: &Cluster,
    client: &mut WsClient,
    user: &User,
    acknowledgements: &Acknowledgements,
    before: usize,
) {
    assert!(
        crosses_nodes(cluster, client, user).await,
        "events never crossed nodes again"
    );
    assert!(
        limiter_recovered(cluster, before).await,
        "the limiter stayed local"
    );
    serves_locally(cluster, client, user, acknowledgements, "healed").await;
}

async fn limiter_recovered(cluster: &Cluster, before: usize) -> bool {
    // Calls of a bystander (not tracked by the ledger check) give the limiter its chances to
    // probe Redis.
    let bystander = uuid::Uuid::new_v4().to_string();
    eventually(PATIENCE, || async {
        let _ = cluster.consume(&bystander, "tool_calls", 1, &key()).await;
        recoveries(cluster) > before
    })
    .await
}

async fn redis_cluster() -> (Cluster, Acknowledgements, User, WsClient) {
    let cluster = Cluster::builder()
        .gateways(2)
        .redis_behind_proxy()
        .start()
        .await;
    let acknowledgements = Acknowledgements::default();
    let user = cluster.register().await;
    acknowledgements.track(&user.user_id);
    cluster.change_plan(&user.user_id, "pro").await;
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    assert!(crosses_nodes(&cluster, &mut client, &user).await);
    (cluster, acknowledgements, user, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_services_fall_back_to_local_state_and_recover_by_themselves() {
    let (cluster, acknowledgements, user, mut client) = redis_cluster().await;
    let victim = cluster.register().await;
    let (mut victims, _) = WsClient::connected(&cluster.gateways[1], &victim.access_token).await;

    let before = recoveries(&cluster);
    cluster.redis_proxy().cut();
    for round in ["cut-1", "cut-2"] {
        serves_locally(&cluster, &mut client, &user, &acknowledgements, round).await;
    }
    let newcomer = cluster.register().await;
    WsClient::connected(cluster.gateway(), &newcomer.access_token).await;
    // Revocations still reach every gateway, through auth-service's own stream.
    cluster.logout(&victim).await;
    assert_eq!(victims.closed().await, 4004);
    let direct = cluster
        .consume(&user.user_id, "agent_runs", 3, &key())
        .await;
    acknowledgements.consumed(&user.user_id, "agent_runs", 3, &direct);
    assert!(direct.unwrap().allowed);

    cluster.redis_proxy().restore();
    heals(&cluster, &mut client, &user, &acknowledgements, before).await;
    assert_session_revoked(&cluster, &victim).await;
    assert_ledger_matches(&cluster, &acknowledgements).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow_or_black_holed_services_keep_serving_and_recover_by_themselves() {
    let (cluster, acknowledgements, user, mut client) = redis_cluster().await;
    let proxy = cluster.redis_proxy();

    // Slow but within every timeout: Redis is still used.
    proxy.delay(Duration::from_millis(50));
    serves_locally(&cluster, &mut client, &user, &acknowledgements, "slow").await;
    assert!(crosses_nodes(&cluster, &mut client, &user).await);
    // Slower than the services wait: they answer from local state instead of hanging.
    let before = recoveries(&cluster);
    proxy.delay(Duration::from_secs(2));
    serves_locally(&cluster, &mut client, &user, &acknowledgements, "slower").await;
    proxy.restore();
    assert!(
        limiter_recovered(&cluster, before).await,
        "the limiter stayed local"
    );

    // Black-holed: connections stay open and nothing comes back.
    let before = recoveries(&cluster);
    proxy.blackhole();
    for round in ["hole-1", "hole-2"] {
        serves_locally(&cluster, &mut client, &user, &acknowledgements, round).await;
    }
    let newcomer = cluster.register().await;
    WsClient::connected(cluster.gateway(), &newcomer.access_token).await;

    proxy.restore();
    heals(&cluster, &mut client, &user, &acknowledgements, before).await;
    assert_ledger_matches(&cluster, &acknowledgements).await;
}

/// Registration and login as a browser would try them: the HTTP status.
async fn account_statuses(cluster: &Cluster, email: &str) -> (u16, u16) {
    let credentials = |email: &str| json!({"email": email, "password": PASSWORD});
    let (registered, body) = cluster
        .auth_post("/v1/register", &credentials(&unique_email()), None)
        .await;
    if registered == 503 {
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    let (logged_in, _) = cluster
        .auth_post("/v1/login", &credentials(email), None)
        .await;
    (registered, logged_in)
}

/// What must hold while PostgreSQL is unreachable, however it is unreachable.
async fn serves_without_postgres(
    cluster: &Cluster,
    client: &mut WsClient,
    users: (&User, &User),
    acknowledgements: &Acknowledgements,
) {
    let (user, stranger) = users;
    assert_eq!(account_statuses(cluster, &user.email).await, (503, 503));
    // Tokens already issued keep validating, whether or not they were ever validated before.
    cluster.validate(&user.access_token).await.unwrap();
    cluster.validate(&stranger.access_token).await.unwrap();
    // Usage cannot be made durable, so it is refused rather than acknowledged.
    let direct = cluster
        .consume(&user.user_id, "agent_runs", 1, &key())
        .await;
    acknowledgements.consumed(&user.user_id, "agent_runs", 1, &direct);
    let refused = direct.expect_err("usage acknowledged without a ledger");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // So is an agent run, billable; no `agent_started` for a run that could not be counted.
    client.run_agent("run-no-ledger", "2 + 2", &[]).await;
    let reply: Value = client.next_of("error").await;
    acknowledgements.observe(&user.user_id, &reply);
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_str()),
        (Some("dependency_unavailable"), Some("run-no-ledger")),
        "{reply}"
    );
    // The connection stays open and events still reach it.
    let token = cluster.publish_token().await;
    let event = json!({"user_id": user.user_id, "data": {"db": "down"}});
    assert_eq!(
        publish(cluster.gateway(), Some(&token), &event).await.0,
        202
    );
    assert_eq!(client.expect("event").await["data"]["db"], "down");
}

/// Waits until registration, login, metering and the connection all work again.
async fn recovers_from_postgres(
    cluster: &Cluster,
    client: &mut WsClient,
    user: &User,
    acknowledgements: &Acknowledgements,
) {
    let healed = eventually(PATIENCE, || async {
        account_statuses(cluster, &user.email).await == (201, 200)
    })
    .await;
    assert!(healed, "registration and login never recovered");
    let recovered = client
        .metered_until_counted(|reply| acknowledgements.observe(&user.user_id, reply))
        .await;
    assert!(recovered, "metering never recovered");
    let direct = cluster
        .consume(&user.user_id, "agent_runs", 1, &key())
        .await;
    acknowledgements.consumed(&user.user_id, "agent_runs", 1, &direct);
    assert!(direct.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_or_black_holed_writes_are_unavailable_and_tokens_still_work() {
    let cluster = Cluster::builder().postgres_behind_proxy().start().await;
    let acknowledgements = Acknowledgements::default();
    let (user, stranger) = (cluster.register().await, cluster.register().await);
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    acknowledgements.observe(&user.user_id, &client.metered("warm").await);
    let proxy = cluster.postgres_proxy();

    proxy.cut();
    serves_without_postgres(&cluster, &mut client, (&user, &stranger), &acknowledgements).await;
    // A user usage-service has never seen still connects, admitted without a lease.
    let (_strangers, connected) =
        WsClient::connected(cluster.gateway(), &stranger.access_token).await;
    assert_eq!(connected["user_id"], stranger.user_id);
    proxy.restore();
    recovers_from_postgres(&cluster, &mut client, &user, &acknowledgements).await;

    proxy.blackhole();
    serves_without_postgres(&cluster, &mut client, (&user, &stranger), &acknowledgements).await;
    proxy.restore();
    recovers_from_postgres(&cluster, &mut client, &user, &acknowledgements).await;
    assert_ledger_matches(&cluster, &acknowledgements).await;
}
