//! The admin endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`
//! for anyone who can reach `--admin-addr`; `/inventory` and `/dns/learned`
//! (workload identities, what each workload resolved) only for clients on
//! loopback, so an address like `0.0.0.0:9464` (a DaemonSet's, for
//! Prometheus) does not serve the node's identities off the node.

pub mod inventory;
pub mod learned;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness: every program attached and a policy in force.
#[derive(Default)]
pub struct Readiness {
    pub programs_attached: AtomicBool,
    pub policy_in_force: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.programs_attached.load(Ordering::Acquire)
            && self.policy_in_force.load(Ordering::Acquire)
    }
}

/// Binds the admin address (so a bad address fails start-up) and serves it.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    inventory: Arc<inventory::Inventory>,
    learner: learned::LearnerSlot,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(metrics, ready, inventory, learner)
        .into_make_service_with_connect_info::<SocketAddr>();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }))
}

/// The routes; the service must carry the peer address (`ConnectInfo`).
pub(crate) fn router(
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    inventory: Arc<inventory::Inventory>,
    learner: learned::LearnerSlot,
) -> Router {
    let state = inventory.state.clone();
    let ready_for_metrics = ready.clone();
    // Workload identities: loopback clients only.
    let local = Router::new()
        .route(
            "/inventory",
            get(move |q: axum::extract::Query<inventory::Filter>| {
                let inv = inventory.clone();
                async move { ([("content-type", "application/json")], inv.render(&q)) }
            }),
        )
        .route(
            "/dns/learned",
            get(move |q: axum::extract::Query<learned::Query>| {
                let (state, learner) = (state.clone(), learner.clone());
                async move { learned::lookup(&state, &learner, &q) }
            }),
        )
        .route_layer(middleware::from_fn(loopback_only));
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, r) = (metrics.clone(), ready_for_metrics.clone());
                async move {
                    m.ready.set(i64::from(r.ready()));
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r.ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .merge(local)
}

/// Is the peer on this host's loopback (IPv4-mapped included)?
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Refuses (403) requests whose peer is not on loopback.
async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if is_loopback(peer) {
        return next.run(req).await;
    }
    tracing::debug!(%peer, path = %req.uri().path(), "refused a non-loopback client");
    (
        StatusCode::FORBIDDEN,
        format!(
            "tiergate: {} is served to loopback clients only (workload identities); \
             ask on the node: `tiergate inventory`, or `kubectl exec` into the agent's pod\n",
            req.uri().path()
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;

    fn app(peer: &str) -> Router {
        let state = Arc::new(crate::state::NodeState::default());
        let ready = Arc::new(Readiness::default());
        ready.programs_attached.store(true, Ordering::Release);
        router(
            Arc::new(Metrics::new()),
            ready,
            Arc::new(inventory::Inventory {
                node: "n1".into(),
                state,
            }),
            learned::LearnerSlot::default(),
        )
        .layer(MockConnectInfo(peer.parse::<SocketAddr>().unwrap()))
    }

    async fn get(peer: &str, path: &str) -> (StatusCode, String) {
        let resp = app(peer)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn identities_only_for_loopback_clients() {
        for peer in [
            "127.0.0.1:40000",
            "127.8.9.1:1",
            "[::1]:40000",
            "[::ffff:127.0.0.1]:2",
        ] {
            let (s, body) = get(peer, "/inventory").await;
            assert_eq!(s, StatusCode::OK, "{peer}: {body}");
            assert!(body.contains("\"node\":\"n1\""), "{body}");
            // Reaches the handler (no learner yet), not the refusal.
            let (s, _) = get(peer, "/dns/learned?cgroup=/x&ip=10.0.0.1").await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{peer}");
        }
        for peer in [
            "10.1.2.3:40000",
            "[fd00::1]:40000",
            "[::ffff:10.0.0.1]:1",
            "0.0.0.0:1",
        ] {
            for path in [
                "/inventory",
                "/inventory?enforced=true",
                "/dns/learned?cgroup=/x&ip=10.0.0.1",
            ] {
                let (s, body) = get(peer, path).await;
                assert_eq!(s, StatusCode::FORBIDDEN, "{peer} {path}: {body}");
                assert!(body.contains("loopback clients only"), "{body}");
            }
        }
    }

    #[tokio::test]
    async fn health_and_metrics_for_everyone() {
        let (s, _) = get("10.1.2.3:40000", "/healthz").await;
        assert_eq!(s, StatusCode::OK);
        // Programs attached, no policy yet: not ready, and the gauge says so.
        let (s, _) = get("10.1.2.3:40000", "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (s, body) = get("10.1.2.3:40000", "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("\ntiergate_ready 0\n"), "{body}");
    }
}
