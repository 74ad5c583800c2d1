//! What the gateway knows of one authenticated client, and the ways it answers it.
//!
//! This is the state the requests of [`crate::commands`] act on (the session, the runs, the
//! counters of bad frames and refusals), kept apart from the controller loop of
//! [`crate::live`], which owns the timers: a command is applied without knowing the loop,
//! and the loop dispatches without knowing each command.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;

use crate::{
    agent::{Caller, RunRequest},
    end::End,
    error::{CloseCode, ErrorReply, Rejection},
    hub::ConnectionHandle,
    keepalive::PingBudget,
    protocol::{Outbound, RequestId, ServerMessage},
    runs::{Finished, RunContext, Runs, UsageToolGate},
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
    /// The connection's runs, made with the first one.
    runs: Option<Runs>,
    /// What the connection's runs share, made with the first run (most connections never
    /// run an agent, and an idle connection should stay small).
    context: Option<RunContext>,
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
            runs: None,
            context: None,
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
    pub fn runs_full(&self) -> bool {
        self.runs.as_ref().is_some_and(Runs::is_full)
    }

    /// Starts a run that passed the meters; its events go to this connection.
    pub fn start_run(&mut self, request: RunRequest, id: Option<RequestId>) {
        let (shared, session) = (&self.shared, &self.session);
        let context = self.context.get_or_insert_with(|| RunContext {
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
            handle: Arc::clone(&self.handle),
            metrics: shared.metrics.clone(),
        });
        let config = &shared.config;
        let (max, grace) = (config.max_runs_per_connection, config.agent_cancel_grace);
        self.runs
            .get_or_insert_with(|| Runs::new(max, grace + Duration::from_secs(1)))
            .start(context, request, id);
    }

    /// Cancels one of the connection's runs; false when it has no such run.
    pub fn cancel_run(&mut self, run_id: &str) -> bool {
        self.runs.as_mut().is_some_and(|runs| runs.cancel(run_id))
    }

    /// The next run to end (pending forever while the connection has none).
    pub async fn next_finished(&mut self) -> Finished {
        match self.runs.as_mut() {
            Some(runs) => runs.next_finished().await,
            None => std::future::pending().await,
        }
    }

    /// Cancels the runs; returns whether a lease is held (to release).
    pub async fn stop(&mut self) -> bool {
        if let Some(runs) = self.runs.as_mut() {
            runs.stop().await;
        }
        self.session.lease_held
    }
}
