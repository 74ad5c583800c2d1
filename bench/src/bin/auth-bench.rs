//! `auth-bench`: see the crate documentation and `BENCHMARKS.md`.
//!
//! The callers' runtime is built by hand rather than with `#[tokio::main]` so its size is an
//! option (`--client-threads`): on a 2-core machine it decides how much CPU is left to the
//! service.

use std::process::ExitCode;

use clap::Parser as _;
use tollgate_bench::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads())
        .thread_name("bench-client")
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(tollgate_bench::run(args)),
        Err(err) => Err(anyhow::Error::from(err).context("starting the callers' runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("auth-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
