//! The command line (`cli.rs`, the collector's flags) and the flag value
//! parsers: `--collector URL`, `--metadata-upstream`, `policy explain --to`,
//! `--ring-buffer-bytes`, durations. Never panics; every value a parser
//! accepts reads back as itself from its own spelling.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use tiergate::cli::{Cli, Command, PolicyCommand, parse_upstream};
use tiergate::duration::Span;
use tiergate::export::sender::parse_url;

fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("tiergate").chain(args.iter().copied()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut args: Vec<&str> = text.split('\n').collect();
    let first = args[0];

    // --collector
    if let Ok((host, port)) = parse_url(first) {
        assert!(!host.is_empty());
        let again = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        assert_eq!(
            parse_url(&again),
            Ok((host.clone(), port)),
            "{first:?} -> {again:?}"
        );
    }
    // --metadata-upstream
    if let Ok(addr) = parse_upstream(first) {
        assert_eq!(parse_upstream(&addr.to_string()), Ok(addr), "{first:?}");
        assert_eq!(
            parse_upstream(&format!("http://{addr}/")),
            Ok(addr),
            "{first:?}"
        );
    }
    // Durations (policy and flags).
    if let Ok(span) = first.parse::<Span>() {
        let shown = span.to_string();
        assert_eq!(shown.parse::<Span>(), Ok(span), "{first:?} -> {shown:?}");
    }
    // policy explain --to
    let explain = [
        "policy", "explain", "--policy", "p.yaml", "--cgroup", "/a", "--to", first,
    ];
    if let Ok(c) = cli(&explain)
        && let Command::Policy(PolicyCommand::Explain(e)) = c.command
    {
        let shown = e.to.to_string();
        let again = [
            "policy", "explain", "--policy", "p.yaml", "--cgroup", "/a", "--to", &shown,
        ];
        match cli(&again).map(|c| c.command) {
            Ok(Command::Policy(PolicyCommand::Explain(e2))) => assert_eq!(e2.to, e.to),
            other => panic!("--to {first:?} reads back from {shown:?} as {other:?}"),
        }
    }
    // Whole command lines, free and under each subcommand.
    let _ = cli(&args);
    args.truncate(32);
    for prefix in [
        &["agent", "--policy", "p.yaml"][..],
        &[
            "collector",
            "--tls-ca",
            "c",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--allow-spiffe",
            "x",
        ][..],
        &["policy", "explain", "--policy", "p.yaml"][..],
        &["inventory"][..],
        &["uninstall"][..],
    ] {
        let full: Vec<&str> = prefix.iter().copied().chain(args.iter().copied()).collect();
        let _ = cli(&full);
    }
});
