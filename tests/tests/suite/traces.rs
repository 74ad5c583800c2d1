//! End-to-end tracing (CONTRACT §7): one connection and the agent run on it are one trace
//! across ws-gateway, usage-service and auth-service, continuing the client's own
//! `traceparent`, exported over OTLP by the real binaries to a receiver the test owns.
//!
//! What a broken hop looks like here: a callee's SERVER span in a trace of its own, or
//! parented on nothing the caller exported. So the test checks every RPC span for the trace id
//! and every SERVER span for a matching CLIENT span of the caller, and the spans' names and
//! attributes against the OpenTelemetry RPC conventions, and that no span carries a secret.
//!
//! The auth-service leg needs no special mode: the gateway has not seen the fresh token of a
//! new user, so its first connection is confirmed by auth-service's `ValidateToken` (the fourth
//! step of the gateway's validation; see ws-gateway's `validation` module) in the default
//! `degraded` mode too.

use std::collections::{BTreeSet, HashMap};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tollgate_integration::*;
use uuid::Uuid;

const AUTH_SERVICE: &str = "tollgate.auth.v1.AuthService";
const USAGE_SERVICE: &str = "tollgate.usage.v1.UsageService";

/// A `traceparent` of the test's own: (trace id, parent span id, header value).
fn traceparent() -> (String, String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent = Uuid::new_v4().simple().to_string()[..16].to_owned();
    let header = format!("00-{trace_id}-{parent}-01");
    (trace_id, parent, header)
}

/// Whether the span is an RPC of one of Tollgate's own gRPC services (not health, not
/// reflection, not the exporter's).
fn tollgate_rpc(span: &ExportedSpan) -> bool {
    matches!(span.text("rpc.service"), AUTH_SERVICE | USAGE_SERVICE)
}

/// Every SERVER span of auth-service and usage-service whose CLIENT span (of the caller, in the
/// spans given) is missing.
fn orphans(spans: &[ExportedSpan]) -> Vec<&ExportedSpan> {
    let clients: HashMap<&str, &ExportedSpan> = spans
        .iter()
        .filter(|span| span.kind == SpanKind::Client)
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    spans
        .iter()
        .filter(|span| span.kind == SpanKind::Server && tollgate_rpc(span))
        .filter(|span| {
            clients
                .get(span.parent_span_id.as_str())
                .is_none_or(|client| {
                    client.service != "ws-gateway"
                        || client.text("rpc.method") != span.text("rpc.method")
                })
        })
        .collect()
}

/// One line per span, for failure messages.
fn summary(spans: &[ExportedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|span| {
            format!(
                "{} {:?} {} trace={} id={} parent={}",
                span.service,
                span.kind,
                span.name,
                span.trace_id,
                span.span_id,
                span.parent_span_id
            )
        })
        .collect()
}

/// The spans of one trace.
fn of_trace(spans: &[ExportedSpan], trace_id: &str) -> Vec<ExportedSpan> {
    spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .cloned()
        .collect()
}

/// Whether the trace is complete: the connection's span arrived (it ends last), and so did
/// the SERVER span of every call made within it, which a broken propagation never delivers.
fn complete(trace: &[ExportedSpan], connection_id: &str) -> bool {
    let closed = trace
        .iter()
        .any(|span| span.name == "ws.connection" && span.text("connection_id") == connection_id);
    let answered: BTreeSet<&str> = trace
        .iter()
        .filter(|span| span.kind == SpanKind::Server)
        .map(|span| span.parent_span_id.as_str())
        .collect();
    let mut calls = trace
        .iter()
        .filter(|span| span.kind == SpanKind::Client && tollgate_rpc(span))
        .peekable();
    closed && calls.peek().is_some() && calls.all(|call| answered.contains(call.span_id.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_and_its_run_are_one_trace_across_the_three_services() {
    let receiver = TraceReceiver::start().await;
    let cluster = Cluster::builder().export_traces_to(&receiver).start().await;
    let user = cluster.register().await;
    let (trace_id, client_span, header) = traceparent();
    let headers = [
        ("authorization", format!("Bearer {}", user.access_token)),
        ("traceparent", header),
    ];
    let mut client = WsClient::connect(cluster.gateway(), Present::Headers(&headers))
        .await
        .unwrap_or_else(|refused| panic!("the connection was refused: {refused:?}"));
    let connected = client.expect("connected").await;
    let connection_id = connected["connection_id"].as_str().unwrap().to_owned();
    client
        .run_agent("run-traced", "What is 6 * 7?", &["calculator"])
        .await;
    let run = client.transcript("run-traced").await;
    assert_eq!(kinds(&run).last(), Some(&"agent_completed"), "{run:?}");
    // The connection's span ends, and is exported, when the connection does.
    client.close().await;

    let spans = receiver
        .wait_until(PATIENCE, |spans| {
            complete(&of_trace(spans, &trace_id), &connection_id)
        })
        .await;
    assert_eq!(receiver.dropped(), 0, "the receiver dropped spans");
    let trace = of_trace(&spans, &trace_id);

    // One trace, the client's, reaching every service.
    let services: BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["auth-service", "usage-service", "ws-gateway"]),
        "services in the client's trace; every span received:\n{:#?}",
        summary(&spans)
    );
    // Every call to usage-service comes from this connection (the test calls it for nothing
    // else), and the only ValidateToken is its token's: all of them in the client's trace.
    let strays: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|span| span.kind == SpanKind::Server && span.trace_id != trace_id)
        .filter(|span| {
            span.text("rpc.service") == USAGE_SERVICE
                || span.name == format!("{AUTH_SERVICE}/ValidateToken")
        })
        .collect();
    assert!(
        strays.is_empty(),
        "calls made for the connection outside its trace: {strays:#?}"
    );
    let methods: BTreeSet<&str> = trace
        .iter()
        .filter(|span| span.kind == SpanKind::Server && tollgate_rpc(span))
        .map(|span| span.name.as_str())
        .collect();
    for expected in [
        "tollgate.auth.v1.AuthService/ValidateToken",
        "tollgate.usage.v1.UsageService/UpdateConnections",
        "tollgate.usage.v1.UsageService/Authorize",
        "tollgate.usage.v1.UsageService/ConsumeMany",
    ] {
        assert!(methods.contains(expected), "no {expected} in {methods:?}");
    }
    let run_id = run[0]["run_id"].as_str().unwrap();
    assert!(
        trace
            .iter()
            .any(|span| span.service == "ws-gateway" && span.text("run_id") == run_id),
        "no span of run {run_id} in the trace:\n{:#?}",
        summary(&trace)
    );

    assert_parentage(&trace, &client_span);
    assert_rpc_conventions(&cluster, &trace);
    assert_no_secrets(&cluster, &user, &spans);
}

/// Each SERVER span is the child of the gateway's CLIENT span for that very call, and the
/// gateway's spans hang together under the client's span, the connection's first.
fn assert_parentage(trace: &[ExportedSpan], client_span: &str) {
    let orphaned = orphans(trace);
    assert!(
        orphaned.is_empty(),
        "SERVER spans without the gateway's CLIENT span as parent: {orphaned:#?}\nthe trace:\n{:#?}",
        summary(trace)
    );
    let gateway: HashMap<&str, &ExportedSpan> = trace
        .iter()
        .filter(|span| span.service == "ws-gateway")
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    for span in gateway.values() {
        let mut top = *span;
        while let Some(parent) = gateway.get(top.parent_span_id.as_str()) {
            top = parent;
        }
        assert_eq!(
            (top.name.as_str(), top.parent_span_id.as_str()),
            ("ws.connection", client_span),
            "{} does not lead up to the connection and the client's span; the trace:\n{:#?}",
            span.name,
            summary(trace)
        );
        assert_eq!(top.kind, SpanKind::Server, "{top:#?}");
    }
}

/// The OpenTelemetry RPC conventions: `package.Service/Method` names, `rpc.system` `grpc`,
/// `rpc.service`, `rpc.method`, an integer `rpc.grpc.status_code`; on a CLIENT span the
/// callee's `server.address` and `server.port`.
fn assert_rpc_conventions(cluster: &Cluster, spans: &[ExportedSpan]) {
    let ports = HashMap::from([
        (AUTH_SERVICE, i64::from(cluster.auth.addr("grpc").port())),
        (USAGE_SERVICE, i64::from(cluster.usage.addr("grpc").port())),
    ]);
    for span in spans.iter().filter(|span| tollgate_rpc(span)) {
        let service = span.text("rpc.service");
        let method = span.text("rpc.method");
        assert_eq!(span.name, format!("{service}/{method}"), "{span:#?}");
        assert_eq!(span.text("rpc.system"), "grpc", "{span:#?}");
        assert!(span.attribute("rpc.grpc.status_code").is_i64(), "{span:#?}");
        match span.kind {
            SpanKind::Server => {}
            SpanKind::Client => {
                assert_eq!(span.text("server.address"), "127.0.0.1", "{span:#?}");
                assert_eq!(
                    span.attribute("server.port").as_i64(),
                    Some(ports[service]),
                    "{span:#?}"
                );
            }
            other => panic!("an RPC span of kind {other:?}: {span:#?}"),
        }
    }
}

/// No span, of any trace, carries the user's token or password, the services' client secret,
/// or a bearer credential.
fn assert_no_secrets(cluster: &Cluster, user: &User, spans: &[ExportedSpan]) {
    let secrets = [
        ("the access token", user.access_token.as_str()),
        ("the refresh token", user.refresh_token.as_str()),
        ("the password", PASSWORD),
        ("the client secret", cluster.client_secret()),
        ("a bearer credential", "Bearer "),
    ];
    for span in spans {
        let rendered = span.rendered();
        for (what, secret) in secrets {
            // Named, not quoted: the failure message must not spread the secret either.
            assert!(
                !rendered.contains(secret),
                "span `{}` of {} carries {what}",
                span.name,
                span.service
            );
        }
    }
}
