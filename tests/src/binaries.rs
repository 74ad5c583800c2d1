//! Where the service binaries are. The suite runs the binaries users run, not the libraries,
//! so it finds them next to its own test executable: `target/<profile>/deps/suite-…` runs
//! `target/<profile>/auth-service` and the others. `cargo test --workspace` builds them
//! (each service package has integration tests, which makes Cargo build its binary);
//! `TOLLGATE_BIN_DIR` points elsewhere, e.g. at a release build.

use std::path::{Path, PathBuf};

/// One of the service binaries, and what it says when it listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Auth,
    Usage,
    Gateway,
    /// The demo agent as an agent backend of its own (gRPC only).
    DemoAgent,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth-service",
            Self::Usage => "usage-service",
            Self::Gateway => "ws-gateway",
            Self::DemoAgent => "demo-agent",
        }
    }

    /// The `message` of the JSON log line that carries the bound addresses.
    pub fn listening_message(self) -> String {
        format!("{} listening", self.name())
    }

    /// The listen-address variables, each with the field of the listening line that holds
    /// the address it was bound to (a restart binds the same addresses again). A field may
    /// be absent: the gateway's `admin` listener exists only with `GATEWAY_ADMIN_ADDR`.
    pub fn address_variables(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Auth => &[("AUTH_GRPC_ADDR", "grpc"), ("AUTH_HTTP_ADDR", "http")],
            Self::Usage => &[("USAGE_GRPC_ADDR", "grpc"), ("USAGE_HTTP_ADDR", "http")],
            Self::Gateway => &[("GATEWAY_ADDR", "addr"), ("GATEWAY_ADMIN_ADDR", "admin")],
            Self::DemoAgent => &[("AGENT_ADDR", "grpc")],
        }
    }

    /// The field of the listening line with the HTTP address clients use (for the gateway,
    /// `/ws` and `/v1/publish`).
    pub fn http_field(self) -> &'static str {
        match self {
            Self::Auth | Self::Usage => "http",
            Self::Gateway => "addr",
            Self::DemoAgent => "grpc",
        }
    }

    /// The field of the listening line with the internal HTTP address (`/readyz`,
    /// `/metrics`), when the service has one of its own.
    pub fn admin_field(self) -> Option<&'static str> {
        match self {
            Self::Auth | Self::Usage | Self::DemoAgent => None,
            Self::Gateway => Some("admin"),
        }
    }

    /// The executable; panics with what to do when it has not been built.
    pub fn path(self) -> PathBuf {
        let dir = directory();
        let path = dir.join(format!("{}{}", self.name(), std::env::consts::EXE_SUFFIX));
        assert!(
            path.is_file(),
            "the `{}` binary is not at {}: run `cargo build --workspace --bins` (or `cargo test --workspace`, \
             which builds every service binary), or set TOLLGATE_BIN_DIR to the directory that \
             holds the binaries",
            self.name(),
            path.display()
        );
        path
    }
}

/// `TOLLGATE_BIN_DIR`, or the profile directory the test executable was built into.
fn directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().unwrap_or(Path::new("."));
    // Test executables live in `<profile>/deps`; the binaries one level up.
    if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}
