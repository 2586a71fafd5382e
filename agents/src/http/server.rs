//! The HTTP server: its configuration, the router, request accounting, and serving an
//! already-bound listener until the cancellation token fires (then a bounded drain).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::token::TokenKey;
use super::{BootEvent, BootSource, HttpError, HttpMetrics, ImageCache, ReportSink, ScriptConfig};
use super::{handlers, zerocopy};

/// Settings of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Script rendering: the agent base URL and extra kernel arguments.
    pub script: ScriptConfig,
    /// Directory of boot assets (kernel, initramfs), served read-only under `/assets/`.
    pub assets_dir: PathBuf,
    /// The iPXE binaries (the TFTP root), served as `/boot/<file>` to UEFI HTTP boot
    /// firmware; `None` serves only scripts there.
    pub boot_files_dir: Option<PathBuf>,
    /// Largest machine API request body, in bytes (default 1 MiB).
    pub body_limit: usize,
    /// How long open requests may finish after shutdown starts (default 10 s).
    pub drain: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the script settings and the assets directory.
    pub fn new(script: ScriptConfig, assets_dir: PathBuf) -> Self {
        Self {
            script,
            assets_dir,
            boot_files_dir: None,
            body_limit: 1 << 20,
            drain: Duration::from_secs(10),
        }
    }
}

/// The HTTP boot server and everything it talks to.
#[derive(Clone)]
pub struct HttpServer {
    /// Settings.
    pub config: ServerConfig,
    /// The agent secret that derives machine tokens.
    pub keys: TokenKey,
    /// Machine lookups (the agent's Machine reflector).
    pub source: Arc<dyn BootSource>,
    /// Where machine API reports go (Machine status).
    pub sink: Arc<dyn ReportSink>,
    /// The image cache.
    pub cache: ImageCache,
    /// Metrics (register them once with [`HttpMetrics::register`]).
    pub metrics: HttpMetrics,
    /// Boot flight-recorder events; a full channel drops events (counted).
    pub events: mpsc::Sender<BootEvent>,
}

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

    /// Sends a flight-recorder event without waiting; a full channel drops it.
    pub(crate) fn record(&self, event: BootEvent) {
        if self.events.try_send(event).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}

async fn count_request(State(s): State<Arc<HttpServer>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let resp = next.run(req).await;
    s.metrics.request(route, resp.status().as_u16());
    resp
}

/// The metrics label of a request path (a fixed vocabulary, never the raw path).
pub fn route_label(path: &str) -> &'static str {
    if path.starts_with("/boot/") {
        "boot"
    } else if path.starts_with("/assets/") {
        "assets"
    } else if path.starts_with("/images/") {
        "images"
    } else if let Some(rest) = path.strip_prefix("/api/v1/machines/") {
        match rest.rsplit('/').next() {
            Some("inventory") => "inventory",
            Some("progress") => "progress",
            Some("result") => "result",
            Some("plan") => "plan",
            Some("booted") => "booted",
            _ => "other",
        }
    } else {
        "other"
    }
}
