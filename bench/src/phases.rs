//! The measured phases and the fixtures they need. Every phase talks to the service the way a
//! real client does: over gRPC, through a few shared HTTP/2 connections, with the callers
//! multiplexed on them.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::future::try_join_all;
use tollgate_proto::auth::v1::{
    IssueServiceTokenRequest, LoginRequest, RefreshRequest, RegisterRequest, TokenPair,
    ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    load::{Calls, Workload},
    random_alphanumeric, random_lowercase,
    server::ServiceClient,
};

/// The gRPC service name health checks ask about, as registered by auth-service.
const AUTH_SERVICE_NAME: &str = "tollgate.auth.v1.AuthService";
/// Deadline of every call, so a stalled service ends a phase with errors instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many registrations run at once while preparing users (hashing is bounded by cores).
const REGISTER_CONCURRENCY: usize = 8;

/// Connections to the service, and what the phases need from it.
#[derive(Debug)]
pub struct Fixture {
    channels: Vec<Channel>,
    client: ServiceClient,
    users: Vec<User>,
    /// `authorization` value of a service token with scope `auth.validate`.
    validate_header: Option<MetadataValue<Ascii>>,
}

#[derive(Clone, Debug)]
struct User {
    email: String,
    password: String,
    tokens: TokenPair,
}

impl Fixture {
    /// Opens `channels` connections to `addr`.
    pub async fn connect(
        addr: SocketAddr,
        channels: usize,
        client: ServiceClient,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        let channels = try_join_all((0..channels.max(1)).map(|_| endpoint.connect()))
            .await
            .context("connecting to auth-service")?;
        Ok(Self {
            channels,
            client,
            users: Vec::new(),
            validate_header: None,
        })
    }

    /// The channel the `index`-th caller uses: round-robin over the connections.
    fn channel(&self, index: usize) -> Channel {
        self.channels[index % self.channels.len()].clone()
    }

    fn auth_client(&self, index: usize) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel(index))
    }

    /// Registers `count` users (each registration opens the session a refresh caller will
    /// own) and fetches the service token ValidateToken needs.
    pub async fn prepare(&mut self, count: usize) -> anyhow::Result<()> {
        let run = random_lowercase(8);
        let mut users = Vec::with_capacity(count);
        for batch_start in (0..count).step_by(REGISTER_CONCURRENCY) {
            let batch_end = (batch_start + REGISTER_CONCURRENCY).min(count);
            let batch = (batch_start..batch_end).map(|index| {
                let mut client = self.auth_client(index);
                let email = format!("user{index}.{run}@bench.example");
                let password = format!("bench-{}", random_alphanumeric(20));
                async move {
                    let tokens = client
                        .register(RegisterRequest {
                            email: email.clone(),
                            password: password.clone(),
                        })
                        .await
                        .with_context(|| format!("registering {email}"))?
                        .into_inner();
                    anyhow::Ok(User {
                        email,
                        password,
                        tokens,
                    })
                }
            });
            users.extend(try_join_all(batch).await?);
        }
        self.users = users;
        let token = self
            .issue_service_token(0)
            .await
            .context("fetching a service token")?;
        self.validate_header = Some(
            format!("Bearer {token}")
                .parse()
                .context("the service token is not a valid header")?,
        );
        Ok(())
    }

    async fn issue_service_token(&self, index: usize) -> Result<String, tonic::Status> {
        let response = self
            .auth_client(index)
            .issue_service_token(self.service_token_request())
            .await?;
        Ok(response.into_inner().access_token)
    }

    fn service_token_request(&self) -> IssueServiceTokenRequest {
        IssueServiceTokenRequest {
            client_id: self.client.id.clone(),
            client_secret: self.client.secret.clone(),
            audience: "auth-service".into(),
            scopes: vec!["auth.validate".into()],
        }
    }

    /// Baseline: the cheapest call the same server answers, through the same stack.
    pub fn health(&self, concurrency: usize) -> Box<dyn Workload> {
        let states = (0..concurrency)
            .map(|index| HealthClient::new(self.channel(index)))
            .collect();
        Box::new(Calls::new(states, |mut client| async move {
            let request = HealthCheckRequest {
                service: AUTH_SERVICE_NAME.into(),
            };
            let result = client.check(request).await.map(drop);
            (client, result)
        }))
    }

    /// ValidateToken of valid access tokens, spread over every registered user.
    pub fn validate(&self, concurrency: usize) -> anyhow::Result<Box<dyn Workload>> {
        let header = self
            .validate_header
            .clone()
            .context("prepare() fetches the service token first")?;
        let tokens: Arc<[String]> = self
            .users
            .iter()
            .map(|user| user.tokens.access_token.clone())
            .collect();
        anyhow::ensure!(!tokens.is_empty(), "no users registered");
        let states = (0..concurrency)
            .map(|index| (self.auth_client(index), Arc::clone(&tokens), index))
            .collect();
        Ok(Box::new(Calls::new(
            states,
            move |(mut client, tokens, next)| {
                let header = header.clone();
                async move {
                    let mut request = tonic::Request::new(ValidateTokenRequest {
                        token: tokens[next % tokens.len()].clone(),
                    });
                    request.metadata_mut().insert("authorization", header);
                    let result = client.validate_token(request).await.map(drop);
                    ((client, tokens, next + 1), result)
                }
            },
        )))
    }

    /// Refresh: each caller rotates its own session's refresh token, always presenting the
    /// newest one, as a well-behaved client does.
    pub fn refresh(&self, concurrency: usize) -> anyhow::Result<Box<dyn Workload>> {
        anyhow::ensure!(
            self.users.len() >= concurrency,
            "every refresh caller needs its own session"
        );
        let states = (0..concurrency)
            .map(|index| {
                (
                    self.auth_client(index),
                    self.users[index].tokens.refresh_token.clone(),
                )
            })
            .collect();
        Ok(Box::new(Calls::new(
            states,
            |(mut client, token)| async move {
                let request = RefreshRequest {
                    refresh_token: token.clone(),
                };
                match client.refresh(request).await {
                    Ok(response) => ((client, response.into_inner().refresh_token), Ok(())),
                    Err(status) => ((client, token), Err(status)),
                }
            },
        )))
    }

    /// IssueServiceToken with client credentials.
    pub fn service_tokens(&self, concurrency: usize) -> Box<dyn Workload> {
        let request = self.service_token_request();
        let states = (0..concurrency)
            .map(|index| self.auth_client(index))
            .collect();
        Box::new(Calls::new(states, move |mut client| {
            let request = request.clone();
            async move {
                let result = client.issue_service_token(request).await.map(drop);
                (client, result)
            }
        }))
    }

    /// Login with correct passwords, spread over the registered users.
    pub fn login(&self, concurrency: usize) -> anyhow::Result<Box<dyn Workload>> {
        anyhow::ensure!(!self.users.is_empty(), "no users registered");
        let states = (0..concurrency)
            .map(|index| {
                let user = &self.users[index % self.users.len()];
                let request = LoginRequest {
                    email: user.email.clone(),
                    password: user.password.clone(),
                };
                (self.auth_client(index), request)
            })
            .collect();
        Ok(Box::new(Calls::new(
            states,
            |(mut client, request)| async move {
                let result = client.login(request.clone()).await.map(drop);
                ((client, request), result)
            },
        )))
    }
}
