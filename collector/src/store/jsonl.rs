//! `tiergate advise` without a store: JSON-lines event files (a collector
//! file sink's output, the agent's `--events` file) read into one
//! [`Aggregate`].

use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use super::Aggregate;

/// What reading JSON-lines files found besides the aggregate.
#[derive(Debug, Default)]
pub struct JsonlReport {
    /// Lines read (blank lines not counted).
    pub lines: u64,
    /// Lines that are not records (not JSON, a record without a field it
    /// needs); skipped.
    pub malformed: u64,
    /// The first few of them, as `FILE:LINE: reason`.
    pub examples: Vec<String>,
    /// Records read before (same `metadata.uid`, e.g. one event in both
    /// the agent's `--events` file and a collector's file sink); skipped.
    pub duplicates: u64,
}

/// How many malformed lines are quoted in [`JsonlReport::examples`].
const EXAMPLES: usize = 5;

/// Why JSON-lines files could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read events file {path}: {error}")]
pub struct JsonlError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Reads JSON-lines event files (a collector file sink's output, the
/// agent's `--events` file: one OCSF JSON object per line) into one
/// aggregate. Malformed lines are skipped and counted; a file that cannot
/// be read is an error naming it.
pub fn from_jsonl<P: AsRef<Path>>(paths: &[P]) -> Result<(Aggregate, JsonlReport), JsonlError> {
    let mut agg = Aggregate::default();
    let mut report = JsonlReport::default();
    // Hashes of the uids seen: 8 bytes a record, not the uid itself.
    let mut uids: HashSet<u64> = HashSet::new();
    let hasher = std::collections::hash_map::RandomState::new();
    for path in paths {
        let path = path.as_ref();
        let err = |error| JsonlError {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(err)?;
        for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(err)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            report.lines += 1;
            if let Some(uid) = metadata_uid(&line)
                && !uids.insert(hasher.hash_one(&uid))
            {
                report.duplicates += 1;
                continue;
            }
            match agg.add_record(&line) {
                Ok(()) => {}
                Err(e) => {
                    report.malformed += 1;
                    if report.examples.len() < EXAMPLES {
                        report
                            .examples
                            .push(format!("{}:{}: {e}", path.display(), n + 1));
                    }
                }
            }
        }
    }
    Ok((agg, report))
}

/// `metadata.uid` of a record, when it has one.
fn metadata_uid(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Line {
        metadata: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        uid: Option<String>,
    }
    serde_json::from_slice::<Line>(line).ok()?.metadata?.uid
}

#[cfg(test)]
mod tests {
    use super::super::observe::tests::connection;
    use super::*;
    use serde_json::json;

    fn at(mut v: serde_json::Value, time: u64, uid: &str) -> serde_json::Value {
        v["time"] = json!(time);
        v["metadata"]["uid"] = json!(uid);
        v
    }

    #[test]
    fn jsonl_files_of_both_kinds_with_bad_lines_and_duplicates() {
        let dir = std::env::temp_dir().join(format!("tg-store-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("events.jsonl");
        let sink = dir.join("sink.jsonl");
        let one = at(connection("allow", "10.0.0.1", 443), 10, "u-1");
        let two = at(connection("deny", "10.0.0.2", 80), 11, "u-2");
        std::fs::write(
            &events,
            format!("{one}\n\nnot json at all\n{two}\n{{\"class_uid\":4001,\"unmapped\":{{\"tiergate\":{{\"kind\":\"connection\"}}}}}}\n"),
        )
        .unwrap();
        // The collector's sink holds the same two records (one uid each)
        // and a gap record of its own, last line unterminated.
        let gap = json!({"class_uid": 0, "time": 12, "metadata": {"uid": "gap-1"},
            "unmapped": {"tiergate": {"kind": "gap"}}});
        std::fs::write(&sink, format!("{one}\n{two}\n{gap}")).unwrap();
        let (agg, report) = from_jsonl(&[&events, &sink]).unwrap();
        assert_eq!(report.lines, 7);
        assert_eq!(report.malformed, 2);
        assert_eq!(report.duplicates, 2);
        assert!(
            report.examples[0].starts_with(&format!("{}:3: not a JSON object", events.display())),
            "{:?}",
            report.examples
        );
        assert!(
            report.examples[1].contains(":5: a connection record without time"),
            "{:?}",
            report.examples
        );
        let rows = agg.observations(0);
        assert_eq!(rows.iter().map(|r| r.seen.count).sum::<u64>(), 2);
        let missing = from_jsonl(&[dir.join("nope.jsonl")]).unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot read events file "),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
