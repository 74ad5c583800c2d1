//! demo-agent configuration, parsed once into real types. `demo-agent --help` lists every
//! variable.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use tollgate_shared::config::{parse_duration, parse_socket_addr};
use url::Url;

/// Longest agent name (the gateway's limit on `run_agent.agent`).
const MAX_AGENT_NAME_CHARS: usize = 64;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "demo-agent",
    version,
    about = "Tollgate's demo agent, served as a tollgate.agent.v1.AgentBackend"
)]
pub struct Config {
    /// gRPC listen address (`tollgate.agent.v1.AgentBackend`, health, reflection). Port 0
    /// picks a free port.
    #[arg(long, env = "AGENT_ADDR", default_value = "127.0.0.1:50062", value_parser = parse_socket_addr)]
    pub addr: SocketAddr,

    /// How long each allowed tool "works" before its result is sent (cancellable), so a
    /// client can watch a run stream and cancel it.
    #[arg(long, env = "AGENT_THINK_DELAY", default_value = "0ms", value_parser = parse_duration)]
    pub think_delay: Duration,

    /// This agent's name in the gateway's `GATEWAY_AGENTS`: the audience its callers' service
    /// tokens must name.
    #[arg(long, env = "AGENT_NAME", default_value = "demo", value_parser = parse_agent_name)]
    pub name: String,

    /// The JWK Set that verifies callers' service tokens (auth-service's, e.g.
    /// `http://127.0.0.1:8081/.well-known/jwks.json`). Unset: calls are not checked.
    #[arg(long, env = "AUTH_JWKS_URL", value_parser = parse_jwks_url)]
    pub jwks_url: Option<Url>,

    /// Expected `iss` of callers' tokens.
    #[arg(long, env = "AUTH_ISSUER", default_value = "tollgate-auth")]
    pub issuer: String,

    /// Clock-skew tolerance on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// How long runs in flight may take to finish after SIGTERM before they are stopped.
    #[arg(long, env = "AGENT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// OTLP/gRPC endpoint for traces. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// The defaults on port 0, with no caller check; it never reads the environment.
    pub fn for_tests() -> Self {
        Self {
            addr: ([127, 0, 0, 1], 0).into(),
            think_delay: Duration::ZERO,
            name: "demo".into(),
            jwks_url: None,
            issuer: "tollgate-auth".into(),
            jwt_leeway: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            otlp_endpoint: None,
        }
    }
}

/// An agent name: 1 to 64 characters, none of them whitespace or control characters.
pub fn parse_agent_name(value: &str) -> Result<String, String> {
    let chars = value.chars().count();
    if (1..=MAX_AGENT_NAME_CHARS).contains(&chars)
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "an agent name is 1 to {MAX_AGENT_NAME_CHARS} characters without spaces"
        ))
    }
}

/// An `http://` URL (this build speaks no TLS; the JWKS is public, not secret).
pub fn parse_jwks_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value.trim()).map_err(|err| format!("not a URL: {err}"))?;
    if url.scheme() != "http" || url.host().is_none() {
        return Err(
            "expected an http:// URL, e.g. http://127.0.0.1:8081/.well-known/jwks.json".into(),
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("demo-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse(&[]).expect("defaults parse");
        assert_eq!(config.addr, "127.0.0.1:50062".parse().unwrap());
        assert_eq!(config.think_delay, Duration::ZERO);
        assert_eq!(config.name, "demo");
        assert_eq!(config.jwks_url, None);
    }

    #[test]
    fn values_parse_into_real_types() {
        let config = parse(&[
            "--addr=0.0.0.0:7000",
            "--think-delay=250ms",
            "--name=research",
            "--jwks-url=http://auth:8081/.well-known/jwks.json",
        ])
        .expect("valid values");
        assert_eq!(config.think_delay, Duration::from_millis(250));
        assert_eq!(config.name, "research");
        assert_eq!(
            config.jwks_url.map(String::from).as_deref(),
            Some("http://auth:8081/.well-known/jwks.json")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "--addr=localhost",
            "--think-delay=soon",
            "--name=",
            "--name=two words",
            "--jwks-url=not a url",
            "--jwks-url=https://auth/.well-known/jwks.json",
            "--jwks-url=file:///etc/jwks.json",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} was accepted");
        }
        let long = format!("--name={}", "a".repeat(MAX_AGENT_NAME_CHARS + 1));
        assert!(parse(&[&long]).is_err());
    }
}
