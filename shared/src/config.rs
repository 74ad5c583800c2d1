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
/// `--help` and `--version` still print normally and exit 0. Every option read from an
/// environment variable `X` can also come from a file named by `X_FILE` (Docker and Kubernetes
/// secrets are mounted as files), see [`file_arguments`].
pub fn parse_or_exit<T: clap::Parser>() -> T {
    let arguments = match file_arguments::<T>(|name| std::env::var_os(name)) {
        // Right after the program name, so they belong to the top-level command even when a
        // subcommand (`migrate`, `keys rewrap`) follows.
        Ok(from_files) => {
            let mut given = std::env::args_os();
            given.next().into_iter().chain(from_files).chain(given)
        }
        Err(line) => {
            eprintln!("{line}");
            std::process::exit(2);
        }
    };
    match T::try_parse_from(arguments) {
        Ok(config) => config,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("{}", describe_error::<T>(&err));
            std::process::exit(2);
        }
    }
}

/// Arguments for the options whose environment variable `X` is unset but `X_FILE` names a file:
/// `--option <the file's contents, without the trailing newline>`. An unreadable file is an
/// error naming the variable (never the contents).
pub fn file_arguments<T: clap::CommandFactory>(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, String> {
    let mut arguments = Vec::new();
    for argument in T::command().get_arguments() {
        let (Some(variable), Some(long)) = (argument.get_env(), argument.get_long()) else {
            continue;
        };
        let variable = variable.to_string_lossy();
        let file_variable = format!("{variable}_FILE");
        if env(&variable).is_some() {
            continue;
        }
        let Some(path) = env(&file_variable) else {
            continue;
        };
        let contents = std::fs::read_to_string(&path)
            .map_err(|err| format!("{file_variable}: cannot read {path:?}: {err}"))?;
        arguments.push(format!("--{long}").into());
        arguments.push(contents.trim_end_matches(['\r', '\n']).to_owned().into());
    }
    Ok(arguments)
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

    #[derive(Debug, clap::Parser)]
    struct Secrets {
        #[arg(long, env = "TOLLGATE_TEST_ONLY_SECRET")]
        secret: String,
        #[arg(long, env = "TOLLGATE_TEST_ONLY_NAME", default_value = "x")]
        name: String,
    }

    #[test]
    fn a_variable_can_come_from_the_file_its_file_variable_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-from-a-file\n").unwrap();
        let env = |name: &str| {
            (name == "TOLLGATE_TEST_ONLY_SECRET_FILE").then(|| path.clone().into_os_string())
        };
        let arguments = file_arguments::<Secrets>(env).unwrap();
        let parsed: Secrets = clap::Parser::try_parse_from(
            std::iter::once(std::ffi::OsString::from("test")).chain(arguments),
        )
        .unwrap();
        assert_eq!(parsed.secret, "s3cret-from-a-file");
        assert_eq!(parsed.name, "x");
    }

    #[test]
    fn an_unreadable_secret_file_is_named_by_its_variable() {
        let env = |name: &str| {
            (name == "TOLLGATE_TEST_ONLY_SECRET_FILE").then(|| "/nonexistent/secret".into())
        };
        let err = file_arguments::<Secrets>(env).unwrap_err();
        assert!(
            err.starts_with("TOLLGATE_TEST_ONLY_SECRET_FILE: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn a_set_variable_wins_over_its_file() {
        let env = |name: &str| match name {
            "TOLLGATE_TEST_ONLY_SECRET" => Some("direct".into()),
            "TOLLGATE_TEST_ONLY_SECRET_FILE" => Some("/nonexistent/secret".into()),
            _ => None,
        };
        assert!(file_arguments::<Secrets>(env).unwrap().is_empty());
    }

    #[test]
    fn socket_addresses_parse_or_explain() {
        assert!(parse_socket_addr("127.0.0.1:0").is_ok());
        let err = parse_socket_addr("localhost").unwrap_err();
        assert!(err.contains("HOST:PORT"));
    }
}
