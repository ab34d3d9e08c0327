//! The admin socket (`--admin-socket`, default `/run/tiergate/admin.sock`):
//! the only way to ask this agent for a grant. A Unix socket, mode 0600 in a
//! directory of mode 0700, so only root (or the agent's user) can connect;
//! the caller's uid (`SO_PEERCRED`, from the kernel, not from the request)
//! is recorded as `granted_by`. Never the metrics port.
//!
//! Bounds: one request line of at most 64 KiB per connection, 5 s to send
//! it, 16 connections at a time; anything else is refused with a reply
//! saying why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::grant::Principal;
use super::protocol::{MAX_REQUEST, Op, Reply};

/// A request for the control task, with where to send its reply.
pub type AdminRequest = (Op, Principal, oneshot::Sender<Reply>);

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// Binds the socket (replacing a stale one) with its permissions.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(l)
}

/// The user name of `uid` from /etc/passwd, when there is one.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Serves the socket until the task is dropped.
pub async fn serve(listener: UnixListener, path: PathBuf, control: mpsc::Sender<AdminRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(reply(
                stream,
                Reply::error("too many admin connections; try again"),
            ));
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            handle(stream, control).await;
            drop(permit);
        });
    }
}

async fn reply(mut stream: UnixStream, r: Reply) {
    let mut line = serde_json::to_vec(&r).expect("reply serializes");
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
}

async fn handle(stream: UnixStream, control: mpsc::Sender<AdminRequest>) {
    let Ok(cred) = stream.peer_cred() else {
        return reply(
            stream,
            Reply::error("cannot tell who is asking (SO_PEERCRED)"),
        )
        .await;
    };
    let by = Principal {
        id: format!("uid:{}", cred.uid()),
        name: user_name(cred.uid()),
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        limited.read_until(b'\n', &mut line).await
    })
    .await;
    let stream = reader.into_inner();
    let r = match read {
        Err(_) => Reply::error("no request line within 5 s"),
        Ok(Err(e)) => Reply::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            Reply::error(format!("request longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Op>(&line) {
            Err(e) => Reply::error(format!("not a request: {e}")),
            Ok(op) => {
                let (tx, rx) = oneshot::channel();
                if control.send((op, by, tx)).await.is_err() {
                    Reply::error("the agent is stopping")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::error("the agent is stopping"))
                }
            }
        },
    };
    reply(stream, r).await;
}

/// One request to the socket at `path` (the CLI's side).
pub fn call(path: &Path, op: &Op) -> anyhow::Result<Reply> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to the agent's admin socket {} (is the agent running, and are you root?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(op).expect("op serializes");
    line.push(b'\n');
    s.write_all(&line)?;
    let mut out = String::new();
    std::io::BufReader::new(s).read_line(&mut out)?;
    serde_json::from_str(&out).with_context(|| format!("unexpected reply from the agent: {out:?}"))
}
