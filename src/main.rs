//! The `vigil` binary: parses the command line and dispatches. Exit codes are decided here.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vigil::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("vigil {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            let mut out = String::new();
            for (_, crd) in vigil::crd::all() {
                out.push_str("---\n");
                out.push_str(&vigil::crd::to_yaml(&crd).context("cannot render the CRDs")?);
            }
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let code = runtime.block_on(vigil::check::run(args));
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
        }
        Command::Controller(args) => {
            vigil::telemetry::init(cli.log_format, &cli.log_level)?;
            let config = vigil::controller::ControllerConfig::from_args(args);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(vigil::controller::run(config, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            vigil::telemetry::init(cli.log_format, &cli.log_level)?;
            let config = vigil::agent::AgentConfig::from_args(*args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(vigil::agent::run(config, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
