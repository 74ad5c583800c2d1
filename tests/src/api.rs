//! The test's calls to auth-service and usage-service, as their real clients make them: users
//! through auth-service's JSON HTTP API (what browsers and curl use), services over gRPC with a
//! service token obtained by client credentials. Every call goes to the process's current
//! address, so it keeps working across restarts.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use tollgate_proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    usage::v1::{self as usage_pb, usage_service_client::UsageServiceClient},
};
use tollgate_shared::{grpc::TracedChannel, testing::with_bearer};
use tonic::Status;
use uuid::Uuid;

use crate::stack::Cluster;

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery staple";
/// Bound of every gRPC call the test makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A user with one session, as registration or login answers it.
#[derive(Clone, Debug)]
pub struct User {
    pub email: String,
    pub user_id: String,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl User {
    fn from_pair(email: &str, pair: &Value) -> Self {
        let field = |name: &str| {
            pair[name]
                .as_str()
                .unwrap_or_else(|| panic!("no `{name}` in {pair}"))
                .to_owned()
        };
        Self {
            email: email.to_owned(),
            user_id: field("user_id"),
            session_id: field("session_id"),
            access_token: field("access_token"),
            refresh_token: field("refresh_token"),
        }
    }
}

/// A fresh, unique email address.
pub fn unique_email() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// A fresh idempotency key.
pub fn key() -> String {
    Uuid::new_v4().simple().to_string()
}

fn channel(url: &str) -> TracedChannel {
    tollgate_shared::grpc::channel(url, CALL_TIMEOUT).expect("a valid gRPC URL")
}

impl Cluster {
    /// `POST` a JSON body to auth-service's HTTP API: the status and the JSON answer (Null when
    /// the body is empty or not JSON).
    pub async fn auth_post(&self, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.auth.http_url(path))
            .timeout(CALL_TIMEOUT)
            .json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("auth-service answers HTTP");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `POST` a raw body as `application/json`, for malformed input.
    pub async fn auth_post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.auth.http_url(path))
            .timeout(CALL_TIMEOUT)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("auth-service answers HTTP");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The published signing keys (`GET /.well-known/jwks.json`).
    pub async fn jwks(&self) -> Value {
        self.http
            .get(self.auth.http_url("/.well-known/jwks.json"))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .expect("auth-service answers HTTP")
            .json()
            .await
            .expect("the JWKS is JSON")
    }

    /// Registers a fresh user over HTTP (201 expected).
    pub async fn register(&self) -> User {
        let email = unique_email();
        let (status, body) = self
            .auth_post(
                "/v1/register",
                &json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(status, 201, "registration: {body}");
        User::from_pair(&email, &body)
    }

    /// `count` fresh users, registered concurrently.
    pub async fn register_many(&self, count: usize) -> Vec<User> {
        futures::future::join_all((0..count).map(|_| self.register())).await
    }

    /// A new session of the user (200 expected).
    pub async fn login(&self, email: &str) -> User {
        let (status, body) = self
            .auth_post(
                "/v1/login",
                &json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(status, 200, "login: {body}");
        User::from_pair(email, &body)
    }

    /// Rotates the user's refresh token (200 expected); the same session, new tokens.
    pub async fn refresh(&self, user: &User) -> User {
        let (status, body) = self
            .auth_post(
                "/v1/refresh",
                &json!({"refresh_token": user.refresh_token}),
                None,
            )
            .await;
        assert_eq!(status, 200, "refresh: {body}");
        User::from_pair(&user.email, &body)
    }

    /// Logs the user's session out by its refresh token (204 expected).
    pub async fn logout(&self, user: &User) {
        let (status, body) = self
            .auth_post(
                "/v1/logout",
                &json!({"refresh_token": user.refresh_token}),
                None,
            )
            .await;
        assert_eq!(status, 204, "logout: {body}");
    }

    /// Logs out every session of the user (`LogoutAll` with its access token); answers how
    /// many were revoked.
    pub async fn logout_all(&self, user: &User) -> u32 {
        let request = with_bearer(auth_pb::LogoutAllRequest {}, &user.access_token);
        self.auth_client()
            .logout_all(request)
            .await
            .expect("LogoutAll succeeds")
            .into_inner()
            .revoked_sessions
    }

    pub fn auth_client(&self) -> AuthServiceClient<TracedChannel> {
        AuthServiceClient::new(channel(&self.auth.grpc_url()))
    }

    pub fn usage_client(&self) -> UsageServiceClient<TracedChannel> {
        UsageServiceClient::new(channel(&self.usage.grpc_url()))
    }

    /// A service token of one of the configured clients (see [`crate::stack`]).
    pub async fn try_service_token(
        &self,
        client_id: &str,
        audience: &str,
        scopes: &[&str],
    ) -> Result<String, Status> {
        let request = auth_pb::IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: self.secret.clone(),
            audience: audience.into(),
            scopes: scopes.iter().map(ToString::to_string).collect(),
        };
        self.auth_client()
            .issue_service_token(request)
            .await
            .map(|answer| answer.into_inner().access_token)
    }

    pub async fn service_token(&self, client_id: &str, audience: &str, scopes: &[&str]) -> String {
        self.try_service_token(client_id, audience, scopes)
            .await
            .unwrap_or_else(|status| panic!("a service token for {client_id}: {status:?}"))
    }

    /// `ValidateToken` as a service with scope `auth.validate` would call it.
    pub async fn validate(&self, token: &str) -> Result<auth_pb::ValidateTokenResponse, Status> {
        let service = self
            .service_token("tester", "auth-service", &["auth.validate"])
            .await;
        let request = auth_pb::ValidateTokenRequest {
            token: token.into(),
        };
        self.auth_client()
            .validate_token(with_bearer(request, &service))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Rotates auth-service's signing key as the operator; answers the new key id.
    pub async fn rotate_signing_key(&self) -> String {
        let admin = self
            .service_token("operator", "auth-service", &["auth.admin"])
            .await;
        let request = with_bearer(auth_pb::RotateSigningKeyRequest {}, &admin);
        self.auth_client()
            .rotate_signing_key(request)
            .await
            .expect("the key rotates")
            .into_inner()
            .kid
    }

    async fn usage_token(&self, scope: &str) -> String {
        let client = if scope == "usage.admin" {
            "billing"
        } else {
            "tester"
        };
        self.service_token(client, "usage-service", &[scope]).await
    }

    /// `Consume` as a gateway would call it.
    pub async fn consume(
        &self,
        user_id: &str,
        meter: &str,
        amount: u64,
        key: &str,
    ) -> Result<usage_pb::ConsumeResponse, Status> {
        let token = self.usage_token("usage.check").await;
        let request = usage_pb::ConsumeRequest {
            user_id: user_id.into(),
            meter: meter.into(),
            amount,
            idempotency_key: key.into(),
        };
        self.usage_client()
            .consume(with_bearer(request, &token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The ledger's counters of the current billing period, by meter.
    pub async fn usage_of(&self, user_id: &str) -> HashMap<String, u64> {
        let token = self.usage_token("usage.check").await;
        let request = usage_pb::GetUsageRequest {
            user_id: user_id.into(),
            at: 0,
        };
        let answer = self
            .usage_client()
            .get_usage(with_bearer(request, &token))
            .await
            .expect("GetUsage answers")
            .into_inner();
        answer
            .meters
            .into_iter()
            .map(|meter| (meter.meter, meter.used))
            .collect()
    }

    /// Moves the user to `plan` at once, as the billing system would.
    pub async fn change_plan(&self, user_id: &str, plan: &str) {
        let token = self.usage_token("usage.admin").await;
        let request = usage_pb::ChangePlanRequest {
            user_id: user_id.into(),
            plan_id: plan.into(),
            immediate: true,
            idempotency_key: key(),
            reason: "integration test".into(),
        };
        self.usage_client()
            .change_plan(with_bearer(request, &token))
            .await
            .expect("the plan changes");
    }

    pub async fn subscription(&self, user_id: &str) -> usage_pb::Subscription {
        let token = self.usage_token("usage.check").await;
        let request = usage_pb::GetSubscriptionRequest {
            user_id: user_id.into(),
        };
        self.usage_client()
            .get_subscription(with_bearer(request, &token))
            .await
            .expect("GetSubscription answers")
            .into_inner()
    }

    pub async fn assign_role(&self, user_id: &str, role: &str) {
        let token = self.usage_token("usage.admin").await;
        let request = usage_pb::AssignRoleRequest {
            user_id: user_id.into(),
            role: role.into(),
        };
        self.usage_client()
            .assign_role(with_bearer(request, &token))
            .await
            .expect("the role is assigned");
    }

    /// `from` lends `permission` to `to` for an hour.
    pub async fn delegate(&self, from: &str, to: &str, permission: &str) -> Result<String, Status> {
        let token = self.usage_token("usage.admin").await;
        let request = usage_pb::DelegateRequest {
            from_user_id: from.into(),
            to_user_id: to.into(),
            permission: permission.into(),
            expires_at: tollgate_shared::time::unix_now() + 3600,
        };
        self.usage_client()
            .delegate(with_bearer(request, &token))
            .await
            .map(|answer| answer.into_inner().delegation_id)
    }

    /// Asks for a connection slot as a gateway does: granted, active, limit.
    pub async fn acquire_connection(&self, user_id: &str, connection_id: &str) -> (bool, u32, u32) {
        let token = self.usage_token("usage.check").await;
        let request = usage_pb::AcquireConnectionRequest {
            user_id: user_id.into(),
            connection_id: connection_id.into(),
            ttl_seconds: 5,
        };
        let answer = self
            .usage_client()
            .acquire_connection(with_bearer(request, &token))
            .await
            .expect("AcquireConnection answers")
            .into_inner();
        (answer.granted, answer.active, answer.limit)
    }

    /// A service token for publishing to users through the gateways.
    pub async fn publish_token(&self) -> String {
        self.service_token("backend", "ws-gateway", &["publish"])
            .await
    }
}
