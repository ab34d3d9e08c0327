//! The policy file parser and validator (`tiergate policy check`, the
//! agent's `--policy`): never panics, and every error it reports has a line
//! and column inside the file (column at most one past the line's last
//! character: the end of a line or of the file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::policy::parse_str;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str(src, "fuzz.yaml") {
        Ok(policy) => {
            assert!(policy.version.starts_with("sha256:"), "{}", policy.version);
            assert!(policy.default_tier < policy.tiers.len());
            // A valid policy compiles or says why not; it never panics.
            let _ = policy.compile();
        }
        Err(errors) => {
            let lines: Vec<&str> = src.split('\n').collect();
            assert!(!errors.errors().is_empty(), "an empty error list");
            for e in errors.errors() {
                assert_eq!(e.file, "fuzz.yaml");
                assert!(
                    e.line >= 1 && e.line <= lines.len(),
                    "line outside the file ({} lines): {e}",
                    lines.len()
                );
                let chars = lines[e.line - 1].trim_end_matches('\r').chars().count();
                assert!(
                    e.column >= 1 && e.column <= chars + 1,
                    "column outside line {} ({chars} characters): {e}",
                    e.line
                );
                assert!(!e.message.is_empty(), "an empty message at {e}");
            }
        }
    }
});
