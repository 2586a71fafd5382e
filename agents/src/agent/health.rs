//! The agent's operational endpoints: `/metrics`, `/healthz` and `/readyz` (the stores have
//! synced), served by `ironpool_runtime::http`, as the operator's are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::AgentError;

/// Binds `addr` and serves until `stop` fires; returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AgentError> {
    ironpool_runtime::http::serve(addr, registry, ready, stop)
        .await
        .map_err(|source| AgentError::Io {
            what: format!("bind metrics on {addr}"),
            source,
        })
}
