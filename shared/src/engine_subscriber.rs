//! The task behind an [`Interest`](super::Interest): it owns the subscription connections
//! (one node's, or one per cluster master), applies queued requests in rounds, relays what
//! arrives, and rebuilds the subscriptions where they belong after a lost connection, a moved
//! slot or a changed slot map (see `engine_interest.rs` for the whole design).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::interest::{InterestStatus, Op};
use super::topology::{NodeAddr, SlotMap};
use super::{Engine, Redis, RelayLimit, redis_conn};
use crate::backoff::{Backoff, ExponentialBackoff};
use crate::shutdown::Shutdown;

/// Messages received and not yet relayed; beyond this they are dropped and counted.
const PUSH_QUEUE: usize = 4096;
/// The most requests applied in one round, and the most channels one command names.
const BATCH: usize = 512;
/// How often the slot map is compared and every node connection is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The longest a round of commands to one node may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the subscriber task for `engine` on `redis`; it stops at `shutdown`, or when every
/// [`Interest`](super::Interest) handle is gone.
pub(super) fn spawn(
    engine: Engine,
    redis: &Redis,
    limit: RelayLimit,
    ops: mpsc::Receiver<Op>,
    overflowed: Counter,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let source = match redis {
        Redis::Single { client, .. } => Source::Single {
            info: client.get_connection_info().clone(),
            addr: NodeAddr {
                host: String::new(),
                port: 0,
            },
        },
        Redis::Cluster { conn, seeds } => Source::Cluster {
            conn: conn.clone(),
            template: seeds[0].clone(),
            slots: SlotMap::default(),
            stale: true,
        },
    };
    let (pushes_tx, pushes) = mpsc::channel(PUSH_QUEUE);
    let subscriber = Subscriber {
        engine,
        limit,
        source,
        wanted: HashMap::new(),
        nodes: HashMap::new(),
        pushes_tx,
        overflowed,
        next_id: 0,
        dirty: false,
        retry_at: None,
        backoff: ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5)
            .start(),
    };
    tokio::spawn(subscriber.run(ops, pushes, shutdown))
}

/// Where subscriptions go.
enum Source {
    /// Every channel on the one node (`addr` is a placeholder: there is one connection).
    Single {
        info: ConnectionInfo,
        addr: NodeAddr,
    },
    /// Each channel on its slot's master; `stale` asks for a fresh map before the next rebuild.
    Cluster {
        conn: ClusterConnection,
        template: ConnectionInfo,
        slots: SlotMap,
        stale: bool,
    },
}

/// One node's subscription connection.
struct Node {
    /// Tells this connection's pushes from those of an earlier one to the same node.
    id: u64,
    conn: MultiplexedConnection,
    /// Cleared by the client when the connection drops.
    alive: Arc<AtomicBool>,
    /// Full channel names subscribed on this connection.
    subscribed: HashSet<String>,
}

/// A round of changes for one node.
#[derive(Default)]
struct Changes {
    add: Vec<String>,
    remove: Vec<String>,
}

struct Subscriber {
    engine: Engine,
    limit: RelayLimit,
    source: Source,
    /// Full channel name → how many interests in it.
    wanted: HashMap<String, usize>,
    nodes: HashMap<NodeAddr, Node>,
    pushes_tx: mpsc::Sender<(u64, PushInfo)>,
    overflowed: Counter,
    next_id: u64,
    /// Something is not where it should be; a rebuild is due at `retry_at`.
    dirty: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Subscriber {
    async fn run(
        mut self,
        mut ops: mpsc::Receiver<Op>,
        mut pushes: mpsc::Receiver<(u64, PushInfo)>,
        shutdown: Shutdown,
    ) {
        self.refresh_topology().await;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            let retry_at = self.retry_at;
            let retry = async move {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.wait() => return,
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    let mut batch = vec![op];
                    while batch.len() < BATCH {
                        match ops.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                Some((id, push)) = pushes.recv() => self.on_push(id, push),
                _ = check.tick() => self.check().await,
                () = retry => {
                    self.retry_at = None;
                    self.rebuild().await;
                }
            }
            self.schedule();
        }
    }

    /// Applies a batch of requests: counts first, then one round of commands for the channels
    /// whose subscription changed.
    async fn apply(&mut self, batch: Vec<Op>) {
        let mut changed = HashSet::new();
        let mut replies = Vec::new();
        for op in batch {
            match op {
                Op::Add(channel) => {
                    let full = self.engine.key(&channel);
                    let count = self.wanted.entry(full.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        changed.insert(full);
                    }
                }
                Op::Remove(channel) => {
                    let full = self.engine.key(&channel);
                    if let Some(count) = self.wanted.get_mut(&full) {
                        *count -= 1;
                        if *count == 0 {
                            self.wanted.remove(&full);
                            changed.insert(full);
                        }
                    }
                }
                Op::Status(reply) => replies.push(reply),
            }
        }
        self.reconcile(changed).await;
        let status = self.status();
        for reply in replies {
            let _ = reply.send(status);
        }
    }

    fn status(&self) -> InterestStatus {
        let subscribed = self
            .wanted
            .keys()
            .filter(|channel| {
                self.owner(channel)
                    .and_then(|owner| self.nodes.get(&owner))
                    .is_some_and(|node| {
                        node.alive.load(Ordering::Acquire) && node.subscribed.contains(*channel)
                    })
            })
            .count();
        InterestStatus {
            wanted: self.wanted.len(),
            subscribed,
        }
    }

    /// The node a wanted channel belongs on, if known.
    fn owner(&self, channel: &str) -> Option<NodeAddr> {
        match &self.source {
            Source::Single { addr, .. } => Some(addr.clone()),
            Source::Cluster { slots, .. } => {
                slots.owner(redis_conn::slot(channel.as_bytes())).cloned()
            }
        }
    }

    /// Brings `channels` to where they belong: subscribed on their owner if wanted, nowhere
    /// else. A node that fails is dropped (its subscriptions go with its connection) and the
    /// whole set is rebuilt later.
    async fn reconcile(&mut self, channels: impl IntoIterator<Item = String>) {
        let mut plan: HashMap<NodeAddr, Changes> = HashMap::new();
        for channel in channels {
            let owner = if self.wanted.contains_key(&channel) {
                let owner = self.owner(&channel);
                self.dirty |= owner.is_none();
                owner
            } else {
                None
            };
            for (addr, node) in &self.nodes {
                if owner.as_ref() != Some(addr) && node.subscribed.contains(&channel) {
                    plan.entry(addr.clone())
                        .or_default()
                        .remove
                        .push(channel.clone());
                }
            }
            if let Some(owner) = owner {
                let there = self.nodes.get(&owner);
                if !there.is_some_and(|node| node.subscribed.contains(&channel)) {
                    plan.entry(owner).or_default().add.push(channel);
                }
            }
        }
        for (addr, changes) in plan {
            if let Err(err) = self.send_changes(&addr, changes).await {
                tracing::warn!(node = %addr, error = %err, "redis subscriptions failed; rebuilding them");
                self.nodes.remove(&addr);
                self.dirty = true;
            }
        }
    }

    /// One pipeline of (S)SUBSCRIBE/(S)UNSUBSCRIBE commands to one node, each naming at most
    /// [`BATCH`] channels of one slot. Every named channel gets one reply, so the pipeline
    /// waits for exactly as many as it names.
    async fn send_changes(&mut self, addr: &NodeAddr, changes: Changes) -> anyhow::Result<()> {
        if !self.nodes.contains_key(addr) {
            if changes.add.is_empty() {
                return Ok(());
            }
            let node = self.connect(addr).await?;
            self.nodes.insert(addr.clone(), node);
        }
        let cluster = matches!(self.source, Source::Cluster { .. });
        let (subscribe, unsubscribe) = if cluster {
            ("SSUBSCRIBE", "SUNSUBSCRIBE")
        } else {
            ("SUBSCRIBE", "UNSUBSCRIBE")
        };
        let mut pipe = redis::pipe();
        let mut replies = 0;
        for (verb, channels) in [(unsubscribe, &changes.remove), (subscribe, &changes.add)] {
            for group in redis_conn::slot_groups(cluster, channels) {
                for chunk in group.chunks(BATCH) {
                    let command = pipe.cmd(verb);
                    for &index in chunk {
                        command.arg(&channels[index]);
                    }
                    replies += chunk.len();
                }
            }
        }
        let Some(node) = self.nodes.get_mut(addr) else {
            return Ok(());
        };
        let answers = tokio::time::timeout(
            COMMAND_TIMEOUT,
            node.conn.send_packed_commands(&pipe, 0, replies),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
        if let Some(err) = answers
            .into_iter()
            .find_map(|answer| answer.extract_error().err())
        {
            return Err(err.into());
        }
        for channel in &changes.remove {
            node.subscribed.remove(channel);
        }
        node.subscribed.extend(changes.add);
        Ok(())
    }

    /// A RESP3 connection to one node whose pushes (messages, subscription changes, its own
    /// disconnection) land on the bounded push queue, tagged with the connection's id.
    async fn connect(&mut self, addr: &NodeAddr) -> anyhow::Result<Node> {
        let mut info = match &self.source {
            Source::Single { info, .. } => info.clone(),
            Source::Cluster { template, .. } => {
                redis_conn::at_node(template, &addr.host, addr.port)
            }
        };
        info.redis.protocol = ProtocolVersion::RESP3;
        self.next_id += 1;
        let id = self.next_id;
        let alive = Arc::new(AtomicBool::new(true));
        let (pushes, flag, overflowed) = (
            self.pushes_tx.clone(),
            alive.clone(),
            self.overflowed.clone(),
        );
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(redis_conn::CONNECT_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            .set_push_sender(move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    flag.store(false, Ordering::Release);
                }
                if pushes.try_send((id, push)).is_err() {
                    overflowed.inc();
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let client = redis::Client::open(info)?;
        let conn = tokio::time::timeout(
            redis_conn::CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
        Ok(Node {
            id,
            conn,
            alive,
            subscribed: HashSet::new(),
        })
    }

    fn on_push(&mut self, id: u64, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload)] = &push.data[..]
                    && let Ok(channel) = std::str::from_utf8(channel)
                {
                    self.engine.relay(channel, payload, &self.limit);
                }
            }
            PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                // A confirmation of our own unsubscribe names a channel already let go; one
                // still held was dropped by the server: its slot moved.
                let Some(Value::BulkString(channel)) = push.data.first() else {
                    return;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return;
                };
                if let Some(node) = self.nodes.values_mut().find(|node| node.id == id)
                    && node.subscribed.remove(channel)
                {
                    tracing::info!(channel, "redis dropped a subscription; rebuilding");
                    self.mark_stale();
                }
            }
            PushKind::Disconnection => {
                let before = self.nodes.len();
                self.nodes.retain(|_, node| node.id != id);
                if self.nodes.len() != before {
                    tracing::warn!("a redis subscription connection dropped; rebuilding");
                    self.mark_stale();
                }
            }
            _ => {}
        }
    }

    /// The periodic check: every connection still answers, and the slot map is unchanged.
    async fn check(&mut self) {
        let pings = self.nodes.iter().map(|(addr, node)| {
            let (mut conn, alive) = (node.conn.clone(), node.alive.clone());
            async move {
                let ping = redis::cmd("PING");
                let answered = tokio::time::timeout(COMMAND_TIMEOUT, ping.exec_async(&mut conn));
                let answered = matches!(answered.await, Ok(Ok(())));
                (!answered || !alive.load(Ordering::Acquire)).then(|| addr.clone())
            }
        });
        let lost: Vec<NodeAddr> = futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect();
        for addr in lost {
            tracing::warn!(node = %addr, "a redis subscription connection stopped answering");
            self.nodes.remove(&addr);
            self.dirty = true;
        }
        if let Source::Cluster { stale, .. } = &mut self.source {
            *stale = true;
        }
        self.refresh_topology().await;
        if self.dirty {
            self.rebuild().await;
        }
    }

    /// Fetches the slot map if it is stale; a changed map marks everything for a rebuild.
    async fn refresh_topology(&mut self) {
        let Source::Cluster {
            conn, slots, stale, ..
        } = &mut self.source
        else {
            return;
        };
        if !*stale {
            return;
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, SlotMap::fetch(conn)).await {
            Ok(Ok(fresh)) => {
                *stale = false;
                if fresh != *slots {
                    *slots = fresh;
                    self.dirty = true;
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading the cluster's slot map failed");
                self.dirty = true;
            }
            Err(_) => {
                tracing::warn!("reading the cluster's slot map timed out");
                self.dirty = true;
            }
        }
    }

    /// Puts every channel where it belongs now: after a lost connection, a moved slot or a
    /// failed round.
    async fn rebuild(&mut self) {
        self.refresh_topology().await;
        self.dirty = false;
        let mut all: HashSet<String> = self.wanted.keys().cloned().collect();
        for node in self.nodes.values() {
            all.extend(node.subscribed.iter().cloned());
        }
        self.reconcile(all).await;
        self.nodes.retain(|_, node| !node.subscribed.is_empty());
    }

    fn mark_stale(&mut self) {
        self.dirty = true;
        if let Source::Cluster { stale, .. } = &mut self.source {
            *stale = true;
        }
    }

    /// Schedules the next rebuild after a failure, backing off while failures repeat.
    fn schedule(&mut self) {
        if !self.dirty {
            self.backoff.reset();
            self.retry_at = None;
        } else if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }
}
