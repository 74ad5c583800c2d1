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
            eprintln!("{}", describe_error::<T>(&err));
            std::process::exit(2);
        }
    }
}

/// One line for a configuration error, naming the environment variable behind the argument.
pub fn describe_error<T: clap::CommandFactory>(err: &clap::Error) -> String {
    // A value parser's own message names the problem without echoing the raw value, which
    // may be a secret; clap's rendering would quote it.
    let rendered = err.render().to_string();
    let parser_message = std::error::Error::source(err).map(ToString::to_string);
    let line = parser_message.as_deref().unwrap_or_else(|| {
        rendered
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or(rendered.trim())
    });
    let variable = err
        .get(clap::error::ContextKind::InvalidArg)
        .map(ToString::to_string)
        .and_then(|arg| {
            let long = arg
                .trim_start_matches("--")
                .split([' ', '='])
                .next()?
                .to_owned();
            let command = T::command();
            let env = command
                .get_arguments()
                .find(|candidate| candidate.get_long() == Some(long.as_str()))?
                .get_env()?
                .to_string_lossy()
                .into_owned();
            Some(env)
        });
    match variable {
        Some(variable) => format!("configuration error: {variable}: {line}"),
        None => format!("configuration error: {line}"),
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
