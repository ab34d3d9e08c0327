//! The admin endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/inventory`, `/dns/learned`.

pub mod inventory;
pub mod learned;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
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
    let state = inventory.state.clone();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
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
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }))
}
