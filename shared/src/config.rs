//! Parsing helpers for the environment-driven configuration of every service.
//!
//! Each service has one `clap` config struct (so every variable shows up in `--help`); these
//! helpers give those structs real types: durations such as `15m`, secrets that never print.

use std::time::Duration;

pub use secrecy::{ExposeSecret, SecretString};

/// Parses a duration written as `15m`, `30s`, `500ms` or `30d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|err| format!("`{value}` is not a duration: {err}"))
}

/// Parses a `host:port` socket address, naming the problem in one line.
pub fn parse_socket_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    value.trim().parse().map_err(|_| {
        format!("`{value}` is not a socket address (expected HOST:PORT, e.g. 127.0.0.1:8080)")
    })
}

/// Turns a clap parse failure into one clear line on stderr and a non-zero exit.
///
/// `--help` and `--version` still print normally and exit 0.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let rendered = err.render().to_string();
            let line = rendered
                .lines()
                .find(|line| line.starts_with("error:"))
                .unwrap_or(rendered.as_str());
            eprintln!("configuration {line}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_contract_format_parse() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn socket_addresses_parse_or_explain() {
        assert!(parse_socket_addr("127.0.0.1:0").is_ok());
        let err = parse_socket_addr("localhost").unwrap_err();
        assert!(err.contains("HOST:PORT"));
    }
}
