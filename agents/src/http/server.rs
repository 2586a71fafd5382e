//! The HTTP server, on top of the folder: the router over [`super::handlers`], request
//! accounting, and serving an already-bound listener (each connection through
//! [`super::zerocopy`]) until the cancellation token fires, then a bounded drain.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::HttpError;
use super::state::{HttpServer, route_label};
use super::{handlers, zerocopy};

impl HttpServer {
    /// The router with every route; handy for tests that bring their own listener.
    pub fn router(&self) -> Router {
        let state = Arc::new(self.clone());
        let api = Router::new()
            .route(
                "/api/v1/machines/{mac}/inventory",
                post(handlers::inventory),
            )
            .route("/api/v1/machines/{mac}/progress", post(handlers::progress))
            .route("/api/v1/machines/{mac}/result", post(handlers::result))
            .route("/api/v1/machines/{mac}/plan", get(handlers::plan))
            .route("/api/v1/machines/{mac}/booted", post(handlers::booted))
            .layer(DefaultBodyLimit::max(self.config.body_limit));
        Router::new()
            .route("/boot/{file}", get(handlers::boot_script))
            .route("/boot/{mac}/{file}", get(handlers::boot_file_for_mac))
            .route("/assets/{*name}", get(handlers::asset))
            .route("/images/{key}", get(handlers::image))
            .merge(api)
            .fallback(handlers::not_found)
            .layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                count_request,
            ))
            .with_state(state)
    }

    /// Serves `listener` until `cancel` fires, then lets open requests finish for at most
    /// `config.drain` before dropping them. Image and asset downloads take the zero-copy
    /// path ([`super::zerocopy`]); everything else goes through hyper and the router.
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), HttpError> {
        let addr = listener
            .local_addr()
            .map_err(|e| HttpError::io("read the listen address", &e))?;
        tracing::info!(%addr, "HTTP boot server listening");
        let drain = self.config.drain;
        let router = self.router();
        let me = Arc::new(self);
        let mut conns = JoinSet::new();
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn =
                zerocopy::connection(Arc::clone(&me), router.clone(), stream, cancel.clone());
            conns.spawn(conn);
        }
        drop(listener);
        let drained =
            tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                ?drain,
                "HTTP drain deadline passed; dropping open connections"
            );
            conns.abort_all();
        }
        Ok(())
    }
}

async fn count_request(State(s): State<Arc<HttpServer>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let resp = next.run(req).await;
    s.metrics.request(route, resp.status().as_u16());
    resp
}
