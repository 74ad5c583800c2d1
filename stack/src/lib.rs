//! `tollgate`: the three services in one process on the embedded default (SQLite files and the
//! in-process engine), with their service credentials wired, for trying Tollgate on a laptop;
//! and `tollgate demo`, a client that walks through register, connect, run an agent and
//! receive a published event.

pub mod credentials;
pub mod data_dir;
pub mod demo;
pub mod key_encryption;
pub mod stack;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Runs auth-service, usage-service and ws-gateway together on the embedded default",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: stack::Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the stack (the default) and serve until Ctrl-C.
    Run(stack::Options),
    /// Play a client against the stack: register, connect, run an agent, receive an event.
    /// Starts a stack of its own when none is listening.
    Demo(demo::Options),
}
