//! The `tollgate.auth.v1.AuthService` gRPC surface: converts proto messages to domain types at
//! the boundary (naming every field, so a new one fails the build until handled) and domain
//! results back.

use std::{net::IpAddr, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tollgate_proto::auth::v1::{self as pb, auth_service_server::AuthService};
use tollgate_shared::grpc::bearer_token;
use tonic::{Request, Response, Status};

use crate::{
    auth::{Auth, TokenPair},
    domain::{Email, Password, RefreshToken},
    error::AuthError,
    throttle::TokenEndpoint,
};

/// Scope a caller of `ValidateToken` and `WatchRevocations` needs.
pub const SCOPE_VALIDATE: &str = "auth.validate";
/// Scope a caller of `RotateSigningKey` needs.
pub const SCOPE_ADMIN: &str = "auth.admin";

#[derive(Clone, Debug)]
pub struct AuthGrpc {
    auth: Arc<Auth>,
}

impl AuthGrpc {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }

    /// The client's address: the TCP peer, or whom a trusted proxy says it forwards for.
    fn client_ip<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        self.auth
            .proxies
            .resolve_grpc(request.remote_addr(), request.metadata())
    }

    /// Counts a refresh or client-credentials request against its address's limit.
    async fn throttle_token_request(
        &self,
        client: Option<IpAddr>,
        endpoint: TokenEndpoint,
    ) -> Result<(), AuthError> {
        self.auth
            .throttle
            .token_request_from(client, endpoint)
            .await
    }
}

fn bearer<T>(request: &Request<T>) -> Result<String, AuthError> {
    bearer_token(request.metadata())
        .map(str::to_owned)
        .ok_or(AuthError::InvalidToken(
            tollgate_shared::tokens::TokenError::Missing,
        ))
}

impl From<TokenPair> for pb::TokenPair {
    fn from(pair: TokenPair) -> Self {
        Self {
            user_id: pair.user_id.to_string(),
            session_id: pair.session_id.to_string(),
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose().to_owned(),
            token_type: "Bearer".into(),
            expires_in: pair.expires_in.as_secs() as i64,
        }
    }
}

fn revocation_to_pb(revocation: tollgate_shared::events::Revocation) -> pb::Revocation {
    let tollgate_shared::events::Revocation {
        session_id,
        user_id,
        revoked_at_ms,
        reason,
    } = revocation;
    pb::Revocation {
        session_id: session_id.to_string(),
        user_id: user_id.to_string(),
        revoked_at_ms,
        reason,
    }
}

type RevocationStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    type WatchRevocationsStream = RevocationStream;

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let client = self.client_ip(&request);
        let pb::RegisterRequest { email, password } = request.into_inner();
        let email = Email::parse(&email).map_err(AuthError::from)?;
        let password = Password::parse(password).map_err(AuthError::from)?;
        let pair = self.auth.register(email, password, client).await?;
        Ok(Response::new(pair.into()))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let client = self.client_ip(&request);
        let pb::LoginRequest { email, password } = request.into_inner();
        let email = Email::parse(&email).map_err(AuthError::from)?;
        let password = Password::for_login(password).map_err(AuthError::from)?;
        let pair = self.auth.login(email, password, client).await?;
        Ok(Response::new(pair.into()))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        self.throttle_token_request(self.client_ip(&request), TokenEndpoint::Refresh)
            .await?;
        let pb::RefreshRequest { refresh_token } = request.into_inner();
        let token = RefreshToken::parse(&refresh_token).map_err(AuthError::from)?;
        Ok(Response::new(self.auth.refresh(token).await?.into()))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let access = bearer(&request);
        let pb::LogoutRequest { refresh_token } = request.into_inner();
        if refresh_token.is_empty() {
            self.auth.logout_access(&access?).await?;
        } else {
            let token = RefreshToken::parse(&refresh_token).map_err(AuthError::from)?;
            self.auth.logout_refresh(token).await?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        let access = bearer(&request)?;
        let revoked = self.auth.logout_all(&access).await?;
        Ok(Response::new(pb::LogoutAllResponse {
            revoked_sessions: revoked as u32,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let access = bearer(&request)?;
        let (sessions, current) = self.auth.list_sessions(&access).await?;
        let sessions = sessions
            .into_iter()
            .map(|session| pb::Session {
                session_id: session.id.to_string(),
                created_at: session.created_at_ms / 1000,
                last_refreshed_at: session.last_refreshed_at_ms / 1000,
                expires_at: session.expires_at_ms / 1000,
                current: session.id == current,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        self.auth
            .authorize_service(bearer_token(request.metadata()), SCOPE_VALIDATE)
            .await?;
        let pb::ValidateTokenRequest { token } = request.into_inner();
        let verified = self.auth.validate(&token).await?;
        let claims = &verified.claims;
        Ok(Response::new(pb::ValidateTokenResponse {
            user_id: claims.sub.to_string(),
            session_id: claims.sid.to_string(),
            jti: claims.jti.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            kid: verified.kid.clone(),
        }))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self
            .auth
            .keys()
            .jwks()
            .into_iter()
            .map(|jwk| pb::Jwk {
                kty: jwk.kty,
                crv: jwk.crv,
                x: jwk.x,
                kid: jwk.kid,
                alg: jwk.alg,
                r#use: jwk.use_,
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse {
            keys,
            active_kid: self.auth.keys().signer().kid().to_owned(),
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        self.throttle_token_request(self.client_ip(&request), TokenEndpoint::ClientCredentials)
            .await?;
        let pb::IssueServiceTokenRequest {
            client_id,
            client_secret,
            audience,
            scopes,
        } = request.into_inner();
        let token =
            self.auth
                .issue_service_token(&client_id, &client_secret, &audience, &scopes)?;
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token: token.access_token,
            token_type: "Bearer".into(),
            expires_in: token.expires_in.as_secs() as i64,
            scopes: token.scopes,
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        self.auth
            .authorize_service(bearer_token(request.metadata()), SCOPE_ADMIN)
            .await?;
        let pb::RotateSigningKeyRequest {} = request.into_inner();
        let (kid, previous_kid) = self.auth.rotate_signing_key().await?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid,
            previous_kid,
        }))
    }

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        self.auth
            .authorize_service(bearer_token(request.metadata()), SCOPE_VALIDATE)
            .await?;
        let pb::WatchRevocationsRequest { since_ms } = request.into_inner();
        let stream = self.auth.feed.watch(since_ms).map(|item| {
            item.map(revocation_to_pb)
                .map_err(|lagged| Status::from(AuthError::WatcherLagged(lagged)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
