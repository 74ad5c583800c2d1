//! A trace receiver owned by the test: the OTLP/gRPC `TraceService/Export` endpoint that the
//! services' exporters are pointed at (`OTEL_EXPORTER_OTLP_ENDPOINT`), keeping every span it is
//! sent in memory. It is what a collector is to an operator, minus the storage: a test asks it
//! which spans arrived, from which service, with which parents and attributes, and so checks
//! end-to-end tracing on the real binaries rather than on an in-process exporter.
//!
//! The store is bounded ([`MAX_SPANS`]): a runaway exporter makes the receiver drop and count
//! spans, never grow without end.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::span::SpanKind,
};
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::eventually_some;

/// Spans kept at most; later ones are counted in [`TraceReceiver::dropped`].
pub const MAX_SPANS: usize = 100_000;

/// One exported span, flattened: its resource's `service.name` and its attributes as JSON.
#[derive(Clone, Debug)]
pub struct ExportedSpan {
    pub service: String,
    /// Lowercase hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: BTreeMap<String, Value>,
    /// Each event's name and attributes.
    pub events: Vec<(String, BTreeMap<String, Value>)>,
}

impl ExportedSpan {
    /// An attribute, `Null` when absent.
    pub fn attribute(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }

    /// A string attribute, `""` when absent or not a string.
    pub fn text(&self, key: &str) -> &str {
        self.attribute(key).as_str().unwrap_or_default()
    }

    /// Everything the span says (name, attribute keys and values, events), for checking that
    /// a secret appears nowhere in it.
    pub fn rendered(&self) -> String {
        fn render(out: &mut String, attributes: &BTreeMap<String, Value>) {
            for (key, value) in attributes {
                let _ = write!(out, " {key}={value}");
            }
        }
        let mut out = self.name.clone();
        render(&mut out, &self.attributes);
        for (name, attributes) in &self.events {
            let _ = write!(out, " event={name}");
            render(&mut out, attributes);
        }
        out
    }
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<ExportedSpan>,
    dropped: u64,
}

/// A running receiver; dropping it stops the server.
#[derive(Debug)]
pub struct TraceReceiver {
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    server: JoinHandle<()>,
}

impl TraceReceiver {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port for the trace receiver");
        let address = listener.local_addr().expect("the receiver's address");
        let store = Arc::new(Mutex::new(Store::default()));
        let service = TraceServiceServer::new(Collector {
            store: Arc::clone(&store),
        });
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(err) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("the trace receiver stopped: {err}");
            }
        });
        Self {
            address,
            store,
            server,
        }
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.lock().spans.clone()
    }

    /// Spans refused because the store was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Polls until `complete` holds for the spans received, or `deadline` passes; answers the
    /// spans either way (the caller's assertions then say what is missing).
    pub async fn wait_until(
        &self,
        deadline: Duration,
        complete: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        let done = eventually_some(deadline, || {
            let spans = self.spans();
            let done = complete(&spans).then_some(spans);
            async move { done }
        })
        .await;
        done.unwrap_or_else(|| self.spans())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug)]
struct Collector {
    store: Arc<Mutex<Store>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(resource.attributes))
                .unwrap_or_default();
            let service = resource
                .get("service.name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(ExportedSpan {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    name: span.name,
                    attributes: attributes(span.attributes),
                    events: span
                        .events
                        .into_iter()
                        .map(|event| (event.name, attributes(event.attributes)))
                        .collect(),
                });
            }
        }
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let room = MAX_SPANS.saturating_sub(store.spans.len());
        store.dropped += received.len().saturating_sub(room) as u64;
        store.spans.extend(received.into_iter().take(room));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(pairs: Vec<KeyValue>) -> BTreeMap<String, Value> {
    pairs
        .into_iter()
        .map(|pair| (pair.key, json(pair.value)))
        .collect()
}

fn json(value: Option<AnyValue>) -> Value {
    use any_value::Value as V;
    match value.and_then(|value| value.value) {
        None => Value::Null,
        Some(V::StringValue(text)) => Value::from(text),
        Some(V::BoolValue(flag)) => Value::from(flag),
        Some(V::IntValue(number)) => Value::from(number),
        Some(V::DoubleValue(number)) => Value::from(number),
        Some(V::BytesValue(bytes)) => Value::from(hex::encode(bytes)),
        Some(V::ArrayValue(array)) => array
            .values
            .into_iter()
            .map(|value| json(Some(value)))
            .collect(),
        Some(V::KvlistValue(list)) => Value::Object(
            list.values
                .into_iter()
                .map(|pair| (pair.key, json(pair.value)))
                .collect(),
        ),
    }
}
