//! auth-service's one error type, and its mapping to every transport in one place: gRPC
//! statuses (with a machine-readable reason) and JSON HTTP responses.
//!
//! Internal causes are logged here, once, inside the request's span; callers only ever see a
//! generic message for them. Nothing here formats a token, password or secret.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tollgate_shared::tokens::TokenError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::RefreshTokenError;
use crate::{
    clients::ClientError, domain::InvalidInput, revocation_feed::Lagged, store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidInput(&'static str),
    #[error("the request body is too large")]
    BodyTooLarge,
    #[error("the email is already registered")]
    EmailTaken,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("the refresh token is {}", .0.describe())]
    InvalidRefreshToken(RefreshRefusal),
    #[error("client authentication failed")]
    InvalidClient,
    #[error("the requested scope is not granted to this client")]
    InvalidScope,
    #[error("the audience is not a known service")]
    InvalidAudience,
    #[error("the service token lacks the required scope")]
    PermissionDenied,
    #[error("too many attempts, retry later")]
    Throttled { retry_after: Duration },
    #[error("{0}; reconnect with since_ms")]
    WatcherLagged(Lagged),
    #[error("a dependency is unavailable, retry later")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Why a refresh token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshRefusal {
    Unknown,
    Expired,
    Revoked,
    /// A rotated token was replayed: the session has been revoked.
    Reused,
}

impl RefreshRefusal {
    fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "not valid",
            Self::Expired => "expired",
            Self::Revoked => "from a revoked session",
            Self::Reused => "already used; the session has been revoked",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "refresh_token_invalid",
            Self::Expired => "refresh_token_expired",
            Self::Revoked => "session_revoked",
            Self::Reused => "refresh_token_reused",
        }
    }
}

impl From<InvalidInput> for AuthError {
    fn from(err: InvalidInput) -> Self {
        Self::InvalidInput(err.0)
    }
}

impl From<RefreshTokenError> for AuthError {
    fn from(err: RefreshTokenError) -> Self {
        match err {
            RefreshTokenError::Missing => Self::InvalidInput("refresh_token is required"),
            RefreshTokenError::TooLarge => Self::InvalidInput("refresh_token is too large"),
            RefreshTokenError::NotARefreshToken => {
                Self::InvalidRefreshToken(RefreshRefusal::Unknown)
            }
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Missing => Self::InvalidInput("a token is required"),
            TokenError::InsufficientScope => Self::PermissionDenied,
            other => Self::InvalidToken(other),
        }
    }
}

impl From<ClientError> for AuthError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::InvalidClient => Self::InvalidClient,
            ClientError::InvalidScope => Self::InvalidScope,
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(err) => Self::Unavailable(err.into()),
            StoreError::Corrupt(message) => Self::Internal(anyhow::anyhow!(message)),
        }
    }
}

impl AuthError {
    /// The machine-readable reason sent with the error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_request",
            Self::BodyTooLarge => "payload_too_large",
            Self::EmailTaken => "email_taken",
            Self::InvalidCredentials => "invalid_credentials",
            Self::InvalidToken(err) => err.reason(),
            Self::InvalidRefreshToken(refusal) => refusal.reason(),
            Self::InvalidClient => "invalid_client",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidAudience => "invalid_target",
            Self::PermissionDenied => "insufficient_scope",
            Self::Throttled { .. } => "too_many_attempts",
            Self::WatcherLagged(_) => "watcher_lagged",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn log(&self) {
        match self {
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable")
            }
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error")
            }
            _ => tracing::debug!(reason = self.reason(), "request refused"),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidInput(_) | Self::InvalidAudience | Self::BodyTooLarge => {
                Code::InvalidArgument
            }
            Self::EmailTaken => Code::AlreadyExists,
            Self::InvalidCredentials
            | Self::InvalidToken(_)
            | Self::InvalidRefreshToken(_)
            | Self::InvalidClient => Code::Unauthenticated,
            Self::InvalidScope | Self::PermissionDenied => Code::PermissionDenied,
            Self::Throttled { .. } => Code::ResourceExhausted,
            Self::WatcherLagged(_) => Code::DataLoss,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidInput(_) | Self::InvalidAudience | Self::InvalidScope => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::InvalidCredentials
            | Self::InvalidToken(_)
            | Self::InvalidRefreshToken(_)
            | Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::WatcherLagged(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The error as an RFC 6749 §5.2 response, for `/oauth/token`.
    pub fn into_oauth_response(self) -> Response {
        self.log();
        let error = match &self {
            Self::InvalidClient => "invalid_client",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidAudience => "invalid_target",
            Self::InvalidInput(_) => "invalid_request",
            _ => return self.into_response(),
        };
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut response = (
            status,
            Json(json!({"error": error, "error_description": self.to_string()})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tollgate\""),
            );
        }
        response
    }
}

/// A retry-after in whole seconds, rounded up: a client that waits that long is not refused
/// again for a fraction of a second.
fn whole_seconds(retry_after: Duration) -> u64 {
    retry_after.as_millis().div_ceil(1000).max(1) as u64
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        err.log();
        let mut details = ErrorDetails::with_error_info(
            err.reason(),
            "tollgate.auth",
            std::collections::HashMap::new(),
        );
        if let Some(retry_after) = err.retry_after() {
            details.set_retry_info(Some(retry_after));
        }
        let mut status = Status::with_error_details(err.code(), err.to_string(), details);
        if let Ok(value) = err.reason().parse() {
            status.metadata_mut().insert("tollgate-reason", value);
        }
        if let Some(retry_after) = err.retry_after()
            && let Ok(value) = whole_seconds(retry_after).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.log();
        let body = Json(json!({"error": {"code": self.reason(), "message": self.to_string()}}));
        let mut response = (self.http_status(), body).into_response();
        if let Some(retry_after) = self.retry_after()
            && let Ok(value) = HeaderValue::from_str(&whole_seconds(retry_after).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
