//! `tiergate elevate`: ask the local agent, over its admin socket, for a
//! time-boxed grant; `elevate list`; `elevate revoke ID`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::duration::Span;
use crate::elevation::admin::call;
use crate::elevation::grant::{Grant, Request, Target};
use crate::elevation::protocol::{Op, Reply};

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/tiergate/admin.sock";

#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true)]
pub struct ElevateArgs {
    /// The agent's --admin-socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// Print the agent's JSON reply.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<ElevateCommand>,
    #[command(flatten)]
    pub grant: Option<GrantArgs>,
}

#[derive(Debug, Subcommand)]
pub enum ElevateCommand {
    /// The grants in force on this node.
    List,
    /// End a grant now.
    Revoke {
        /// The grant's id (g-...).
        id: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pod", "cgroup", "spiffe_id"])))]
pub struct GrantArgs {
    /// NAMESPACE/NAME of a pod on this node.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Option<String>,
    /// With --pod: only this container.
    #[arg(long, requires = "pod")]
    pub container: Option<String>,
    /// A cgroup path (as /proc/PID/cgroup shows it) and its descendants.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Every pod with this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// The tier to judge the workload by.
    #[arg(long, required = true)]
    pub to: String,
    /// How long (e.g. 15m); the policy's spec.elevation caps it.
    #[arg(long = "for", value_name = "DURATION", required = true)]
    pub duration: Span,
    /// Ticket or incident id (recorded in every event made under the grant).
    #[arg(long, required = true)]
    pub ticket: String,
    /// Why (recorded likewise).
    #[arg(long, required = true)]
    pub reason: String,
}

fn target(g: &GrantArgs) -> Result<Target, String> {
    if let Some(p) = &g.pod {
        let (ns, name) = p
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
            .ok_or_else(|| format!("--pod {p}: expected NAMESPACE/NAME"))?;
        return Ok(Target::Pod {
            namespace: ns.into(),
            name: name.into(),
            container: g.container.clone(),
        });
    }
    if let Some(c) = &g.cgroup {
        return Ok(Target::Cgroup(c.trim_end_matches('/').to_string()));
    }
    Ok(Target::SpiffeId(g.spiffe_id.clone().unwrap_or_default()))
}

fn when(ms: u64) -> String {
    crate::commands::advise::when(ms)
}

fn print_grant(g: &Grant) {
    println!(
        "{}  {}  {} → {}  until {}  ticket {}  by {}  ({})",
        g.id,
        g.target,
        g.from,
        g.to,
        when(g.expires_ms),
        g.ticket,
        g.granted_by.name.as_deref().unwrap_or(&g.granted_by.id),
        g.reason
    );
}

/// Runs `elevate`; the exit code.
pub fn run(args: &ElevateArgs) -> i32 {
    let op = match (&args.command, &args.grant) {
        (Some(ElevateCommand::List), _) => Op::List,
        (Some(ElevateCommand::Revoke { id }), _) => Op::Revoke { id: id.clone() },
        (None, Some(g)) => match target(g) {
            Ok(t) => Op::Grant {
                request: Request {
                    target: t,
                    to: g.to.clone(),
                    duration_ms: g.duration.get().as_millis() as u64,
                    ticket: g.ticket.clone(),
                    reason: g.reason.clone(),
                },
            },
            Err(e) => {
                eprintln!("tiergate: {e}");
                return 2;
            }
        },
        (None, None) => {
            eprintln!(
                "tiergate: elevate needs a target and --to/--for/--ticket/--reason, or list / revoke ID"
            );
            return 2;
        }
    };
    let reply: Reply = match call(&args.admin_socket, &op) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tiergate: {e:#}");
            return 1;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&reply).expect("reply serializes")
        );
    }
    if !reply.ok {
        eprintln!("tiergate: {}", reply.error.unwrap_or_default());
        return 1;
    }
    if !args.json {
        if let Some(g) = &reply.grant {
            print_grant(g);
        }
        for g in reply.grants.iter().flatten() {
            print_grant(g);
        }
        if reply.grants.as_ref().is_some_and(|g| g.is_empty()) {
            println!("no grants in force");
        }
    }
    0
}
