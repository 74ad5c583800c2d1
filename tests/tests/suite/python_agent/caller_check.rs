//! The Python agent's caller check: with `AUTH_JWKS_URL` set, only a service token signed by a
//! key of that JWKS, issued by auth-service, for this agent and with the `agent.run` scope
//! opens a run; every other call is refused before a run starts, with a reason, and no token
//! reaches the agent's log. The JWKS is served by the test, as auth-service would serve it.

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use tokio::{net::TcpListener, task::JoinHandle};
use tollgate_integration::{PythonAgent, forge, reason};
use tollgate_shared::{
    time::unix_now,
    tokens::{JwkSet, ServiceClaims, SigningKey},
};
use tonic::Code;
use uuid::Uuid;

use super::gateway::{Run, allow, env, names, refusal, start};

const ISSUER: &str = "tollgate-auth";
const AGENT: &str = "python";

/// A JWKS endpoint owned by the test; stopped on drop.
struct JwksServer {
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: JwkSet) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("the bound address");
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let keys = keys.clone();
                async move { Json(keys) }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, server }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The claims of the service token the gateway presents to agent `AGENT`.
fn claims() -> ServiceClaims {
    let now = unix_now();
    ServiceClaims {
        iss: ISSUER.into(),
        sub: "ws-gateway".into(),
        aud: AGENT.into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        scope: "agent.run".into(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn agent_checking(jwks_url: &str) -> PythonAgent {
    PythonAgent::start(env(&[("AUTH_JWKS_URL", jwks_url), ("AGENT_NAME", AGENT)])).await
}

/// The reasons the agent may give for each of `forge::hostile_tokens`.
fn expected_reasons(case: &str) -> &'static [&'static str] {
    match case {
        "garbage" | "empty segments" => &["token_malformed"],
        "alg none" | "HS256 header" => &["unsupported_algorithm"],
        "another subject" | "extended expiry" | "known kid, foreign signature" => {
            &["bad_signature"]
        }
        // Flipping the last base64url character may touch only its padding bits, which a
        // strict decoder refuses before any signature check.
        "flipped signature" => &["bad_signature", "token_malformed"],
        "unknown key" => &["unknown_key"],
        "oversized" => &["token_too_large"],
        other => panic!("no expectation for the hostile token `{other}`"),
    }
}

#[tokio::test]
async fn with_a_jwks_only_the_gateways_token_for_this_agent_opens_a_run() {
    let key = SigningKey::generate();
    let jwks = JwksServer::start(JwkSet {
        keys: vec![key.jwk().clone()],
    })
    .await;
    let agent = agent_checking(&jwks.url()).await;
    let valid = key.sign(&claims());

    let run_id = Uuid::new_v4().to_string();
    let mut run = Run::open_with(
        &agent,
        start(&run_id, "let me in", &[]),
        Some(&bearer(&valid)),
    )
    .await
    .unwrap_or_else(|status| panic!("the gateway's token was refused: {status:?}"));
    assert_eq!(names(&run.drive(allow).await).last(), Some(&"completed"));

    let now = unix_now();
    let signed = |change: fn(&mut ServiceClaims, i64)| {
        let mut claims = claims();
        change(&mut claims, now);
        bearer(&key.sign(&claims))
    };
    let mut cases: Vec<(String, Option<String>, Code, &[&str])> = vec![
        (
            "no token".into(),
            None,
            Code::Unauthenticated,
            &["token_missing"],
        ),
        (
            "another scheme".into(),
            Some(format!("Basic {valid}")),
            Code::Unauthenticated,
            &["token_missing"],
        ),
        (
            "another agent's token".into(),
            Some(signed(|claims, _| claims.aud = "demo".into())),
            Code::Unauthenticated,
            &["wrong_audience"],
        ),
        (
            "a token for the gateway".into(),
            Some(signed(|claims, _| claims.aud = "ws-gateway".into())),
            Code::Unauthenticated,
            &["wrong_audience"],
        ),
        (
            "another issuer".into(),
            Some(signed(|claims, _| claims.iss = "someone-else".into())),
            Code::Unauthenticated,
            &["wrong_issuer"],
        ),
        (
            "expired".into(),
            Some(signed(|claims, now| {
                (claims.iat, claims.nbf, claims.exp) = (now - 900, now - 900, now - 600);
            })),
            Code::Unauthenticated,
            &["token_expired"],
        ),
        (
            "not yet valid".into(),
            Some(signed(|claims, now| {
                (claims.nbf, claims.exp) = (now + 600, now + 900);
            })),
            Code::Unauthenticated,
            &["token_not_yet_valid"],
        ),
        (
            "without agent.run".into(),
            Some(signed(|claims, _| {
                claims.scope = "publish usage.check".into()
            })),
            Code::PermissionDenied,
            &["insufficient_scope"],
        ),
        (
            "a scope that only starts like agent.run".into(),
            Some(signed(|claims, _| claims.scope = "agent.runner".into())),
            Code::PermissionDenied,
            &["insufficient_scope"],
        ),
    ];
    for (case, token) in forge::hostile_tokens(&valid) {
        let expected = expected_reasons(case);
        cases.push((
            format!("hostile: {case}"),
            Some(bearer(&token)),
            Code::Unauthenticated,
            expected,
        ));
    }

    for (case, authorization, code, expected) in &cases {
        let run_id = Uuid::new_v4().to_string();
        let first = start(&run_id, "keep out", &["word_count"]);
        let status = refusal(&agent, first, authorization.as_deref()).await;
        assert_eq!(status.code(), *code, "{case}: {status:?}");
        assert!(
            expected.contains(&reason(&status).as_str()),
            "{case}: {status:?}"
        );
        assert!(
            agent.run_events("start", &run_id).is_empty(),
            "{case}: a refused call started a run"
        );
    }
    assert_eq!(agent.events("start").len(), 1, "only the valid call ran");

    let log = agent.log();
    let signature = valid.rsplit('.').next().expect("a JWT");
    assert!(
        !log.contains(signature),
        "a token reached the agent's log:\n{log}"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_answers_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        closed.local_addr().expect("an address")
    );
    drop(closed);
    let agent = agent_checking(&url).await;
    let token = SigningKey::generate().sign(&claims());

    let run_id = Uuid::new_v4().to_string();
    let status = refusal(
        &agent,
        start(&run_id, "anyone there?", &[]),
        Some(&bearer(&token)),
    )
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "keys_unavailable");
    assert!(agent.events("start").is_empty());
}
