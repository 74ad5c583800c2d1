//! Command-line options. Every default is the configuration the published numbers were taken
//! with, so `auth-bench` without arguments reproduces `BENCHMARKS.md`.

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::load::{Plan, Timing};

/// Unmeasured start of every slice: long enough for every caller to have a call in flight
/// (Login takes up to a few hundred milliseconds when queued), short next to the slice.
pub const SETTLE: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, Parser)]
#[command(
    name = "auth-bench",
    about = "Load-tests an in-process auth-service on loopback against same-run baselines"
)]
pub struct Args {
    /// Measured duration of each phase, in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,

    /// Slices each phase's measured time is cut into. A phase and its baseline alternate
    /// slice by slice, so drift in the machine's speed affects both alike.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,

    /// Unmeasured warm-up of each workload before its first slice, in seconds, so connection
    /// setup and cold caches do not count.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,

    /// Concurrent callers of the cheap phases (health, ValidateToken, Refresh, service tokens).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Concurrent callers of Login, which is CPU bound: a few per core keep every hashing
    /// thread busy without queueing for long.
    #[arg(long, default_value_t = 8)]
    pub login_concurrency: usize,

    /// HTTP/2 connections the callers share round-robin, as a client process would.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,

    /// Users registered up front; their access tokens are validated and their sessions
    /// refreshed. Raised to `--concurrency` if lower, since every refresh caller owns a session.
    #[arg(long, default_value_t = 64)]
    pub users: usize,

    /// Worker threads of the callers' runtime (default: one per core). auth-service always
    /// gets its own runtime with one worker per core, as in production; on a small machine
    /// the callers' share of the CPU visibly moves the results, so it is a knob.
    #[arg(long)]
    pub client_threads: Option<usize>,

    /// How the raw argon2id baseline gets argon2's working memory: `fresh` allocates it for
    /// every check, as the crate's `verify_password` does (the published baseline); `reused`
    /// keeps one block per thread and wipes it after each check, as auth-service's hashing
    /// threads do, so Login is compared with hashing alone and not with the allocator.
    #[arg(long, value_enum, default_value_t = RawMemory::Fresh)]
    pub raw_argon_memory: RawMemory,

    /// Which store auth-service runs on.
    #[arg(long, value_enum, default_value_t = DatabaseKind::Postgres)]
    pub database: DatabaseKind,

    /// PostgreSQL server (no database name): a fresh database is created there and dropped at
    /// the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres_url: String,

    /// Redis used with `--database postgres` (under a random key prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Phases to run, comma separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::all())]
    pub phases: Vec<Phase>,
}

impl Args {
    pub fn measure(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }

    pub fn rounds(&self) -> usize {
        self.rounds.max(1)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }

    /// How every phase is measured.
    pub fn plan(&self) -> Plan {
        Plan {
            warmup: self.warmup(),
            slice: Timing {
                settle: SETTLE,
                measure: self.measure() / self.rounds() as u32,
            },
            rounds: self.rounds(),
        }
    }

    pub fn client_threads(&self) -> usize {
        self.client_threads.unwrap_or_else(crate::cores).max(1)
    }

    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatabaseKind {
    /// A fresh PostgreSQL database, with Redis for throttling and events.
    Postgres,
    /// A temporary SQLite file and the in-process engine (no Redis).
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RawMemory {
    Fresh,
    Reused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Health,
    Validate,
    Refresh,
    ServiceToken,
    Login,
}

impl Phase {
    fn all() -> Vec<Self> {
        vec![
            Self::Health,
            Self::Validate,
            Self::Refresh,
            Self::ServiceToken,
            Self::Login,
        ]
    }
}
