//! The README's Redis ACL: one user per service, each allowed only the commands, keys and
//! channels that service uses. The services run here as those users (the rules read from the
//! README itself, so the documentation cannot drift from what works) through a scenario that
//! touches every Redis path: login throttling, key-change and revocation events, rate limits,
//! quotas, idempotency, leases, cache invalidation, connection counting and event delivery.

use serde_json::json;
use tollgate_integration::*;
use tollgate_shared::testing::{redis_prefix, redis_url};
use tollgate_shared::testing_cluster::RedisCluster;
use uuid::Uuid;

/// The services' ACL lines of the README (`user tollgate-… on …`), for the default prefix.
fn documented_users() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let users: Vec<(String, Vec<String>)> = readme
        .lines()
        .filter(|line| line.starts_with("user tollgate-"))
        .map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let name = words.next().unwrap().to_owned();
            (name, words.map(str::to_owned).collect())
        })
        .collect();
    let names: Vec<&str> = users.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["tollgate-auth", "tollgate-usage", "tollgate-gateway"],
        "the README's ACL"
    );
    users
}

/// What a cluster adds to each user (docs/redis-cluster.md): the client reads the slot map,
/// the start-up check the server version.
const CLUSTER_RULES: [&str; 2] = ["+cluster|slots", "+info"];

/// Where the users are created: the shared test Redis, or every node of a cluster of the
/// test's own.
enum Target<'a> {
    Single,
    Cluster(&'a RedisCluster),
}

/// The documented users, created under fresh names and passwords for `prefix`, with each
/// service's `REDIS_URL`. Dropping them removes them from the shared Redis, even when the test
/// fails (a cluster of the test's own goes away with its users).
struct RedisUsers {
    admins: Vec<redis::aio::MultiplexedConnection>,
    created: Vec<String>,
    urls: Vec<String>,
    shared: bool,
}

impl Drop for RedisUsers {
    fn drop(&mut self) {
        if !self.shared {
            return;
        }
        let created = std::mem::take(&mut self.created);
        // Drop cannot await: a synchronous connection, on a thread of its own.
        let _ = std::thread::spawn(move || {
            let mut command = redis::cmd("ACL");
            command.arg("DELUSER").arg(&created);
            if let Ok(mut admin) =
                redis::Client::open(redis_url()).and_then(|client| client.get_connection())
            {
                let _: redis::RedisResult<i64> = command.query(&mut admin);
            }
        })
        .join();
    }
}

impl RedisUsers {
    async fn create(prefix: &str, target: Target<'_>) -> Self {
        let (nodes, extra): (Vec<String>, &[&str]) = match target {
            Target::Single => (vec![redis_url()], &[]),
            Target::Cluster(cluster) => {
                let docs = std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../docs/redis-cluster.md"
                ))
                .expect("docs/redis-cluster.md");
                assert!(
                    docs.contains(&CLUSTER_RULES.join(" ")),
                    "the documented cluster rules"
                );
                let nodes = cluster
                    .ports()
                    .iter()
                    .map(|port| format!("redis://127.0.0.1:{port}"))
                    .collect();
                (nodes, &CLUSTER_RULES)
            }
        };
        let mut admins = Vec::new();
        for node in &nodes {
            let client = redis::Client::open(node.as_str()).unwrap();
            admins.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        let (mut created, mut urls) = (Vec::new(), Vec::new());
        for (name, rules) in documented_users() {
            let user = format!("{name}-{}", Uuid::new_v4().simple());
            let password = Uuid::new_v4().simple().to_string();
            let mut command = redis::cmd("ACL");
            command.arg("SETUSER").arg(&user);
            for rule in rules {
                let rule = if rule.starts_with('>') {
                    format!(">{password}")
                } else {
                    rule.replacen("~tollgate:", &format!("~{prefix}:"), 1)
                        .replacen("&tollgate:", &format!("&{prefix}:"), 1)
                };
                command.arg(rule);
            }
            command.arg(extra);
            for admin in &mut admins {
                let () = command.query_async(admin).await.unwrap();
            }
            urls.push(match target {
                Target::Single => {
                    let mut url = url::Url::parse(&redis_url()).unwrap();
                    url.set_username(&user).unwrap();
                    url.set_password(Some(&password)).unwrap();
                    url.to_string()
                }
                Target::Cluster(cluster) => {
                    let nodes: Vec<String> = cluster
                        .ports()
                        .iter()
                        .map(|port| format!("127.0.0.1:{port}"))
                        .collect();
                    format!("redis+cluster://{user}:{password}@{}", nodes.join(","))
                }
            });
            created.push(user);
        }
        Self {
            admins,
            created,
            urls,
            shared: matches!(target, Target::Single),
        }
    }

    /// The keys matching `pattern` on every node.
    async fn keys(&mut self, pattern: &str) -> Vec<String> {
        let mut found = Vec::new();
        for admin in &mut self.admins {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(admin)
                .await
                .unwrap();
            found.extend(keys);
        }
        found
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_users_are_enough_for_every_service() {
    let prefix = redis_prefix();
    let users = RedisUsers::create(&prefix, Target::Single).await;
    every_service_works_as_its_user(&prefix, users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_users_are_enough_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let prefix = redis_prefix();
    let users = RedisUsers::create(&prefix, Target::Cluster(&redis)).await;
    every_service_works_as_its_user(&prefix, users).await;
}

/// A scenario that touches every Redis path, each service as its own user: nothing refused.
async fn every_service_works_as_its_user(prefix: &str, mut users: RedisUsers) {
    let cluster = Cluster::builder()
        .auth_env("REDIS_PREFIX", prefix)
        .auth_env("REDIS_URL", &users.urls[0])
        .usage_env("REDIS_PREFIX", prefix)
        .usage_env("REDIS_URL", &users.urls[1])
        .gateway_env("REDIS_PREFIX", prefix)
        .gateway_env("REDIS_URL", &users.urls[2])
        .start()
        .await;

    let user = cluster.register().await;
    let (status, _) = cluster
        .auth_post(
            "/v1/login",
            &json!({"email": user.email, "password": "not the password at all"}),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let again = cluster.login(&user.email).await;
    cluster.rotate_signing_key().await;
    cluster.change_plan(&user.user_id, "pro").await;
    let gateway = cluster.gateway();
    let (mut client, connected) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(connected["plan"], "pro");
    assert!(is_counted(&client.metered("message").await));
    client.run_agent("run-acl", "2+2", &["calculator"]).await;
    let run = client.transcript("run-acl").await;
    assert_eq!(kinds(&run).last(), Some(&"agent_completed"), "{run:?}");
    let token = cluster.publish_token().await;
    let event = json!({"user_id": user.user_id, "data": {"via": "redis"}});
    assert_eq!(publish(gateway, Some(&token), &event).await.0, 202);
    client.event_where("via", &json!("redis")).await;
    cluster.logout(&user).await;
    assert_eq!(client.closed().await, 4004);
    cluster.logout(&again).await;

    // Every service used Redis, as its own user, and nothing was refused.
    for pattern in [
        "throttle:*",
        "usage:*",
        "gateway:connect:*",
        "gateway:run:*",
    ] {
        let found = users.keys(&format!("{prefix}:{pattern}")).await;
        assert!(!found.is_empty(), "nothing under {pattern} in Redis");
    }
    for service in [&cluster.auth, &cluster.usage, gateway] {
        let refused: Vec<String> = service
            .warnings()
            .into_iter()
            .filter(|line| {
                let line = line.to_lowercase();
                line.contains("redis") || line.contains("noperm")
            })
            .collect();
        assert_eq!(
            refused,
            Vec::<String>::new(),
            "{} could not use Redis as its user",
            service.binary().name()
        );
    }
    drop(cluster);
    drop(users);
}
