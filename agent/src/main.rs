//! The `tiergate` binary: parses the command line and runs the agent, the
//! collector or a one-shot command.

use clap::Parser;
use tiergate::cli::{Cli, Command, LogFormat, PolicyCommand};
use tiergate::commands;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIERGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a node daemon (the agent, the proxies) after the checks that need
/// one thread (privileges, the node's cgroup namespace); its exit code.
fn daemon(
    which: tiergate::app::Daemon,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> i32 {
    if let Err(e) = tiergate::app::prepare(which) {
        eprintln!("tiergate: {e:#}");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run) {
        Ok(()) => 0,
        Err(e) => {
            // One clear sentence (with its causes) on stderr.
            eprintln!("tiergate: {e:#}");
            1
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent(args) => {
            init_logs(args.log_format);
            daemon(tiergate::app::Daemon::Agent, tiergate::app::run(*args))
        }
        Command::Policy(PolicyCommand::Check { file }) => commands::policy_check::run(&file),
        Command::Policy(PolicyCommand::Explain(args)) => commands::explain::run(&args),
        Command::Collector(cmd) => {
            init_logs(cmd.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(tiergate_collector::run(cmd.args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tiergate: {e:#}");
                    1
                }
            }
        }
        Command::Proxy(args) => {
            init_logs(args.log_format);
            daemon(
                tiergate::app::Daemon::Proxy,
                tiergate::proxies::process::run(*args),
            )
        }
        Command::Inventory(args) => commands::inventory::run(&args),
        Command::Uninstall(args) => commands::uninstall::run(&args),
        Command::Advise(args) => commands::advise::run(&args),
        Command::Elevate(args) => commands::elevate::run(&args),
    };
    std::process::exit(code);
}
