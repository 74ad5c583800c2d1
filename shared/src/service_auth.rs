//! Service-to-service credentials on the calling side: a client-credentials token source that
//! fetches a service token from auth-service, caches it and refreshes it before it expires,
//! and an interceptor that attaches it to every outgoing call (the [`TracedChannel`] adds the
//! trace context).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::watch, task::JoinHandle};
use tollgate_proto::auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient};
use tonic::{Status, metadata::MetadataValue, service::Interceptor};

use crate::{
    backoff::{ExponentialBackoff, STARTUP_GRACE, StartupGrace},
    grpc::TracedChannel,
    shutdown::Shutdown,
};

/// Who this service is to auth-service, and what it wants a token for.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
    pub audience: String,
    pub scopes: Vec<String>,
}

/// A cached service token, refreshed in the background at 80% of its lifetime (and retried
/// with backoff on failure). Cloning shares the cache; the refresh task stops with the
/// process's [`Shutdown`] or when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct ServiceTokenSource {
    current: watch::Receiver<Option<MetadataValue<tonic::metadata::Ascii>>>,
    _task: std::sync::Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServiceTokenSource {
    /// Starts fetching tokens over `channel` (auth-service's gRPC endpoint).
    pub fn start(
        channel: TracedChannel,
        credentials: ClientCredentials,
        shutdown: Shutdown,
    ) -> Self {
        let (sender, current) = watch::channel(None);
        let task = tokio::spawn(refresh_loop(
            AuthServiceClient::new(channel),
            credentials,
            sender,
            shutdown,
        ));
        Self {
            current,
            _task: std::sync::Arc::new(AbortOnDrop(task)),
        }
    }

    /// Waits (at most `timeout`) until a token is available.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut current = self.current.clone();
        tokio::time::timeout(timeout, current.wait_for(Option::is_some))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// The `authorization` header value of the current token, if one has been fetched.
    pub fn header(&self) -> Option<MetadataValue<tonic::metadata::Ascii>> {
        self.current.borrow().clone()
    }

    /// An interceptor that attaches the token to outgoing calls.
    pub fn interceptor(&self) -> ServiceAuthInterceptor {
        ServiceAuthInterceptor {
            source: self.clone(),
        }
    }
}

async fn refresh_loop(
    mut client: AuthServiceClient<TracedChannel>,
    credentials: ClientCredentials,
    sender: watch::Sender<Option<MetadataValue<tonic::metadata::Ascii>>>,
    shutdown: Shutdown,
) {
    let mut backoff =
        ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5).start();
    let mut grace = StartupGrace::new(STARTUP_GRACE);
    loop {
        let request = IssueServiceTokenRequest {
            client_id: credentials.client_id.clone(),
            client_secret: credentials.client_secret.expose_secret().to_owned(),
            audience: credentials.audience.clone(),
            scopes: credentials.scopes.clone(),
        };
        let wait = match client.issue_service_token(request).await {
            Ok(response) => {
                grace.answered();
                let response = response.into_inner();
                match MetadataValue::try_from(format!("Bearer {}", response.access_token)) {
                    Ok(value) => {
                        sender.send_replace(Some(value));
                        backoff.reset();
                        let lifetime = Duration::from_secs(response.expires_in.max(1) as u64);
                        lifetime.mul_f64(0.8)
                    }
                    Err(_) => {
                        tracing::error!("auth-service issued a token that is not a valid header");
                        backoff.next_delay()
                    }
                }
            }
            Err(status) => {
                if grace.is_quiet() && status.code() == tonic::Code::Unavailable {
                    tracing::debug!(
                        "auth-service not reachable yet; fetching a service token again"
                    );
                } else {
                    tracing::warn!(code = ?status.code(), message = status.message(), "fetching a service token failed");
                }
                backoff.next_delay()
            }
        };
        if !shutdown.sleep(wait).await {
            return;
        }
    }
}

/// How long a call made before the first token waits for it. A process serves from the moment
/// it starts, and the first token is usually milliseconds away: failing those calls would
/// report a healthy auth-service as unreachable.
pub const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(2);

/// Attaches `authorization: Bearer <service token>` to each call.
#[derive(Clone, Debug)]
pub struct ServiceAuthInterceptor {
    source: ServiceTokenSource,
}

impl ServiceAuthInterceptor {
    /// Returns at once when a token is in hand; before the first one, waits for it (at most
    /// [`FIRST_TOKEN_WAIT`]). Await it before a call that this interceptor will authorize.
    pub async fn first_token(&self) {
        if self.source.header().is_none() {
            self.source.ready(FIRST_TOKEN_WAIT).await;
        }
    }
}

impl Interceptor for ServiceAuthInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let header = self
            .source
            .header()
            .ok_or_else(|| Status::unavailable("no service token yet: auth-service unreachable"))?;
        request.metadata_mut().insert("authorization", header);
        Ok(request)
    }
}
