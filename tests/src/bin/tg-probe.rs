//! Test client and server. It moves itself into a cgroup and a network
//! namespace first (`--cgroup DIR --netns NAME`), so the kernel judges it as a
//! workload of that cgroup and its packets never leave that namespace.
//!
//!   tg-probe [--cgroup DIR] [--netns NAME] connect [--udp|--sendto] ADDR:PORT...
//!   tg-probe [--cgroup DIR] [--netns NAME] socket raw|packet|ping|sctp
//!   tg-probe [--cgroup DIR] [--netns NAME] serve ADDR:PORT...
//!   tg-probe [--cgroup DIR] hold
//!   tg-probe [--cgroup DIR] [--netns NAME] hold-conns [udp:]ADDR:PORT...
//!   tg-probe [--netns NAME] dns-serve ADDR:PORT ZONEFILE LOGFILE
//!   tg-probe [--netns NAME] imds-serve ADDR:PORT [--log FILE]
//!   tg-probe [--cgroup DIR] [--netns NAME] exec CMD ARGS...
//!   tg-probe [--cgroup DIR] [--netns NAME] bind ADDR:PORT...
//!   tg-probe [--cgroup DIR] [--netns NAME] http-pair ADDR:PORT PATH1 PATH2 PAUSE_MS
//!   tg-probe [--cgroup DIR] [--netns NAME] http-flood ADDR:PORT N PATH
//!   tg-probe [--cgroup DIR] [--netns NAME] http-big-head ADDR:PORT BYTES
//!   tg-probe [--cgroup DIR] [--netns NAME] http-slow-head ADDR:PORT
//!   tg-probe [--cgroup DIR] [--netns NAME] [--resolv FILE] resolve NAME...
//!   tg-probe [--cgroup DIR] [--netns NAME] [--resolv FILE] resolve-connect NAME PORT...
//!
//! `--resolv FILE` gives the probe FILE as its /etc/resolv.conf (a private
//! mount namespace, as `ip netns exec` does with /etc/netns/NAME/), so the
//! C library's resolver talks only to the test's DNS servers.
//!   tg-probe [--cgroup DIR] [--netns NAME] [--resolv FILE] resolve-connect-seq FIRST COUNT SUFFIX PORT
//!
//! `resolve` prints the addresses getaddrinfo returns (or `error: ...`);
//! `resolve-connect` resolves and connects (TCP) to the first address:
//! `ok ADDR`, `ERRNO ADDR` or `resolve-error ...`. `resolve-connect-seq`
//! does that for the names `n<i><SUFFIX>`, i from FIRST, COUNT times, each
//! connect right after its lookup, and prints `ok N eperm N other N`.
//!
//! `connect` prints one line per target: `ok` or the errno name (EPERM, ...).
//!
//! `hold-conns` opens a TCP connection (a connected UDP socket with `udp:`)
//! to each target, prints `ready` and keeps them open; for each line read
//! on stdin it checks every one in order and prints one line of results,
//! `ok` or an errno name: TCP sends a byte and reads its echo, UDP reads
//! the socket's pending error (`SO_ERROR`). It exits when stdin closes.
//!
//!   tg-probe [--cgroup DIR] [--netns NAME] loop RATE SECS MODE:ADDR:PORT...
//!
//! `loop` makes RATE attempts a second for SECS seconds, round robin over
//! the targets (MODE is tcp, udp or sendto), then prints one line per
//! target: `MODE:ADDR:PORT ok N eperm N other N` (the chaos soak's clients).
//!
//! `imds-serve` runs the fake metadata service ([`tiergate_tests::imds`]) on
//! ADDR:PORT (port 0 allowed), prints `ready ADDR:PORT` (the bound address)
//! once listening and serves until killed, appending each request's JSON
//! line to FILE.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use tiergate_tests::imds::FakeImds;
use tiergate_tests::{enter, httpprobe, use_resolv_conf};

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ENOTCONN) => "ENOTCONN".into(),
        Some(libc::EPROTONOSUPPORT) => "errno93".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{e}"),
    }
}

fn connect(mode: &str, target: &str) -> String {
    let addr: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(e) => return format!("bad-address {e}"),
    };
    let r = match mode {
        "tcp" => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|mut s| {
            let _ = s.write_all(b"x");
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }),
        "udp" => {
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            UdpSocket::bind(bind)
                .and_then(|s| s.connect(addr).and_then(|_| s.send(b"x").map(|_| ())))
        }
        "sendto" => {
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            UdpSocket::bind(bind).and_then(|s| s.send_to(b"x", addr).map(|_| ()))
        }
        // TCP Fast Open: the connect happens inside sendto(MSG_FASTOPEN).
        "fastopen" => fastopen(&addr),
        _ => unreachable!(),
    };
    match r {
        Ok(()) => "ok".into(),
        Err(e) => errno_name(&e),
    }
}

/// `loop RATE SECS TARGET...`: paced attempts, tallied per target.
fn attempt_loop(args: &[String]) {
    let rate: f64 = args[0].parse().expect("loop RATE");
    let secs: f64 = args[1].parse().expect("loop SECS");
    let targets: Vec<(&str, &str)> = args[2..]
        .iter()
        .map(|t| t.split_once(':').expect("MODE:ADDR:PORT"))
        .collect();
    let mut tally = vec![[0u64; 3]; targets.len()];
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let i = (n as usize) % targets.len();
        let (mode, addr) = targets[i];
        let slot = match connect(mode, addr).as_str() {
            "ok" => 0,
            "EPERM" => 1,
            _ => 2,
        };
        tally[i][slot] += 1;
        n += 1;
        let due = Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    for (t, [ok, eperm, other]) in args[2..].iter().zip(tally) {
        println!("{t} ok {ok} eperm {eperm} other {other}");
    }
}

/// A held connection of `hold-conns`.
enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Held {
    fn open(target: &str) -> std::io::Result<Held> {
        if let Some(t) = target.strip_prefix("udp:") {
            let addr: SocketAddr = t.parse().expect("udp:ADDR:PORT");
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(addr)?;
            Ok(Held::Udp(s))
        } else {
            let addr: SocketAddr = target.parse().expect("ADDR:PORT");
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(Held::Tcp(s))
        }
    }

    fn check(&mut self) -> String {
        let r = match self {
            Held::Tcp(s) => s.write_all(b"p").and_then(|()| {
                let mut b = [0u8; 1];
                match s.read(&mut b)? {
                    1 => Ok(()),
                    _ => Err(std::io::Error::from_raw_os_error(libc::EPIPE)),
                }
            }),
            Held::Udp(s) => match s.take_error() {
                Ok(None) => s.peer_addr().map(drop),
                Ok(Some(e)) | Err(e) => Err(e),
            },
        };
        match r {
            Ok(()) => "ok".into(),
            Err(e) => errno_name(&e),
        }
    }
}

/// `hold-conns TARGET...`: see the module doc.
fn hold_conns(targets: &[String]) {
    let mut held: Vec<Held> = targets
        .iter()
        .map(|t| Held::open(t).unwrap_or_else(|e| panic!("hold-conns {t}: {e}")))
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lines() {
        if line.is_err() {
            break;
        }
        let r: Vec<String> = held.iter_mut().map(Held::check).collect();
        println!("{}", r.join(" "));
        let _ = std::io::stdout().flush();
    }
}

fn fastopen(addr: &SocketAddr) -> std::io::Result<()> {
    let (family, sa, len) = sockaddr(addr);
    // SAFETY: plain syscalls on an fd we own; sa outlives the calls.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            sa.as_ptr().cast(),
            len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 { Err(err) } else { Ok(()) }
    }
}

/// A sockaddr_in/sockaddr_in6 as bytes.
fn sockaddr(addr: &SocketAddr) -> (i32, Vec<u8>, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: viewing a plain C struct as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    size_of::<libc::sockaddr_in>(),
                )
            };
            (
                libc::AF_INET,
                b.to_vec(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: viewing a plain C struct as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    size_of::<libc::sockaddr_in6>(),
                )
            };
            (
                libc::AF_INET6,
                b.to_vec(),
                size_of::<libc::sockaddr_in6>() as u32,
            )
        }
    }
}

fn socket(kind: &str) -> String {
    let (family, ty, proto) = match kind {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0x0300),
        "ping" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "udplite" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        "tcp" => (libc::AF_INET, libc::SOCK_STREAM, 0),
        other => panic!("unknown socket kind {other}"),
    };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        "ok".into()
    } else {
        errno_name(&std::io::Error::last_os_error())
    }
}

fn serve(targets: &[String]) -> ! {
    for t in targets {
        let addr: SocketAddr = t.parse().expect("serve ADDR:PORT");
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut b = [0u8; 64];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    if let Ok(n) = s.read(&mut b) {
                        let _ = s.write_all(&b[..n]);
                    }
                });
            }
        });
        let u = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while u.recv_from(&mut b).is_ok() {}
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn imds_serve(args: &[String]) -> ! {
    const USAGE: &str = "imds-serve ADDR:PORT [--log FILE]";
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("usage: {USAGE}"));
    let server = match &args[1..] {
        [] => FakeImds::start(addr),
        [flag, file] if flag == "--log" => FakeImds::start_with_log(addr, Path::new(file)),
        _ => panic!("usage: {USAGE}"),
    }
    .unwrap_or_else(|e| panic!("imds-serve {addr}: {e}"));
    println!("ready {}", server.addr());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// getaddrinfo, as applications resolve.
fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    (name, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| e.to_string())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut cgroup = None;
    let mut netns = None;
    let mut resolv = None;
    while args.len() >= 2 && args[0].starts_with("--") {
        match args[0].as_str() {
            "--cgroup" => cgroup = Some(args[1].clone()),
            "--netns" => netns = Some(args[1].clone()),
            "--resolv" => resolv = Some(args[1].clone()),
            _ => break,
        }
        args.drain(..2);
    }
    enter(cgroup.as_deref(), netns.as_deref());
    if let Some(f) = &resolv {
        use_resolv_conf(f);
    }
    match args.first().map(String::as_str) {
        Some("connect") => {
            let mut mode = "tcp";
            for a in &args[1..] {
                match a.as_str() {
                    "--udp" => mode = "udp",
                    "--sendto" => mode = "sendto",
                    "--tcp" => mode = "tcp",
                    "--fastopen" => mode = "fastopen",
                    t => println!("{}", connect(mode, t)),
                }
            }
        }
        Some("loop") => attempt_loop(&args[1..]),
        Some("socket") => {
            for k in &args[1..] {
                println!("{}", socket(k));
            }
        }
        Some("serve") => serve(&args[1..]),
        Some("dns-serve") => {
            let addr: SocketAddr = args[1].parse().expect("dns-serve ADDR:PORT");
            let zone = std::fs::read_to_string(&args[2]).expect("zone file");
            tiergate_tests::dnsserver::serve(
                addr,
                tiergate_tests::dnsserver::parse_zone(&zone),
                &args[3],
            );
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("imds-serve") => imds_serve(&args[1..]),
        Some("exec") => {
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&args[1]).args(&args[2..]),
            );
            eprintln!("exec {}: {err}", args[1]);
            std::process::exit(127);
        }
        Some("bind") => {
            for t in &args[1..] {
                let addr: SocketAddr = t.parse().expect("bind ADDR:PORT");
                match TcpListener::bind(addr) {
                    Ok(_) => println!("ok"),
                    Err(e) => println!("{}", errno_name(&e)),
                }
            }
        }
        Some("http-pair") => {
            let ms: u64 = args[4].parse().expect("MS");
            println!(
                "{}",
                httpprobe::pair(&args[1], &args[2], &args[3], Duration::from_millis(ms))
            );
        }
        Some("http-flood") => {
            let n: usize = args[2].parse().expect("N");
            println!("{}", httpprobe::flood(&args[1], n, &args[3]));
        }
        Some("http-big-head") => {
            let n: usize = args[2].parse().expect("BYTES");
            println!("{}", httpprobe::big_head(&args[1], n));
        }
        Some("http-slow-head") => println!("{}", httpprobe::slow_head(&args[1])),
        Some("resolve") => {
            for name in &args[1..] {
                match resolve(name, 0) {
                    Ok(a) => println!(
                        "{}",
                        a.iter()
                            .map(|a| a.ip().to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Err(e) => println!("error: {e}"),
                }
            }
        }
        Some("resolve-connect-seq") => {
            let first: u32 = args[1].parse().expect("FIRST");
            let count: u32 = args[2].parse().expect("COUNT");
            let port: u16 = args[4].parse().expect("PORT");
            let (mut ok, mut eperm, mut other) = (0, 0, 0);
            for i in first..first + count {
                let name = format!("n{i}{}", args[3]);
                let r = match resolve(&name, port) {
                    Ok(a) if !a.is_empty() => connect("tcp", &a[0].to_string()),
                    Ok(_) => "no-address".into(),
                    Err(e) => e,
                };
                match r.as_str() {
                    "ok" => ok += 1,
                    "EPERM" => eperm += 1,
                    _ => {
                        if other == 0 {
                            eprintln!("{name}: {r}");
                        }
                        other += 1
                    }
                }
            }
            println!("ok {ok} eperm {eperm} other {other}");
        }
        Some("resolve-connect") => {
            for pair in args[1..].chunks(2) {
                let port: u16 = pair[1].parse().expect("PORT");
                match resolve(&pair[0], port) {
                    Ok(a) if !a.is_empty() => {
                        let target = a[0];
                        println!("{} {}", connect("tcp", &target.to_string()), target.ip());
                    }
                    Ok(_) => println!("resolve-error no address"),
                    Err(e) => println!("resolve-error {e}"),
                }
            }
        }
        Some("hold-conns") => hold_conns(&args[1..]),
        Some("hold") => {
            println!("ready");
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(600));
        }
        _ => {
            eprintln!(
                "usage: tg-probe [--cgroup DIR] [--netns NAME] connect|socket|serve|imds-serve|hold ..."
            );
            std::process::exit(64);
        }
    }
}
