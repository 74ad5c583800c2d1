//! Run journals on Redis, so that a run can be resumed on any gateway node.
//!
//! The node that runs a run writes each record to the run's Redis Stream before any client
//! sees it, with one Lua script that appends the record, keeps the run's summary, trims the
//! stream to its byte cap, renews the keys' lifetime and publishes the record on the run's
//! channel, atomically: a node following the run remotely never hears a live record that is
//! missing from the stream, and reads the stream for anything it missed. Keys and channel carry
//! the run id as a hash tag, so on a Redis Cluster they live on one shard (and the script may
//! touch them all).
//!
//! Stream entries have the id `<seq>-0`, so a read "after seq N" is a range from `N+1`. Each
//! entry holds the record as the client frame it becomes, without the request `id` (each
//! follower adds its own).

use std::{sync::Arc, time::Duration};

use redis::Script;
use tollgate_shared::{engine::Engine, events, probe_gate::ProbeGate};
use uuid::Uuid;

use super::{Entry, Record, Snapshot};
use crate::{
    agent::{AgentEvent, RunId},
    protocol::Outbound,
};

/// The longest a journal call may take.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How long writes are skipped after one failed (Redis is down: runs must not pay for it
/// record by record); what they miss is written after, in order.
const WRITE_PAUSE: Duration = Duration::from_secs(1);
/// Most records one read returns.
pub(super) const READ_BATCH: usize = 512;

static APPEND: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local log, meta = KEYS[1], KEYS[2]
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', meta, 'last_seq') or '0')
if seq <= last then return last end
if redis.call('HGET', meta, 'ended') == '1' then return -1 end
redis.call('XADD', log, ARGV[1] .. '-0', 'r', ARGV[2], 'n', ARGV[9])
redis.call('HSET', meta, 'last_seq', seq, 'user', ARGV[7], 'node', ARGV[8], 'snapshot', ARGV[11])
local bytes = redis.call('HINCRBY', meta, 'bytes', tonumber(ARGV[9]))
while bytes > tonumber(ARGV[6]) do
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first == 0 or first[1][1] == ARGV[1] .. '-0' then break end
  redis.call('XDEL', log, first[1][1])
  bytes = redis.call('HINCRBY', meta, 'bytes', -tonumber(first[1][2][4]))
end
if ARGV[10] == '1' then redis.call('HSET', meta, 'ended', '1') end
redis.call('PEXPIRE', log, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call(ARGV[12], ARGV[4], ARGV[3])
return seq
"#,
    )
});

static NODE_LOST: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local log, meta = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'ended') == '1' then return 0 end
local last = tonumber(redis.call('HGET', meta, 'last_seq') or '-1')
if last + 1 ~= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', log, ARGV[1] .. '-0', 'r', ARGV[2], 'n', ARGV[8])
redis.call('HSET', meta, 'last_seq', ARGV[1], 'ended', '1', 'snapshot', ARGV[6])
redis.call('HINCRBY', meta, 'bytes', tonumber(ARGV[8]))
redis.call('PEXPIRE', log, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call(ARGV[7], ARGV[4], ARGV[3])
return 1
"#,
    )
});

/// Takes a run id a client chose, for a run about to be counted and started: refused when
/// Redis knows the id at all (a run, or another node taking it right now), so that one request
/// at a time counts a run under it. The summary it leaves has no snapshot yet, so a resume
/// finds no run until the first record is written.
static CLAIM: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('HSET', meta, 'user', ARGV[1], 'node', ARGV[2], 'last_seq', '0')
redis.call('PEXPIRE', meta, ARGV[3])
return 1
"#,
    )
});

/// Gives a claimed id back, if this node's claim still holds it and no record was written.
static UNCLAIM: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local meta = KEYS[1]
if redis.call('HGET', meta, 'node') == ARGV[1] and redis.call('HGET', meta, 'last_seq') == '0' then
  redis.call('DEL', meta)
end
return 0
"#,
    )
});

/// What Redis says about a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub user: Uuid,
    /// The bus id of the node that runs it.
    pub node: String,
    pub last_seq: u64,
    pub ended: bool,
    pub snapshot: Snapshot,
}

/// A journal call that did not work; the run goes on (its local followers are served).
#[derive(Debug, thiserror::Error)]
#[error("run journal on redis: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn new(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        Self(err.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct RunStore {
    engine: Engine,
    /// Shut for [`WRITE_PAUSE`] after a failed write.
    writes: Arc<ProbeGate>,
    max_bytes: usize,
    /// How long a running run's keys live without a record (renewed by each).
    running_ttl: Duration,
    /// How long an ended run's keys live.
    ended_ttl: Duration,
}

/// The key of a node's lease: it exists while the node renews it.
fn lease_key(engine: &Engine, node: &str) -> String {
    engine.key(&format!("gateway:node:{{{node}}}:alive"))
}

/// The channel a run's records are published on (without the deployment prefix).
pub fn channel(run_id: RunId) -> String {
    format!("gateway:run:{{{run_id}}}")
}

impl RunStore {
    /// The store of `engine`, or `None` when it has no Redis (journals are then in memory only).
    pub fn new(
        engine: &Engine,
        max_bytes: usize,
        running_ttl: Duration,
        ended_ttl: Duration,
    ) -> Option<Self> {
        engine.is_redis().then(|| Self {
            engine: engine.clone(),
            writes: Arc::new(ProbeGate::new(WRITE_PAUSE)),
            max_bytes,
            running_ttl,
            ended_ttl,
        })
    }

    fn keys(&self, run_id: RunId) -> (String, String) {
        (
            self.engine.key(&format!("gateway:run:{{{run_id}}}:log")),
            self.engine.key(&format!("gateway:run:{{{run_id}}}:meta")),
        )
    }

    async fn connection(&self) -> Result<tollgate_shared::engine::RedisConnection, StoreError> {
        self.engine
            .redis_multiplexed()
            .ok_or_else(|| StoreError("no redis".into()))
    }

    /// Writes `record` of `user`'s run, with the run's summary after it, and publishes it;
    /// false when the run was ended meanwhile by another node (its lease had lapsed).
    pub async fn append(
        &self,
        run_id: RunId,
        user: Uuid,
        record: &Record,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        if !self.writes.is_open() {
            return Err(StoreError::new("paused after a failed write"));
        }
        let frame = wire(record, run_id);
        let terminal = record.entry.is_terminal();
        let ttl = if terminal {
            self.ended_ttl
        } else {
            self.running_ttl
        };
        let (log, meta) = self.keys(run_id);
        let envelope = events::seal(self.engine.node(), &frame);
        let publish = self.publish_command();
        let snapshot =
            serde_json::to_string(snapshot).map_err(|err| StoreError(err.to_string()))?;
        let mut call = APPEND.prepare_invoke();
        call.key(&log)
            .key(&meta)
            .arg(record.seq)
            .arg(&frame)
            .arg(envelope)
            .arg(self.engine.key(&channel(run_id)))
            .arg(ttl.as_millis().max(1) as u64)
            .arg(self.max_bytes)
            .arg(user.to_string())
            .arg(self.engine.node())
            .arg(record.entry.size())
            .arg(if terminal { "1" } else { "0" })
            .arg(snapshot)
            .arg(publish);
        let written: Result<i64, StoreError> = async {
            let mut conn = self.connection().await?;
            timed(call.invoke_async(&mut conn)).await
        }
        .await;
        match written {
            Ok(written) => Ok(written >= 0),
            Err(err) => {
                // At most once a pause: the writes after it wait for the pause to end.
                tracing::warn!(error = %err, "writing run journals to redis failed; pausing writes");
                self.writes.hold();
                Err(err)
            }
        }
    }

    /// Takes `run_id`, chosen by `user`'s client, for a run this node is about to count and
    /// start; false when Redis knows the id already.
    pub async fn claim(&self, run_id: RunId, user: Uuid) -> Result<bool, StoreError> {
        let (_, meta) = self.keys(run_id);
        let mut call = CLAIM.prepare_invoke();
        call.key(&meta)
            .arg(user.to_string())
            .arg(self.engine.node())
            .arg(self.running_ttl.as_millis().max(1) as u64);
        let mut conn = self.connection().await?;
        let claimed: i64 = timed(call.invoke_async(&mut conn)).await?;
        Ok(claimed == 1)
    }

    /// Gives back this node's claim of `run_id` for a run that was not started.
    pub async fn unclaim(&self, run_id: RunId) -> Result<(), StoreError> {
        let (_, meta) = self.keys(run_id);
        let mut call = UNCLAIM.prepare_invoke();
        call.key(&meta).arg(self.engine.node());
        let mut conn = self.connection().await?;
        let _: i64 = timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Says that this node is alive for `ttl` (its runs are not lost).
    pub async fn renew_lease(&self, ttl: Duration) -> Result<(), StoreError> {
        let key = lease_key(&self.engine, self.engine.node());
        let mut conn = self.connection().await?;
        timed(
            redis::cmd("SET")
                .arg(&key)
                .arg("1")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Whether `node` has renewed its lease within its lifetime.
    pub async fn is_alive(&self, node: &str) -> Result<bool, StoreError> {
        let key = lease_key(&self.engine, node);
        let mut conn = self.connection().await?;
        timed(redis::cmd("EXISTS").arg(&key).query_async(&mut conn)).await
    }

    /// Ends a run whose node is gone with `agent_failed {reason: "node_lost"}`, once: false
    /// when the run has ended, or another node has just written to it.
    pub async fn close_lost(&self, run_id: RunId, meta: &Meta) -> Result<bool, StoreError> {
        let seq = meta.last_seq + 1;
        let record = Record {
            seq,
            entry: Entry::Event(AgentEvent::AgentFailed {
                run_id,
                reason: "node_lost".into(),
            }),
        };
        let mut snapshot = meta.snapshot.clone();
        snapshot.record(&record.entry, seq);
        let snapshot =
            serde_json::to_string(&snapshot).map_err(|err| StoreError(err.to_string()))?;
        let frame = wire(&record, run_id);
        let (log, meta_key) = self.keys(run_id);
        let mut call = NODE_LOST.prepare_invoke();
        call.key(&log)
            .key(&meta_key)
            .arg(seq)
            .arg(&frame)
            .arg(events::seal(self.engine.node(), &frame))
            .arg(self.engine.key(&channel(run_id)))
            .arg(self.ended_ttl.as_millis().max(1) as u64)
            .arg(snapshot)
            .arg(self.publish_command())
            .arg(record.entry.size());
        let mut conn = self.connection().await?;
        let written: i64 = timed(call.invoke_async(&mut conn)).await?;
        Ok(written == 1)
    }

    fn publish_command(&self) -> &'static str {
        if self.engine.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The run's summary, if Redis knows the run.
    pub async fn meta(&self, run_id: RunId) -> Result<Option<Meta>, StoreError> {
        let (_, meta) = self.keys(run_id);
        let mut conn = self.connection().await?;
        let fields: std::collections::HashMap<String, String> =
            timed(redis::cmd("HGETALL").arg(&meta).query_async(&mut conn)).await?;
        let read = || -> Option<Meta> {
            Some(Meta {
                user: fields.get("user")?.parse().ok()?,
                node: fields.get("node")?.clone(),
                last_seq: fields.get("last_seq")?.parse().ok()?,
                ended: fields.get("ended").is_some_and(|ended| ended == "1"),
                snapshot: serde_json::from_str(fields.get("snapshot")?).ok()?,
            })
        };
        Ok(read())
    }

    /// The records from `from_seq` on (at most a batch), as `(seq, frame)`.
    pub async fn range(
        &self,
        run_id: RunId,
        from_seq: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let (log, _) = self.keys(run_id);
        let mut conn = self.connection().await?;
        let entries: Vec<(String, Vec<String>)> = timed(
            redis::cmd("XRANGE")
                .arg(&log)
                .arg(format!("{from_seq}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(READ_BATCH)
                .query_async(&mut conn),
        )
        .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let seq = id.split('-').next()?.parse().ok()?;
                let frame = fields.get(1)?.clone();
                Some((seq, frame))
            })
            .collect())
    }
}

async fn timed<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError("timed out".into())),
    }
}

/// The record as its client frame without a request id.
fn wire(record: &Record, run_id: RunId) -> String {
    match record.outbound(run_id, None) {
        Outbound::Text(text) => text.as_str().to_owned(),
        Outbound::Delta(delta) => delta.encode().as_str().to_owned(),
        Outbound::Ping | Outbound::Close(_) => String::new(),
    }
}
