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
    let filter = tracing_subscriber::EnvFilter::try_from_env("COUNTERSIGN_LOG").unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `COUNTERSIGN_LOG_FORMAT=json`: one JSON object a line, with the fields of the spans it
    // is in (a case's reference, a message's id), for a log pipeline.
    if std::env::var("COUNTERSIGN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().with_current_span(true).with_span_list(false).init();
    } else {
        logs.init();
    }
    let cli = countersign::cli::Cli::parse();
    match countersign::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", countersign::cli::describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
