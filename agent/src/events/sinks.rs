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
}

/// A JSON-lines file (appended) or stdout.
pub struct LineSink {
    name: String,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    /// Records not written since the last report (disk full, closed pipe).
    lost: u64,
    /// Their seqs: the current batch's and earlier failures'.
    lost_seqs: Vec<(u64, u64)>,
    batch_seqs: Option<(u64, u64)>,
    /// Records written into the buffer since the last successful flush: lost
    /// too if that flush fails.
    unflushed: u64,
    last_error: Option<String>,
}

impl LineSink {
    /// `-` is stdout; anything else a file opened for appending.
    pub fn open(target: &str) -> std::io::Result<Self> {
        let w: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(target)?;
            end_with_newline(&mut f)?;
            Box::new(f)
        };
        Ok(Self {
            name: target.to_string(),
            out: std::io::BufWriter::with_capacity(256 * 1024, w),
            lost: 0,
            lost_seqs: Vec::new(),
            batch_seqs: None,
            unflushed: 0,
            last_error: None,
        })
    }

    fn failed(&mut self, e: std::io::Error, n: u64) {
        self.lost += n;
        let msg = e.to_string();
        // One log line per distinct error, not one per record.
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(sink = %self.name, error = %msg, "cannot write events");
            self.last_error = Some(msg);
        }
    }
}

impl Sink for LineSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, meta: &RecordMeta<'_>, line: &[u8]) {
        match self
            .out
            .write_all(line)
            .and_then(|_| self.out.write_all(b"\n"))
        {
            Ok(()) => {
                self.unflushed += 1;
                let (first, _) = self.batch_seqs.unwrap_or((meta.seq, meta.seq));
                self.batch_seqs = Some((first, meta.seq));
            }
            Err(e) => {
                self.lost_seqs.push((meta.seq, meta.seq));
                self.failed(e, 1);
            }
        }
    }

    fn flush(&mut self) {
        match self.out.flush() {
            Ok(()) => {
                self.unflushed = 0;
                self.batch_seqs = None;
                self.last_error = None;
            }
            Err(e) => {
                let n = std::mem::take(&mut self.unflushed);
                self.lost_seqs.extend(self.batch_seqs.take());
                // Drop what could not be written so the next batch starts clean.
                let _ = std::mem::replace(
                    &mut self.out,
                    std::io::BufWriter::with_capacity(256 * 1024, Box::new(std::io::sink())),
                );
                self.reopen();
                self.failed(e, n);
            }
        }
    }

    fn take_losses(&mut self) -> Vec<SinkLoss> {
        if self.lost == 0 {
            return Vec::new();
        }
        let count = std::mem::take(&mut self.lost);
        vec![SinkLoss {
            stage: format!("events-file:{}", self.name),
            count,
            what: format!(
                "{} could not be written ({})",
                self.name,
                self.last_error.clone().unwrap_or_default()
            ),
            seq_ranges: std::mem::take(&mut self.lost_seqs),
        }]
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

impl LineSink {
    /// After a failed flush: open the target again so later records can land
    /// (e.g. once disk space is back).
    fn reopen(&mut self) {
        if let Ok(fresh) = LineSink::open(&self.name) {
            self.out = fresh.out;
        }
    }
}
