//! What must hold after every fault, whatever the fault was.
//!
//! - **Nothing acknowledged is lost.** The test counts, per user and meter, every unit it saw
//!   acknowledged: an `unknown_run` answer to a `cancel_run` (one message, see
//!   [`WsClient::metered`](crate::client::WsClient::metered)), an `agent_started` (one message
//!   and one agent run), a `tool_executing` (one tool call), an allowed `Consume`. A `pong` is
//!   not usage: pings are answered by the gateway and never metered. After the fault the billing
//!   ledger (`GetUsage`) must hold at least that of every billable meter. It may hold more only
//!   by what the test could not know the fate of (a timeout, `dependency_unavailable`, a
//!   request cut off by a close): such units are counted as *uncertain*, and the ledger must
//!   stay within `acknowledged ..= acknowledged + uncertain`. With nothing uncertain that is
//!   equality. Messages are rate-only in the default catalogue: the ledger holds none.
//! - **A revoked session stays revoked**: `ValidateToken` refuses it with `session_revoked`,
//!   and no gateway lets its token connect again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tollgate_proto::usage::v1::ConsumeResponse;
use tollgate_shared::testing::reason;
use tonic::{Code, Status};

use crate::{
    api::User,
    client::{Present, WsClient},
    stack::Cluster,
};

pub const MESSAGES: &str = "messages";
pub const AGENT_RUNS: &str = "agent_runs";
pub const TOOL_CALLS: &str = "tool_calls";
const METERS: [&str; 3] = [MESSAGES, AGENT_RUNS, TOOL_CALLS];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub acknowledged: u64,
    pub uncertain: u64,
}

/// The test's own count of metered usage, shareable between client tasks.
#[derive(Clone, Debug, Default)]
pub struct Acknowledgements {
    tallies: Arc<Mutex<HashMap<(String, &'static str), Tally>>>,
}

impl Acknowledgements {
    fn add(&self, user: &str, meter: &'static str, acknowledged: u64, uncertain: u64) {
        let mut tallies = self
            .tallies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let tally = tallies.entry((user.to_owned(), meter)).or_default();
        tally.acknowledged += acknowledged;
        tally.uncertain += uncertain;
    }

    /// Starts tracking `user` (every meter expected at zero until something is counted).
    pub fn track(&self, user: &str) {
        for meter in METERS {
            self.add(user, meter, 0, 0);
        }
    }

    pub fn tally(&self, user: &str, meter: &'static str) -> Tally {
        self.tallies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&(user.to_owned(), meter))
            .copied()
            .unwrap_or_default()
    }

    /// The units of `meter` acknowledged to any tracked user so far.
    pub fn total_acknowledged(&self, meter: &str) -> u64 {
        self.tallies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter(|((_, counted), _)| *counted == meter)
            .map(|(_, tally)| tally.acknowledged)
            .sum()
    }

    /// Counts what one frame received by `user`'s client says was metered. Request ids of
    /// runs start with `run` (see [`WsClient::run_agent`]), others are other messages.
    pub fn observe(&self, user: &str, frame: &Value) {
        self.track(user);
        let is_run = frame["id"].as_str().is_some_and(|id| id.starts_with("run"));
        match frame["type"].as_str().unwrap_or_default() {
            "agent_started" => {
                self.add(user, MESSAGES, 1, 0);
                self.add(user, AGENT_RUNS, 1, 0);
            }
            "tool_executing" => self.add(user, TOOL_CALLS, 1, 0),
            "error" => match (frame["code"].as_str(), frame["run_id"].is_string()) {
                // A tool of a started run could not be counted: maybe it was.
                (Some("dependency_unavailable"), true) => self.add(user, TOOL_CALLS, 0, 1),
                // The message meter, or the run meter after it, did not answer.
                (Some("dependency_unavailable"), false) => {
                    self.add(user, MESSAGES, 0, 1);
                    if is_run {
                        self.add(user, AGENT_RUNS, 0, 1);
                    }
                }
                // The run was counted, then its backend could not be reached and the run was
                // refunded (unless usage-service could not take the refund).
                (Some("agent_unavailable"), true) => {
                    self.add(user, MESSAGES, 1, 0);
                    self.add(user, AGENT_RUNS, 0, 1);
                }
                // The message passed; the run quota did not, or there was no such run.
                (Some("quota_exceeded" | "unknown_run"), false) => self.add(user, MESSAGES, 1, 0),
                _ => {}
            },
            _ => {}
        }
    }

    /// A request whose reply never came (its connection ended first): it may have been
    /// counted.
    pub fn unanswered(&self, user: &str, request_id: &str) {
        self.add(user, MESSAGES, 0, 1);
        if request_id.starts_with("run") {
            self.add(user, AGENT_RUNS, 0, 1);
        }
    }

    /// Units of `meter` that may or may not have been counted: tool calls of a run cut off
    /// by its connection's end, say (a tool is counted before its `tool_executing` is sent).
    pub fn uncertain(&self, user: &str, meter: &'static str, units: u64) {
        self.add(user, meter, 0, units);
    }

    /// Counts a direct `Consume` call and its outcome.
    pub fn consumed(
        &self,
        user: &str,
        meter: &'static str,
        amount: u64,
        result: &Result<ConsumeResponse, Status>,
    ) {
        self.track(user);
        match result {
            Ok(answer) if answer.allowed => self.add(user, meter, amount, 0),
            Ok(_) => {}
            Err(status) if status.code() == Code::InvalidArgument => {}
            Err(_) => self.add(user, meter, 0, amount),
        }
    }

    fn snapshot(&self) -> Vec<((String, &'static str), Tally)> {
        let mut all: Vec<_> = self
            .tallies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(key, tally)| (key.clone(), *tally))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Asserts that the ledger holds every acknowledged unit of every tracked user, and nothing
/// beyond what was uncertain.
pub async fn assert_ledger_matches(cluster: &Cluster, acknowledgements: &Acknowledgements) {
    let mut ledgers: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for ((user, meter), tally) in acknowledgements.snapshot() {
        if !ledgers.contains_key(&user) {
            let ledger = cluster.usage_of(&user).await;
            ledgers.insert(user.clone(), ledger);
        }
        let used = ledgers[&user].get(meter).copied().unwrap_or(0);
        if meter == MESSAGES {
            assert_eq!(
                used, 0,
                "a rate-only meter reached the ledger: user {user}, {meter}"
            );
            continue;
        }
        assert!(
            used >= tally.acknowledged,
            "an acknowledged unit was lost: user {user}, {meter}: ledger {used}, acknowledged \
             {tally:?}"
        );
        assert!(
            used <= tally.acknowledged + tally.uncertain,
            "the ledger counted more than was ever asked: user {user}, {meter}: ledger {used}, \
             {tally:?}"
        );
    }
}

/// Asserts that `user`'s session is revoked for good: auth-service refuses the token with
/// `session_revoked`, and so does every gateway of the cluster (401).
pub async fn assert_session_revoked(cluster: &Cluster, user: &User) {
    let refused = cluster
        .validate(&user.access_token)
        .await
        .expect_err("ValidateToken accepted a revoked session");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "session_revoked"),
        "{refused:?}"
    );
    for gateway in &cluster.gateways {
        if gateway.pid().is_none() {
            continue;
        }
        let refused = WsClient::connect(gateway, Present::Header(&user.access_token))
            .await
            .expect_err("a gateway let a revoked session reconnect");
        assert_eq!(
            (refused.status, refused.code()),
            (401, "session_revoked"),
            "{refused:?}"
        );
    }
}
