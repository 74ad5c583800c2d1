//! The two shapes of Redis an engine can stand on, one node or a Redis Cluster, behind one
//! connection type, so that callers with commands and scripts of their own (the usage limiter)
//! never ask which one they have.
//!
//! `REDIS_URL=redis+cluster://host:port,host:port,…` (or `rediss+cluster://` for TLS) names a
//! cluster by a few of its nodes; the client learns the rest, and every slot's owner, from them
//! and follows the cluster when slots move. Any other URL is one node, as before.
//!
//! On a cluster, everything one command, script or transaction touches must hash to one slot.
//! Keys and channels therefore carry a hash tag (`{…}`): the user id for per-user state, so a
//! user's keys and channel live on one shard. [`slot`] is the cluster's own hash, for callers
//! that split a batch by slot.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The cluster hash slot of `key`: CRC16 of its hash tag (the part between the first `{` and
/// the next `}`, when not empty), or of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&byte| byte == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// A Redis connection of either shape. The multiplexed and cluster connections are handles on
/// one shared set of sockets ([`RedisConnection::try_clone`] is cheap); a pooled connection
/// returns to its pool when dropped.
pub enum RedisConnection {
    /// The one node's self-reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// A connection taken from the one node's pool.
    Pooled(deadpool_redis::Connection),
    /// The cluster: routes each command to its slot's owner and follows `MOVED`/`ASK`.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Pooled(_) => "RedisConnection::Pooled",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// Whether commands go to a Redis Cluster, where a pipeline or script must stay in one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A second handle on the same connection; `None` for a pooled one, which is not shared.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            Self::Single(conn) => Some(Self::Single(conn.clone())),
            Self::Pooled(_) => None,
            Self::Cluster(conn) => Some(Self::Cluster(conn.clone())),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Pooled(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Pooled(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Pooled(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// Where the engine's Redis lives: one node, or a Redis Cluster (`redis+cluster://…`).
pub(super) enum Redis {
    Single {
        pool: Pool,
        /// One multiplexed, self-reconnecting connection for hot paths: concurrent commands
        /// share its socket and are written together, where a pooled connection costs a round
        /// trip and a system call per command.
        multiplexed: ConnectionManager,
        client: redis::Client,
    },
    Cluster {
        /// Routes every command to its slot's owner, pipelining per node, and follows the
        /// cluster when slots move.
        conn: ClusterConnection,
        /// The nodes the URL names, for the broadcast relay and the dynamic subscriptions'
        /// credentials and TLS settings.
        seeds: Vec<redis::ConnectionInfo>,
    },
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single { pool, .. } => f
                .debug_struct("Single")
                .field("pool", pool)
                .finish_non_exhaustive(),
            Self::Cluster { seeds, .. } => f
                .debug_struct("Cluster")
                .field("seeds", &seeds.len())
                .finish_non_exhaustive(),
        }
    }
}

impl Redis {
    pub(super) async fn single(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(timeout),
                create: Some(Duration::from_secs(2)),
                recycle: Some(timeout),
            },
            ..Default::default()
        });
        let pool = config.create_pool(Some(Runtime::Tokio1))?;
        let mut conn = pool.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        let multiplexed = ConnectionManager::new_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(timeout)
                .set_number_of_retries(1)
                .set_max_delay(1_000),
        )
        .await?;
        Ok(Self::Single {
            pool,
            multiplexed,
            client,
        })
    }

    /// Connects to the cluster through its seeds and checks that it runs Redis 7 or later,
    /// which sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`) needs.
    pub(super) async fn cluster(
        seeds: Vec<redis::ConnectionInfo>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(timeout)
            .retries(3)
            .max_retry_wait(200)
            .build()?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| anyhow::anyhow!("the cluster did not answer in time"))??;
        let info = conn
            .route_command(
                redis::cmd("INFO").arg("server"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let info: String = redis::from_owned_redis_value(info)?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("unknown");
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0);
        if major < 7 {
            anyhow::bail!(
                "a Redis Cluster needs Redis 7 or later for sharded pub/sub, found {version}"
            );
        }
        Ok(Self::Cluster { conn, seeds })
    }

    /// A connection for one short operation.
    pub(super) async fn connection(&self) -> anyhow::Result<RedisConnection> {
        Ok(match self {
            Self::Single { pool, .. } => RedisConnection::Pooled(pool.get().await?),
            Self::Cluster { conn, .. } => RedisConnection::Cluster(conn.clone()),
        })
    }

    /// The shared multiplexed connection.
    pub(super) fn shared(&self) -> RedisConnection {
        match self {
            Self::Single { multiplexed, .. } => RedisConnection::Single(multiplexed.clone()),
            Self::Cluster { conn, .. } => RedisConnection::Cluster(conn.clone()),
        }
    }

    /// A client for classic (broadcast) pub/sub: the node itself, or on a cluster one of the
    /// seeds, a different one each `attempt`, since a cluster forwards every `PUBLISH` to all
    /// of its nodes.
    pub(super) fn broadcast_client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Single { client, .. } => Ok(client.clone()),
            Self::Cluster { seeds, .. } => {
                redis::Client::open(seeds[attempt % seeds.len()].clone())
            }
        }
    }
}

/// The indices of `keys` grouped by slot on a cluster, in order of first appearance; one group
/// of all of them on a single node, where a pipeline may mix keys freely.
pub fn slot_groups<K: AsRef<[u8]>>(cluster: bool, keys: &[K]) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..keys.len()).collect()];
    }
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let slot = slot(key.as_ref());
        match groups.iter_mut().find(|(owner, _)| *owner == slot) {
            Some((_, group)) => group.push(index),
            None => groups.push((slot, vec![index])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// The seed nodes of a `redis+cluster://` (or `rediss+cluster://`) URL, each as a connection
/// to one node; `None` when `url` names a single node.
pub fn cluster_seeds(url: &str) -> Option<anyhow::Result<Vec<ConnectionInfo>>> {
    let (scheme, rest) = url.split_once("://")?;
    let node_scheme = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    Some(parse_seeds(node_scheme, rest))
}

fn parse_seeds(node_scheme: &str, rest: &str) -> anyhow::Result<Vec<ConnectionInfo>> {
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let path = tail.split('?').next().unwrap_or("");
    if !matches!(path, "" | "/" | "/0") {
        anyhow::bail!("a Redis Cluster has only database 0, not {path:?}");
    }
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    };
    let seeds = hosts
        .split(',')
        .map(|host| {
            if host.trim().is_empty() {
                anyhow::bail!("a Redis Cluster URL lists an empty node: host:port,host:port,…");
            }
            let node = format!("{node_scheme}://{credentials}{host}{tail}");
            node.as_str()
                .into_connection_info()
                .map_err(|err| anyhow::anyhow!("bad cluster node {host:?}: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(seeds)
}

/// `template` (credentials, protocol, TLS settings) pointed at another node.
pub(crate) fn at_node(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match &template.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    ConnectionInfo {
        addr,
        redis: template.redis.clone(),
    }
}

/// How long a connection attempt to one node may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_specification() {
        // The reference values of the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag hashes the key"
        );
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn keys_are_grouped_by_slot_only_on_a_cluster() {
        let keys = ["a:{1}", "b:{2}", "c:{1}"];
        assert_eq!(slot_groups(false, &keys), vec![vec![0, 1, 2]]);
        assert_eq!(slot_groups(true, &keys), vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn a_cluster_url_lists_its_seed_nodes_with_shared_credentials() {
        assert!(cluster_seeds("redis://127.0.0.1:6379").is_none());
        let seeds = cluster_seeds("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001")
            .unwrap()
            .unwrap();
        let addresses: Vec<String> = seeds.iter().map(|seed| seed.addr.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1:7000", "10.0.0.2:7001"]);
        assert!(seeds.iter().all(|seed| {
            seed.redis.username.as_deref() == Some("user")
                && seed.redis.password.as_deref() == Some("secret")
        }));
        // TLS is recognised as a cluster URL (and fails as `rediss://` does in this build).
        assert!(cluster_seeds("rediss+cluster://10.0.0.1:7000").is_some());
    }

    #[test]
    fn bad_cluster_urls_are_refused_with_a_reason() {
        for (url, reason) in [
            ("redis+cluster://", "empty node"),
            ("redis+cluster://a:1,,b:2", "empty node"),
            ("redis+cluster://a:1/3", "database 0"),
            ("redis+cluster://a:notaport", "bad cluster node"),
        ] {
            let err = cluster_seeds(url).unwrap().unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }
}
