//! The `file:` sink: JSON lines appended and fsynced, with size-based rotation.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::spec::parse_options;
use super::{Record, Sink, SinkError};

const FILE_OPTIONS: &[&str] = &["max-bytes", "keep"];
/// Default `max-bytes` of a file sink: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default `keep` of a file sink.
pub const DEFAULT_KEEP: u32 = 10;
const MAX_KEEP: u32 = 1000;

/// JSON lines in a file with size-based rotation.
pub(super) struct FileSink {
    pub(super) name: String,
    pub(super) path: PathBuf,
    dir: PathBuf,
    /// 0: no rotation.
    pub(super) max_bytes: u64,
    pub(super) keep: u32,
    pub(super) file: Option<File>,
    /// Length of the open file up to its last complete line.
    size: u64,
    buf: Vec<u8>,
    /// Successful file fsyncs, directory fsyncs and rotations, for tests.
    pub(super) syncs: u64,
    pub(super) dir_syncs: u64,
    pub(super) rotations: u64,
}

impl FileSink {
    pub(super) fn parse(spec: &str, rest: &str) -> Result<FileSink, SinkError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = match path.strip_prefix("//") {
            // file:///abs/path
            Some(abs) if abs.starts_with('/') => abs,
            Some(_) => {
                return Err(SinkError::config(
                    spec,
                    "a file:// URL needs an absolute path (file:///var/log/tiergate/events.jsonl \
                     or file:/var/log/tiergate/events.jsonl)",
                ));
            }
            None => path,
        };
        if path.is_empty() {
            return Err(SinkError::config(
                spec,
                "missing path (file:/var/log/tiergate/events.jsonl)",
            ));
        }
        let mut max_bytes = DEFAULT_MAX_BYTES;
        let mut keep = DEFAULT_KEEP;
        for (key, value) in parse_options(spec, query, FILE_OPTIONS)? {
            match key.as_str() {
                "max-bytes" => {
                    max_bytes = value.parse().map_err(|_| {
                        SinkError::config(
                            spec,
                            format!("max-bytes={value}: expected a number of bytes"),
                        )
                    })?;
                }
                _ => {
                    keep = value
                        .parse()
                        .ok()
                        .filter(|k| *k <= MAX_KEEP)
                        .ok_or_else(|| {
                            SinkError::config(
                                spec,
                                format!("keep={value}: expected a number from 0 to {MAX_KEEP}"),
                            )
                        })?;
                }
            }
        }
        FileSink::open(Path::new(path), max_bytes, keep)
    }

    fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<FileSink, SinkError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut sink = FileSink {
            name: format!("file:{}", path.display()),
            path: path.to_owned(),
            dir,
            max_bytes,
            keep,
            file: None,
            size: 0,
            buf: Vec::new(),
            syncs: 0,
            dir_syncs: 0,
            rotations: 0,
        };
        sink.ensure_open()?;
        Ok(sink)
    }

    fn io_error(&self, action: String, error: io::Error) -> SinkError {
        SinkError::io(&self.name, action, error)
    }

    /// Opens (creating) the file if it is not open. A last line left without
    /// its newline (a write cut short) is terminated so the next line starts
    /// on a line of its own.
    fn ensure_open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = &self.path;
        let cannot_open = |e| self.io_error(format!("cannot open {}", path.display()), e);
        let (mut file, created) = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(cannot_open)?;
                (file, true)
            }
            Err(e) => return Err(cannot_open(e)),
        };
        let mut size = file.metadata().map_err(cannot_open)?.len();
        if size > 0 {
            let mut last = [0u8];
            file.read_exact_at(&mut last, size - 1)
                .map_err(cannot_open)?;
            if last[0] != b'\n' {
                tracing::warn!(sink = %self.name, "the file's last line is incomplete (an earlier write was cut short); terminating it");
                file.write_all(b"\n").map_err(|e| {
                    self.io_error(format!("cannot write to {}", self.path.display()), e)
                })?;
                size += 1;
            }
        }
        if created {
            self.sync_dir()?;
        }
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), SinkError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                self.io_error(format!("cannot fsync directory {}", self.dir.display()), e)
            })?;
        self.dir_syncs += 1;
        Ok(())
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = OsString::from(self.path.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends `self.buf` (complete lines) to the open file and fsyncs it.
    fn commit(&mut self) -> Result<(), SinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().expect("commit: file is open");
        if let Err(e) = file.write_all(&self.buf) {
            return Err(self.io_error(format!("cannot write to {}", self.path.display()), e));
        }
        self.size += self.buf.len() as u64;
        self.buf.clear();
        // fdatasync: flushes the data and the file size (all an appended
        // line needs), not the timestamps.
        if let Err(e) = file.sync_data() {
            return Err(self.io_error(format!("cannot fsync {}", self.path.display()), e));
        }
        self.syncs += 1;
        Ok(())
    }

    /// Shifts the numbered files, moves the (synced) current file to `.1` and
    /// opens a new one; the directory fsync in `ensure_open` makes the
    /// renames durable with it.
    fn rotate(&mut self) -> Result<(), SinkError> {
        self.file = None;
        if self.keep == 0 {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.io_error(format!("cannot remove {}", self.path.display()), e));
                }
            }
        } else {
            for n in (1..=self.keep).rev() {
                let from = if n == 1 {
                    self.path.clone()
                } else {
                    self.numbered(n - 1)
                };
                let to = self.numbered(n);
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    // A gap in the numbered files (fewer than `keep` so far,
                    // or a rotation cut short).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(self.io_error(
                            format!(
                                "cannot rotate: cannot rename {} to {}",
                                from.display(),
                                to.display()
                            ),
                            e,
                        ));
                    }
                }
            }
        }
        self.rotations += 1;
        tracing::info!(sink = %self.name, keep = self.keep, "rotated");
        self.ensure_open()
    }

    fn write_records(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        self.ensure_open()?;
        self.buf.clear();
        for record in records {
            let line = record.json.len() as u64 + 1;
            let pending = self.size + self.buf.len() as u64;
            if self.max_bytes > 0 && pending > 0 && pending + line > self.max_bytes {
                self.commit()?;
                self.rotate()?;
            }
            self.buf.extend_from_slice(record.json);
            self.buf.push(b'\n');
        }
        self.commit()
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn written_file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        let result = self.write_records(records);
        if result.is_err() {
            self.buf.clear();
            // Cut a partial line off and reopen on the next batch (a fresh
            // descriptor also gets a fresh fsync error state).
            if let Some(file) = self.file.take()
                && let Err(e) = file.set_len(self.size)
            {
                tracing::warn!(sink = %self.name, error = %e, "cannot truncate a partly written line; it will be terminated on reopen");
            }
        }
        result
    }
}
