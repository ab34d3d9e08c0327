//! The DNS section's load processes: glibc lookups (and connects) in a loop,
//! raw hickory-proto queries over UDP with a window in flight, and the test
//! DNS server. Each joins its cgroup and the bench's namespace first.
//!
//!   tiergate-bench gai   --cgroup DIR --netns NS --resolv FILE (--name N | --fresh FMT [--from I])
//!                        --port P (--secs S | --until-eof) [--connect] [--every-us U]
//!   tiergate-bench query --cgroup DIR --netns NS --to IP:PORT (--name N | --fresh FMT --from I)
//!                        --window W (--secs S | --count K) [--lat]
//!   tiergate-bench dns-serve --netns NS --addr IP:PORT --zone FILE
//!
//! Every lookup and query is counted by its outcome: none is dropped from
//! the figures silently (a query with no answer after `TIMEOUT` is a timeout).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tiergate_tests::{enter, use_resolv_conf};

use crate::client::{arg, attempt, mono_ns};

/// A query with no answer after this long is a timeout (the proxy answers
/// SERVFAIL after 1.5 s per resolver, so a timeout is a query it lost).
const TIMEOUT: Duration = Duration::from_secs(2);

fn join(args: &[String]) {
    enter(
        arg(args, "--cgroup").as_deref(),
        arg(args, "--netns").as_deref(),
    );
}

/// Set when stdin closes (the bench's way to stop an open-ended load).
pub(crate) fn stdin_closed() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while matches!(std::io::stdin().read(&mut b), Ok(n) if n > 0) {}
        f.store(true, Ordering::Relaxed);
    });
    flag
}

/// getaddrinfo(name, port) as applications call it (AF_UNSPEC, stream):
/// the first IPv4 address, or the getaddrinfo error code.
fn lookup(name: &CString, port: &CString) -> Result<SocketAddrV4, i32> {
    // SAFETY: getaddrinfo with valid C strings and hints; the list it
    // returns is read and then freed once.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_UNSPEC;
        hints.ai_socktype = libc::SOCK_STREAM;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        let rc = libc::getaddrinfo(name.as_ptr(), port.as_ptr(), &hints, &mut res);
        if rc != 0 {
            return Err(rc);
        }
        let mut found = Err(libc::EAI_NODATA);
        let mut p = res;
        while !p.is_null() {
            if (*p).ai_family == libc::AF_INET {
                let sa = &*((*p).ai_addr as *const libc::sockaddr_in);
                let ip = u32::from_be(sa.sin_addr.s_addr);
                found = Ok(SocketAddrV4::new(ip.into(), u16::from_be(sa.sin_port)));
                break;
            }
            p = (*p).ai_next;
        }
        libc::freeaddrinfo(res);
        found
    }
}

/// A failed lookup slower than this waited for the resolver timeout (1 s)
/// rather than failing at once.
const SLOW_NS: u64 = 500_000_000;

/// Lookups (and TCP connects to the address found) in a loop; prints one
/// JSON line. `--fresh FMT` looks up a name never asked before each time
/// (`{}` in FMT: `--from`, then counting up). `--every-us` paces them;
/// outages (runs of failed lookups) are listed as [first failure ns, first
/// success after ns, failures, slow failures], successful lookups slower
/// than `SLOW_NS` as [start, end]. With `--connect`, a connect refused by
/// the host (EPERM: the address did not open) is counted apart from one the
/// destination refused (ECONNREFUSED: the hook let it through, nothing
/// listens there).
pub fn gai(args: &[String]) {
    join(args);
    use_resolv_conf(&arg(args, "--resolv").expect("--resolv"));
    let fixed = arg(args, "--name").map(|n| CString::new(n).expect("name"));
    let fresh = arg(args, "--fresh");
    let from: u64 = arg(args, "--from").map_or(0, |s| s.parse().expect("from"));
    let port = CString::new(arg(args, "--port").unwrap_or("80".into())).expect("port");
    let connect = args.iter().any(|a| a == "--connect");
    let every = arg(args, "--every-us").map(|u| Duration::from_micros(u.parse().expect("us")));
    let secs: Option<f64> = arg(args, "--secs").map(|s| s.parse().expect("secs"));
    let stop = args.iter().any(|a| a == "--until-eof").then(stdin_closed);
    let (mut n, mut ok, mut resolve_fail, mut connect_fail) = (0u64, 0u64, 0u64, 0u64);
    let (mut connect_eperm, mut connect_other) = (0u64, 0u64);
    // getaddrinfo's error codes of the failed lookups, counted.
    let mut errors: std::collections::BTreeMap<i32, u64> = Default::default();
    // Every lookup's µs (for the percentiles).
    let mut took_us: Vec<u32> = Vec::new();
    let mut outages: Vec<[u64; 4]> = Vec::new();
    // Lookups that succeeded only after SLOW_NS: [start ns, end ns].
    let mut stalls: Vec<[u64; 2]> = Vec::new();
    // (first failure ns, failures, failures that took the resolver timeout)
    let mut failing: Option<(u64, u64, u64)> = None;
    let start = Instant::now();
    let end = secs.map(|s| start + Duration::from_secs_f64(s));
    let mut next = start;
    loop {
        let name = match (&fixed, &fresh) {
            (Some(name), _) => name.clone(),
            (None, Some(fmt)) => {
                CString::new(fmt.replace("{}", &(from + n).to_string())).expect("name")
            }
            (None, None) => panic!("--name or --fresh"),
        };
        let t = mono_ns();
        let good = match lookup(&name, &port) {
            Ok(a) if connect => {
                let err = attempt(true, &crate::client::sockaddr(&a));
                connect_fail += u64::from(err != 0);
                connect_eperm += u64::from(err == libc::EPERM);
                connect_other += u64::from(![0, libc::EPERM, libc::ECONNREFUSED].contains(&err));
                true
            }
            Ok(_) => true,
            Err(e) => {
                resolve_fail += 1;
                *errors.entry(e).or_default() += 1;
                false
            }
        };
        n += 1;
        let done = mono_ns();
        took_us.push(((done - t) / 1000).min(u64::from(u32::MAX)) as u32);
        if good {
            ok += 1;
            if let Some((first, fails, slow)) = failing.take() {
                outages.push([first, done, fails, slow]);
            }
            if done - t > SLOW_NS {
                stalls.push([t, done]);
            }
        } else {
            let f = failing.get_or_insert((t, 0, 0));
            f.1 += 1;
            f.2 += u64::from(done - t > SLOW_NS);
        }
        let stopped = stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        if end.is_some_and(|e| Instant::now() >= e) || stopped {
            break;
        }
        if let Some(every) = every {
            next += every;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    if let Some((first, fails, slow)) = failing {
        outages.push([first, 0, fails, slow]);
    }
    let el = start.elapsed().as_secs_f64();
    took_us.sort_unstable();
    let pct = |p: f64| {
        let i = ((took_us.len() as f64 - 1.0) * p / 100.0).round() as usize;
        took_us.get(i).copied().unwrap_or(0)
    };
    let errors: serde_json::Map<String, serde_json::Value> = errors
        .into_iter()
        .map(|(e, c)| (e.to_string(), c.into()))
        .collect();
    println!(
        "{}",
        serde_json::json!({"n": n, "ok": ok, "resolve_fail": resolve_fail,
            "connect_fail": connect_fail, "connect_eperm": connect_eperm,
            "connect_other": connect_other, "errors": errors,
            "took_us": {"p50": pct(50.0), "p99": pct(99.0), "p999": pct(99.9), "max": pct(100.0)},
            "secs": el, "rate": n as f64 / el,
            "outages": outages, "stalls": stalls})
    );
}

fn encode(name: &Name, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.to_vec().expect("encode query")
}

fn dns_name(text: &str) -> Name {
    Name::from_str(&format!("{text}.")).expect("query name")
}

/// Outcomes of a query load.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    nxdomain: u64,
    servfail: u64,
    other_rcode: u64,
    timeouts: u64,
    send_err: u64,
    refused: u64,
    stray: u64,
}

/// Raw A queries over one UDP socket, `--window` in flight; prints one JSON
/// line with every outcome counted (and, with `--lat`, each answer's µs).
pub fn query(args: &[String]) {
    join(args);
    let to: SocketAddr = arg(args, "--to").expect("--to").parse().expect("IP:PORT");
    let window: usize = arg(args, "--window").map_or(1, |w| w.parse().expect("window"));
    let secs: Option<f64> = arg(args, "--secs").map(|s| s.parse().expect("secs"));
    let count: Option<u64> = arg(args, "--count").map(|s| s.parse().expect("count"));
    let fresh = arg(args, "--fresh");
    let from: u64 = arg(args, "--from").map_or(0, |s| s.parse().expect("from"));
    let fixed = arg(args, "--name").map(|n| encode(&dns_name(&n), 0));
    let want_lat = args.iter().any(|a| a == "--lat");
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect(to).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut t = Tally::default();
    let mut lat: Vec<u32> = Vec::new();
    let mut pending: HashMap<u16, Instant> = HashMap::with_capacity(window * 2);
    let mut id: u16 = 0;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    let end = secs.map(|s| start + Duration::from_secs_f64(s));
    let mut sending = true;
    let mut sent_until = start;
    let mut last_sweep = start;
    loop {
        while sending && pending.len() < window {
            id = id.wrapping_add(1);
            if pending.contains_key(&id) {
                continue;
            }
            let bytes = match (&fixed, &fresh) {
                (Some(q), _) => {
                    let mut q = q.clone();
                    q[..2].copy_from_slice(&id.to_be_bytes());
                    q
                }
                (None, Some(fmt)) => encode(
                    &dns_name(&fmt.replace("{}", &(from + t.sent).to_string())),
                    id,
                ),
                (None, None) => panic!("--name or --fresh"),
            };
            t.sent += 1;
            match sock.send(&bytes) {
                Ok(_) => {
                    pending.insert(id, Instant::now());
                }
                Err(_) => {
                    // Counted, and a pause: a refused send (EPERM while no
                    // proxy serves the namespace) must not spin the loop.
                    t.send_err += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if count.is_some_and(|c| t.sent >= c) {
                sending = false;
            }
        }
        match sock.recv(&mut buf) {
            Ok(n) => match Message::from_vec(&buf[..n]) {
                Ok(m) => match pending.remove(&m.metadata.id) {
                    Some(at) => {
                        if want_lat {
                            lat.push(at.elapsed().as_micros() as u32);
                        }
                        match m.metadata.response_code {
                            ResponseCode::NoError => t.answered += 1,
                            ResponseCode::NXDomain => t.nxdomain += 1,
                            ResponseCode::ServFail => t.servfail += 1,
                            _ => t.other_rcode += 1,
                        }
                    }
                    None => t.stray += 1,
                },
                Err(_) => t.stray += 1,
            },
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => t.refused += 1,
            Err(_) => {}
        }
        let now = Instant::now();
        if sending && end.is_some_and(|e| now >= e) {
            sending = false;
        }
        if sending {
            sent_until = now;
        }
        if now - last_sweep > Duration::from_millis(10) {
            last_sweep = now;
            let before = pending.len();
            pending.retain(|_, at| now - *at < TIMEOUT);
            t.timeouts += (before - pending.len()) as u64;
        }
        if !sending && pending.is_empty() {
            break;
        }
    }
    let el = (sent_until - start).as_secs_f64().max(1e-9);
    let mut out = serde_json::json!({"sent": t.sent, "answered": t.answered,
        "nxdomain": t.nxdomain, "servfail": t.servfail, "other_rcode": t.other_rcode,
        "timeouts": t.timeouts, "send_err": t.send_err, "refused": t.refused,
        "stray": t.stray, "secs": el, "rate": t.answered as f64 / el});
    if want_lat {
        out["lat_us"] = serde_json::json!(lat);
    }
    println!("{out}");
}

/// The test DNS server (tiergate-tests' `dnsserver`) inside the namespace;
/// prints "ready", exits when stdin closes. Questions are not logged.
pub fn dns_serve(args: &[String]) {
    join(args);
    let addr: SocketAddr = arg(args, "--addr")
        .expect("--addr")
        .parse()
        .expect("IP:PORT");
    let zone = std::fs::read_to_string(arg(args, "--zone").expect("--zone")).expect("zone file");
    tiergate_tests::dnsserver::serve(
        addr,
        tiergate_tests::dnsserver::parse_zone(&zone),
        "/dev/null",
    );
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut b = [0u8; 1];
    let _ = std::io::stdin().read(&mut b);
}
