//! The operator's HTTP endpoint: `/healthz`, `/readyz` and `/metrics`.
//!
//! Off by default and bound to 127.0.0.1 unless configured otherwise: it tells anyone who can
//! reach it how busy the bot is, which is not for the internet.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
struct Endpoint {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    store: Store,
}

/// Binds `listen` and serves until the process ends. Returns the bound address.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    store: Store,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Endpoint {
            health,
            metrics,
            store,
        });
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "the HTTP endpoint stopped");
        }
    });
    Ok(addr)
}

async fn readyz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let readiness = endpoint.health.readiness(&endpoint.store);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.body))
}

async fn metrics_text(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        endpoint.metrics.render(),
    )
}
