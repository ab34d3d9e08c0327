//! The `stdout` sink: JSON lines to a stream, flushed after each batch.

use std::io::Write;

use super::{Record, Sink, SinkError};

/// JSON lines to a stream (standard output), flushed after each batch.
pub(super) struct WriterSink<W: Write + Send> {
    pub(super) name: String,
    pub(super) out: W,
    pub(super) buf: Vec<u8>,
}

impl<W: Write + Send> Sink for WriterSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        self.buf.clear();
        for record in records {
            self.buf.extend_from_slice(record.json);
            self.buf.push(b'\n');
        }
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(|e| SinkError::io(&self.name, "cannot write", e))
    }
}
