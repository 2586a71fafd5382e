//! Test harness of the HTTP boot server: starts it on a loopback port with in-memory
//! machines and reports, and talks to it with curl and the hyper client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ironpool_agents::http::{
    BootEvent, HttpMetrics, HttpServer, ImageCache, MemoryBootSource, MemoryReportSink,
    ScriptConfig, ServerConfig, TokenKey,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server and its fakes.
pub struct Harness {
    pub base: String,
    pub source: Arc<MemoryBootSource>,
    pub sink: Arc<MemoryReportSink>,
    pub events: mpsc::Receiver<BootEvent>,
    pub metrics: HttpMetrics,
    pub keys: TokenKey,
    pub cache: ImageCache,
    pub assets: TempDir,
    pub cache_dir: TempDir,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), ironpool_agents::http::HttpError>>,
}

impl Harness {
    /// Starts a server whose image cache holds at most `cache_limit` bytes.
    pub async fn start(cache_limit: u64) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let assets = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let metrics = HttpMetrics::new();
        let cache = ImageCache::open(cache_dir.path(), cache_limit, metrics.clone()).unwrap();
        let keys = TokenKey::new(&[42; 32]).unwrap();
        let source = Arc::new(MemoryBootSource::new());
        let sink = Arc::new(MemoryReportSink::new());
        let (tx, events) = mpsc::channel(1024);
        let mut config =
            ServerConfig::new(ScriptConfig::new(&base, "").unwrap(), assets.path().into());
        config.body_limit = 64 * 1024;
        config.drain = Duration::from_secs(2);
        let server = HttpServer {
            config,
            keys: keys.clone(),
            source: source.clone(),
            sink: sink.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            events: tx,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, cancel.clone()));
        Harness {
            base,
            source,
            sink,
            events,
            metrics,
            keys,
            cache,
            assets,
            cache_dir,
            cancel,
            task,
        }
    }

    /// Every flight-recorder event received so far.
    pub fn drain_events(&mut self) -> Vec<BootEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

/// Runs curl with `args` against nothing else; returns (status, body).
pub async fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out_dir = tempfile::tempdir().unwrap();
    let body_path = out_dir.path().join("body");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(&body_path)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let body = std::fs::read(&body_path).unwrap_or_default();
    (status, body)
}

/// curl returning the body as text.
pub async fn curl_text(args: &[&str]) -> (u16, String) {
    let (status, body) = curl(args).await;
    (status, String::from_utf8(body).unwrap())
}

/// A plain hyper client.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET with an optional Range; returns (status, headers, body).
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    range: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = http::Request::get(url);
    if let Some(r) = range {
        req = req.header(http::header::RANGE, r);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Deterministic pseudo-random bytes.
pub fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", ironpool_agents::http::fetch::hex(d.as_ref()))
}

/// Writes `data` to `dir/name`.
pub fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}
