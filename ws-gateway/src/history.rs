//! Each user's recent published events, numbered, so a client that reconnects with `since`
//! gets what it missed instead of a silent gap (CONTRACT extension: `event.seq`, `since`,
//! `events_resumed`).
//!
//! Every event gets the next number of its user (`seq`, from 1) and goes into the user's
//! bounded history (`GATEWAY_EVENT_HISTORY_SIZE` events, kept `GATEWAY_EVENT_HISTORY_TTL` after
//! the user's last event) *before* anyone can receive it live, so no client sees a live event
//! that a later replay would not find.
//!
//! - **Redis:** one Lua script numbers the event (`INCR` of the user's counter), appends it to
//!   the user's Redis Stream (`XADD … MAXLEN`, the entry id is the seq), renews both keys'
//!   expiry and publishes it on the user's channel, atomically. The keys and the channel carry
//!   the user's hash tag, so on a cluster they share one shard and the script may `SPUBLISH`.
//!   The counter outlives the history (at least a day), so numbers keep growing across quiet
//!   spells and a stale `since` reads as "history gone", not as a future number.
//! - **Embedded engine:** the same, in memory, under one mutex that also covers the hand-off
//!   to the hub, so the single node delivers every user's events in seq order.
//!
//! A recovery is all or nothing: either every event after `since` is still held (and is
//! returned), or none is returned and the client is told `recovered: false`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::Script;
use tokio::time::Instant;
use tollgate_shared::engine::Engine;
use uuid::Uuid;

/// How long Redis gets for one history call.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// The least time a user's counter is kept after the user's last event.
const COUNTER_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest `seq`/`since`: the largest integer a JSON number holds exactly everywhere.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// Users tracked by the embedded history before expired ones are swept.
const LOCAL_SWEEP_AT: usize = 10_000;

/// The Redis envelope's node field for events: not any process's id, so every subscribed
/// node, the publisher's included, takes the event from Redis, in the order Redis numbered it.
pub const SCRIPT_NODE: &str = "history";

/// KEYS: counter, stream. ARGV: channel, data, history TTL ms (0: no history), size, counter
/// TTL ms, publish command, envelope node.
const APPEND: &str = r"
local seq = redis.call('INCR', KEYS[1])
local id = string.format('%d', seq)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id .. '-0', 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call(ARGV[6], ARGV[1], ARGV[7] .. '|' .. id .. ' ' .. ARGV[2])
return seq
";

/// A client's `since`: the last seq it has seen (0: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Since(u64);

/// Why a `since` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("`since` must be a whole number of at most {MAX_SEQ}")]
    NotANumber,
    #[error("`since` must not be negative")]
    Negative,
    #[error("`since` ({since}) is ahead of the user's last event ({last})")]
    Ahead { since: u64, last: u64 },
}

impl Since {
    pub fn new(value: u64) -> Result<Self, SinceError> {
        (value <= MAX_SEQ)
            .then_some(Self(value))
            .ok_or(SinceError::NotANumber)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// From the upgrade request's query string (`since=<seq>`): decimal digits only.
    pub fn parse(text: &str) -> Result<Self, SinceError> {
        if let Some(rest) = text.strip_prefix('-')
            && !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(SinceError::Negative);
        }
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SinceError::NotANumber);
        }
        Self::new(text.parse().map_err(|_| SinceError::NotANumber)?)
    }

    /// From a JSON field: an integer number, not a string or a fraction.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SinceError> {
        match value {
            serde_json::Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => {
                Err(SinceError::Negative)
            }
            serde_json::Value::Number(n) => Self::new(n.as_u64().ok_or(SinceError::NotANumber)?),
            _ => Err(SinceError::NotANumber),
        }
    }
}

/// What a client that asked for the events after `since` gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Whether `events` are all the user's events after `since`.
    pub recovered: bool,
    /// `(seq, data)` in seq order; empty unless recovered.
    pub events: Vec<(u64, Arc<str>)>,
}

/// The history could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the event history is unavailable")]
pub struct HistoryUnavailable;

#[derive(Clone, Copy, Debug)]
pub struct HistorySettings {
    /// Zero: events are numbered but not kept.
    pub ttl: Duration,
    pub size: usize,
}

/// Where events are numbered and kept.
#[derive(Debug)]
pub struct EventHistory {
    engine: Engine,
    settings: HistorySettings,
    append: Script,
    local: Mutex<HashMap<Uuid, LocalLog>>,
}

#[derive(Debug, Default)]
struct LocalLog {
    last: u64,
    counter_expires: Option<Instant>,
    history_expires: Option<Instant>,
    events: VecDeque<(u64, Arc<str>)>,
}

impl LocalLog {
    /// The log as of `now`: an expired history is emptied, an expired counter restarts.
    fn current(&mut self, now: Instant) -> &mut Self {
        if self.history_expires.is_some_and(|at| at <= now) {
            self.events.clear();
        }
        if self.counter_expires.is_some_and(|at| at <= now) {
            *self = Self::default();
        }
        self
    }
}

/// The user's channel (under the deployment prefix), tagged with the user's id.
pub fn channel(user: Uuid) -> String {
    format!("gateway:events:{{{user}}}")
}

/// The user of a channel made by [`channel`].
pub fn user_of(channel: &str) -> Option<Uuid> {
    channel
        .strip_prefix("gateway:events:{")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

impl EventHistory {
    pub fn new(engine: Engine, settings: HistorySettings) -> Self {
        Self {
            engine,
            settings,
            append: Script::new(APPEND),
            local: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.engine.is_redis()
    }

    fn keys(&self, user: Uuid) -> (String, String) {
        let base = self.engine.key(&channel(user));
        (format!("{base}:seq"), format!("{base}:log"))
    }

    fn counter_ttl(&self) -> Duration {
        COUNTER_TTL.max(self.settings.ttl)
    }

    /// Redis only: numbers `data`, keeps it and publishes it on the user's channel, in one
    /// script; returns its seq.
    pub async fn append_and_publish(
        &self,
        user: Uuid,
        data: &str,
    ) -> Result<u64, HistoryUnavailable> {
        let mut conn = self.engine.redis_multiplexed().ok_or(HistoryUnavailable)?;
        let (counter, stream) = self.keys(user);
        let publish = if self.engine.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut invocation = self.append.key(counter);
        invocation
            .key(stream)
            .arg(self.engine.key(&channel(user)))
            .arg(data)
            .arg(self.settings.ttl.as_millis() as u64)
            .arg(self.settings.size)
            .arg(self.counter_ttl().as_millis() as u64)
            .arg(publish)
            .arg(SCRIPT_NODE);
        match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "appending an event to its history failed");
                Err(HistoryUnavailable)
            }
            Err(_) => {
                tracing::warn!("appending an event to its history timed out");
                Err(HistoryUnavailable)
            }
        }
    }

    /// Embedded engine only: numbers and keeps `data`, then hands it to `deliver` while still
    /// holding the log, so deliveries of one user's events happen in seq order.
    pub fn append_local(&self, user: Uuid, data: &str, deliver: impl FnOnce(u64)) -> u64 {
        let now = Instant::now();
        let mut logs = self.lock();
        if logs.len() >= LOCAL_SWEEP_AT {
            logs.retain(|_, log| log.counter_expires.is_some_and(|at| at > now));
        }
        let log = logs.entry(user).or_default().current(now);
        log.last += 1;
        log.counter_expires = Some(now + self.counter_ttl());
        if !self.settings.ttl.is_zero() {
            if log.events.len() >= self.settings.size {
                log.events.pop_front();
            }
            log.events.push_back((log.last, Arc::from(data)));
            log.history_expires = Some(now + self.settings.ttl);
        }
        let seq = log.last;
        deliver(seq);
        seq
    }

    /// The user's last seq (0: none, or forgotten).
    pub async fn last(&self, user: Uuid) -> Result<u64, HistoryUnavailable> {
        Ok(self.read(user, None).await?.0)
    }

    /// The user's events after `since`, all or nothing. A `since` ahead of the user's last
    /// event is refused; a user with no counter has no history, which holds everything after 0
    /// and nothing after anything else.
    pub async fn since(&self, user: Uuid, since: Since) -> Result<Recovery, RecoverError> {
        let (last, events) = self.read(user, Some(since.get())).await?;
        let since = since.get();
        if last == 0 {
            return Ok(Recovery {
                recovered: since == 0,
                events: Vec::new(),
            });
        }
        if since > last {
            return Err(SinceError::Ahead { since, last }.into());
        }
        let complete =
            since == last || events.first().is_some_and(|(first, _)| *first == since + 1);
        Ok(Recovery {
            recovered: complete,
            events: if complete { events } else { Vec::new() },
        })
    }

    /// The user's last seq and, with `after`, the held events after it.
    async fn read(
        &self,
        user: Uuid,
        after: Option<u64>,
    ) -> Result<(u64, Vec<(u64, Arc<str>)>), HistoryUnavailable> {
        if !self.engine.is_redis() {
            let mut logs = self.lock();
            let Some(log) = logs.get_mut(&user) else {
                return Ok((0, Vec::new()));
            };
            let log = log.current(Instant::now());
            let events = after.map_or_else(Vec::new, |after| {
                log.events
                    .iter()
                    .filter(|(seq, _)| *seq > after)
                    .cloned()
                    .collect()
            });
            return Ok((log.last, events));
        }
        let mut conn = self.engine.redis_multiplexed().ok_or(HistoryUnavailable)?;
        let (counter, stream) = self.keys(user);
        let mut pipe = redis::pipe();
        pipe.atomic().get(&counter);
        if let Some(after) = after {
            pipe.cmd("XRANGE")
                .arg(&stream)
                .arg(format!("{}-0", after.saturating_add(1)))
                .arg("+")
                .arg("COUNT")
                .arg(self.settings.size);
        }
        let result = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut conn)).await;
        let values: Vec<redis::Value> = match result {
            Ok(Ok(values)) => values,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading an event history failed");
                return Err(HistoryUnavailable);
            }
            Err(_) => {
                tracing::warn!("reading an event history timed out");
                return Err(HistoryUnavailable);
            }
        };
        let mut values = values.into_iter();
        let last: Option<u64> = values
            .next()
            .map(|value| redis::from_redis_value(&value))
            .transpose()
            .map_err(|_| HistoryUnavailable)?
            .flatten();
        let events = match values.next() {
            Some(value) => stream_entries(value)?,
            None => Vec::new(),
        };
        Ok((last.unwrap_or(0), events))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, LocalLog>> {
        self.local
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// `XRANGE` entries (`<seq>-0`, `["d", data]`) as `(seq, data)`.
fn stream_entries(value: redis::Value) -> Result<Vec<(u64, Arc<str>)>, HistoryUnavailable> {
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::from_redis_value(&value).map_err(|_| HistoryUnavailable)?;
    entries
        .into_iter()
        .map(|(id, fields)| {
            let seq = id
                .strip_suffix("-0")
                .and_then(|seq| seq.parse().ok())
                .ok_or(HistoryUnavailable)?;
            let data = fields
                .into_iter()
                .find_map(|(name, value)| (name == "d").then_some(value))
                .ok_or(HistoryUnavailable)?;
            Ok((seq, Arc::from(data)))
        })
        .collect()
}

/// Why a recovery was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Since(#[from] SinceError),
    #[error(transparent)]
    Unavailable(#[from] HistoryUnavailable),
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
