//! What every part of the HTTP boot server shares: its settings, the state handed to each
//! request ([`HttpServer`]: keys, machine lookups, the report sink, the image cache,
//! metrics, the flight-recorder channel) and the metrics label of a path. The base of the
//! folder's request path: [`super::handlers`] and [`super::zerocopy`] build on it, and
//! [`super::server`] adds the router and the accept loop on top.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::token::TokenKey;
use super::{BootEvent, BootSource, HttpMetrics, ImageCache, ReportSink, ScriptConfig};

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
    /// Sends a flight-recorder event without waiting; a full channel drops it.
    pub(crate) fn record(&self, event: BootEvent) {
        if self.events.try_send(event).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
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
