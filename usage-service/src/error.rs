//! usage-service's one error type and its mapping to gRPC statuses, in one place. Denials
//! (rate limited, quota exceeded, permission) are answers, not errors: they travel in the
//! response with their reason.

use tollgate_shared::tokens::TokenError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    domain::{InvalidInput, Meter, ToolName},
    ledger::LedgerError,
    limits::LimitError,
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    InvalidInput(String),
    /// A well-formed tool name the catalogue does not declare.
    #[error("unknown tool `{0}`")]
    UnknownTool(ToolName),
    /// A well-formed meter name the catalogue does not declare.
    #[error("unknown meter `{0}`")]
    UnknownMeter(Meter),
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    #[error("unknown delegation")]
    UnknownDelegation,
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("{0}")]
    Unauthenticated(TokenError),
    #[error("the service token lacks the required scope")]
    InsufficientScope,
    #[error("a dependency is unavailable, retry later")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<InvalidInput> for UsageError {
    fn from(err: InvalidInput) -> Self {
        Self::InvalidInput(err.0)
    }
}

impl From<StoreError> for UsageError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(err) => Self::Unavailable(err.into()),
            StoreError::Corrupt(message) => Self::Internal(anyhow::anyhow!(message)),
        }
    }
}

impl From<LedgerError> for UsageError {
    fn from(err: LedgerError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<LimitError> for UsageError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::IdempotencyConflict => Self::IdempotencyConflict,
            LimitError::Unavailable
            | LimitError::StaleWindow { .. }
            | LimitError::SeedUnavailable(_) => Self::Unavailable(err.into()),
        }
    }
}

impl From<TokenError> for UsageError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::InsufficientScope => Self::InsufficientScope,
            other => Self::Unauthenticated(other),
        }
    }
}

impl UsageError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_request",
            Self::UnknownTool(_) => "unknown_tool",
            Self::UnknownMeter(_) => "unknown_meter",
            Self::UnknownPlan(_) => "unknown_plan",
            Self::UnknownDelegation => "unknown_delegation",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::NotAllowed(_) => "not_allowed",
            Self::Unauthenticated(err) => err.reason(),
            Self::InsufficientScope => "insufficient_scope",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidInput(_) | Self::UnknownTool(_) | Self::UnknownMeter(_) => {
                Code::InvalidArgument
            }
            Self::UnknownPlan(_) | Self::UnknownDelegation => Code::NotFound,
            Self::IdempotencyConflict => Code::AlreadyExists,
            Self::NotAllowed(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::InsufficientScope => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<UsageError> for Status {
    fn from(err: UsageError) -> Self {
        match &err {
            UsageError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable")
            }
            UsageError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error")
            }
            _ => tracing::debug!(reason = err.reason(), "request refused"),
        }
        let details = ErrorDetails::with_error_info(
            err.reason(),
            "tollgate.usage",
            std::collections::HashMap::new(),
        );
        let mut status = Status::with_error_details(err.code(), err.to_string(), details);
        if let Ok(value) = err.reason().parse() {
            status.metadata_mut().insert("tollgate-reason", value);
        }
        status
    }
}
