//! The metadata proxy's listener in each namespace it serves: HTTP/1.1 on
//! hyper, with the bounds that keep a hostile client cheap (head size,
//! time to send a head, requests per connection, connections per node,
//! connection lifetime). Pipelined requests are read and decided one at a
//! time, in order, each on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::proxy::Proxy;
use crate::dns::serve::{accept_on_slot, poll_listener};

/// Bytes of a request head (request line and headers) a connection may
/// buffer; beyond it hyper answers 431 and closes.
pub const MAX_HEAD: usize = 16 * 1024;
/// A request head must arrive within this (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection lives at most this long; SDKs reconnect.
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);
/// Requests one connection may make before the proxy closes it.
pub const MAX_REQUESTS_PER_CONNECTION: u64 = 1000;
/// Connections open at once on the node; beyond it new ones are closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// State shared by the listeners of every namespace.
pub struct Server {
    pub proxy: Arc<Proxy>,
    connections: Arc<Semaphore>,
    /// Connections closed at once for want of room.
    pub overloaded: AtomicU64,
}

impl Server {
    pub fn new(proxy: Arc<Proxy>) -> Arc<Self> {
        Arc::new(Self {
            proxy,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            overloaded: AtomicU64::new(0),
        })
    }

    /// Serves one namespace's listener until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: std::net::TcpListener) {
        let Some(listener) = poll_listener(listener, "metadata proxy") else {
            return;
        };
        loop {
            let (stream, slot) = accept_on_slot(&listener).await;
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.connection(slot, stream).await;
            });
        }
    }

    async fn connection(&self, slot: u32, stream: tokio::net::TcpStream) {
        let served = Arc::new(AtomicU64::new(0));
        let proxy = self.proxy.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let served = served.clone();
            async move {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                let mut resp = proxy.handle(slot, req).await;
                if n >= MAX_REQUESTS_PER_CONNECTION {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        // A connection past its lifetime is simply dropped.
        if let Ok(Err(e)) = tokio::time::timeout(MAX_CONNECTION_LIFE, conn).await {
            tracing::debug!(error = %e, "metadata proxy connection ended");
        }
    }
}
