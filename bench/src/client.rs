//! The processes the bench re-executes itself as. Each joins a cgroup first
//! (so the kernel judges it as that workload) and then the bench's network
//! namespace (so nothing it sends can leave this machine).
//!
//!   tiergate-bench client --cgroup DIR --netns NS --mode tcp|udp --to IP:PORT --secs S
//!   tiergate-bench flip   --cgroup DIR --netns NS --to IP:PORT --want ok|denied
//!   tiergate-bench server [--cgroup DIR] --netns NS IP:PORT...

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use tiergate_tests::enter;

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// 0 = connected/sent, otherwise the errno.
pub(crate) fn attempt(tcp: bool, sa: &libc::sockaddr_in) -> i32 {
    // SAFETY: plain syscalls on an fd this function owns.
    unsafe {
        let ty = if tcp {
            libc::SOCK_STREAM
        } else {
            libc::SOCK_DGRAM
        };
        let fd = libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return *libc::__errno_location();
        }
        if tcp {
            // RST on close: no TIME_WAIT, no port exhaustion.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                size_of::<libc::linger>() as u32,
            );
            // A dropped SYN must not hang the loop.
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        let mut rc = libc::connect(
            fd,
            (sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        if rc == 0 && !tcp {
            // One datagram, so packet filters (nftables) see the flow too.
            rc = libc::send(fd, b"x".as_ptr().cast(), 1, 0) as i32;
            rc = rc.min(0);
        }
        let err = if rc < 0 { *libc::__errno_location() } else { 0 };
        libc::close(fd);
        err
    }
}

pub(crate) fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A timed connect loop; prints one JSON line.
pub fn client(args: &[String]) {
    enter(
        arg(args, "--cgroup").as_deref(),
        arg(args, "--netns").as_deref(),
    );
    let tcp = arg(args, "--mode").as_deref() != Some("udp");
    let to: SocketAddrV4 = arg(args, "--to").expect("--to").parse().expect("IP:PORT");
    let secs: f64 = arg(args, "--secs").expect("--secs").parse().expect("secs");
    let sa = sockaddr(&to);
    let (mut n, mut ok, mut eperm, mut refused, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    loop {
        for _ in 0..32 {
            match attempt(tcp, &sa) {
                0 => ok += 1,
                libc::EPERM => eperm += 1,
                libc::ECONNREFUSED => refused += 1,
                _ => other += 1,
            }
            n += 1;
        }
        if Instant::now() >= end {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"n": n, "ok": ok, "eperm": eperm, "refused": refused,
            "other": other, "secs": el, "rate": n as f64 / el})
    );
}

/// Polls a UDP connect until its outcome is `--want`; prints the
/// CLOCK_MONOTONIC ns of the first such outcome (or -1 after 10 s).
pub fn flip(args: &[String]) {
    enter(
        arg(args, "--cgroup").as_deref(),
        arg(args, "--netns").as_deref(),
    );
    let to: SocketAddrV4 = arg(args, "--to").expect("--to").parse().expect("IP:PORT");
    let want_ok = arg(args, "--want").as_deref() == Some("ok");
    let sa = sockaddr(&to);
    println!("ready");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: plain syscalls on an fd we own.
        let r = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let rc = libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
            rc == 0
        };
        if r == want_ok {
            println!("{}", mono_ns());
            return;
        }
        if Instant::now() > deadline {
            println!("-1");
            return;
        }
        // Poll every 0.1 ms rather than in a hot loop: a spinning observer
        // would take a core (and the agent's time for the events it makes)
        // from the reload it is timing, on a 2-core machine.
        std::thread::sleep(POLL);
    }
}

/// The flip observer's polling interval (the resolution of reload times).
pub const POLL: Duration = Duration::from_micros(100);

/// TCP listeners that accept and close; prints "ready". With `--cgroup` and
/// no address it is a namespace's sandbox: a process of a tier living there.
pub fn server(args: &[String]) {
    enter(
        arg(args, "--cgroup").as_deref(),
        arg(args, "--netns").as_deref(),
    );
    for t in args
        .iter()
        .filter(|a| a.contains(':') && !a.starts_with('-') && !a.contains('/'))
    {
        let a: SocketAddrV4 = t.parse().expect("IP:PORT");
        let sa = sockaddr(&a);
        // A deep accept queue (std's listen backlog is small): a full queue
        // drops SYNs and the client would wait for a retransmission.
        // SAFETY: plain syscalls; the fd is handed to TcpListener.
        let l = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            assert_eq!(
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32
                ),
                0,
                "bind {t}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::listen(fd, 65535), 0, "listen {t}");
            <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        for _ in 0..2 {
            let l = l.try_clone().expect("clone listener");
            // Accept and close at once.
            std::thread::spawn(move || {
                loop {
                    let _ = l.accept();
                }
            });
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    // Exit when the bench goes away (stdin closes).
    let mut b = [0u8; 1];
    let _ = std::io::stdin().read(&mut b);
}
