use std::process::ExitCode;

use clap::Parser;
use tollgate::{Cli, Command, demo, stack};
use tollgate_shared::{process, shutdown::Shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(options) => {
            process::run("tollgate", None, async move {
                let shutdown = Shutdown::new();
                shutdown.trigger_on_signals();
                let running = stack::Stack::start(options, shutdown).await?;
                println!("{}", running.banner());
                running.run_until_stopped().await
            })
            .await
        }
        Command::Demo(options) => match demo::run(options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tollgate demo: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
