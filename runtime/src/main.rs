use clap::Parser;
use std::io::IsTerminal;
use svc_nft::cli::{run, Cli, Command};
use svc_nft::config::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_env("SVC_NFT_LOG").unwrap_or_else(|_| "info".into()));
    match &cli.command {
        Command::Run(args) if args.log_format() == LogFormat::Json => logs.json().init(),
        _ => logs.init(),
    }
    let code = match run(&cli.command, &mut std::io::stdout(), &mut std::io::stderr()) {
        Ok(code) => code,
        // A closed pipe (`svc-nft compile | head`) is not worth a panic; report and fail.
        Err(e) => {
            eprintln!("svc-nft: {e}");
            2
        }
    };
    std::process::exit(code);
}
