//! The kubelet cgroup-path parser (`identity/kubepods.rs`): never panics;
//! whatever it does not call "not a pod" is under kubepods (the fail-closed
//! check); a pod's uid and container id are in their normalised forms; its
//! pod path parses as the same pod; and whatever lies below a container
//! belongs to that container.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::identity::kubepods::{ParseOutcome, PodCgroup, is_under_kubepods, parse};

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn uid_form(uid: &str) -> bool {
    let dashed = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        });
    dashed || (uid.len() == 32 && is_lower_hex(uid))
}

fn check_pod(path: &str, p: &PodCgroup) {
    assert!(uid_form(&p.pod_uid), "{path:?}: uid {:?}", p.pod_uid);
    if let Some(id) = &p.container_id {
        assert!(
            !id.is_empty() && is_lower_hex(id),
            "{path:?}: container id {id:?}"
        );
    }
    assert_eq!(
        p.runtime.is_some() || p.container_id.is_none(),
        true,
        "{path:?}: {p:?}"
    );
    assert!(p.pod_path.starts_with('/'), "{path:?}: {p:?}");
    assert!(!p.pod_path.contains("//") && (p.pod_path == "/" || !p.pod_path.ends_with('/')));
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let outcome = parse(path);
    match &outcome {
        ParseOutcome::NotPod => return,
        ParseOutcome::Malformed(reason) => {
            assert!(!reason.is_empty());
            assert!(
                is_under_kubepods(path),
                "{path:?}: malformed but not under kubepods"
            );
            return;
        }
        ParseOutcome::Pod(p) => {
            assert!(
                is_under_kubepods(path),
                "{path:?}: a pod not under kubepods"
            );
            check_pod(path, p);
        }
    }
    let ParseOutcome::Pod(p) = outcome else {
        unreachable!()
    };
    // The pod's own cgroup is that pod, without a container.
    match parse(&p.pod_path) {
        ParseOutcome::Pod(q) => {
            assert_eq!(
                (&q.pod_uid, q.qos),
                (&p.pod_uid, p.qos),
                "{path:?} vs {:?}",
                p.pod_path
            );
            assert_eq!(q.container_id, None, "{:?}", p.pod_path);
            assert_eq!(q.pod_path, p.pod_path);
        }
        other => panic!("{path:?} is pod {p:?}, but its pod path parses as {other:?}"),
    }
    // Below a container: the same container.
    if p.runtime.is_some() {
        let trimmed = path.trim_end_matches(['\n', '\r']);
        let deeper = format!("{trimmed}/init.scope");
        assert_eq!(parse(&deeper), ParseOutcome::Pod(p.clone()), "{deeper:?}");
    }
});
