//! `--help` of every binary lists every variable, and never the value of a secret one (URLs
//! that carry passwords, client secrets), even when it is set: help output ends up in
//! terminals, CI logs and bug reports.

use std::process::Command;

use tollgate_integration::Binary;

/// A value clap does show (so the test would see a secret if it were shown the same way).
const VISIBLE: (&str, &str) = ("REDIS_PREFIX", "visible-prefix-5e0b");

/// Each binary's secret variables, set to values that are easy to recognise.
fn secrets(binary: Binary) -> &'static [(&'static str, &'static str)] {
    const DATABASE_URL: (&str, &str) = (
        "DATABASE_URL",
        "postgres://tollgate:db-password-81c4@127.0.0.1:5432/tollgate",
    );
    const REDIS_URL: (&str, &str) = ("REDIS_URL", "redis://:redis-password-3f9d@127.0.0.1:6379");
    match binary {
        Binary::Auth => &[
            DATABASE_URL,
            REDIS_URL,
            (
                "AUTH_SERVICE_CLIENTS",
                "ws-gateway:client-secret-a6e2-0123456789:auth.validate",
            ),
        ],
        Binary::Usage => &[DATABASE_URL, REDIS_URL],
        Binary::Gateway => &[
            REDIS_URL,
            ("SERVICE_CLIENT_SECRET", "client-secret-a6e2-0123456789"),
        ],
        // The demo agent takes no secret (its JWKS address and name are public).
        Binary::DemoAgent => &[],
    }
}

#[test]
fn help_lists_secret_variables_without_their_values() {
    for binary in [Binary::Auth, Binary::Usage, Binary::Gateway] {
        let output = Command::new(binary.path())
            .arg("--help")
            .env_clear()
            .envs(secrets(binary).iter().copied())
            .env(VISIBLE.0, VISIBLE.1)
            .output()
            .unwrap_or_else(|err| panic!("{} --help does not run: {err}", binary.name()));
        assert!(output.status.success(), "{} --help failed", binary.name());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains(&format!("{}={}", VISIBLE.0, VISIBLE.1)),
            "{} --help no longer shows set values at all, so this test proves nothing:\n{help}",
            binary.name()
        );
        for (variable, value) in secrets(binary) {
            assert!(
                help.contains(variable),
                "{} --help does not list {variable}",
                binary.name()
            );
            let secret_parts = value
                .split([':', '@', '/'])
                .filter(|part| part.contains("password") || part.contains("secret"));
            for part in secret_parts {
                assert!(
                    !help.contains(part),
                    "{} --help shows the value of {variable}:\n{help}",
                    binary.name()
                );
            }
        }
    }
}
