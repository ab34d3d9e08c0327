//! The collector's `--sink` parser (`sinks/spec.rs` and each sink's option
//! syntax): never panics; every error starts with `--sink ` and never shows
//! a `user:password@` it was given; a sink it accepts names itself without
//! credentials. `file:` paths are moved into a scratch directory (the parser
//! opens the file), keeping the form that the parser judges (`//`, empty).
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tiergate_collector::sinks::parse_sink;

fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("tiergate-fuzz-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let mut spec = raw.trim().to_owned();
    let mut file = None;
    if let Some(rest) = spec.clone().strip_prefix("file:") {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let keep_slashes = path
            .strip_prefix("//")
            .map(|abs| (abs.starts_with('/'), abs));
        let opens = match keep_slashes {
            Some((true, _)) => true,
            Some((false, _)) => false, // refused before any open
            None => !path.is_empty(),
        };
        if opens {
            let f = scratch().join("events.jsonl");
            let _ = std::fs::remove_file(&f);
            let prefix = if keep_slashes.is_some() { "//" } else { "" };
            spec = format!("file:{prefix}{}", f.display());
            if let Some(q) = query {
                spec.push('?');
                spec.push_str(q);
            }
            file = Some(f);
        }
    }
    // A syslog CA/cert/key must be a file the fuzzer cannot turn into a
    // device that blocks or never ends.
    if spec.contains("/dev/") || spec.contains("/proc/") || spec.contains("/sys/") {
        return;
    }
    match parse_sink(&spec) {
        Ok(sink) => {
            let name = sink.name();
            assert!(!name.is_empty());
            if let Some(f) = &file {
                assert!(f.is_file(), "accepted {spec:?} but did not open it");
            }
            if let Some((_, rest)) = name.split_once("://") {
                assert!(!rest.contains('@'), "{name:?} shows credentials");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("--sink "), "{msg}");
            // Credentials in the authority: the spec is never shown as given.
            if let Some((scheme, rest)) = spec.split_once("://") {
                let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
                // (A user part that is already the redaction mark, `***`,
                // reads the same redacted: nothing is shown.)
                let shown = authority
                    .rfind('@')
                    .is_some_and(|at| at > 0 && &authority[..at] != "***");
                if shown && !scheme.starts_with("file") {
                    assert!(
                        !msg.contains(&spec),
                        "the error shows the credentials: {msg}"
                    );
                }
            }
        }
    }
    if let Some(f) = file {
        let _ = std::fs::remove_file(f);
    }
});
