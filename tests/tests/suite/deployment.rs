//! How operators deploy Tollgate: both stateful services on one database, on either backend.

use serde_json::json;
use tollgate_integration::{
    api::key,
    client::{WsClient, kinds},
    stack::Cluster,
};
use tollgate_shared::testing::Backend;

/// Many small deployments run one database: auth-service and usage-service start on it
/// (their migration histories and tables apart), and the whole path works across both.
async fn both_services_run_on_one_database(backend: Backend) {
    let cluster = Cluster::builder().one_database(backend).start().await;
    let user = cluster.register().await;
    let (mut client, connected) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    assert_eq!(connected["plan"], "free");

    cluster.change_plan(&user.user_id, "pro").await;
    client
        .run_agent("run", "what is 6*7?", &["calculator"])
        .await;
    let frames = client.transcript("run").await;
    assert_eq!(
        kinds(&frames).last(),
        Some(&"agent_completed"),
        "{frames:?}"
    );
    cluster
        .consume(&user.user_id, "agent_runs", 3, &key())
        .await
        .expect("usage is recorded");
    let used = cluster.usage_of(&user.user_id).await["agent_runs"];
    assert!(used >= 4, "the run and the three units: {used}");

    // A restart of each finds its own history, migrates nothing twice and keeps the data.
    let mut cluster = cluster;
    cluster.auth.restart().await;
    cluster.usage.restart().await;
    cluster.auth.ready().await;
    cluster.usage.ready().await;
    let refreshed = cluster.refresh(&user).await;
    cluster.validate(&refreshed.access_token).await.unwrap();
    assert_eq!(cluster.subscription(&user.user_id).await.plan_id, "pro");
    assert_eq!(cluster.usage_of(&user.user_id).await["agent_runs"], used);
    client.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(client.expect("pong").await["id"], "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_run_on_one_postgres_database() {
    both_services_run_on_one_database(Backend::PostgresRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_run_on_one_sqlite_file() {
    both_services_run_on_one_database(Backend::Embedded).await;
}
