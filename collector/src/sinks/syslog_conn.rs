//! The TLS connection to a syslog server: a send returns once TCP has acknowledged it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rustls::ClientConnection;

/// Bounds each socket read/write and the wait for the server's TCP
/// acknowledgement of a batch.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Socket timeouts surface as `WouldBlock` ("Resource temporarily
/// unavailable"): say what happened instead.
pub(super) fn timed_out(e: io::Error, after: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}s", after.as_secs()),
        ),
        _ => e,
    }
}

pub(super) struct Connection {
    pub(super) tls: ClientConnection,
    pub(super) sock: TcpStream,
    pub(super) peer: SocketAddr,
    /// Batches sent successfully.
    pub(super) batches: u64,
}

impl Connection {
    /// Reads, without blocking, what the server sent. A syslog server sends
    /// no application data, so anything but TLS housekeeping (session
    /// tickets, key updates) means the connection is over.
    pub(super) fn check_open(&mut self) -> io::Result<()> {
        self.sock.set_nonblocking(true)?;
        let result = self.read_pending();
        self.sock.set_nonblocking(false)?;
        result
    }

    fn read_pending(&mut self) -> io::Result<()> {
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(_) => {
                    let state = self
                        .tls
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let unexpected = state.plaintext_bytes_to_read();
                    if unexpected > 0 {
                        let mut discard = vec![0; unexpected];
                        self.tls.reader().read_exact(&mut discard)?;
                    }
                    if state.peer_has_closed() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection (close_notify)",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `data` and returns once the server's TCP has acknowledged
    /// every byte and the connection is still up: a batch sitting in our
    /// send queue when the connection dies would otherwise be lost
    /// silently. (Syslog has no application-level acknowledgement: a server
    /// that dies after its kernel acknowledged the batch can still lose it.)
    pub(super) fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < data.len() {
            let n = self.tls.writer().write(&data[sent..])?;
            sent += n;
            self.write_tls()?;
            if n == 0 && !self.tls.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS refused the data",
                ));
            }
        }
        self.write_tls()?;
        self.sock.flush()?;
        self.wait_acknowledged()?;
        self.check_open()
    }

    fn write_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection took no data",
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e, IO_TIMEOUT)),
            }
        }
        Ok(())
    }

    /// Waits until the socket's send queue (unsent plus unacknowledged
    /// bytes, `SIOCOUTQ`) is empty, watching for the server closing or
    /// resetting the connection meanwhile (after which the queue would never
    /// drain).
    fn wait_acknowledged(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut pause_ms: libc::c_int = 1;
        loop {
            let fd = self.sock.as_raw_fd();
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one c_int
            // through the pointer, which points to a live c_int.
            if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if queued == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server has not acknowledged {queued} bytes after {}s",
                        IO_TIMEOUT.as_secs()
                    ),
                ));
            }
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, pause_ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else if ready > 0 {
                // Data (TLS housekeeping or an alert), end of stream or an
                // error (reset): check_open fails on all but housekeeping.
                self.check_open()?;
            }
            pause_ms = (pause_ms * 2).min(50);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Best effort, without blocking on a dead peer.
        self.tls.send_close_notify();
        if self.sock.set_nonblocking(true).is_ok() {
            let _ = self.tls.write_tls(&mut self.sock);
        }
    }
}
