//! A real Redis Cluster for tests: three masters, each a `redis-server` process on a free
//! loopback port, in a temp dir of its own, with nothing saved to disk but the cluster's own
//! configuration (so a restarted node rejoins with its slots). The processes are killed when
//! the [`RedisCluster`] is dropped.
//!
//! The cluster is formed from the client side (`CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`), so
//! nothing but `redis-server` is needed. A missing `redis-server` fails the test loudly: the
//! cluster suite never skips.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::engine::{SLOTS, topology::SlotMap};
use crate::testing::eventually;

const MASTERS: usize = 3;

/// A running three-master cluster on loopback ports.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    processes: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three masters, splits the slots evenly between them, joins them and waits until
    /// every node reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let cluster = Self::spawn_nodes().await;
        let per_node = SLOTS / MASTERS as u16;
        for (index, &port) in cluster.ports.iter().enumerate() {
            let first = per_node * index as u16;
            let last = if index == MASTERS - 1 {
                SLOTS - 1
            } else {
                first + per_node - 1
            };
            let mut conn = node(port).await;
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(&mut conn)
                .await
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = node(cluster.ports[0]).await;
        for &port in &cluster.ports[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(port)
                .query_async(&mut first)
                .await
                .expect("CLUSTER MEET");
        }
        cluster.wait_until_ok().await;
        cluster
    }

    /// Three cluster-enabled nodes that answer, on free ports. A port can be taken by another
    /// test between choosing it and the server binding it; then the nodes start again
    /// elsewhere.
    async fn spawn_nodes() -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temp dir for the cluster");
            let ports = free_ports(MASTERS);
            let processes = ports
                .iter()
                .map(|&port| Some(spawn_node(dir.path(), port)))
                .collect();
            let mut cluster = Self {
                ports,
                processes,
                dir,
            };
            let mut started = true;
            for index in 0..MASTERS {
                started &= cluster.node_started(index).await;
            }
            if started {
                return cluster;
            }
        }
        panic!("redis-server did not start on free loopback ports five times over");
    }

    /// `redis+cluster://` with every node, for `REDIS_URL`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes' ports, in the order of their slot ranges (the first owns slot 0).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Kills node `index` (as a crash would: no chance to say goodbye).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.processes[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again on its port; it rejoins with its slots (kept in its cluster
    /// config file) and the cluster is ok again.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        let port = self.ports[index];
        self.processes[index] = Some(spawn_node(self.dir.path(), port));
        assert!(
            self.node_started(index).await,
            "redis-server did not start again on port {port}"
        );
        self.wait_until_ok().await;
    }

    /// Hands the (keyless) `slot` from its owner to node `to`, the way a resharding does:
    /// `IMPORTING` on the target, `MIGRATING` on the source, then `NODE` everywhere, and waits
    /// until every node says `to` owns it.
    pub async fn move_slot(&self, slot: u16, to: usize) {
        let mut ids = Vec::new();
        for &port in &self.ports {
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut node(port).await)
                .await
                .expect("CLUSTER MYID");
            ids.push(id);
        }
        let from = self.owner_index(slot).await;
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let set = async |index: usize, state: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query_async(&mut node(self.ports[index]).await)
                .await
                .unwrap_or_else(|err| panic!("CLUSTER SETSLOT {slot} {state}: {err}"));
        };
        set(to, "IMPORTING", &ids[from]).await;
        set(from, "MIGRATING", &ids[to]).await;
        set(to, "NODE", &ids[to]).await;
        set(from, "NODE", &ids[to]).await;
        for index in (0..self.ports.len()).filter(|&index| index != from && index != to) {
            set(index, "NODE", &ids[to]).await;
        }
        let target = self.ports[to];
        let moved = eventually(Duration::from_secs(20), || async move {
            for &port in &self.ports {
                if slot_owner(port, slot).await != Some(target) {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(
            moved,
            "the cluster never agreed that node {to} owns slot {slot}"
        );
    }

    /// The index of the node that owns `slot`, as the first node sees it.
    pub async fn owner_index(&self, slot: u16) -> usize {
        let owner = slot_owner(self.ports[0], slot).await;
        self.ports
            .iter()
            .position(|&port| Some(port) == owner)
            .unwrap_or_else(|| panic!("no node owns slot {slot}"))
    }

    /// Waits until node `index` answers as our own process (not a server of another test that
    /// took the port); false if it exited or never answered.
    async fn node_started(&mut self, index: usize) -> bool {
        let port = self.ports[index];
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Some(child) = self.processes[index].as_mut() else {
                return false;
            };
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if server_pid(port).await == Some(child.id()) {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_ok(&self) {
        let ports = self.ports.clone();
        let ok = eventually(Duration::from_secs(20), || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let mut conn = node(port).await;
                    let info: String = match redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                    {
                        Ok(info) => info,
                        Err(_) => return false,
                    };
                    let nodes_known = info.contains(&format!("cluster_known_nodes:{MASTERS}"));
                    if !info.contains("cluster_state:ok") || !nodes_known {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(ok, "the Redis Cluster did not reach cluster_state:ok");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.processes.len() {
            self.kill(index);
        }
    }
}

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a node URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| panic!("cluster node on port {port}: {err}"))
}

/// The process id of the server on `port`, if one answers.
async fn server_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let info = tokio::time::timeout(Duration::from_secs(1), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
    });
    let info = info.await.ok()?.ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// The port of the master that owns `slot`, as the node on `port` sees it.
async fn slot_owner(port: u16, slot: u16) -> Option<u16> {
    let reply = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut node(port).await)
        .await
        .ok()?;
    let map = SlotMap::parse(reply).ok()?;
    map.owner(slot).map(|owner| owner.port)
}

fn spawn_node(dir: &Path, port: u16) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).expect("a node dir");
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&node_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("the cluster tests need redis-server 7 or later on the PATH: {err}")
        })
}

/// `count` loopback ports that are free, each with its cluster bus port (+10000) free too.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    let mut held = Vec::new();
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if let Ok(bus_listener) = TcpListener::bind(("127.0.0.1", bus)) {
            ports.push(port);
            held.push((listener, bus_listener));
        }
    }
    ports
}
