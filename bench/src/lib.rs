//! `auth-bench`: measures auth-service's hot paths against baselines taken in the same run on
//! the same machine, so the numbers say how much the service itself costs rather than how fast
//! the machine is. Everything runs on loopback, each phase lasts a fixed time, and nothing is
//! asserted: the result is a report.

pub mod argon;
pub mod cli;
pub mod cpu;
pub mod database;
pub mod load;
pub mod phases;
pub mod report;
mod run;
pub mod server;
pub mod ws;

use rand::{Rng as _, distributions::Alphanumeric};

pub use cli::Args;
pub use run::run;

/// Cores the OS lets this process use: the unit of the per-core targets.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Lowercase letters and digits only, so the result needs no quoting in SQL or Redis keys.
pub fn random_lowercase(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .map(|b| char::from(b).to_ascii_lowercase())
        .take(len)
        .collect()
}

/// Mixed-case letters and digits, for secrets and passwords.
pub fn random_alphanumeric(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .map(char::from)
        .take(len)
        .collect()
}
