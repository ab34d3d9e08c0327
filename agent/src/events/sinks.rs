//! Where the writer's rendered records go: the `--events` JSON-lines file
//! (or stdout) and, with `--collector`, the disk spool the exporter sends
//! from. A sink never blocks the writer and never fails it: what it cannot
//! take it counts, and the writer turns the count into a loss record.

use std::io::Write;

/// What the writer knows about a rendered record besides its JSON.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    pub seq: u64,
    pub uid: &'a str,
    /// `unmapped.tiergate.kind`.
    pub kind: &'a str,
    /// Deny, audit-deny, metadata access, socket refusal, loss or policy
    /// record: kept before allowed connections when space runs out.
    pub priority: bool,
    pub time_ms: u64,
}

/// Records a sink could not take, to be reported as one loss record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkLoss {
    pub stage: String,
    pub count: u64,
    /// Of `count`, the records not named in an earlier loss record (the rest
    /// were named in one this sink could not take either): what the loss
    /// metric adds, so it counts every record once.
    pub first_reported: u64,
    pub what: String,
    /// Sequence numbers of the lost records, as inclusive runs.
    pub seq_ranges: Vec<(u64, u64)>,
}

/// A destination of rendered records.
pub trait Sink: Send {
    fn name(&self) -> &str;
    /// Takes one record (JSON without newline).
    fn write(&mut self, meta: &RecordMeta<'_>, line: &[u8]);
    /// Makes what was written durable (end of a writer batch).
    fn flush(&mut self);
    /// Records lost since the last call.
    fn take_losses(&mut self) -> Vec<SinkLoss> {
        Vec::new()
    }
    /// The loss record `seq` (already handed to `write`) reports `loss`,
    /// one of this sink's `take_losses`. A sink that loses that record too
    /// names `loss`'s records again in a later one: otherwise nothing it
    /// delivers would name them.
    fn loss_carried(&mut self, _seq: u64, _loss: &SinkLoss) {}
}

/// Adds `seq` to inclusive runs kept in increasing order.
pub fn push_run(runs: &mut Vec<(u64, u64)>, seq: u64) {
    match runs.last_mut() {
        Some((_, end)) if *end + 1 == seq => *end = seq,
        Some((_, end)) if *end >= seq => add_runs(runs, &[(seq, seq)]),
        _ => runs.push((seq, seq)),
    }
}

/// Merges `more` into `runs` (both inclusive runs): sorted, overlaps and
/// neighbours joined.
pub fn add_runs(runs: &mut Vec<(u64, u64)>, more: &[(u64, u64)]) {
    runs.extend_from_slice(more);
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for &(a, b) in runs.iter() {
        match out.last_mut() {
            Some((_, end)) if a <= end.saturating_add(1) => *end = (*end).max(b),
            _ => out.push((a, b)),
        }
    }
    *runs = out;
}

/// Whether `seq` is in one of `runs`.
pub fn in_runs(runs: &[(u64, u64)], seq: u64) -> bool {
    runs.iter().rev().any(|&(a, b)| a <= seq && seq <= b)
}

/// How many seqs `runs` hold.
pub fn runs_len(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|(a, b)| b - a + 1).sum()
}

/// Lines are written once the buffer holds this much, and at every flush.
const WRITE_AT: usize = 256 * 1024;

enum Target {
    Stdout,
    File(std::fs::File),
}

/// A JSON-lines file (appended) or stdout.
///
/// Lines are buffered and written whole; a write that fails (disk full,
/// read-only file system, closed pipe) is cut back off the file, so it
/// never holds a torn line, and every record of the failed write is lost,
/// exactly, and reported. The next batch tries again; a file that failed is
/// opened again first (a file system mounted anew is picked up).
pub struct LineSink {
    name: String,
    target: Target,
    /// Lines not written yet, and their seqs.
    buf: Vec<u8>,
    buf_seqs: Vec<(u64, u64)>,
    /// This sink's own losses reported by loss records still in `buf`.
    carried: Vec<SinkLoss>,
    /// Records lost since the last report, their seqs, and how many of them
    /// an earlier (itself lost) loss record named already.
    lost: u64,
    lost_seqs: Vec<(u64, u64)>,
    renamed: u64,
    /// A failed write could not be cut off: cut to this length before the
    /// next write.
    torn: Option<u64>,
    last_error: Option<String>,
}

impl LineSink {
    /// `-` is stdout; anything else a file opened for appending.
    pub fn open(target: &str) -> std::io::Result<Self> {
        let target_ = if target == "-" {
            Target::Stdout
        } else {
            open_file(target)?
        };
        Ok(Self {
            name: target.to_string(),
            target: target_,
            buf: Vec::with_capacity(WRITE_AT + 4096),
            buf_seqs: Vec::new(),
            carried: Vec::new(),
            lost: 0,
            lost_seqs: Vec::new(),
            renamed: 0,
            torn: None,
            last_error: None,
        })
    }

    /// Writes the buffered lines; on failure they are lost and counted.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let result = match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf).and_then(|()| out.flush())
            }
            Target::File(file) => {
                let cut = match self.torn {
                    Some(at) => file.set_len(at).map(|()| self.torn = None),
                    None => Ok(()),
                };
                cut.and_then(|()| file.metadata()).and_then(|m| {
                    let before = m.len();
                    file.write_all(&self.buf).inspect_err(|_| {
                        // Part of the buffer may have landed: cut it off.
                        if file.set_len(before).is_err() {
                            self.torn = Some(before);
                        }
                    })
                })
            }
        };
        self.buf.clear();
        let records = std::mem::take(&mut self.buf_seqs);
        let carried = std::mem::take(&mut self.carried);
        match result {
            Ok(()) => {
                if let Some(previous) = self.last_error.take() {
                    tracing::info!(sink = %self.name, previous_error = %previous, "writing events again");
                }
            }
            Err(e) => {
                self.lost += runs_len(&records);
                add_runs(&mut self.lost_seqs, &records);
                for loss in &carried {
                    self.name_again(loss);
                }
                let msg = e.to_string();
                // One log line per distinct error, not one per batch.
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(sink = %self.name, error = %msg,
                        "cannot write events; they are counted as lost and reported until writes succeed");
                    self.last_error = Some(msg);
                }
                if matches!(self.target, Target::File(_))
                    && self.torn.is_none()
                    && let Ok(fresh) = open_file(&self.name)
                {
                    self.target = fresh;
                }
            }
        }
    }

    /// `loss` was reported by a record that was lost too: its records go
    /// into the next report again.
    fn name_again(&mut self, loss: &SinkLoss) {
        self.lost += loss.count;
        self.renamed += loss.count;
        add_runs(&mut self.lost_seqs, &loss.seq_ranges);
    }
}

fn open_file(path: &str) -> std::io::Result<Target> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    end_with_newline(&mut file)?;
    Ok(Target::File(file))
}

impl Sink for LineSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, meta: &RecordMeta<'_>, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        push_run(&mut self.buf_seqs, meta.seq);
        if self.buf.len() >= WRITE_AT {
            self.write_out();
        }
    }

    fn flush(&mut self) {
        self.write_out();
    }

    fn take_losses(&mut self) -> Vec<SinkLoss> {
        if self.lost == 0 {
            return Vec::new();
        }
        let count = std::mem::take(&mut self.lost);
        let renamed = std::mem::take(&mut self.renamed);
        vec![SinkLoss {
            stage: format!("events-file:{}", self.name),
            count,
            first_reported: count.saturating_sub(renamed),
            what: format!(
                "{} could not be written ({})",
                self.name,
                self.last_error.clone().unwrap_or_default()
            ),
            seq_ranges: std::mem::take(&mut self.lost_seqs),
        }]
    }

    fn loss_carried(&mut self, seq: u64, loss: &SinkLoss) {
        if in_runs(&self.buf_seqs, seq) {
            self.carried.push(loss.clone());
        } else if in_runs(&self.lost_seqs, seq) {
            self.name_again(loss);
        }
    }
}

/// A line cut short (the previous agent died mid-write) is ended, so the
/// next record starts on a line of its own.
fn end_with_newline(f: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
