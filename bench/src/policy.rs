//! The benchmark's TierPolicy documents, written into place and awaited until applied.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent::metric;
use crate::world::World;

impl World {
    /// The policy file, in a directory of its own: the agent watches the
    /// policy's directory, and the events files the bench writes beside it
    /// would wake that watch at every write (as no installation lays it out).
    pub(crate) fn policy_path(&self) -> PathBuf {
        self.dir.join("policy").join("policy.yaml")
    }

    /// A policy whose tier t0 (bound to enf/t0/**) has `n` /32 rules; the
    /// one in the middle allows 10.20.0.1 (or, `allow = false`, 10.21.0.1).
    pub(crate) fn policy(&self, n: usize, allow: bool) -> String {
        self.policy_variant(n, allow, 64, None)
    }

    /// `policy(n, allow)` with the destinations of rules 2..n in 10.`net`.x.y
    /// instead of 10.64.x.y and, with `tag`, the first rule's destination
    /// made unique to that tag (10.63.x.y).
    pub(crate) fn policy_variant(
        &self,
        n: usize,
        allow: bool,
        net: usize,
        tag: Option<usize>,
    ) -> String {
        let mut s = format!(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: bench-{n}-{allow}\nspec:\n  mode: enforce\n  defaultTier: locked\n  tiers:\n    - name: t0\n      egress:\n"
        );
        for i in 0..n {
            // The measured destination sits in the middle of the list: a
            // packet filter that walks its rules meets it after half of
            // them, as it would an average destination.
            let ip = match (i, tag) {
                (i, _) if i == n / 2 && allow => "10.20.0.1".into(),
                (i, _) if i == n / 2 => "10.21.0.1".into(),
                (0, Some(t)) => format!("10.63.{}.{}", t / 250 % 250, t % 250 + 1),
                _ => format!("10.{net}.{}.{}", i / 250, i % 250 + 1),
            };
            let _ = writeln!(
                s,
                "        - cidrs: [\"{ip}/32\"]\n          ports: [\"80\"]"
            );
        }
        let _ = write!(
            s,
            "    - name: locked\n      egress: []\n  bindings:\n    - tier: t0\n      match:\n        cgroupPath: \"{p}/enf/t0/**\"\n    - tier: locked\n      match:\n        cgroupPath: \"{p}/enf/locked/**\"\n",
            p = self.cg_path
        );
        s
    }

    pub(crate) fn write_policy(&self, yaml: &str) -> Result<()> {
        let path = self.policy_path();
        let tmp = path.with_file_name(".policy.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Writes the policy and waits until the agent has applied it.
    pub(crate) fn apply_policy(&self, yaml: &str) -> Result<()> {
        let port = self.agent.as_ref().context("no agent")?.port;
        // Re-writing the policy in force is answered "unchanged", not "applied".
        let done = |port| {
            metric(port, "tiergate_policy_reloads_total{result=\"applied\"}")
                + metric(port, "tiergate_policy_reloads_total{result=\"unchanged\"}")
        };
        let rejected = |port| metric(port, "tiergate_policy_reloads_total{result=\"rejected\"}");
        let (before, rejected_before) = (done(port), rejected(port));
        self.write_policy(yaml)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while done(port) <= before {
            if rejected(port) > rejected_before {
                bail!("the agent rejected the benchmark policy");
            }
            if Instant::now() > deadline {
                bail!("agent did not apply the policy within 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}
