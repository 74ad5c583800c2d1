//! The Redis store: one Lua script per operation, so every check-and-count is a single atomic
//! step on the server however many replicas call it at once.
//!
//! Scripts are sent with `EVALSHA` and loaded on `NOSCRIPT` (via [`redis::Script`]), so a
//! restarted or failed-over Redis needs no warm-up. Every script reads the clock with Redis
//! `TIME`: replicas whose own clocks are skewed still agree on when a bucket refills, a lease
//! expires or a record lapses. All keys of one call carry the user id as a Redis Cluster hash
//! tag (`{user}`), so they share a slot. A batch of leases spans users, so on a cluster it is
//! split into one pipeline per slot, sent concurrently.
//!
//! The GCRA state is kept as a pair, the time of the last update (`at`, integer µs) and the
//! debt then (`debt`, `tat - at` in µs), rather than an absolute theoretical arrival time: the
//! debt is a small number, so the double-precision arithmetic of Lua stays exact to far below a
//! microsecond, where an absolute µs timestamp would round to a quarter of one on every update.

use std::sync::LazyLock;

use redis::{FromRedisValue, RedisResult, Script};
use tollgate_shared::engine::{RedisConnection as Connection, slot_groups};

use super::{
    Counter, Decision, IDEMPOTENCY_TTL, LimitError, Plan,
    decision::{Verdict, combine, quota_verdict},
};

/// Shared by the scripts: the server's clock, in µs and ms.
const CLOCK: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now_us / 1000)
";

/// KEYS: gcra, quota, idempotency. ARGV: amount, idempotency record ('' for none), has rate,
/// rate limit, period µs, has quota, quota limit, window end ms, idempotency ttl ms, window
/// start ms. Returns {status (0 ok, 1 idempotency conflict, 2 the quota window is not the
/// current one), replayed, now_ms, rate ok, rate remaining, rate reset ms, rate retry ms, quota
/// ok, quota used after}.
const CONSUME: &str = r"
if ARGV[6] == '1' and (now_ms < tonumber(ARGV[10]) or now_ms >= tonumber(ARGV[8])) then
  return {2, 0, now_ms, 0, 0, 0, 0, 0, 0}
end
local amount = tonumber(ARGV[1])
local replayed = 0
if ARGV[2] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    if seen ~= ARGV[2] then return {1, 0, now_ms, 0, 0, 0, 0, 0, 0} end
    replayed = 1
    amount = 0
  end
end

local has_rate = ARGV[3] == '1'
local limit = tonumber(ARGV[4])
local period = tonumber(ARGV[5])
local debt, new_debt, rate_ok = 0, 0, 1
if has_rate and limit > 0 then
  local state = redis.call('HMGET', KEYS[1], 'at', 'debt')
  if state[1] and state[2] then
    debt = tonumber(state[2]) - (now_us - tonumber(state[1]))
    if debt < 0 then debt = 0 end
  end
  new_debt = debt + amount * (period / limit)
  if new_debt > period * (1 + 1e-9) then rate_ok = 0 end
elseif has_rate and amount > 0 then
  rate_ok = 0
end

local has_quota = ARGV[6] == '1'
local used, quota_ok = 0, 1
if has_quota then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + amount > tonumber(ARGV[7]) then quota_ok = 0 end
end

local allowed = rate_ok == 1 and quota_ok == 1
if allowed and amount > 0 then
  if has_rate and limit > 0 then
    redis.call('HSET', KEYS[1], 'at', now_us, 'debt', new_debt)
    redis.call('PEXPIRE', KEYS[1], math.ceil(new_debt / 1000) + 1000)
  end
  if has_quota then
    redis.call('INCRBY', KEYS[2], ARGV[1])
    redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[8]) + 86400000)
    used = used + amount
  end
  if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[9]) end
end

local remaining, reset_ms, retry_ms = 0, now_ms, 0
if has_rate and limit > 0 then
  local interval = period / limit
  local after = debt
  if allowed then after = new_debt end
  remaining = math.floor((period - after) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  reset_ms = now_ms + math.ceil(after / 1000)
  if rate_ok == 0 then retry_ms = math.ceil((new_debt - period) / 1000) end
elseif has_rate and rate_ok == 0 then
  retry_ms = math.ceil(period / 1000)
end
return {0, replayed, now_ms, rate_ok, remaining, reset_ms, retry_ms, quota_ok, used}
";

/// KEYS: gcra, quota, idempotency. ARGV: amount, idempotency record ('' for none), has rate,
/// rate limit, period µs, has quota, quota limit, the record kept ('' to forget the key).
/// Returns 1 if units were given back.
const REFUND: &str = r"
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
  if ARGV[8] ~= '' then
    redis.call('SET', KEYS[3], ARGV[8], 'KEEPTTL')
  else
    redis.call('DEL', KEYS[3])
  end
end
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[4])
if ARGV[3] == '1' and limit > 0 then
  local state = redis.call('HMGET', KEYS[1], 'at', 'debt')
  if state[1] and state[2] then
    local debt = tonumber(state[2]) - (now_us - tonumber(state[1]))
    if debt < 0 then debt = 0 end
    debt = debt - amount * (tonumber(ARGV[5]) / limit)
    if debt <= 0 then
      redis.call('DEL', KEYS[1])
    else
      redis.call('HSET', KEYS[1], 'at', now_us, 'debt', debt)
      redis.call('PEXPIRE', KEYS[1], math.ceil(debt / 1000) + 1000)
    end
  end
end
if ARGV[6] == '1' then
  local used = redis.call('GET', KEYS[2])
  if used then
    local left = tonumber(used) - amount
    if left < 0 then left = 0 end
    redis.call('SET', KEYS[2], left, 'KEEPTTL')
  end
end
return 1
";

/// Shared by the lease scripts. KEYS: the user's leases (connection ids scored by expiry, Unix
/// ms) and their order (the same ids scored by acquisition number). Drops expired leases, and
/// order entries without a lease (left by a release of an older version, which knew no order).
const LEASES: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
for _, id in ipairs(expired) do redis.call('ZREM', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[2]) > redis.call('ZCARD', KEYS[1]) then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if not redis.call('ZSCORE', KEYS[1], id) then redis.call('ZREM', KEYS[2], id) end
  end
end
";

/// KEYS: leases, order. ARGV: connection id, limit, ttl ms. A new lease is granted while fewer
/// than the limit are live, a renewal while fewer than the limit are older; a refused renewal
/// drops the lease. A lease without an order entry (taken by an older version) is numbered as
/// the newest. Returns {granted, active after}.
const ACQUIRE_LEASE: &str = r"
local id, limit = ARGV[1], tonumber(ARGV[2])
local function number_last()
  local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  local n = 1
  if top[2] then n = tonumber(top[2]) + 1 end
  redis.call('ZADD', KEYS[2], n, id)
end
local granted = 0
if redis.call('ZSCORE', KEYS[1], id) then
  if not redis.call('ZSCORE', KEYS[2], id) then number_last() end
  if redis.call('ZRANK', KEYS[2], id) < limit then
    granted = 1
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
elseif redis.call('ZCARD', KEYS[1]) < limit then
  granted = 1
  number_last()
end
if granted == 1 then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), id)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local expires = math.ceil(tonumber(last[2]))
  redis.call('PEXPIREAT', KEYS[1], expires)
  redis.call('PEXPIREAT', KEYS[2], expires)
end
return {granted, redis.call('ZCARD', KEYS[1])}
";

/// KEYS: leases, order. ARGV: connection id. Drops the lease (and any that have expired).
const RELEASE_LEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

static CONSUME_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CONSUME));
static REFUND_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(REFUND));
static ACQUIRE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{LEASES}{ACQUIRE_LEASE}")));
static RELEASE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{LEASES}{RELEASE_LEASE}")));

fn script(body: &str) -> Script {
    Script::new(&format!("{CLOCK}{body}"))
}

/// The (prefixed) keys of one user's leases.
#[derive(Debug)]
pub(super) struct LeaseKeys {
    pub expiries: String,
    pub order: String,
}

/// The full (prefixed) keys of one consume or refund.
#[derive(Debug)]
pub(super) struct Keys {
    pub gcra: String,
    pub quota: String,
    pub idempotency: String,
}

/// Runs the consume script; answers Redis's clock (Unix ms) with the decision.
pub(super) async fn consume(
    conn: &mut Connection,
    plan: &Plan<'_>,
    keys: &Keys,
) -> RedisResult<(i64, Result<Decision, LimitError>)> {
    let mut call = CONSUME_SCRIPT.prepare_invoke();
    call.key(&keys.gcra)
        .key(&keys.quota)
        .key(&keys.idempotency)
        .arg(plan.amount)
        .arg(plan.idempotency_record.as_deref().unwrap_or(""));
    push_limits(&mut call, plan);
    let (window_start, window_end) = plan
        .quota
        .map_or((0, 0), |quota| (quota.window_start_ms, quota.window_end_ms));
    call.arg(window_end)
        .arg(IDEMPOTENCY_TTL.as_millis() as u64)
        .arg(window_start);
    let reply: Vec<i64> = call.invoke_async(conn).await?;
    let [
        status,
        replayed,
        now_ms,
        rate_ok,
        remaining,
        reset_ms,
        retry_ms,
        quota_ok,
        used,
    ] = reply[..]
    else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "unexpected reply from the consume script",
        )));
    };
    match status {
        1 => return Ok((now_ms, Err(LimitError::IdempotencyConflict))),
        2 => return Ok((now_ms, Err(LimitError::StaleWindow { now_ms }))),
        _ => {}
    }
    let rate = plan.rate.map(|(limit, _)| Verdict {
        allowed: rate_ok == 1,
        remaining: non_negative(remaining),
        limit,
        reset_at_ms: reset_ms,
        retry_after_ms: non_negative(retry_ms),
    });
    let quota = plan.quota.map(|quota| {
        quota_verdict(
            quota_ok == 1,
            non_negative(used),
            quota.limit,
            quota.window_end_ms,
            now_ms,
        )
    });
    Ok((
        now_ms,
        Ok(combine(Counter::Redis, now_ms, replayed == 1, rate, quota)),
    ))
}

/// Runs the refund script; true if units were given back.
pub(super) async fn refund(
    conn: &mut Connection,
    plan: &Plan<'_>,
    keys: &Keys,
) -> RedisResult<bool> {
    let mut call = REFUND_SCRIPT.prepare_invoke();
    call.key(&keys.gcra)
        .key(&keys.quota)
        .key(&keys.idempotency)
        .arg(plan.amount)
        .arg(plan.idempotency_record.as_deref().unwrap_or(""));
    push_limits(&mut call, plan);
    call.arg(plan.kept_record.as_deref().unwrap_or(""));
    let refunded: i64 = call.invoke_async(conn).await?;
    Ok(refunded == 1)
}

/// Runs the acquire script for each `(keys, connection id, limit, TTL in ms)`, in as few round
/// trips as the keys' slots allow: (granted, active leases after) each, in order.
pub(super) async fn acquire_leases(
    conn: &mut Connection,
    leases: &[(LeaseKeys, &str, u32, u64)],
) -> RedisResult<Vec<(bool, u32)>> {
    let keys: Vec<&str> = leases
        .iter()
        .map(|(keys, ..)| keys.expiries.as_str())
        .collect();
    let answers: Vec<(i64, i64)> = per_slot(conn, &keys, |group| {
        let mut pipe = redis::pipe();
        pipe.load_script(&ACQUIRE_SCRIPT).ignore();
        for &index in group {
            let (keys, connection_id, limit, ttl_ms) = &leases[index];
            pipe.invoke_script(
                ACQUIRE_SCRIPT
                    .key(&keys.expiries)
                    .key(&keys.order)
                    .arg(*connection_id)
                    .arg(*limit)
                    .arg(*ttl_ms),
            );
        }
        pipe
    })
    .await?;
    Ok(answers
        .into_iter()
        .map(|(granted, active)| (granted == 1, u32::try_from(active).unwrap_or(u32::MAX)))
        .collect())
}

/// Runs the release script for each `(keys, connection id)`, in as few round trips as the
/// keys' slots allow.
pub(super) async fn release_leases(
    conn: &mut Connection,
    leases: &[(LeaseKeys, &str)],
) -> RedisResult<()> {
    let keys: Vec<&str> = leases
        .iter()
        .map(|(keys, _)| keys.expiries.as_str())
        .collect();
    let _: Vec<i64> = per_slot(conn, &keys, |group| {
        let mut pipe = redis::pipe();
        pipe.load_script(&RELEASE_SCRIPT).ignore();
        for &index in group {
            let (keys, connection_id) = &leases[index];
            pipe.invoke_script(
                RELEASE_SCRIPT
                    .key(&keys.expiries)
                    .key(&keys.order)
                    .arg(*connection_id),
            );
        }
        pipe
    })
    .await?;
    Ok(())
}

/// One pipeline (built by `build` from item indices) per group of `keys` sharing a slot, all
/// at once; the answers in the order of `keys`. On one node it is one pipeline. The script is
/// loaded in each pipeline, so the node it lands on always knows it.
async fn per_slot<T: FromRedisValue>(
    conn: &mut Connection,
    keys: &[&str],
    build: impl Fn(&[usize]) -> redis::Pipeline,
) -> RedisResult<Vec<T>> {
    let groups = slot_groups(conn.is_cluster(), keys);
    if let [group] = &groups[..] {
        return build(group).query_async(conn).await;
    }
    let runs = groups.iter().map(|group| {
        let pipe = build(group);
        let conn = conn.try_clone();
        async move {
            let mut conn = conn.ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::ClientError,
                    "a pooled connection cannot run pipelines side by side",
                ))
            })?;
            pipe.query_async::<Vec<T>>(&mut conn).await
        }
    });
    let answers = futures::future::try_join_all(runs).await?;
    let mut ordered: Vec<Option<T>> = keys.iter().map(|_| None).collect();
    for (group, answers) in groups.iter().zip(answers) {
        for (&index, answer) in group.iter().zip(answers) {
            ordered[index] = Some(answer);
        }
    }
    ordered
        .into_iter()
        .map(|answer| {
            answer.ok_or_else(|| {
                (
                    redis::ErrorKind::TypeError,
                    "a pipeline answered too few values",
                )
                    .into()
            })
        })
        .collect()
}

/// ARGV 3 to 7: has rate, rate limit, period µs, has quota, quota limit.
fn push_limits(call: &mut redis::ScriptInvocation<'_>, plan: &Plan<'_>) {
    let (has_rate, limit, period_us) = match plan.rate {
        Some((limit, period_us)) => ("1", limit, period_us),
        None => ("0", 0, 0),
    };
    let (has_quota, quota_limit) = match plan.quota {
        Some(quota) => ("1", quota.limit),
        None => ("0", 0),
    };
    call.arg(has_rate)
        .arg(limit)
        .arg(period_us)
        .arg(has_quota)
        .arg(quota_limit);
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
