//! Which node of a Redis Cluster owns which hash slot, as `CLUSTER SLOTS` reports it.
//!
//! The dynamic subscriptions keep one connection per master and must send each `SSUBSCRIBE`
//! to the owner of its channel's slot, so they keep this map themselves (the cluster
//! connection's own map is private to it) and compare it with a fresh one now and then: a
//! difference means slots moved, and the subscriptions are rebuilt where they now belong.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};

/// A master's address, as the cluster announces it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Slot ranges and their masters, sorted by first slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    ranges: Vec<(u16, u16, NodeAddr)>,
}

impl SlotMap {
    /// Asks one node of the cluster (any that answers) for the current map.
    pub(crate) async fn fetch(conn: &mut ClusterConnection) -> RedisResult<Self> {
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        Self::parse(reply)
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    /// A range whose master has no usable address (`?` or empty, while a node is being
    /// introduced) is left out: its channels wait for the next map.
    pub(crate) fn parse(reply: Value) -> RedisResult<Self> {
        let entries: Vec<Vec<Value>> = redis::from_owned_redis_value(reply)?;
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let [start, end, master, ..] = &entry[..] else {
                return Err(malformed());
            };
            let start: u16 = redis::from_redis_value(start)?;
            let end: u16 = redis::from_redis_value(end)?;
            let master: Vec<Value> = redis::from_redis_value(master)?;
            let [host, port, ..] = &master[..] else {
                return Err(malformed());
            };
            let host: String = redis::from_redis_value(host)?;
            let port: u16 = redis::from_redis_value(port)?;
            if host.is_empty() || host == "?" || start > end {
                continue;
            }
            ranges.push((start, end, NodeAddr { host, port }));
        }
        ranges.sort_by_key(|(start, _, _)| *start);
        Ok(Self { ranges })
    }

    /// The master that owns `slot`, if the map knows one.
    pub(crate) fn owner(&self, slot: u16) -> Option<&NodeAddr> {
        let at = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (_, end, node) = self.ranges.get(at.checked_sub(1)?)?;
        (slot <= *end).then_some(node)
    }
}

fn malformed() -> redis::RedisError {
    (redis::ErrorKind::TypeError, "malformed CLUSTER SLOTS reply").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"node-id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn every_slot_maps_to_the_master_of_its_range() {
        let reply = Value::Array(vec![
            range(10923, 16383, "10.0.0.3", 7002),
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "10.0.0.2", 7001),
        ]);
        let map = SlotMap::parse(reply).unwrap();
        let owner = |slot| map.owner(slot).map(ToString::to_string);
        assert_eq!(owner(0).as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(owner(5460).as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(owner(5461).as_deref(), Some("10.0.0.2:7001"));
        assert_eq!(owner(16383).as_deref(), Some("10.0.0.3:7002"));
    }

    #[test]
    fn unowned_slots_and_unknown_addresses_have_no_owner() {
        let reply = Value::Array(vec![
            range(0, 99, "10.0.0.1", 7000),
            range(200, 299, "?", 7001),
        ]);
        let map = SlotMap::parse(reply).unwrap();
        assert!(map.owner(99).is_some());
        assert_eq!(map.owner(100), None, "a gap in the map");
        assert_eq!(map.owner(250), None, "a master without an address");
        assert_eq!(SlotMap::default().owner(0), None);
    }

    #[test]
    fn a_malformed_reply_is_an_error() {
        let reply = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert!(SlotMap::parse(reply).is_err());
        assert!(SlotMap::parse(Value::Okay).is_err());
    }
}
