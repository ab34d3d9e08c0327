//! Closing a workload's sockets when an elevation ends (issue 14), on the
//! real kernel: `tiergate::elevation::sockets` against connections that
//! `tg-probe hold-conns` keeps open from two cgroups in the test namespace.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use tiergate::dns::netns::Netns;
use tiergate::elevation::sockets::{self, Proto, WorkloadSocket};
use tiergate_tests::Fixture;
use tiergate_tests::held::{Client, start_echo_on};

/// What each client holds: the port 9000 ones are to be closed.
const TARGETS: &[&str] = &[
    "10.20.0.1:9000",
    "10.20.0.1:9001",
    "[fd00:20::1]:9000",
    "[fd00:20::1]:9001",
    // An IPv6 socket to an IPv4 peer: listed with v4-mapped addresses.
    "[::ffff:10.20.0.1]:9000",
    "udp:10.20.0.1:9000",
    "udp:[fd00:20::1]:9001",
];
/// `check` results once A's port 9000 sockets are closed.
const A_AFTER: &str = "ECONNABORTED ok ECONNABORTED ok ECONNABORTED ECONNABORTED ok";
const ALL_OK: &str = "ok ok ok ok ok ok ok";

/// Echo servers on the namespace's 10.20.0.1 and fd00:20::1, ports 9000 and
/// 9001, that keep each connection open (the fixture's servers answer once).
fn start_echo(netns: &str) {
    start_echo_on(
        netns,
        "10.20.0.1:9000 10.20.0.1:9001 [fd00:20::1]:9000 [fd00:20::1]:9001",
    );
}

fn cgroup_id(dir: &Path) -> u64 {
    std::fs::metadata(dir).expect("cgroup dir").ino()
}

/// `sockets::list` run in the test namespace.
fn list_in(netns: &str, cgroups: HashSet<u64>) -> Vec<WorkloadSocket> {
    Netns::open(&format!("/run/netns/{netns}"))
        .expect("open test netns")
        .run(move || sockets::list(&cgroups))
        .expect("list sockets")
}

fn dsts(socks: &[WorkloadSocket]) -> Vec<String> {
    let mut v: Vec<String> = socks
        .iter()
        .map(|s| format!("{}:{}", s.protocol, s.dst))
        .collect();
    v.sort();
    v
}

#[test]
fn close_where_aborts_only_the_rejected_sockets_of_the_given_cgroups() {
    let f = Fixture::new("sockclose");
    start_echo(&f.netns);
    let (cg_a, cg_b) = (f.cgroup("t0/a"), f.cgroup("t0/b"));
    let (id_a, id_b) = (cgroup_id(&cg_a), cgroup_id(&cg_b));
    let mut a = Client::start_with(&f, &cg_a, TARGETS);
    let mut b = Client::start_with(&f, &cg_b, TARGETS);
    assert_eq!(a.check(), ALL_OK);
    assert_eq!(b.check(), ALL_OK);

    // Listing: each cgroup's sockets, by its id, with their real tuples.
    let listed = list_in(&f.netns, HashSet::from([id_a]));
    assert!(listed.iter().all(|s| s.cgroup_id == id_a), "{listed:#?}");
    assert_eq!(
        dsts(&listed),
        [
            "tcp:10.20.0.1:9000",
            "tcp:10.20.0.1:9001",
            "tcp:[::ffff:10.20.0.1]:9000",
            "tcp:[fd00:20::1]:9000",
            "tcp:[fd00:20::1]:9001",
            "udp:10.20.0.1:9000",
            "udp:[fd00:20::1]:9001",
        ],
        "A's sockets: {listed:#?}"
    );
    for s in &listed {
        assert_ne!(s.inode, 0, "a held socket has an inode: {s}");
        assert_ne!(s.cookie, 0, "{s}");
        if s.protocol == Proto::Tcp {
            assert_eq!(s.state, 1, "ESTABLISHED: {s}");
        }
    }
    let mapped = listed
        .iter()
        .find(|s| s.dst.to_string() == "[::ffff:10.20.0.1]:9000")
        .expect("the v4-mapped socket");
    assert!(mapped.src.is_ipv6(), "{mapped}");
    let both = list_in(&f.netns, HashSet::from([id_a, id_b]));
    assert_eq!(both.len(), 2 * TARGETS.len(), "{both:#?}");
    assert!(list_in(&f.netns, HashSet::new()).is_empty());

    // Close A's sockets to port 9000; A's others and all of B's stay.
    let closed = sockets::close_where(a.pid(), &HashSet::from([id_a]), |s| s.dst.port() != 9000)
        .expect("close_where");
    assert_eq!(
        dsts(&closed),
        [
            "tcp:10.20.0.1:9000",
            "tcp:[::ffff:10.20.0.1]:9000",
            "tcp:[fd00:20::1]:9000",
            "udp:10.20.0.1:9000",
        ],
        "closed: {closed:#?}"
    );
    assert!(closed.iter().all(|s| s.cgroup_id == id_a));
    assert_eq!(a.check(), A_AFTER, "A after close_where");
    assert_eq!(b.check(), ALL_OK, "B is another cgroup");

    // Nothing is left to close; a socket already closed is reported gone.
    let left = list_in(&f.netns, HashSet::from([id_a]));
    assert_eq!(
        dsts(&left),
        [
            "tcp:10.20.0.1:9001",
            "tcp:[fd00:20::1]:9001",
            "udp:[fd00:20::1]:9001"
        ],
    );
    let again = sockets::close_where(a.pid(), &HashSet::from([id_a]), |s| s.dst.port() != 9000)
        .expect("close_where again");
    assert!(again.is_empty(), "{again:#?}");
    let gone = closed[0].clone();
    let r = Netns::open(&format!("/run/netns/{}", f.netns))
        .expect("netns")
        .run(move || sockets::destroy(&gone))
        .expect("destroy a closed socket");
    assert!(!r, "a socket already closed is Ok(false)");
    // The error was reported once; the sockets stay closed.
    assert_eq!(
        a.check(),
        "EPIPE ok EPIPE ok EPIPE ENOTCONN ok",
        "A's closed sockets stay closed"
    );
}

#[test]
fn close_where_names_a_process_that_does_not_exist() {
    let e = sockets::close_where(u32::MAX - 1, &HashSet::from([1]), |_| false).unwrap_err();
    assert!(
        e.to_string()
            .contains("network namespace of process 4294967294"),
        "{e}"
    );
}

/// Set in the environment of the process that runs [`close_where_as_child`].
const CHILD_ENV: &str = "TG_SOCKCLOSE_CHILD";

/// Not a test of its own: the body of the process that
/// `destroy_needs_cap_net_admin_not_cap_sys_admin` starts without
/// CAP_NET_ADMIN (it passes doing nothing in a normal run).
#[test]
fn close_where_as_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (pid, cg) = arg.split_once(' ').expect("PID CGROUP_ID");
    let r = sockets::close_where(
        pid.parse().expect("pid"),
        &HashSet::from([cg.parse().expect("cgroup id")]),
        |_| false,
    );
    match r {
        Ok(closed) => println!("result: closed {}", closed.len()),
        Err(e) => println!("result: error {e}"),
    }
}

#[test]
fn destroy_needs_cap_net_admin_not_cap_sys_admin() {
    let f = Fixture::new("sockcap");
    start_echo_on(&f.netns, "10.20.0.1:9000");
    let cg = f.cgroup("t0/a");
    let mut a = Client::start_with(&f, &cg, &["10.20.0.1:9000"]);
    // Root less CAP_NET_ADMIN: CAP_SYS_ADMIN and CAP_SYS_PTRACE (the agent's
    // documented set) are kept, so the setns and the dump succeed.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
        .arg(std::env::current_exe().expect("test exe"))
        .args([
            "--exact",
            "close_where_as_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{} {}", a.pid(), cgroup_id(&cg)))
        .output()
        .expect("run setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("result: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "no result from the child: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        line.contains("refused (EPERM)") && line.contains("needs CAP_NET_ADMIN"),
        "{line}"
    );
    assert_eq!(a.check(), "ok", "nothing was closed");
}
