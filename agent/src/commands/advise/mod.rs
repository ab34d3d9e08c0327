//! `tiergate advise --policy FILE (--events FILE... | --store URL)
//! [--since DURATION] [--stale-after DURATION] [--out FILE] [--audit]
//! [--json]`: least privilege from evidence.
//!
//! Reads what workloads did (the collector's observation store, or event
//! files: a collector file sink's output or an agent's `--events` file),
//! compares it with what the policy grants (analyze.rs), and proposes a
//! policy that allows what was used and nothing the current one did not
//! (propose.rs). The report goes to stdout (text, or `--json`); the
//! proposed file to `--out`, checked by the same validation as
//! `policy check` before it is written.

pub mod analyze;
pub mod propose;
mod report;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tiergate_collector::store::{Store, from_jsonl};

use crate::duration::Span;
use crate::events::pipeline::now_epoch_ms;
use crate::policy::{self, render};
use analyze::{Evidence, Window};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["events", "store"])))]
pub struct AdviseArgs {
    /// The policy in force (the grant to compare with).
    #[arg(long)]
    pub policy: PathBuf,
    /// JSON-lines event files (a collector file sink's output, an agent's --events).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub events: Vec<PathBuf>,
    /// The collector's observation store (sqlite:PATH or postgres://...).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The window: rules unused for this long are proposed for removal.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub since: Span,
    /// Identities not seen for this long are listed as stale.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub stale_after: Span,
    /// Write the proposed policy file here.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write tiers whose rules the proposal changes in audit mode (staging).
    #[arg(long)]
    pub audit: bool,
    /// The report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `when` for comments and reports: RFC 3339 UTC.
pub fn when(ms: u64) -> String {
    let mut s = String::new();
    tiergate_collector::sinks::push_timestamp(&mut s, ms);
    s
}

fn load_evidence(args: &AdviseArgs) -> anyhow::Result<Evidence> {
    if let Some(url) = &args.store {
        // A store that is not there is an error, not an empty one.
        let mut store = Store::open_existing(url)?;
        return Ok(Evidence {
            observations: store.observations(0)?,
            rules: store.rules()?,
            identities: store.identities()?,
        });
    }
    let (agg, read) = from_jsonl(&args.events)?;
    if read.malformed > 0 {
        eprintln!(
            "tiergate: {} of {} lines in the event files are not records and were skipped:",
            read.malformed, read.lines
        );
        for e in &read.examples {
            eprintln!("  {e}");
        }
    }
    Ok(Evidence {
        observations: agg.observations(0),
        rules: agg.rules(),
        identities: agg.identities(),
    })
}

/// Runs `advise`; the exit code.
pub fn run(args: &AdviseArgs) -> i32 {
    match advise(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tiergate: {e:#}");
            1
        }
    }
}

fn advise(args: &AdviseArgs) -> anyhow::Result<()> {
    let current = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(errors) => bail!("{errors}"),
    };
    let now_ms = now_epoch_ms();
    let w = Window {
        start_ms: now_ms.saturating_sub(args.since.get().as_millis() as u64),
        now_ms,
        stale_ms: args.stale_after.get().as_millis() as u64,
    };
    let ev = load_evidence(args)?;
    let analysis = analyze::analyze(&current, &ev, w);
    let proposal = propose::propose(&current, &analysis, &ev.observations, args.audit);
    let mut comments = proposal.comments;
    comments.header = vec![
        format!(
            "Proposed by `tiergate advise` from {} observation rows, window {} to {}.",
            ev.observations.len(),
            when(w.start_ms),
            when(w.now_ms)
        ),
        format!(
            "Current policy: {} ({}). Each rule says what it is based on.",
            current.name, current.version
        ),
        "Stage it in audit mode first (`tiergate advise --audit`), then enforce.".into(),
    ];
    let text = render::to_yaml(&proposal.policy, &comments);
    // The proposal must pass `policy check` (parse and compile).
    let out_name = args
        .out
        .as_ref()
        .map_or("proposed policy".to_string(), |p| p.display().to_string());
    let checked = policy::parse_str(&text, &out_name).map_err(|e| {
        anyhow::anyhow!("the proposed policy does not pass policy check (a bug):\n{e}")
    })?;
    checked
        .compile()
        .map_err(|e| anyhow::anyhow!("the proposed policy does not compile (a bug): {e}"))?;
    let diff = report::diff(
        &render::to_yaml(&current, &Default::default()),
        &render::to_yaml(&proposal.policy, &Default::default()),
    );
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let r = report::Report {
        policy: &current,
        analysis: &analysis,
        proposed_version: &checked.version,
        out: args.out.as_deref(),
        diff: &diff,
    };
    if args.json {
        println!("{}", r.json());
    } else {
        print!("{}", r.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
