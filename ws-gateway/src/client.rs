//! What the gateway knows of one authenticated client, and the ways it answers it.
//!
//! This is the state the requests of [`crate::commands`] act on (the session, the runs, the
//! counters of bad frames and refusals), kept apart from the controller loop of
//! [`crate::live`], which owns the timers: a command is applied without knowing the loop,
//! and the loop dispatches without knowing each command.

use std::{collections::HashSet, sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use tokio::task::JoinSet;

use crate::{
    agent::{Caller, RunId},
    end::End,
    error::{CloseCode, ErrorReply, Rejection},
    hub::ConnectionHandle,
    journal::{self, Attach, Follower, RunJournal},
    keepalive::PingBudget,
    protocol::{Outbound, RequestId, ServerMessage},
    runs::{RunContext, UsageToolGate},
    session::Session,
    state::Shared,
    usage::Profile,
    validation::Identity,
};

#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    connection_id: Arc<str>,
    session: Session,
    /// The runs this connection started (they belong to the node and outlive it).
    started: Vec<Arc<RunJournal>>,
    /// What the runs this connection starts share, made with the first run (most connections
    /// never run an agent, and an idle connection should stay small).
    context: Option<RunContext>,
    /// The runs this connection follows, each read by a task of its own.
    following: HashSet<RunId>,
    followers: JoinSet<RunId>,
    /// Metered requests so far: the meter's idempotency key.
    seq: u64,
    /// Bad frames in a row (1008 at `GATEWAY_MAX_BAD_FRAMES`).
    bad_frames: u32,
    /// Refused requests in a row (4008 at `GATEWAY_MAX_RATE_VIOLATIONS`).
    violations: u32,
    pings: PingBudget,
    /// Whether `token_expiring` was sent for the current token.
    warned: bool,
}

impl Client {
    pub fn new(
        shared: Arc<Shared>,
        handle: Arc<ConnectionHandle>,
        connection_id: Arc<str>,
        session: Session,
    ) -> Self {
        Self {
            shared,
            handle,
            connection_id,
            session,
            started: Vec::new(),
            context: None,
            following: HashSet::new(),
            followers: JoinSet::new(),
            seq: 0,
            bad_frames: 0,
            violations: 0,
            pings: PingBudget::default(),
            warned: false,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn handle(&self) -> &Arc<ConnectionHandle> {
        &self.handle
    }

    pub fn connection_id(&self) -> &Arc<str> {
        &self.connection_id
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn identity(&self) -> Identity {
        self.session.identity
    }

    /// Offers a frame to the send queue (a full queue closes the connection with 4010).
    pub fn send(&self, frame: Utf8Bytes) {
        self.handle
            .offer(Outbound::Text(frame), &self.shared.metrics);
    }

    /// Sends an `error` reply.
    pub fn reply(&self, id: Option<&RequestId>, reply: &ErrorReply) {
        self.send(ServerMessage::error(id, reply));
    }

    /// Answers a refused request: a reply, or the end of the connection.
    pub fn reject(&self, id: Option<&RequestId>, rejection: Rejection) -> Option<End> {
        match rejection {
            Rejection::Reply(reply) => {
                self.reply(id, &reply);
                None
            }
            Rejection::Close(code) => Some(End::Close(code)),
        }
    }

    /// Answers a frame that is not a request this connection serves; enough of them in a row
    /// close it with 1008.
    pub fn bad_frame(&mut self, id: Option<&RequestId>, reply: ErrorReply) -> Option<End> {
        self.bad_frames += 1;
        self.reply(id, &reply);
        (self.bad_frames >= self.shared.config.max_bad_frames)
            .then_some(End::Close(CloseCode::PolicyViolation))
    }

    /// A well-formed request ends a run of bad frames.
    pub fn well_formed(&mut self) {
        self.bad_frames = 0;
    }

    /// Answers a request refused for a rate (the plan's messages, or pings); enough of them in
    /// a row close the connection with 4008.
    pub fn rate_limited(&mut self, id: Option<&RequestId>, retry_after: Duration) -> Option<End> {
        self.violations += 1;
        self.send(
            ServerMessage::RateLimited {
                id,
                retry_after_ms: retry_after.as_millis().max(1) as u64,
            }
            .encode(),
        );
        (self.violations >= self.shared.config.max_rate_violations)
            .then_some(End::Close(CloseCode::RateLimited))
    }

    /// Any other answer to a metered request ends a run of refusals (a pong does not: pings
    /// are not what the plan limits).
    pub fn answered(&mut self) {
        self.violations = 0;
    }

    /// Spends one ping of the connection's budget; `Err(retry_after)` when it is spent.
    pub fn take_ping(&mut self) -> Result<(), Duration> {
        self.pings.take()
    }

    /// The meter's idempotency key of the next metered request.
    pub fn next_request_key(&mut self) -> String {
        self.seq += 1;
        format!("{}:{}", self.connection_id, self.seq)
    }

    /// A refreshed token of the same session: its expiry is warned about afresh.
    pub fn refreshed(&mut self, identity: Identity) {
        self.session.identity = identity;
        self.warned = false;
    }

    pub fn warned(&self) -> bool {
        self.warned
    }

    pub fn set_warned(&mut self) {
        self.warned = true;
    }

    /// usage-service renewed the lease (the plan and roles may have changed).
    pub fn leased(&mut self, profile: Profile) {
        self.session.lease_held = true;
        self.session.profile = profile;
    }

    /// Whether the connection has its maximum of runs in flight.
    pub fn runs_full(&mut self) -> bool {
        self.started.retain(|journal| !journal.is_ended());
        self.started.len() >= self.shared.config.max_runs_per_connection.max(1)
    }

    /// What the runs this connection starts share, made with the first (most connections
    /// never start one).
    pub fn run_context(&mut self) -> RunContext {
        let (shared, session) = (&self.shared, &self.session);
        self.context
            .get_or_insert_with(|| RunContext {
                backends: Arc::clone(&shared.backends),
                settings: shared.config.run_settings(),
                gate: Arc::new(UsageToolGate::new(
                    shared.limits.clone(),
                    session.identity.user_id,
                )),
                caller: Arc::new(Caller {
                    user_id: session.identity.user_id,
                    session_id: session.identity.session_id,
                    plan: session.profile.plan.clone(),
                    roles: session.profile.roles.clone(),
                }),
            })
            .clone()
    }

    /// Follows a run this connection started, from its first event.
    pub fn follow_started(&mut self, journal: Arc<RunJournal>, id: Option<RequestId>) {
        self.started.push(Arc::clone(&journal));
        match journal.attach(0) {
            Attach::Follow(follower) => self.follow(follower, id),
            other => tracing::warn!(
                ?other,
                "a run started here cannot be followed from its start"
            ),
        }
    }

    /// One of the user's runs on this node.
    pub fn find_run(&self, run_id: RunId) -> Option<Arc<RunJournal>> {
        self.shared.runs.find(run_id, self.identity().user_id)
    }

    /// Whether this connection already follows `run_id`.
    pub fn follows(&mut self, run_id: RunId) -> bool {
        while let Some(done) = self.followers.try_join_next() {
            if let Ok(run_id) = done {
                self.following.remove(&run_id);
            }
        }
        self.following.contains(&run_id)
    }

    /// Sends the run's records after the follower's cursor to this connection, then its live
    /// ones, until the run ends or the connection does.
    pub fn follow(&mut self, follower: Follower, id: Option<RequestId>) {
        let run_id = follower.journal().run_id();
        self.following.insert(run_id);
        let handle = Arc::clone(&self.handle);
        self.followers.spawn(async move {
            journal::follow(follower, handle, id).await;
            run_id
        });
    }

    /// Stops following runs (they go on without this connection); returns whether a lease is
    /// held (to release).
    pub async fn stop(&mut self) -> bool {
        self.followers.abort_all();
        while self.followers.join_next().await.is_some() {}
        self.following.clear();
        self.session.lease_held
    }
}
