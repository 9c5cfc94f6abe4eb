//! The `culm` binary.
use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = culm_worker::cli::Cli::parse();
    culm_worker::cli::init_logging(cli.log_format);
    match culm_worker::cli::main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
