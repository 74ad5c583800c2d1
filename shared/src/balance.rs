//! Client-side load balancing over a DNS name's addresses.
//!
//! A gRPC caller keeps one HTTP/2 connection per target and multiplexes every call on it, so a
//! Kubernetes ClusterIP (which balances connections, not calls) would pin all of a caller's
//! traffic to one replica. Instead the callers resolve the target's name (a headless Service
//! answers with every ready pod's address), keep a connection to each address and spread calls
//! over them (tower's power-of-two-choices balancer inside tonic), re-resolving every
//! [`RESOLVE_EVERY`] so replicas that come and go are picked up. An IP literal is a single
//! endpoint. When the name does not resolve and no address is known, the name itself is the
//! one endpoint, so calls fail with a connect error within their timeout rather than wait.

use std::{collections::HashSet, future::Future, net::SocketAddr, time::Duration};

use tonic::transport::{Channel, Endpoint, channel::Change};

/// How often the name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(15);
/// Bound on one resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to `url` whose endpoints are each of the host's addresses, `configure`d alike
/// (timeouts, keep-alive, limits); see the module docs.
pub fn balanced_channel(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
) -> Result<Channel, tonic::transport::Error> {
    balanced_channel_with(url, configure, |host, port| async move {
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(Iterator::collect)
    })
}

/// [`balanced_channel`] with the resolver given (tests resolve a name to replicas of their own).
pub fn balanced_channel_with<R, F>(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    resolve: R,
) -> Result<Channel, tonic::transport::Error>
where
    R: Fn(String, u16) -> F + Send + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    let template = Endpoint::from_shared(url.to_owned())?;
    let uri = template.uri().clone();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(configure(template).connect_lazy());
    }
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let (channel, changes) = Channel::balance_channel::<String>(64);
    // Ends when the channel is dropped (the sender reports it closed).
    tokio::spawn(async move {
        let mut known: HashSet<String> = HashSet::new();
        loop {
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(host.clone(), port)).await;
            let addresses: Vec<String> = match resolved {
                Ok(Ok(addresses)) if !addresses.is_empty() => addresses
                    .into_iter()
                    .map(|address| format!("{scheme}://{address}"))
                    .collect(),
                // Keep what is known; with nothing known, the name itself.
                _ if !known.is_empty() => known.iter().cloned().collect(),
                _ => vec![format!("{scheme}://{host}:{port}")],
            };
            for address in &addresses {
                if known.contains(address) {
                    continue;
                }
                let Ok(endpoint) = Endpoint::from_shared(address.clone()) else {
                    continue;
                };
                let change = Change::Insert(address.clone(), configure(endpoint));
                if changes.send(change).await.is_err() {
                    return;
                }
                known.insert(address.clone());
            }
            let gone: Vec<String> = known
                .iter()
                .filter(|address| !addresses.contains(address))
                .cloned()
                .collect();
            for address in gone {
                known.remove(&address);
                if changes.send(Change::Remove(address)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(RESOLVE_EVERY) => {}
                () = changes.closed() => return,
            }
        }
    });
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use tokio::net::TcpListener;
    use tonic_health::{
        ServingStatus,
        pb::{HealthCheckRequest, health_client::HealthClient},
        server::health_reporter,
    };

    /// A real gRPC server (the health service) that answers SERVING only for `name`.
    async fn replica(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (reporter, service) = health_reporter();
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
        tokio::spawn(async move {
            let _keep = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        address
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_are_spread_over_every_address_the_name_resolves_to() {
        let replicas = vec![replica("a").await, replica("b").await];
        let resolved = replicas.clone();
        let channel = super::balanced_channel_with(
            "http://auth-service-grpc.tollgate.svc:50051",
            |endpoint| endpoint.timeout(Duration::from_secs(5)),
            move |host, port| {
                assert_eq!(
                    (host.as_str(), port),
                    ("auth-service-grpc.tollgate.svc", 50051)
                );
                let resolved = resolved.clone();
                async move { Ok(resolved) }
            },
        )
        .unwrap();
        let mut client = HealthClient::new(channel);
        let (mut on_a, mut on_b) = (0, 0);
        for _ in 0..200 {
            // Each replica knows only its own name, so the answer tells which one served.
            let request = HealthCheckRequest {
                service: "a".into(),
            };
            match client.check(request).await {
                Ok(_) => on_a += 1,
                Err(status) if status.code() == tonic::Code::NotFound => on_b += 1,
                Err(status) => panic!("unexpected {status:?}"),
            }
        }
        assert!(on_a > 20 && on_b > 20, "a served {on_a}, b served {on_b}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresolvable_name_fails_calls_within_their_timeout() {
        let channel = super::balanced_channel_with(
            "http://nowhere.invalid:50051",
            |endpoint| {
                endpoint
                    .connect_timeout(Duration::from_millis(200))
                    .timeout(Duration::from_secs(1))
            },
            |_, _| async { Err(std::io::Error::other("no such host")) },
        )
        .unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            HealthClient::new(channel).check(HealthCheckRequest::default()),
        )
        .await
        .expect("the call is bounded");
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
