//! Where each agent's sequence stood when the collector last stopped, read
//! back from the file sinks' own records at start, so that records an agent
//! resends after a collector restart (written, but the acknowledgement never
//! reached the agent) are recognised as duplicates and not written again.
//!
//! The files are the state: whatever reached a file sink's file is exactly
//! what counts as written, with no second file that could disagree with it.
//! With no file sink (stdout, syslog only) a restarted collector knows no
//! agent, and a batch written but not acknowledged before the restart is
//! written again (at least once, as before).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// `PATH.1` then `PATH`: a rotation can happen just after the last batch,
/// leaving an agent's latest records in the rotated file.
fn files_of(path: &Path) -> [PathBuf; 2] {
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    [PathBuf::from(rotated), path.to_owned()]
}

/// The highest seq per agent id in a file sink's current and last rotated
/// file. Unreadable files count as empty (the sink reports its own errors);
/// lines that are not tiergate records (gap records, torn tails) are skipped.
pub fn last_seqs(path: &Path) -> HashMap<String, u64> {
    let mut last = HashMap::new();
    for file in files_of(path) {
        let Ok(f) = std::fs::File::open(&file) else {
            continue;
        };
        for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
            if let Some((agent, seq)) = agent_seq(&line) {
                let e = last.entry(agent).or_insert(0);
                *e = (*e).max(seq);
            }
        }
    }
    last
}

/// Per agent, the seq every file holds: the least of the files' last seqs,
/// and no entry for an agent some file does not know.
pub fn common(files: Vec<HashMap<String, u64>>) -> HashMap<String, u64> {
    let mut files = files.into_iter();
    let Some(mut all) = files.next() else {
        return HashMap::new();
    };
    for f in files {
        all = all
            .into_iter()
            .filter_map(|(agent, seq)| Some((agent.clone(), seq.min(*f.get(&agent)?))))
            .collect();
    }
    all
}

/// `(agent id, seq)` of one record line, from `metadata.uid`
/// (`<agent id>-<seq>`) and `unmapped.tiergate.seq`, which must agree.
fn agent_seq(line: &[u8]) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct Line {
        metadata: Meta,
        unmapped: Unmapped,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        uid: String,
    }
    #[derive(serde::Deserialize)]
    struct Unmapped {
        tiergate: Tg,
    }
    #[derive(serde::Deserialize)]
    struct Tg {
        seq: Option<u64>,
    }
    let l: Line = serde_json::from_slice(line).ok()?;
    let seq = l.unmapped.tiergate.seq?;
    let (agent, tail) = l.metadata.uid.rsplit_once('-')?;
    (tail.parse::<u64>().ok()? == seq && !agent.is_empty()).then(|| (agent.to_string(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(agent: &str, seq: u64) -> String {
        format!(
            r#"{{"metadata":{{"uid":"{agent}-{seq}"}},"unmapped":{{"tiergate":{{"kind":"connection","seq":{seq}}}}}}}"#
        )
    }

    #[test]
    fn reads_the_last_seq_of_each_agent_across_rotation() {
        let dir = std::env::temp_dir().join(format!("tg-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        std::fs::write(
            dir.join("events.jsonl.1"),
            [rec("a1b2", 7), rec("c3d4", 40), rec("a1b2", 8)].join("\n") + "\n",
        )
        .unwrap();
        let gap = r#"{"metadata":{"uid":"gap-a1b2-9-9"},"unmapped":{"tiergate":{"kind":"gap","from_seq":9}}}"#;
        let torn = &rec("c3d4", 99)[..30];
        std::fs::write(&path, [rec("a1b2", 10), gap.into(), torn.into()].join("\n")).unwrap();
        let last = last_seqs(&path);
        assert_eq!(last.get("a1b2"), Some(&10));
        assert_eq!(last.get("c3d4"), Some(&40), "a torn line is not a record");
        assert_eq!(last.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uid_and_seq_must_agree() {
        let odd = r#"{"metadata":{"uid":"a-5"},"unmapped":{"tiergate":{"seq":6}}}"#;
        assert_eq!(agent_seq(odd.as_bytes()), None);
        assert_eq!(
            agent_seq(rec("ab-cd", 3).as_bytes()),
            Some(("ab-cd".into(), 3))
        );
        assert_eq!(agent_seq(b"not json"), None);
    }

    #[test]
    fn several_file_sinks_resume_from_what_all_of_them_hold() {
        let a = HashMap::from([("x".to_string(), 10), ("y".to_string(), 4)]);
        let b = HashMap::from([("x".to_string(), 8)]);
        assert_eq!(
            common(vec![a.clone(), b]),
            HashMap::from([("x".to_string(), 8)])
        );
        assert_eq!(common(vec![a.clone()]), a);
        assert!(common(vec![]).is_empty());
    }

    #[test]
    fn missing_files_mean_no_agents() {
        assert!(last_seqs(Path::new("/nonexistent/tiergate/events.jsonl")).is_empty());
    }
}
