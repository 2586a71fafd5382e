//! Benchmark of image serving: many concurrent clients download one large image with Range
//! requests from the agent's HTTP server and, in the same run, from nginx serving the same
//! file on loopback. Prints throughput and p50/p99 latency per range request.
//!
//! `http-bench [size_mb] [clients] [range_mb] [rounds]` (defaults 1024, 50, 16, 2: the
//! issue's shape, 50 clients of a 1 GiB image). The servers are pinned to core 1 and the
//! load generator to core 0 with `taskset` when it exists. The image lies in a temporary
//! directory (page cache after the first read, for both servers alike).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ironpool_agents::http::{
    HttpMetrics, HttpServer, ImageCache, MemoryBootSource, MemoryReportSink, ScriptConfig,
    ServerConfig, TokenKey,
};
use tokio_util::sync::CancellationToken;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let dir = args.get(2).context("serve <dir> <port>")?;
            let port = args.get(3).context("serve <dir> <port>")?.parse()?;
            rt.block_on(serve(PathBuf::from(dir), port))
        }
        Some("load") => rt.block_on(load_cmd(args.get(2..).unwrap_or_default())),
        _ => rt.block_on(orchestrate(&args[1..])),
    }
}

/// Serves the cache directory `dir` on `port`.
async fn serve(dir: PathBuf, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let metrics = HttpMetrics::new();
    let cache = ImageCache::open(&dir, u64::MAX, metrics.clone())?;
    let (events, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let server = HttpServer {
        config: ServerConfig::new(
            ScriptConfig::new(&format!("http://127.0.0.1:{port}"), "")?,
            dir,
        ),
        keys: TokenKey::new(&[1; 32])?,
        source: Arc::new(MemoryBootSource::new()),
        sink: Arc::new(MemoryReportSink::new()),
        cache,
        metrics,
        events,
    };
    server.serve(listener, CancellationToken::new()).await?;
    Ok(())
}

fn pinned(core: &str, program: &Path) -> tokio::process::Command {
    if Path::new("/usr/bin/taskset").exists() {
        let mut c = tokio::process::Command::new("/usr/bin/taskset");
        c.arg("-c").arg(core).arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    }
}

async fn orchestrate(args: &[String]) -> Result<()> {
    let size_mb: u64 = args.first().map_or(Ok(1024), |s| s.parse())?;
    let clients: usize = args.get(1).map_or(Ok(50), |s| s.parse())?;
    let range_mb: u64 = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let work = tempfile::tempdir()?;
    let cache_dir = work.path().join("images");
    std::fs::create_dir(&cache_dir)?;
    let data: Vec<u8> = {
        let mut rng = fastrand::Rng::with_seed(1);
        (0..size_mb << 20).map(|_| rng.u8(..)).collect()
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    let name = format!(
        "sha256-{}",
        ironpool_agents::http::fetch::hex(digest.as_ref())
    );
    std::fs::write(cache_dir.join(&name), &data)?;
    drop(data);
    let me = std::env::current_exe()?;

    let our_port = free_port()?;
    let mut ours = pinned("1", &me)
        .arg("serve")
        .arg(&cache_dir)
        .arg(our_port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let nginx_port = free_port()?;
    let conf = work.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {p}/nginx.pid; error_log {p}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
               server {{ listen 127.0.0.1:{nginx_port}; location /images/ {{ alias {dir}/; }} }} }}\n",
            p = work.path().display(),
            dir = cache_dir.display()
        ),
    )?;
    let mut nginx = pinned("1", Path::new("/usr/sbin/nginx"))
        .arg("-p")
        .arg(work.path())
        .arg("-c")
        .arg(&conf)
        .kill_on_drop(true)
        .spawn()
        .context("start nginx (apt-get install nginx-light)")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "image {size_mb} MiB, {clients} clients, {range_mb} MiB ranges, servers on core 1, load on core 0"
    );
    let pids = [ours.id(), nginx.id()];
    for round in 0..rounds {
        for ((label, port), pid) in [("ironpool", our_port), ("nginx", nginx_port)]
            .into_iter()
            .zip(pids)
        {
            let url = format!("http://127.0.0.1:{port}/images/{name}");
            let cpu_before = pid.map(cpu_secs).transpose()?;
            let out = pinned("0", &me)
                .args([
                    "load",
                    &url,
                    &(size_mb << 20).to_string(),
                    &clients.to_string(),
                    &(range_mb << 20).to_string(),
                ])
                .output()
                .await?;
            if !out.status.success() {
                bail!(
                    "load against {label}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let cpu = match (cpu_before, pid.map(cpu_secs).transpose()?) {
                (Some(a), Some(b)) => {
                    let gib = (size_mb * clients as u64) as f64 / 1024.0;
                    format!("  server CPU {:.2} s/GiB", (b - a) / gib)
                }
                _ => String::new(),
            };
            println!(
                "round {round} {label:>8}: {}{cpu}",
                String::from_utf8_lossy(&out.stdout).trim_end()
            );
        }
    }
    let _ = nginx.start_kill();
    let _ = ours.start_kill();
    let _ = nginx.wait().await;
    let _ = ours.wait().await;
    Ok(())
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`: the server's cost
/// per GiB, which stays meaningful when the load generator limits the throughput.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `load <url> <size> <clients> <range>`: every client downloads the whole file in ranges.
async fn load_cmd(args: &[String]) -> Result<()> {
    let url = args.first().context("url")?.clone();
    let size: u64 = args.get(1).context("size")?.parse()?;
    let clients: usize = args.get(2).context("clients")?.parse()?;
    let range: u64 = args.get(3).context("range")?.parse()?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut start = 0;
            while start < size {
                let end = (start + range).min(size) - 1;
                let t = Instant::now();
                let req = http::Request::get(&url)
                    .header(http::header::RANGE, format!("bytes={start}-{end}"))
                    .body(Empty::new())?;
                let resp = client.request(req).await?;
                if resp.status() != http::StatusCode::PARTIAL_CONTENT {
                    bail!("status {}", resp.status());
                }
                let mut body = resp.into_body();
                let mut got = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame?.into_data() {
                        got += d.len() as u64;
                    }
                }
                if got != end - start + 1 {
                    bail!("short body {got}");
                }
                lat.push(t.elapsed());
                start = end + 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let wall = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    let total = size as f64 * clients as f64;
    println!(
        "{:7.0} MiB/s  ({:.1} GiB in {:.2} s, {} requests)  p50 {:.0} ms  p99 {:.0} ms",
        total / wall.as_secs_f64() / f64::from(1 << 20),
        total / f64::from(1 << 30),
        wall.as_secs_f64(),
        lat.len(),
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The load loop at a tiny size against the agent's server in this process: 4 clients
    /// fetch a 1 MiB image in 256 KiB ranges, every byte counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_loop_against_our_server() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        let digest = ring::digest::digest(&ring::digest::SHA256, &data);
        let name = format!(
            "sha256-{}",
            ironpool_agents::http::fetch::hex(digest.as_ref())
        );
        std::fs::write(dir.path().join(&name), &data).unwrap();
        let port = free_port().unwrap();
        tokio::spawn(serve(dir.path().to_path_buf(), port));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let args: Vec<String> = [
            format!("http://127.0.0.1:{port}/images/{name}"),
            (1u64 << 20).to_string(),
            "4".into(),
            (256u64 << 10).to_string(),
        ]
        .into();
        load_cmd(&args).await.unwrap();
    }
}
