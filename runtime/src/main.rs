use clap::Parser;
use std::io::IsTerminal;
use svc_nft::cli::{run, Cli, Command};
use svc_nft::config::LogFormat;
use svc_nft::logging;

fn main() {
    let cli = Cli::parse();
    let (filter, bad_filter) = logging::from_env();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match &cli.command {
        Command::Run(args) if args.log_format() == LogFormat::Json => logs.json().init(),
        _ => logs.init(),
    }
    if let Some(warning) = bad_filter {
        eprintln!("warning: {warning}");
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
