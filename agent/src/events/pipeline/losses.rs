//! Loss records: every record the kernel, the queues, the sinks or a killed
//! agent gave up, counted once and reported as a record of its own.

use std::sync::atomic::Ordering;
use std::time::Instant;

use agent_common::counter;

use super::{AgentRecord, Writer};
use crate::metrics::VerdictLabels;

impl Writer {
    /// Turns new losses into loss records and metrics.
    pub(super) fn report_losses(&mut self) {
        for (slot, label) in [
            (counter::ALLOW, "allow"),
            (counter::DENY, "deny"),
            (counter::AUDIT_DENY, "audit-deny"),
            (counter::SOCKET_DENY, "socket-deny"),
            (counter::INHERITED, "inherited"),
        ] {
            self.io
                .metrics
                .kernel_verdicts
                .get_or_create(&VerdictLabels {
                    verdict: label.into(),
                })
                .set(self.io.kernel.total(slot));
        }
        for (slot, stage, what) in [
            (
                counter::RINGBUF_LOST,
                "kernel-ringbuf",
                "the kernel ring buffer was full",
            ),
            (
                counter::ALLOW_SHED,
                "kernel-shed-allowed",
                "allowed-connection events were shed by the kernel to keep room for denies",
            ),
        ] {
            let total = self.io.kernel.total(slot);
            let reported = self.io.kernel.reported.get(&slot, 0).unwrap_or(0);
            if total > reported {
                let n = total - reported;
                self.loss_record(stage, (n, n), what, None);
                if let Err(e) = self.io.kernel.reported.set(slot, total, 0) {
                    tracing::error!(error = %e, "cannot record reported loss count");
                }
            }
        }
        let losses = self.io.losses.clone();
        if let Some(lost) = self
            .acct
            .lost_by_earlier_agents(&mut self.io.kernel, &|| losses.taken.load(Ordering::SeqCst))
        {
            let slot = agent_common::reported::RESTART_LOST;
            let reported = self.io.kernel.reported.get(&slot, 0).unwrap_or(0);
            if lost > reported {
                let n = lost - reported;
                self.loss_record(
                    "agent-restart",
                    (n, n),
                    "a previous agent process took these records from the kernel and was killed \
                     before writing them",
                    None,
                );
                if let Err(e) = self.io.kernel.reported.set(slot, lost, 0) {
                    tracing::error!(error = %e, "cannot record reported loss count");
                }
            }
        }
        let mut sink_losses = Vec::new();
        for (i, sink) in self.io.sinks.iter_mut().enumerate() {
            sink_losses.extend(sink.take_losses().into_iter().map(|l| (i, l)));
        }
        for (i, loss) in sink_losses {
            let seq = self.loss_record(
                &loss.stage,
                (loss.count, loss.first_reported),
                &loss.what,
                Some(&loss.seq_ranges),
            );
            // A sink that lost this record too names its records again.
            self.io.sinks[i].loss_carried(seq, &loss);
        }
        for (counter, stage, what) in [
            (
                &losses.priority,
                "agent-queue-priority",
                "the agent's priority queue was full",
            ),
            (&losses.normal, "agent-queue", "the agent's queue was full"),
            (
                &losses.undecodable,
                "undecodable",
                "records in the kernel ring could not be decoded",
            ),
        ]
        .into_iter()
        .chain(self.dns.as_ref().map(|d| {
            (
                &*d.lost,
                "dns-queue",
                "the DNS proxy's record queue was full",
            )
        }))
        .chain(self.dns.as_ref().map(|d| {
            (
                &*d.metadata_lost,
                "metadata-queue",
                "the metadata proxy's record queue was full",
            )
        }))
        .map(|(c, s, w)| (c.swap(0, Ordering::Relaxed), s, w))
        .collect::<Vec<_>>()
        {
            if counter > 0 {
                if !stage.starts_with("dns") && !stage.starts_with("metadata") {
                    // Kernel records, reported lost: handled.
                    self.acct.handled += counter;
                }
                self.loss_record(stage, (counter, counter), what, None);
            }
        }
    }

    /// Reports `count` lost records, of which `first_reported` were named
    /// in no loss record before (the loss metric counts those); returns the
    /// loss record's seq. `seqs` are their numbers when they had any (lost
    /// after the writer numbered them); records lost before (in the kernel or
    /// the queues) never had one, and fell between the previous record and
    /// this loss record.
    pub(super) fn loss_record(
        &mut self,
        stage: &str,
        (count, first_reported): (u64, u64),
        what: &str,
        seqs: Option<&[(u64, u64)]>,
    ) -> u64 {
        self.io.metrics.lost(stage, first_reported);
        let after = self.seq;
        if first_reported > 0
            && let Some(n) = self.loss_log.note(stage, first_reported, Instant::now())
        {
            tracing::warn!(
                stage,
                count = n,
                "events lost (at most one line per stage every 10 s; each loss is also a loss record)"
            );
        }
        let seq_range = match seqs {
            Some(runs) => serde_json::json!({"seqs": runs}),
            None => serde_json::json!({"after_seq": after, "before_seq": after + 1}),
        };
        self.agent_record(AgentRecord {
            message: format!("{count} events lost: {what}"),
            failure: true,
            detail: serde_json::json!({
                "kind": "loss",
                "stage": stage,
                "count": count,
                "seq_range": seq_range,
            }),
        })
    }
}
