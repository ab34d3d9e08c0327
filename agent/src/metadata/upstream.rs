//! Connections to the metadata service, kept alive and reused one request
//! at a time: a fresh TCP connection per forwarded request cost the agent
//! ~160 µs of CPU and put a new connection's tail on every request
//! (docs/BENCHMARKS.md, section 6).

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept for reuse; more are closed after their request.
pub const MAX_IDLE: usize = 16;

type Body = Full<Bytes>;

/// The upstream and its idle connections.
pub struct Upstream {
    pub addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Body>>>,
    max_body: usize,
}

impl Upstream {
    pub fn new(addr: SocketAddr, max_body: usize) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            max_body,
        }
    }

    /// A connection ready for a request: an idle one still open, else a
    /// new one (`true`: reused).
    async fn connection(&self) -> anyhow::Result<(SendRequest<Body>, bool)> {
        loop {
            let next = self.idle.lock().expect("idle lock").pop();
            match next {
                Some(s) if s.is_ready() => return Ok((s, true)),
                Some(_) => continue,
                None => return self.connection_new().await,
            }
        }
    }

    fn put_back(&self, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }

    /// One request; its response head and (bounded) body. A reused
    /// connection the service closed meanwhile is retried once on a new one
    /// (the request never reached the service).
    pub async fn exchange(
        &self,
        req: Request<Body>,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        let (mut sender, reused) = self.connection().await?;
        let resp = match sender.send_request(req.clone()).await {
            Ok(r) => r,
            Err(e) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                let (mut fresh, _) = self.connection_new().await?;
                let r = fresh.send_request(req).await?;
                sender = fresh;
                r
            }
            Err(e) => return Err(e.into()),
        };
        let (head, body) = resp.into_parts();
        let bytes = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("upstream body: {e}"))?
            .to_bytes();
        self.put_back(sender);
        Ok((head, bytes))
    }

    /// A new connection (`false`: not reused).
    async fn connection_new(&self) -> anyhow::Result<(SendRequest<Body>, bool)> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection until either side closes it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, false))
    }
}
