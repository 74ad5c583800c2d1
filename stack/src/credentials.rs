//! The embedded stack's service credentials: fresh random secrets on every start, handed to
//! the services in memory and written, for the developer's own backend, to a file only its
//! owner can read (`<data dir>/credentials.env`). They are never printed or logged.

use std::path::Path;

use rand::{Rng, distributions::Alphanumeric};

use crate::data_dir;

/// The gateway's own client (it validates tokens and asks usage-service) and a `backend`
/// client allowed to publish events to users.
#[derive(Clone)]
pub struct Credentials {
    pub gateway_secret: String,
    pub backend_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

pub const GATEWAY_CLIENT: &str = "ws-gateway";
pub const BACKEND_CLIENT: &str = "backend";
pub const FILE_NAME: &str = "credentials.env";

impl Credentials {
    pub fn generate() -> Self {
        Self {
            gateway_secret: secret(),
            backend_secret: secret(),
        }
    }

    /// `AUTH_SERVICE_CLIENTS` for auth-service.
    pub fn registry(&self) -> String {
        format!(
            "{GATEWAY_CLIENT}:{}:auth.validate+usage.check+agent.run,{BACKEND_CLIENT}:{}:publish",
            self.gateway_secret, self.backend_secret
        )
    }

    /// Writes the backend's client id and secret for the developer (mode 0600, even if the
    /// file existed before).
    pub fn write_backend_file(&self, data_dir: &Path) -> std::io::Result<std::path::PathBuf> {
        let contents = format!(
            "SERVICE_CLIENT_ID={BACKEND_CLIENT}\nSERVICE_CLIENT_SECRET={}\n",
            self.backend_secret
        );
        data_dir::write_private(data_dir, FILE_NAME, &contents)
    }

    /// Reads the backend's secret back from a running stack's data directory.
    pub fn read_backend_secret(data_dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(data_dir.join(FILE_NAME)).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("SERVICE_CLIENT_SECRET="))
            .map(str::to_owned)
    }
}

fn secret() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}
