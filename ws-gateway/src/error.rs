//! Every way the gateway says no, mapped to its transport in one place: WebSocket close codes
//! ([`CloseCode`], CONTRACT §5's table), HTTP refusals of the upgrade request and of the
//! publish API ([`GatewayError`], JSON `{"error":{"code","message"}}` with `Retry-After` on 429
//! and 503), and in-band `error` replies ([`ErrorReply`], codes in [`ErrorCode`]).
//!
//! A refusal that can reach a client by more than one channel ([`AuthFailure`], [`Refusal`])
//! is mapped here once per channel, so the upgrade request, the in-band `auth` and
//! `refresh_token` cannot drift apart: `From` for HTTP, `close_code` for a connection that
//! closes, and a [`Rejection`] (reply or close) for a request on an open connection.
//!
//! Messages are fixed texts: nothing here ever formats a token or a secret.

use std::{borrow::Cow, time::Duration};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tollgate_shared::tokens::TokenError;

/// Why the gateway closes a WebSocket connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is going away (drain, restart).
    GoingAway,
    /// 1002: a violation of the WebSocket protocol itself (RFC 6455).
    ProtocolError,
    /// 1003: a binary frame.
    Unsupported,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1008: repeated malformed frames.
    PolicyViolation,
    /// 1009: a frame or message over the size limit.
    TooBig,
    /// 1011: an internal error.
    Internal,
    /// 1013: overloaded or a dependency unavailable, try later.
    TryAgainLater,
    /// 4001: no authentication in time.
    AuthTimeout,
    /// 4002: invalid token (in-band auth or refresh).
    InvalidToken,
    /// 4003: the token expired and was not refreshed.
    TokenExpired,
    /// 4004: the session was revoked.
    SessionRevoked,
    /// 4005: a refresh token of another user or session.
    SessionMismatch,
    /// 4008: rate limit exceeded repeatedly.
    RateLimited,
    /// 4009: too many connections for the plan.
    TooManyConnections,
    /// 4010: slow consumer, the send queue overflowed.
    SlowConsumer,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::Unsupported => 1003,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::TryAgainLater => 1013,
            Self::AuthTimeout => 4001,
            Self::InvalidToken => 4002,
            Self::TokenExpired => 4003,
            Self::SessionRevoked => 4004,
            Self::SessionMismatch => 4005,
            Self::RateLimited => 4008,
            Self::TooManyConnections => 4009,
            Self::SlowConsumer => 4010,
        }
    }

    /// The close frame's reason text (at most 123 bytes by RFC 6455).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::GoingAway => "server going away",
            Self::ProtocolError => "protocol error",
            Self::Unsupported => "binary frames are not supported",
            Self::InvalidPayload => "text frames must be UTF-8",
            Self::PolicyViolation => "too many malformed frames",
            Self::TooBig => "frame too big",
            Self::Internal => "internal error",
            Self::TryAgainLater => "try again later",
            Self::AuthTimeout => "no authentication in time",
            Self::InvalidToken => "invalid token",
            Self::TokenExpired => "token expired",
            Self::SessionRevoked => "session revoked",
            Self::SessionMismatch => "token belongs to another user or session",
            Self::RateLimited => "rate limit exceeded repeatedly",
            Self::TooManyConnections => "too many connections for the plan",
            Self::SlowConsumer => "slow consumer",
        }
    }

    /// The label of the close-code metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "1000",
            Self::GoingAway => "1001",
            Self::ProtocolError => "1002",
            Self::Unsupported => "1003",
            Self::InvalidPayload => "1007",
            Self::PolicyViolation => "1008",
            Self::TooBig => "1009",
            Self::Internal => "1011",
            Self::TryAgainLater => "1013",
            Self::AuthTimeout => "4001",
            Self::InvalidToken => "4002",
            Self::TokenExpired => "4003",
            Self::SessionRevoked => "4004",
            Self::SessionMismatch => "4005",
            Self::RateLimited => "4008",
            Self::TooManyConnections => "4009",
            Self::SlowConsumer => "4010",
        }
    }
}

/// The `code` of an in-band `error {code, message}` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, an unknown type, a missing or unknown field.
    BadRequest,
    /// `auth` on a connection that is already authenticated.
    AlreadyAuthenticated,
    /// The user's roles do not allow the tool.
    ForbiddenTool,
    /// The user's plan does not include the tool (`upgrade_to` names one that does).
    PlanRequired,
    /// A quota (agent runs, tool calls) is used up.
    QuotaExceeded,
    /// usage-service or auth-service could not be asked.
    DependencyUnavailable,
    /// The connection already has its maximum of runs in flight.
    TooManyRuns,
    /// `cancel_run` named a run this connection does not have.
    UnknownRun,
    /// `run_agent` chose a `run_id` that is taken, or was used before: resume it instead.
    DuplicateRun,
    /// The run failed inside the agent.
    RunFailed,
    /// The plan catalogue declares no tool of that name.
    UnknownTool,
    /// `run_agent` named an agent that `GATEWAY_AGENTS` does not route.
    UnknownAgent,
    /// The agent's backend could not be reached or refused the run.
    AgentUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::ForbiddenTool => "forbidden_tool",
            Self::PlanRequired => "plan_required",
            Self::QuotaExceeded => "quota_exceeded",
            Self::DependencyUnavailable => "dependency_unavailable",
            Self::TooManyRuns => "too_many_runs",
            Self::UnknownRun => "unknown_run",
            Self::DuplicateRun => "duplicate_run",
            Self::RunFailed => "run_failed",
            Self::UnknownTool => "unknown_tool",
            Self::UnknownAgent => "unknown_agent",
            Self::AgentUnavailable => "agent_unavailable",
        }
    }
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("{0}")]
    Invalid(TokenError),
    /// auth-service cannot be asked and the mode is `strict`.
    #[error("authentication is unavailable")]
    Unavailable,
}

impl AuthFailure {
    /// How a connection authenticating in-band (`{"type":"auth"}`) is closed.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::Invalid(_) => CloseCode::InvalidToken,
            Self::Unavailable => CloseCode::TryAgainLater,
        }
    }

    /// How a refused `refresh_token` is answered: a bad token closes the connection; while
    /// auth-service is unavailable the current token still holds, so the client is told to
    /// retry.
    pub fn on_refresh(self) -> Rejection {
        match self {
            Self::Invalid(_) => Rejection::Close(CloseCode::InvalidToken),
            Self::Unavailable => Rejection::Reply(ErrorReply::auth_unavailable()),
        }
    }
}

impl From<AuthFailure> for GatewayError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Invalid(err) => Self::InvalidToken(err),
            AuthFailure::Unavailable => Self::AuthUnavailable,
        }
    }
}

/// Why an authenticated user may not connect now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The plan's connection limit is reached.
    TooManyConnections,
    /// usage-service cannot grant a lease and the emergency limit is reached.
    Unavailable,
}

/// How long a client refused for its plan's connection limit should wait.
const PLAN_LIMIT_RETRY: Duration = Duration::from_secs(5);

impl Refusal {
    /// How a connection authenticated in-band is closed.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TooManyConnections => CloseCode::TooManyConnections,
            Self::Unavailable => CloseCode::TryAgainLater,
        }
    }
}

impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooManyConnections => Self::TooManyConnections {
                retry_after: PLAN_LIMIT_RETRY,
            },
            Refusal::Unavailable => Self::DependencyUnavailable,
        }
    }
}

/// How an open connection answers a refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An `error` reply; the connection stays open.
    Reply(ErrorReply),
    /// The connection closes.
    Close(CloseCode),
}

/// An in-band `error` reply: one constructor per refusal, so each has one code and one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// For a quota: the plan that lifts it.
    pub upgrade_to: Option<String>,
}

impl ErrorReply {
    fn fixed(code: ErrorCode, message: &'static str) -> Self {
        Self {
            code,
            message: Cow::Borrowed(message),
            upgrade_to: None,
        }
    }

    /// A frame that is not a valid request; `message` says why (and never quotes a token).
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
            upgrade_to: None,
        }
    }

    pub fn already_authenticated() -> Self {
        Self::fixed(
            ErrorCode::AlreadyAuthenticated,
            "this connection is already authenticated; use refresh_token",
        )
    }

    pub fn usage_unavailable() -> Self {
        Self::fixed(
            ErrorCode::DependencyUnavailable,
            "usage-service is unavailable, try again later",
        )
    }

    pub fn auth_unavailable() -> Self {
        Self::fixed(
            ErrorCode::DependencyUnavailable,
            "authentication is unavailable, try again later",
        )
    }

    pub fn run_quota_exceeded(upgrade_to: Option<String>) -> Self {
        Self {
            upgrade_to,
            ..Self::fixed(ErrorCode::QuotaExceeded, "the agent run quota is used up")
        }
    }

    /// A tool call the gate refused; `message` names the tool.
    pub fn tool_denied(code: ErrorCode, message: String, upgrade_to: Option<String>) -> Self {
        Self {
            code,
            message: Cow::Owned(message),
            upgrade_to,
        }
    }

    pub fn agent_unavailable() -> Self {
        Self::fixed(
            ErrorCode::AgentUnavailable,
            "the agent is unavailable, try again later",
        )
    }

    pub fn too_many_runs() -> Self {
        Self::fixed(
            ErrorCode::TooManyRuns,
            "too many runs in flight on this connection",
        )
    }

    /// `agent` has passed `RunRequest`'s length check; control characters are left out.
    pub fn unknown_agent(agent: &str) -> Self {
        let shown: String = agent.chars().filter(|c| !c.is_control()).collect();
        Self {
            message: Cow::Owned(format!("no agent is named `{shown}`")),
            ..Self::fixed(ErrorCode::UnknownAgent, "")
        }
    }

    pub fn unknown_run() -> Self {
        Self::fixed(ErrorCode::UnknownRun, "no such run")
    }

    /// A `run_agent` whose chosen `run_id` names a run that exists or existed; nothing was
    /// started or counted.
    pub fn duplicate_run() -> Self {
        Self::fixed(
            ErrorCode::DuplicateRun,
            "this run_id is taken or was used before; resume the run, or choose a new id",
        )
    }

    /// Redis, where other nodes' runs are read, did not answer.
    pub fn history_unavailable() -> Self {
        Self::fixed(
            ErrorCode::DependencyUnavailable,
            "run history is unavailable, try again later",
        )
    }

    /// A run refused because this gateway is shutting down.
    pub fn shutting_down() -> Self {
        Self::fixed(
            ErrorCode::DependencyUnavailable,
            "the gateway is shutting down, try again",
        )
    }

    pub fn bad_run_output() -> Self {
        Self::fixed(ErrorCode::RunFailed, "the run produced bad output")
    }
}

/// A refusal answered over HTTP: the upgrade request of `/ws`, and `/v1/publish`.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("this endpoint only accepts WebSocket upgrade requests")]
    NotWebSocket { status: StatusCode },
    #[error("the upgrade request carries two different tokens")]
    AmbiguousToken,
    #[error("tokens in the query string are not accepted")]
    QueryTokenRefused,
    #[error("too many connection attempts, retry later")]
    ConnectRateLimited { retry_after: Duration },
    #[error("too many connections for the plan")]
    TooManyConnections { retry_after: Duration },
    #[error("authentication is unavailable, retry later")]
    AuthUnavailable,
    #[error("a dependency is unavailable, retry later")]
    DependencyUnavailable,
    #[error("the gateway is overloaded, retry later")]
    Overloaded,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("a valid service token is required")]
    Unauthenticated(TokenError),
    #[error("the service token lacks the `publish` scope")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is too large")]
    PayloadTooLarge,
}

impl GatewayError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidToken(err) | Self::Unauthenticated(err) => err.reason(),
            Self::NotWebSocket { .. } => "websocket_required",
            Self::AmbiguousToken => "ambiguous_token",
            Self::QueryTokenRefused => "query_token_refused",
            Self::ConnectRateLimited { .. } => "rate_limited",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::AuthUnavailable => "auth_unavailable",
            Self::DependencyUnavailable => "dependency_unavailable",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::Forbidden => "insufficient_scope",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotWebSocket { status } => *status,
            Self::InvalidToken(_)
            | Self::AmbiguousToken
            | Self::QueryTokenRefused
            | Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::ConnectRateLimited { .. } | Self::TooManyConnections { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::AuthUnavailable
            | Self::DependencyUnavailable
            | Self::Overloaded
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// `Retry-After` for every 429 and 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::ConnectRateLimited { retry_after } | Self::TooManyConnections { retry_after } => {
                Some(*retry_after)
            }
            Self::AuthUnavailable
            | Self::DependencyUnavailable
            | Self::Overloaded
            | Self::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        tracing::debug!(code = self.code(), status = %self.status(), "request refused");
        let body = Json(json!({"error": {"code": self.code(), "message": self.to_string()}}));
        let mut response = (self.status(), body).into_response();
        if let Some(retry_after) = self.retry_after() {
            // Whole seconds, rounded up, at least one (RFC 9110 §10.2.3).
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if matches!(self, Self::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        response
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
