//! gRPC plumbing shared by every server and client: channels that open one CLIENT span per
//! call and carry its trace context in the request headers, a server layer that opens one
//! SERVER span per call (a child of the caller's) and records its latency, bearer-token
//! extraction, health and reflection.
//!
//! Both spans follow the OpenTelemetry RPC conventions: named `package.Service/Method`, with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and on the client
//! `server.address`/`server.port`. Nothing from the request or its metadata is recorded, so a
//! bearer token never reaches a span. Every service builds its channels with [`channel`] or
//! [`channel_with`], so no outgoing call can skip its span or its trace context.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    grpc_methods::{ServedMethods, UNKNOWN, descriptor_sets, served_services},
    metrics::RpcMetrics,
};

/// Reads W3C trace context from HTTP headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes W3C trace context into HTTP (and so gRPC) request headers.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Writes `span`'s trace context into `headers`: the callee's spans become its children.
pub fn inject_trace_context(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The parent context carried by incoming HTTP/gRPC headers.
pub fn extract_trace_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// The token of an `authorization: Bearer <token>` metadata entry.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    crate::tokens::bearer(metadata.get("authorization")?.to_str().ok()?)
}

/// A lazily connecting, traced channel with connect and per-request timeouts (no call waits
/// forever), balanced over every address of the host (see [`crate::balance`]).
pub fn channel(
    url: &str,
    request_timeout: Duration,
) -> Result<TracedChannel, tonic::transport::Error> {
    channel_with(url, move |endpoint| {
        unary_endpoint(endpoint, request_timeout)
    })
}

/// The settings of an endpoint for unary calls: connect and request timeouts, no Nagle delay,
/// HTTP/2 keep-alive to notice a dead peer.
pub fn unary_endpoint(endpoint: Endpoint, request_timeout: Duration) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}

/// The settings of an endpoint for long-lived streams: no request timeout (a stream lasts as
/// long as it lasts), a connect timeout, no Nagle delay, and HTTP/2 keep-alive even while idle,
/// so a peer that vanished is noticed within 15 s.
pub fn streaming_endpoint(endpoint: Endpoint, connect_timeout: Duration) -> Endpoint {
    endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}

/// A traced, balanced channel to `url` with each endpoint `configure`d (timeouts, limits).
pub fn channel_with(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
) -> Result<TracedChannel, tonic::transport::Error> {
    let target = Target::of(url);
    let inner = crate::balance::balanced_channel(url, configure)?;
    Ok(TracedChannel {
        inner,
        target: Arc::new(target),
    })
}

/// Who a channel calls, as the client span names it: the host and port of the configured URL
/// (a name, not whichever replica answered).
#[derive(Debug)]
struct Target {
    address: String,
    port: u16,
}

impl Target {
    fn of(url: &str) -> Self {
        let parsed = url.parse::<http::Uri>().ok();
        let address = parsed
            .as_ref()
            .and_then(http::Uri::host)
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let https = parsed
            .as_ref()
            .is_some_and(|uri| uri.scheme_str() == Some("https"));
        let port = parsed
            .as_ref()
            .and_then(http::Uri::port_u16)
            .unwrap_or(if https { 443 } else { 80 });
        Self { address, port }
    }
}

/// A [`Channel`] that wraps every call in a CLIENT span and injects that span's W3C trace
/// context into the request, so the callee's SERVER span is its child.
#[derive(Clone, Debug)]
pub struct TracedChannel {
    inner: Channel,
    target: Arc<Target>,
}

impl tower::Service<http::Request<tonic::body::Body>> for TracedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (service, method) = service_and_method(request.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = %self.target.address,
            server.port = i64::from(self.target.port),
        );
        inject_trace_context(&span, request.headers_mut());
        let response = self.inner.call(request);
        Box::pin(
            async move {
                let result = response.await;
                let code = match &result {
                    Ok(response) => status_of(response.headers()),
                    // No answer at all (refused, reset, timed out).
                    Err(_) => tonic::Code::Unavailable,
                };
                // A client span fails with any status but OK.
                record_status(code, code != tonic::Code::Ok);
                result
            }
            .instrument(span),
        )
    }
}

/// `package.Service` and `Method` of a gRPC path (`/package.Service/Method`).
fn service_and_method(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((UNKNOWN, UNKNOWN))
}

/// Records the status code on the current RPC span, and marks the span failed when `failed`.
fn record_status(code: tonic::Code, failed: bool) {
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", code as i64);
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// The routes every gRPC server starts from: health, and reflection in both its versions
/// (`grpc.reflection.v1`, and `v1alpha`, the only one that grpcio-reflection, evans and older
/// grpcurl speak). Reflection lists `service` (the one Tollgate service this process serves),
/// health and itself, not every service in Tollgate's descriptor set; the reporter sets
/// `service`'s health.
pub fn health_and_reflection(
    service: &'static str,
) -> anyhow::Result<(tonic_health::server::HealthReporter, tonic::service::Routes)> {
    use tonic_reflection::server::Builder;

    let (reporter, health) = tonic_health::server::health_reporter();
    // Each version describes both, so either finds the other's symbols.
    let configure = || {
        let builder = served_services(service)
            .into_iter()
            .fold(Builder::configure(), Builder::with_service_name);
        descriptor_sets()
            .into_iter()
            .fold(builder, Builder::register_encoded_file_descriptor_set)
    };
    let routes = tonic::service::Routes::new(health)
        .add_service(configure().build_v1()?)
        .add_service(configure().build_v1alpha()?);
    Ok((reporter, routes))
}

/// A server layer: one span per call (child of the caller's trace context, named after the
/// method, with OpenTelemetry `rpc.*` attributes) and a latency observation per call. Both
/// name only `methods`; any other path is `unknown`.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    metrics: RpcMetrics,
    methods: ServedMethods,
}

impl TelemetryLayer {
    pub fn new(metrics: RpcMetrics, methods: ServedMethods) -> Self {
        Self { metrics, methods }
    }
}

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: RpcMetrics,
    methods: ServedMethods,
}

impl<S, B, R> tower::Service<http::Request<B>> for TelemetryService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = self.methods.label(request.uri().path());
        let (service, method) = path
            .as_deref()
            .map_or((UNKNOWN, UNKNOWN), service_and_method);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(extract_trace_context(request.headers()));
        let metrics = self.metrics.clone();
        let started = Instant::now();
        // Take the instance that `poll_ready` readied, leaving a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let result = inner.call(request).await;
                let code = match &result {
                    Ok(response) => status_of(response.headers()),
                    Err(_) => tonic::Code::Unavailable,
                };
                record_status(code, server_fault(code));
                let label = path.as_deref().unwrap_or(UNKNOWN);
                metrics.observe(label, code_name(code), started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// Whether a status is the server's failure (the OpenTelemetry RPC conventions' list), as
/// opposed to a refusal of the caller's request.
fn server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// A unary tonic reply carries `grpc-status` in its headers only when it fails
/// ("trailers-only"); success puts `0` in the trailers.
fn status_of(headers: &HeaderMap) -> tonic::Code {
    let code = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .unwrap_or(0);
    tonic::Code::from_i32(code)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_blank_ones_ignored() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), Some("abc"));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Bearer   ".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
    }

    #[test]
    fn client_spans_name_the_configured_host_and_port() {
        let target = Target::of("http://auth-service-grpc.tollgate.svc:50051");
        assert_eq!(
            (target.address.as_str(), target.port),
            ("auth-service-grpc.tollgate.svc", 50051)
        );
        let target = Target::of("https://[::1]");
        assert_eq!((target.address.as_str(), target.port), ("::1", 443));
        assert_eq!(
            service_and_method("/tollgate.usage.v1.UsageService/Consume"),
            ("tollgate.usage.v1.UsageService", "Consume")
        );
    }

    #[test]
    fn trailers_only_replies_report_their_status() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", HeaderValue::from_static("16"));
        assert_eq!(status_of(&headers), tonic::Code::Unauthenticated);
    }
}
