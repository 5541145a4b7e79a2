//! The `countersign` binary: set up logging, parse the command line, run it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // A PDF worker (see `pdf::worker`) is this binary started with a hidden argument; it runs
    // before any runtime or logging, and its stdout is a pipe to the service.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == countersign::pdf::worker::WORKER_ARG)
    {
        return countersign::pdf::worker::run_worker();
    }
    run()
}

#[tokio::main]
async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COUNTERSIGN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = countersign::cli::Cli::parse();
    match countersign::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", countersign::cli::describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
